#!/usr/bin/env python3
"""End to end, as a user would first try it: an H.264 file decoded, segmented, overlaid and
encoded again, by `unetmask` in a `gst-launch-1.0` line and by a plain Python loop.

    .deps/venv/bin/python scripts/bench-e2e.py [--rounds 3] [--frames 300] [--short 60] \
        [--size 1920x1080] [--props "spin=never" ...] [--json OUT]

The input is the moving test person of scripts/iou-moving.py (the shared photograph over a
panning background), 30 fps H.264 with B-frames, made once per run at two lengths. Per
round, interleaved, each of three lines runs on both files, and only the difference counts
(start-up, imports and model loading cancel out):

  element  filesrc ! qtdemux ! h264parse ! avdec_h264 ! unetmask model=… (default
           properties: mode=overlay) ! x264enc speed-preset=ultrafast ! mp4mux ! filesink
  element PROPS   the same with PROPS set (--props), for each
  codec    the same line without unetmask: what decoding and encoding alone cost
  python   OpenCV decode -> resize to the model's input -> onnxruntime (its defaults) ->
           mask upsample -> colour overlay -> cv2.VideoWriter (mp4v: the pip wheel's
           FFmpeg has no x264)

The table (`scripts/figures.py --render e2e`) gives the median fps over rounds with the
spread, and element ÷ python; --json writes every round. Needs opencv-python-headless in the venv
(`.deps/venv/bin/pip install opencv-python-headless`). Builds the release plugin first; run
from the repository root after `scripts/setup.sh`. Measures, never asserts.
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import benchlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "models", "selfie_segmentation_256x256.onnx")

# What a user would write first: OpenCV for the video, numpy for the arithmetic.
PYTHON_LOOP = r"""
import sys, cv2, numpy as np, onnxruntime as ort
video, model, out = sys.argv[1:4]
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0]
nhwc = inp.shape[-1] == 3
mh, mw = (inp.shape[1], inp.shape[2]) if nhwc else (inp.shape[2], inp.shape[3])
cap = cv2.VideoCapture(video)
W, H = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), cap.get(cv2.CAP_PROP_FPS), (W, H))
colour = np.zeros((H, W, 3), np.uint8)
colour[:] = (0, 255, 0)
n = 0
while True:
    ok, frame = cap.read()
    if not ok:
        break
    small = cv2.cvtColor(cv2.resize(frame, (mw, mh), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    x = small.astype(np.float32) / 255.0
    x = x[None] if nhwc else x.transpose(2, 0, 1)[None]
    prob = s.run(None, {inp.name: x})[0].reshape(mh, mw)
    mask = cv2.resize(prob, (W, H), interpolation=cv2.INTER_LINEAR) > 0.5
    tinted = cv2.addWeighted(frame, 0.5, colour, 0.5, 0)
    frame[mask] = tinted[mask]
    writer.write(frame)
    n += 1
writer.release()
print(n)
"""


def moving():
    """scripts/iou-moving.py, for its test video."""
    spec = importlib.util.spec_from_file_location("iou_moving", os.path.join(ROOT, "scripts", "iou-moving.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_videos(dirname, size, counts):
    mod = moving()
    mod.W, mod.H = size
    # The photograph at the height it has in a 720p frame, scaled to this frame.
    scale = size[1] / 720
    mod.PW, mod.PH = int(400 * scale) // 2 * 2, int(600 * scale) // 2 * 2
    paths = {}
    for n in counts:
        paths[n] = os.path.join(dirname, f"in-{n}.mp4")
        mod.make_video(paths[n], n)
    return paths


def gst_line(video, out, element):
    middle = f"! {element} " if element else ""
    return (f"filesrc location={video} ! qtdemux ! h264parse ! avdec_h264 {middle}"
            f"! x264enc speed-preset=ultrafast ! mp4mux ! filesink location={out}")


def seconds(cmd, env):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def fps(run, videos, frames, short):
    """Frames per second of `run` (a function of the input), start-up cancelled."""
    return (frames - short) / (run(videos[frames]) - run(videos[short]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--short", type=int, default=60)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--props", nargs="*", default=[], help="element lines with these properties too")
    ap.add_argument("--json")
    a = ap.parse_args()
    try:
        import cv2  # noqa: F401
    except ImportError:
        sys.exit("bench-e2e: OpenCV is missing: .deps/venv/bin/pip install opencv-python-headless")
    env = benchlib.release_plugin_env()
    size = tuple(int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        videos = make_videos(tmp, size, (a.frames, a.short))
        out = os.path.join(tmp, "out.mp4")
        def launch(element):
            return lambda v: seconds(["gst-launch-1.0", "-q"] + gst_line(v, out, element).split(), env)

        lines = {"element": launch(f"unetmask model={MODEL}")}
        for props in a.props:
            lines[f"element {props}"] = launch(f"unetmask model={MODEL} {props}")
        lines["codec"] = launch(None)
        lines["python"] = lambda v: seconds([sys.executable, "-c", PYTHON_LOOP, v, MODEL, out], env)
        rounds = []
        for r in range(a.rounds):
            got = {name: fps(run, videos, a.frames, a.short) for name, run in lines.items()}
            for name in [n for n in got if n.startswith("element")]:
                got[name.replace(" ", "_") + "_over_python"] = got[name] / got["python"]
            got["codec_over_element"] = got["codec"] / got["element"]
            rounds.append(got)
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()), file=sys.stderr)
    summary = {key: benchlib.spread(x[key] for x in rounds) for key in rounds[0]}
    result = {"bench": "scripts/bench-e2e.py", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{os.cpu_count()} cores", "size": a.size, "frames": a.frames, "short": a.short,
              "rounds": rounds, "summary": summary}
    benchlib.record(result, "e2e", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
