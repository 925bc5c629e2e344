#!/usr/bin/env python3
"""Two builds of the element bench, side by side: did a change cost speed?

    scripts/bench-element-ab.py OLD_BENCH NEW_BENCH [--runs N] [--json OUT]

OLD_BENCH and NEW_BENCH are `cargo bench --bench element --no-run` executables (copy the old
one away before building the new). They run alternately, N times each (default 3), each run
with the bench's own BENCH_* settings from the environment (BENCH_ROUNDS rounds inside it;
each row is element fps / bare ONNX Runtime fps measured in interleaved chunks). For every
row the table gives the median ratio of each build over all its rounds, the spread
(min..max), and new/old. The machine is shared and noisy: compare the medians of ratios,
never single runs. Run from the repository root after `source scripts/env.sh`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run(bench, out):
    env = dict(os.environ, BENCH_JSON=out)
    cwd = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "plugins")
    subprocess.run([bench, "--bench"], env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    with open(out, encoding="utf-8") as fh:
        return json.load(fh)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    ratios = {"old": {}, "new": {}}
    meta = None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.runs):
            for side in ("old", "new"):
                d = run(getattr(a, side), os.path.join(tmp, f"{side}{i}.json"))
                meta = meta or {k: d[k] for k in ("machine", "settings", "date")}
                for row in d["rows"]:
                    ratios[side].setdefault(row["key"], []).extend(row["ratio"]["rounds"])
                print(f"run {i + 1}/{a.runs} {side} done", file=sys.stderr)
    rows = []
    for key in ratios["old"]:
        old, new = ratios["old"][key], ratios["new"].get(key, [])
        if not new:
            continue
        mo, mn = statistics.median(old), statistics.median(new)
        rows.append({
            "key": key,
            "old": {"median": mo, "min": min(old), "max": max(old), "n": len(old)},
            "new": {"median": mn, "min": min(new), "max": max(new), "n": len(new)},
            "new_over_old": mn / mo,
        })
    print("| row | old ratio (min..max) | new ratio (min..max) | new/old |")
    print("|---|---|---|---|")
    for r in rows:
        o, n = r["old"], r["new"]
        print(f"| {r['key'].split('/', 1)[1]} | {o['median']:.3f} ({o['min']:.3f}..{o['max']:.3f}) "
              f"| {n['median']:.3f} ({n['min']:.3f}..{n['max']:.3f}) | {r['new_over_old']:.3f} |")
    q = sorted(r["new_over_old"] for r in rows)
    summary = {"rows": len(q), "median_new_over_old": statistics.median(q), "min": q[0], "max": q[-1]}
    print(f"new/old over {summary['rows']} rows: median {summary['median_new_over_old']:.3f}, "
          f"range {summary['min']:.3f}..{summary['max']:.3f}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump({"bench": "scripts/bench-element-ab.py", "runs_each": a.runs, **(meta or {}),
                       "old": a.old, "new": a.new, "summary": summary, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
