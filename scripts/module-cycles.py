#!/usr/bin/env python3
"""Fails when a module of a crate imports another that imports it back, directly or round a
longer circle (the structure rule in CONTRIBUTING.md).

    scripts/module-cycles.py              check the workspace's crates
    scripts/module-cycles.py --self-test  check that a planted circle is found

A module's edges are the paths it names with `crate::`, `super::`, `self::` or its crate's
own name (in code, not in comments), each taken to the longest module it names. A binary's
`main.rs` is a crate of its own and is left out. Paths relative to a module's own children
(`imp::UnetMask` in `mod.rs`) are not edges: a parent declares its children.
"""
import os
import re
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CRATES = [("plugins/src", "gstunetmask"), ("syncd/src", "edgemask_syncd"), ("pipeline/src", "edgemask")]
IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs") or (root == src and f == "main.rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib"):
                rel = rel[:-1]
            mods[tuple(rel)] = path
    return mods


def resolve(path, me, mods, crate):
    parts = path.split("::")
    if parts[0] in ("crate", crate):
        base, parts = [], parts[1:]
    elif parts[0] == "super":
        base = list(me)
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
    elif parts[0] == "self":
        base, parts = list(me), parts[1:]
    else:
        return None
    names = base + [p for p in parts if IDENT.match(p)]
    for k in range(len(names), -1, -1):
        if tuple(names[:k]) in mods:
            return tuple(names[:k])
    return None


def edges(src, crate):
    mods = modules(src)
    pattern = re.compile(r"\b((?:crate|super|self|" + crate + r")(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
    out = {m: set() for m in mods}
    for m, path in mods.items():
        with open(path, encoding="utf-8") as fh:
            code = "\n".join(l for l in fh.read().split("\n") if not l.lstrip().startswith("//"))
        for hit in pattern.finditer(code):
            r = resolve(hit.group(1), m, mods, crate)
            if r is not None and r != m:
                out[m].add(r)
    return out


def circles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(n):
        index[n] = low[n] = counter[0]
        counter[0] += 1
        stack.append(n)
        on.add(n)
        for w in graph.get(n, ()):
            if w not in index:
                visit(w)
                low[n] = min(low[n], low[w])
            elif w in on:
                low[n] = min(low[n], index[w])
        if low[n] == index[n]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == n:
                    break
            if len(comp) > 1:
                found.append(comp)

    for n in graph:
        if n not in index:
            visit(n)
    return found


def name(m):
    return "::".join(m) or "crate"


def check(src, crate):
    return [" <-> ".join(sorted(name(m) for m in c)) for c in circles(edges(src, crate))]


def self_test():
    with tempfile.TemporaryDirectory() as d:
        files = {
            "lib.rs": "pub mod a;\npub mod b;\npub mod c;\n",
            "a.rs": "use crate::b::B;\n// crate::c in a comment is no edge\n",
            "b.rs": "pub struct B;\nuse super::a;\n",
            "c/mod.rs": "mod d;\n",
            "c/d.rs": "use mycrate::a;\n",
        }
        for f, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(d, f)), exist_ok=True)
            with open(os.path.join(d, f), "w", encoding="utf-8") as fh:
                fh.write(text)
        got = check(d, "mycrate")
        assert got == ["a <-> b"], got
        g = edges(d, "mycrate")
        assert g[("c", "d")] == {("a",)}, g
        assert ("c",) not in g[("a",)], "a comment is no edge"
    print("module-cycles: self-test passed")


def main():
    if "--self-test" in sys.argv[1:]:
        self_test()
        return 0
    bad = []
    for src, crate in CRATES:
        found = check(os.path.join(ROOT, src), crate)
        bad += [f"{src}: {c}" for c in found]
        print(f"{src}: {len(modules(os.path.join(ROOT, src)))} modules, {len(found)} circle(s)")
    if bad:
        print("module-cycles: modules that import each other (move the shared part to a module "
              "both import):\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
