#!/usr/bin/env python3
"""Mask accuracy of the runner's model settings on moving content.

The test person (shared/testdata/person_400x600.png) moves across a 1280x720 30 fps frame
over a panning background; the ground truth of every frame is the reference mask of that
photograph (person_400x600.mask.selfie_256x256.png) put where the photograph is. The video
is encoded as a camera would send it (H.264, B-frames), the runner records it as a file
(every frame gets a fresh mask) once per variant, and each recorded mask is compared with
its frame's ground truth at the mask's resolution (IoU of the two thresholded at 0.5).

Prints a table and a JSON result (--json PATH writes it too). Needs numpy and Pillow
(.deps/venv has them: `.deps/venv/bin/python scripts/iou-moving.py`).

    scripts/iou-moving.py --runner target/release/edgemask [--frames 150] [--cases ...] [--json PATH]
"""

import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
W, H, FPS = 1280, 720, 30
# The photograph's size in the frame (--scale): 400x600 at 1.0.
PW, PH = 400, 600
VARIANTS = {
    "antialias": {"resize": "antialias", "pipelined": "false"},
    "antialias, pipelined": {"resize": "antialias", "pipelined": "true"},
    "bilinear": {"resize": "bilinear", "pipelined": "false"},
}


def shared():
    return Path(os.environ.get("EDGEMASK_SHARED", ROOT.parent / "shared"))


def position(i, n):
    """Top-left of the photograph in frame i: left to right, bobbing up and down."""
    x = int(round(i * (W - PW) / max(n - 1, 1)))
    y = int(round((H - PH) / 2 + min(50, (H - PH) / 2) * np.sin(i / 7.0)))
    return x, y


def frames(n, photo):
    rng = np.random.default_rng(7)
    wide = (rng.integers(0, 256, size=(H, W * 2, 3), dtype=np.uint8) // 2 + 64).astype(np.uint8)
    wide = np.array(Image.fromarray(wide).resize((W * 2, H), Image.BILINEAR))
    for i in range(n):
        off = (i * 9) % W
        f = wide[:, off : off + W].copy()
        x, y = position(i, n)
        f[y : y + PH, x : x + PW] = photo
        yield f


def make_video(path, n):
    photo = np.array(Image.open(shared() / "testdata/person_400x600.png").convert("RGB").resize((PW, PH), Image.BILINEAR))
    enc = subprocess.Popen(
        [
            "gst-launch-1.0", "-q", "fdsrc", "fd=0", "!",
            f"rawvideoparse", "width=%d" % W, "height=%d" % H, "format=rgb", f"framerate={FPS}/1", "!",
            "videoconvert", "!", "x264enc", "speed-preset=superfast", "bframes=2", "b-adapt=false",
            "key-int-max=60", "bitrate=4000", "!", "video/x-h264,profile=high", "!", "h264parse", "!",
            "mp4mux", "!", "filesink", f"location={path}",
        ],
        stdin=subprocess.PIPE,
    )
    for f in frames(n, photo):
        enc.stdin.write(f.tobytes())
    enc.stdin.close()
    if enc.wait() != 0:
        sys.exit("iou-moving: encoding failed")


def truth(i, n, ref, size):
    """The ground truth of frame i at the mask's resolution, thresholded."""
    full = np.zeros((H, W), dtype=np.uint8)
    x, y = position(i, n)
    full[y : y + PH, x : x + PW] = np.array(Image.fromarray(ref).resize((PW, PH), Image.BILINEAR))
    return np.array(Image.fromarray(full).resize(size, Image.BILINEAR)) > 127


def run_variant(runner, video, out, settings):
    cfg = out / "cfg.toml"
    cfg.write_text(
        f"""[runner]
output_dir = "{out / 'clips'}"
disk_floor_mb = 0
progress = false
[model]
path = "{ROOT / 'models/selfie_segmentation_256x256.onnx'}"
device = "cpu"
threads = 0
resize = "{settings['resize']}"
pipelined = {settings['pipelined']}
[recording]
clip_seconds = 60
[cameras.cam]
source = "file"
path = "{video}"
"""
    )
    r = subprocess.run([runner, "run", str(cfg)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"iou-moving: the runner failed:\n{r.stderr[-2000:]}")
    masks = []
    for tar_path in sorted((out / "clips/cam").glob("*.masks.tar")):
        with tarfile.open(tar_path) as t:
            rows = list(csv.DictReader(io.TextIOWrapper(t.extractfile("frames.csv"))))
            for row in rows:
                png = t.extractfile(f"{int(row['index']):06d}.png").read()
                masks.append((int(row["pts_ns"]), row["fresh"] == "1", np.array(Image.open(io.BytesIO(png)))))
    return masks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runner", default=str(ROOT / "target/release/edgemask"))
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument(
        "--cases",
        default="1280x720:1.0,1920x1080:1.6,1920x1080:0.8",
        help="frame size and the photograph's scale in it, WxH:SCALE, comma-separated",
    )
    ap.add_argument("--json")
    a = ap.parse_args()
    cases = []
    for case in a.cases.split(","):
        size, scale = case.split(":")
        cases.append(measure(a, size, float(scale)))
    result = {"frames": a.frames, "cases": cases}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({c["content"]: {k: v["iou_mean"] for k, v in c["variants"].items()} for c in cases}))


def measure(a, size, scale):
    global W, H, PW, PH
    W, H = map(int, size.split("x"))
    PW, PH = int(400 * scale) // 2 * 2, int(600 * scale) // 2 * 2
    ref = np.array(Image.open(shared() / "testdata/person_400x600.mask.selfie_256x256.png").convert("L"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = tmp / "moving.mp4"
        make_video(video, a.frames)
        results = {}
        for name, settings in VARIANTS.items():
            out = tmp / name.replace(",", "").replace(" ", "-")
            out.mkdir()
            masks = run_variant(a.runner, video, out, settings)
            if len(masks) != a.frames:
                sys.exit(f"iou-moving: {name}: {len(masks)} masks for {a.frames} frames")
            first = masks[0][0]
            ious = []
            for pts, fresh, m in masks:
                i = round((pts - first) * FPS / 1e9)
                t = truth(i, a.frames, ref, (m.shape[1], m.shape[0]))
                p = m > 127
                ious.append(float((p & t).sum() / max((p | t).sum(), 1)))
            results[name] = {
                "settings": settings,
                "frames": len(ious),
                "fresh": sum(1 for _, f, _ in masks if f),
                "iou_mean": round(statistics.fmean(ious), 4),
                "iou_median": round(statistics.median(ious), 4),
                "iou_min": round(min(ious), 4),
            }
    print(f"{W}x{H}, the person at {PW}x{PH}:")
    print(f"{'variant':>22} {'frames':>7} {'fresh':>6} {'IoU mean':>9} {'median':>7} {'min':>7}")
    for name, r in results.items():
        print(f"{name:>22} {r['frames']:>7} {r['fresh']:>6} {r['iou_mean']:>9.4f} {r['iou_median']:>7.4f} {r['iou_min']:>7.4f}")
    return {"content": f"{W}x{H}@{FPS}, the test person at {PW}x{PH} moving over a panning background, H.264 with B-frames",
            "variants": results}


if __name__ == "__main__":
    main()
