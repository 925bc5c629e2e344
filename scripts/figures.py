#!/usr/bin/env python3
"""One source for every published figure: the benches' recorded results.

Benches write machine-readable results (JSON); the ones a document quotes are kept in
docs/results/. A document marks what comes from them, and this script fills it in:

    <!-- figures:NAME -->            a table rendered from docs/results/NAME.json
    ...
    <!-- /figures -->

    <!-- figure:NAME PATH -->1.30<!-- /figure -->   one value (PATH: dotted keys)

    scripts/figures.py --check   fail when a document disagrees with its result (the
                                 test command runs this)
    scripts/figures.py --write   rewrite the marked parts from the results
    scripts/figures.py --render NAME [RESULT.json]   print the table (benches use it)
    scripts/figures.py --self-test   show that --check fails on a figure that disagrees
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
DOCS = ["README.md", "syncd/README.md", "pipeline/README.md", "plugins/README.md", "docs/benchmarks.md"]

TABLE = re.compile(r"(<!-- figures:([\w.-]+) -->\n)(.*?)(<!-- /figures -->)", re.S)
VALUE = re.compile(r"(<!-- figure:([\w-]+) ([\w.\[\]-]+) -->)(.*?)(<!-- /figure -->)")


def load(name, path=None):
    p = Path(path) if path else RESULTS / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        sys.exit(f"figures: no recorded result {p}: run the bench that writes it")


def lookup(data, path):
    cur = data
    for part in path.split("."):
        if isinstance(cur, list):
            # a list of objects is indexed by its "key" field
            matches = [x for x in cur if x.get("key") == part]
            if not matches:
                sys.exit(f"figures: no entry '{part}' in {path}")
            cur = matches[0]
        else:
            if part not in cur:
                sys.exit(f"figures: no key '{part}' in {path}")
            cur = cur[part]
    return cur


def fmt(v):
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def render_syncd_vs_rclone(d):
    out = [
        f"Recorded {d['date']} on {d['machine']}; {d['rounds']} interleaved rounds per set "
        "(the tool that goes first alternates), each on content the store has never seen.",
        "",
        "| set | edgemask-syncd s, median | rclone s, median | throughput ratio syncd/rclone, median | spread (min–max) | peak RSS MiB syncd / rclone |",
        "|---|---|---|---|---|---|",
    ]
    for s in d["sets"]:
        out.append(
            f"| {s['label']} | {s['syncd_s_median']:.2f} | {s['rclone_s_median']:.2f} | "
            f"**{s['ratio_median']:.2f}** | {s['ratio_min']:.2f}–{s['ratio_max']:.2f} | "
            f"{s['syncd_rss_mib_max']:.1f} / {s['rclone_rss_mib_max']:.1f} |"
        )
    lat = d.get("latency")
    if lat:
        out += [
            "",
            f"A finished clip (4.3 MB, 3 files) starts uploading within {lat['first_upload_s_worst']:.3f} s "
            f"of its manifest's rename and its manifest is verified in the bucket within "
            f"{lat['verified_s_worst']:.3f} s (worst of {lat['clips']}).",
        ]
    return "\n".join(out) + "\n"


def spread(s, fmt="{:.2f}"):
    """A median with its spread: `0.76 (0.74–0.78)`, or the value alone for one round."""
    if s["min"] == s["max"]:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def element_header(d):
    return (
        f"Recorded {d['date']} on {d['machine']}, {d['settings']}; medians of {d['rounds']} "
        "round(s), the spread (min–max) in brackets; ratio = element fps / bare ONNX Runtime fps "
        "in the same run.\n\n"
    )


def render_element_meta_1080p(d):
    rows = {r["key"]: r for r in d["rows"]}
    model = "selfie_segmentation_256x256.onnx"
    out = [element_header(d) + "| `meta` at 1920x1080 | RGBA | NV12 |", "| --- | --- | --- |"]
    for mode, label in [
        ("meta", "default (`resize=antialias`)"),
        ("meta+resize=bilinear", "`resize=bilinear`"),
        ("meta+pipelined=true", "`pipelined=true`"),
        ("meta+resize=bilinear+pipelined=true", "`pipelined=true resize=bilinear`"),
    ]:
        cells = []
        for fmt in ("RGBA", "NV12"):
            r = rows.get(f"{model}/1920x1080/{fmt}/{mode}")
            cells.append(spread(r["ratio"]) if r else "—")
        out.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(out) + "\n"


def render_element_all(d):
    out = [
        element_header(d) + "| model | frame | fmt | mode | element fps | bare fps | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in d["rows"]:
        out.append(
            f"| {r['model']} | {r['frame']} | {r['format']} | {r['mode']} | "
            f"{spread(r['elem_fps'], '{:.1f}')} | {spread(r['bare_fps'], '{:.1f}')} | {spread(r['ratio'])} |"
        )
    return "\n".join(out) + "\n"


def render_element_streams(d):
    out = [
        element_header(d) + "| streams | slowest stream fps | all streams fps | every stream at 30 fps |",
        "| --- | --- | --- | --- |",
    ]
    for s in d["streams"]:
        ok = "yes" if s["slowest_fps"]["min"] >= 30 else "no"
        out.append(
            f"| {s['streams']} | {spread(s['slowest_fps'], '{:.1f}')} | {spread(s['total_fps'], '{:.1f}')} | {ok} |"
        )
    return "\n".join(out) + "\n"


def render_journal(d):
    ops = [
        ("summary", "summary (trigger totals)"),
        ("open_work", "queue read (`open_work`)"),
        ("prune (nothing due)", "prune, nothing due"),
        ("upsert + mark", "upsert + mark one file"),
        ("retention candidates", "retention candidates"),
        ("full count (old summary)", "the old summary (full count), for contrast"),
    ]
    rows = sorted({r["rows"] for r in d["results"]})
    out = [
        f"Recorded {d['date']} on {d['machine']} (`{d['profile']}` profile); median (min–max) of "
        f"{d['rounds']} interleaved rounds, µs:",
        "",
        "| operation | " + " | ".join(f"{n:,} rows" for n in rows) + " |",
        "| --- |" + " --- |" * len(rows),
    ]
    for op, label in ops:
        cells = []
        for n in rows:
            r = next(x for x in d["results"] if x["op"] == op and x["rows"] == n)
            cells.append(f"{r['median_us']:,.0f} ({r['min_us']:,.0f}–{r['max_us']:,.0f})")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def render_runner(d):
    out = [
        f"{d['content']}; `resize = \"{d['resize']}\"`, `inference_interval = {d['inference_interval']}`, "
        f"`pipelined = {str(d['pipelined']).lower()}`; {d['seconds']} s per run; median (min–max) over the rounds:",
        "",
        "| cameras | rounds | frames sent = received = recorded | frames lost (worst round) | fresh masks % | runner CPU % (200 = 2 cores) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, s in sorted(d["by_cameras"].items(), key=lambda kv: int(kv[0])):
        runs = [r for r in d["runs"] if str(r["cameras"]) == n]
        exact = all(
            c["sent"] == c["received"] == c["recorded"] for r in runs for c in r["per_camera"]
        )
        out.append(
            f"| {n} | {s['rounds']} | {'yes' if exact else 'no'} | {s['lost_max']} | "
            f"{s['fresh_pct_median']:.2f} ({s['fresh_pct_min']:.2f}–{s['fresh_pct_max']:.2f}) | "
            f"{s['cpu_percent_median']:.0f} ({s['cpu_percent_min']:.0f}–{s['cpu_percent_max']:.0f}) |"
        )
    out += ["", f"Carries (no frame lost, ≥ 99 % fresh masks in every round): **{d['carries']} cameras**."]
    return "\n".join(out) + "\n"


def render_soak(d):
    out = [
        "| camera | frames sent | received | in uploaded clips | clips | sessions | random cuts | reconnections | flowing at the end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in d["cameras"]:
        out.append(
            f"| {c['camera']} | {c['sent']:,} | {c['received']:,} | {c['recorded']:,} | {c['clips']} | "
            f"{c['sessions']} | {c['cuts']} | {c['restarts']} | {'yes' if c['alive_last_minute'] else 'no'} |"
        )
    r = d["resources"]
    out += [
        "",
        f"Runner RSS (max of the first and the last third, after warm-up): {r['runner_rss_kib']['first_third_max'] / 1024:.0f} → "
        f"{r['runner_rss_kib']['last_third_max'] / 1024:.0f} MiB; open files {r['runner_fds']['first_third_max']} → "
        f"{r['runner_fds']['last_third_max']}; threads {r['runner_threads']['first_third_max']} → "
        f"{r['runner_threads']['last_third_max']}. Daemon RSS {r['syncd_rss_kib']['first_third_max'] / 1024:.0f} → "
        f"{r['syncd_rss_kib']['last_third_max'] / 1024:.0f} MiB. "
        f"Checks: {sum(c['ok'] for c in d['checks'])} of {len(d['checks'])} passed; verdict: {'pass' if d['pass'] else 'FAIL'}.",
    ]
    return "\n".join(out) + "\n"


def render_fairness(d):
    from statistics import median

    out = [
        f"{d['size']} {d['format']} at 30 fps per stream, {d['seconds']} s per run, {d['rounds']} interleaved "
        f"rounds on {d['machine']}; median (min–max):",
        "",
        "| streams | spin | frames / expected (fewest) | fresh masks % | process CPU % |",
        "| --- | --- | --- | --- | --- |",
    ]
    keys = []
    for r in d["runs"]:
        if (r["streams"], r["spin"]) not in keys:
            keys.append((r["streams"], r["spin"]))
    for n, spin in keys:
        rs = [r for r in d["runs"] if (r["streams"], r["spin"]) == (n, spin)]
        fresh = [r["fresh_pct"] for r in rs]
        cpu = [r["cpu_pct"] for r in rs]
        out.append(
            f"| {n} | {spin} | {min(r['frames'] for r in rs)} / {rs[0]['expected']} | {median(fresh):.1f} "
            f"({min(fresh):.1f}–{max(fresh):.1f}) | {median(cpu):.0f} ({min(cpu):.0f}–{max(cpu):.0f}) |"
        )
    return "\n".join(out) + "\n"


def render_launch(d, defaults_only=False):
    from statistics import median

    spin, nospin = median(d["bare_fps"]), median(d["bare_fps_no_spin"])
    out = [
        f"Recorded {d.get('date', '(undated)')} by `scripts/bench-launch.py`: {d['frames']} frames less "
        f"{d['short']} per pipeline, {d['rounds']} interleaved rounds on {d['machine']}, 2 threads both "
        f"sides; bare ONNX Runtime {spin:.0f} "
        f"inferences/s spinning (its default), {nospin:.0f} not. Element fps ÷ bare fps, median (min–max):",
        "",
        "| frame | format | properties | element fps | ÷ bare | ÷ bare not spinning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in d["rows"]:
        size, fmt, props = row["key"].split("/", 2)
        if defaults_only and props != "defaults":
            continue
        r = row["ratio"]
        fps = median(x["element_fps"] for x in row["rounds"])
        ns = median(x["ratio_no_spin"] for x in row["rounds"])
        out.append(f"| {size} | {fmt} | {props} | {fps:.0f} | {r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f}) "
                   f"| {ns:.2f} |")
    return "\n".join(out) + "\n"


def render_e2e(d):
    s = d["summary"]

    def row(k, unit=""):
        return f"{s[k]['median']:.2f}{unit} ({s[k]['min']:.2f}–{s[k]['max']:.2f})"

    out = [
        f"Recorded {d['date']}: {d['size']} H.264, {d['frames']} frames less {d['short']}, "
        f"{len(d['rounds'])} interleaved rounds on {d['machine']}; median (min–max):",
        "",
        "| line | fps | ÷ Python |",
        "| --- | --- | --- |",
    ]
    for k in [k for k in s if k.startswith("element") and not k.endswith("_over_python")]:
        props = k[len("element"):].strip() or "defaults: overlay"
        ratio = row(k.replace(" ", "_") + "_over_python", "×")
        out.append(f"| `unetmask` ({props}), x264 ultrafast | {row(k)} | {ratio} |")
    out += [
        f"| decode → x264 ultrafast alone | {row('codec')} | |",
        f"| Python: OpenCV + onnxruntime + `VideoWriter` | {row('python')} | 1 |",
        "",
    ]
    return "\n".join(out)


# table name -> (recorded result it reads, renderer)
RENDERERS = {
    "syncd-vs-rclone": ("syncd-vs-rclone", render_syncd_vs_rclone),
    "element.meta-1080p": ("element", render_element_meta_1080p),
    "element.all": ("element", render_element_all),
    "element.streams": ("element", render_element_streams),
    "journal": ("journal", render_journal),
    "runner": ("runner", render_runner),
    "soak": ("soak", render_soak),
    "soak-10min": ("soak-10min", render_soak),
    "fairness": ("fairness", render_fairness),
    "e2e": ("e2e", render_e2e),
    "launch": ("launch", render_launch),
    "launch.defaults": ("launch", lambda d: render_launch(d, defaults_only=True)),
    "launch-policies": ("launch-policies", render_launch),
}


def renderer(name):
    if name not in RENDERERS:
        sys.exit(f"figures: no renderer for '{name}' (known: {', '.join(RENDERERS)})")
    return RENDERERS[name]


def render(name, data):
    return renderer(name)[1](data)


def filled(text):
    text = TABLE.sub(
        lambda m: m.group(1) + render(m.group(2), load(renderer(m.group(2))[0])) + m.group(4), text
    )
    return VALUE.sub(lambda m: m.group(1) + fmt(lookup(load(m.group(2)), m.group(3))) + m.group(5), text)


def self_test():
    """A document whose figure disagrees fails --check; --write repairs it."""
    import io
    import shutil
    import tempfile
    from contextlib import redirect_stderr, redirect_stdout

    global ROOT, RESULTS
    saved = ROOT, RESULTS
    tmp = Path(tempfile.mkdtemp())
    try:
        ROOT, RESULTS = tmp, tmp / "docs" / "results"
        RESULTS.mkdir(parents=True)
        result = {"date": "d", "machine": "m", "rounds": 3, "sets": [
            {"key": "small", "label": "s", "syncd_s_median": 1.0, "rclone_s_median": 1.3,
             "ratio_median": 1.3, "ratio_min": 1.2, "ratio_max": 1.4,
             "syncd_rss_mib_max": 20.0, "rclone_rss_mib_max": 50.0}]}
        (RESULTS / "syncd-vs-rclone.json").write_text(json.dumps(result))
        doc = tmp / "README.md"
        doc.write_text("x <!-- figure:syncd-vs-rclone sets.small.ratio_median -->2.00<!-- /figure -->×\n"
                       "<!-- figures:syncd-vs-rclone -->\n<!-- /figures -->\n")
        quiet = io.StringIO()
        with redirect_stdout(quiet), redirect_stderr(quiet):
            assert main(["--check"]) == 1, "a disagreeing figure must fail the check"
            assert main(["--write"]) == 0
            assert main(["--check"]) == 0
        text = doc.read_text()
        assert "-->1.30<!--" in text and "| **1.30** | 1.20–1.40 |" in text, text
    finally:
        ROOT, RESULTS = saved
        shutil.rmtree(tmp)
    print("figures: self-test passed (a disagreeing figure fails --check)")
    return 0


def main(argv):
    if argv == ["--self-test"]:
        return self_test()
    if len(argv) >= 2 and argv[0] == "--render":
        sys.stdout.write(render(argv[1], load(renderer(argv[1])[0], argv[2] if len(argv) > 2 else None)))
        return 0
    if not argv or argv[0] not in ("--check", "--write"):
        print(__doc__)
        return 2
    bad = []
    for rel in DOCS:
        p = ROOT / rel
        if not p.exists():
            continue
        text = p.read_text()
        new = filled(text)
        if new != text:
            if argv[0] == "--write":
                p.write_text(new)
                print(f"figures: rewrote {rel}")
            else:
                bad.append(rel)
    if bad:
        print(
            "figures: these documents disagree with their recorded results in docs/results/: "
            + ", ".join(bad)
            + "\n  run scripts/figures.py --write (or record a new result with the bench)",
            file=sys.stderr,
        )
        return 1
    if argv[0] == "--check":
        print("figures: every marked figure matches its recorded result")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
