#!/usr/bin/env python3
"""Many live streams in one `gst-launch-1.0`: does spinning keep them fed?

    scripts/bench-fairness.py [--rounds 2] [--seconds 10] [--streams 1,4,12] \
        [--format NV12] [--size 1920x1080] [--extra "resize=bilinear"] [--json OUT]

Per round, interleaved, for each stream count N and each spin policy: one process
with N pipelines of

    videotestsrc num-buffers=1 ! FORMAT,WxH,30/1 ! imagefreeze is-live=true num-buffers=F
        ! unetmask model=… mode=meta spin=S EXTRA stats-interval=F ! fakesink sync=true

(F = 30 x seconds), every element with its default threads. A live source paces the frames
at 30 fps; an element that falls behind gets QoS from its sink and carries its previous
mask instead of running the model (`skip-late`). Counted exactly from each element's final
stats message: frames, fresh masks (inference ran), QoS-skipped; and the process's CPU time
(user + system) over its wall time. The default (in-run) is fair for N streams when its
fresh share is no lower than with spin=never, and its CPU close to it.

Prints a table (median over rounds, min..max; `scripts/figures.py --render fairness`) and
writes every run with --json. Builds the
release plugin first; run from the repository root after `scripts/setup.sh`. Measures,
never asserts.
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import time

import benchlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "models", "selfie_segmentation_256x256.onnx")
SPIN = ("never", "in-run", "always")
STATS = re.compile(r'from element "u(\d+)".*unetmask-stats, (.*)')


def field(text, name):
    m = re.search(rf"{name}=\(\w+\)([0-9.e+-]+)", text)
    return float(m.group(1)) if m else None


def run(n, spin, a, env):
    frames = 30 * a.seconds
    w, h = a.size.split("x")
    parts = []
    for i in range(n):
        parts.append(
            f"videotestsrc num-buffers=1 pattern=ball ! video/x-raw,format={a.format},width={w},height={h},"
            f"framerate=30/1 ! imagefreeze is-live=true num-buffers={frames} ! unetmask name=u{i} "
            f"model={MODEL} mode=meta spin={spin} {a.extra} stats-interval={frames} ! fakesink sync=true")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(["gst-launch-1.0", "-m"] + " ".join(parts).split(), env=env, check=True,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    last = {}
    for line in out.stdout.splitlines():
        m = STATS.search(line)
        if m:
            last[int(m.group(1))] = m.group(2)
    if len(last) != n:
        raise SystemExit(f"{n} streams, spin={spin}: {len(last)} stats messages\n{out.stderr[-2000:]}")
    got = {k: sum(field(s, k) or 0 for s in last.values()) for k in ("frames", "fresh", "qos-skipped")}
    return {"streams": n, "spin": spin, "frames": int(got["frames"]), "expected": n * frames,
            "fresh": int(got["fresh"]), "qos_skipped": int(got["qos-skipped"]),
            "fresh_pct": 100.0 * got["fresh"] / max(got["frames"], 1),
            "cpu_pct": 100.0 * cpu / wall, "wall_s": wall}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--streams", default="1,4,12")
    ap.add_argument("--format", default="NV12")
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--extra", default="", help="more element properties, e.g. resize=bilinear")
    ap.add_argument("--json")
    a = ap.parse_args()
    env = benchlib.release_plugin_env()
    runs = []
    for r in range(a.rounds):
        for n in (int(s) for s in a.streams.split(",")):
            for spin in SPIN:
                x = run(n, spin, a, env)
                x["round"] = r + 1
                runs.append(x)
                print(f"round {r + 1}: {n} streams, spin={spin}: {x['frames']}/{x['expected']} frames, "
                      f"{x['fresh_pct']:.1f} % fresh, CPU {x['cpu_pct']:.0f} %", file=sys.stderr)
    result = {"bench": "scripts/bench-fairness.py", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{os.cpu_count()} cores", "size": a.size,
              "format": a.format, "seconds": a.seconds, "rounds": a.rounds, "extra": a.extra, "runs": runs}
    benchlib.record(result, "fairness", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
