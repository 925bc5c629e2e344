#!/usr/bin/env python3
"""The element as people first meet it: a `gst-launch-1.0` line, against bare ONNX Runtime.

    scripts/bench-launch.py [--rounds 3] [--frames 600] [--formats RGBA,NV12,I420] \
        [--sizes 1280x720,1920x1080,3840x2160] [--props "" "spin=never" ...] [--json OUT]

Per round, interleaved, for each frame size and format: bare ONNX Runtime on a ready tensor
(the model's input, 2 intra-op threads; with its default spinning threads, and without them
as the element's spin=never), then the same frame through

    videotestsrc num-buffers=1 ! FORMAT,WxH ! imagefreeze num-buffers=N ! X ! fakesink sync=false

with X = `identity` and X = `unetmask model=… mode=meta threads=2 PROPS` for each PROPS.
Each pipeline runs twice, with N and with a short count, and only the difference counts:
start-up and model loading cancel out. The element's time per frame is its pipeline's
minus the identity pipeline's, so it includes what the element makes the pipeline do (its
thread policy), not what the source costs.

The table (`scripts/figures.py --render launch`) gives, per row, the median over rounds of
element fps ÷ bare fps and the spread (min..max); --json writes every round (record with
`--rounds 5 --json docs/results/launch.json`, then `scripts/figures.py --write`). Builds
the release plugin first; run from the repository root after `scripts/setup.sh`. Measures,
never asserts: the machine is shared and noisy, so compare ratios from one run.
"""
import argparse
import os
import subprocess
import sys
import time

import benchlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "models", "selfie_segmentation_256x256.onnx")

BARE = r"""
import sys, time, numpy as np, onnxruntime as ort
model, n, spin = sys.argv[1], int(sys.argv[2]), sys.argv[3]
so = ort.SessionOptions()
so.intra_op_num_threads = 2
so.inter_op_num_threads = 1
so.add_session_config_entry("session.intra_op.allow_spinning", spin)
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
shape = [d if isinstance(d, int) else 256 for d in i.shape]
x = np.random.default_rng(1).random(shape, dtype=np.float32)
for _ in range(20):
    s.run(None, {i.name: x})
t = time.perf_counter()
for _ in range(n):
    s.run(None, {i.name: x})
print(n / (time.perf_counter() - t))
"""


def python():
    venv = os.path.join(ROOT, ".deps", "venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def bare_fps(n, spin):
    out = subprocess.run([python(), "-c", BARE, MODEL, str(n), spin], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def launch_seconds(fmt, w, h, element, frames, env):
    desc = (f"videotestsrc num-buffers=1 pattern=ball ! video/x-raw,format={fmt},width={w},height={h} "
            f"! imagefreeze num-buffers={frames} ! {element} ! fakesink sync=false")
    t = time.perf_counter()
    subprocess.run(["gst-launch-1.0", "-q"] + desc.split(), check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def per_frame(fmt, w, h, element, frames, short, env):
    """Seconds per frame of the pipeline, start-up cancelled."""
    long_s = launch_seconds(fmt, w, h, element, frames, env)
    short_s = launch_seconds(fmt, w, h, element, short, env)
    return (long_s - short_s) / (frames - short)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--short", type=int, default=60)
    ap.add_argument("--sizes", default="1280x720,1920x1080,3840x2160")
    ap.add_argument("--formats", default="RGBA,NV12,I420")
    ap.add_argument("--props", nargs="*", default=["", "spin=never", "resize=bilinear"])
    ap.add_argument("--json")
    a = ap.parse_args()
    env = benchlib.release_plugin_env()
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    formats = a.formats.split(",")
    rows = {}
    bare, bare_nospin = [], []
    for r in range(a.rounds):
        for (w, h) in sizes:
            for fmt in formats:
                # Next to the rows it divides: a shared machine's slow spell then hits both.
                bare.append(bare_fps(a.frames, "1"))
                bare_nospin.append(bare_fps(a.frames, "0"))
                ident = per_frame(fmt, w, h, "identity", a.frames, a.short, env)
                for props in a.props:
                    el = f"unetmask model={MODEL} mode=meta threads=2 {props}".strip()
                    t = per_frame(fmt, w, h, el, a.frames, a.short, env) - ident
                    fps = 1.0 / t if t > 0 else float("inf")
                    key = f"{w}x{h}/{fmt}/{props or 'defaults'}"
                    rows.setdefault(key, []).append({"element_fps": fps, "bare_fps": bare[-1],
                                                     "ratio": fps / bare[-1],
                                                     "ratio_no_spin": fps / bare_nospin[-1],
                                                     "identity_ms": ident * 1e3})
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    out = [{"key": k, "rounds": rs, "ratio": benchlib.spread(x["ratio"] for x in rs)} for k, rs in rows.items()]
    benchlib.record({"bench": "scripts/bench-launch.py", "date": time.strftime("%Y-%m-%d"),
                     "machine": f"{os.cpu_count()} cores", "frames": a.frames, "short": a.short,
                     "rounds": a.rounds, "bare_fps": bare, "bare_fps_no_spin": bare_nospin, "rows": out},
                    "launch", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
