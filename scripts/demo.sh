#!/usr/bin/env bash
# The main job on the bundled default, end to end:
#   sample video (made once from the sample photograph) → the `edgemask` runner with the
#   bundled model (configs/demo.toml) → clips, lossless masks and manifests in
#   output/clips/ → `edgemask-syncd` (configs/demo-syncd.toml) → the embedded file://
#   destination output/uploaded/ — plus output/preview.png (a frame with its mask overlaid)
#   and a one-line summary.
# Usage: scripts/demo.sh [OUTPUT_DIR]     (default: output/ in the checkout)
#   EDGEMASK_SAMPLE=/path/to/video.mp4 runs it on your own video instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
echo "building (release) the plugin, the runner and the sync daemon…" >&2
cargo build --release --locked -p gst-plugin-unetmask -p edgemask -p edgemask-syncd
# shellcheck source=/dev/null
source scripts/env.sh
bin="${CARGO_TARGET_DIR:-$root/target}/release"

out="$(mkdir -p "${1:-output}" && cd "${1:-output}" && pwd)"
clips="$out/clips"
uploaded="$out/uploaded"
rm -rf "$clips" "$uploaded" "$out/syncd-journal.sqlite"* "$out/preview.png"
mkdir -p "$clips" "$uploaded"

# 1. The sample: the photograph of a person, 4 s, then 2 s of an empty scene (H.264).
sample="${EDGEMASK_SAMPLE:-$out/sample.mp4}"
if [ ! -f "$sample" ]; then
  photo="$EDGEMASK_SHARED/testdata/person_400x600.png"
  [ -f "$photo" ] || { echo "sample photograph $photo not found: set EDGEMASK_SHARED or EDGEMASK_SAMPLE" >&2; exit 1; }
  echo "making the sample video $sample from $photo" >&2
  caps="video/x-raw,format=I420,width=400,height=600,framerate=30/1"
  gst-launch-1.0 -q concat name=c ! videoconvert ! x264enc speed-preset=fast key-int-max=30 bframes=0 ! h264parse ! \
    mp4mux ! filesink location="$sample.part" \
    filesrc location="$photo" ! decodebin ! videoconvert ! imagefreeze num-buffers=120 ! "$caps" ! c. \
    videotestsrc num-buffers=60 pattern=solid-color foreground-color=0xff707070 ! "$caps" ! c.
  mv "$sample.part" "$sample"
fi

# 2. The upload daemon, watching the output as the runner writes it.
export EDGEMASK_SYNCD__WATCH="[\"$clips\"]"
export EDGEMASK_SYNCD__DESTINATION="file://$uploaded"
export EDGEMASK_SYNCD__JOURNAL="$out/syncd-journal.sqlite"
"$bin/edgemask-syncd" --config configs/demo-syncd.toml >"$out/syncd.log" 2>&1 &
syncd_pid=$!
trap 'kill "$syncd_pid" 2>/dev/null || true' EXIT

# 3. The runner on the sample (progress bar on a terminal).
export EDGEMASK__RUNNER__OUTPUT_DIR="$clips"
export EDGEMASK__CAMERAS__FRONT__PATH="$sample"
start=$(date +%s%N)
"$bin/edgemask" run configs/demo.toml
end=$(date +%s%N)

# 4. Stop the daemon (SIGTERM: it finishes what is in flight), then drain the rest.
kill -TERM "$syncd_pid"
wait "$syncd_pid" || true
trap - EXIT
"$bin/edgemask-syncd" --config configs/demo-syncd.toml --once >>"$out/syncd.log" 2>&1 || {
  echo "edgemask-syncd --once did not upload everything; see $out/syncd.log" >&2
  exit 1
}

# 5. The preview: the first frame of the first clip with its mask overlaid.
first=$(find "$clips" -name '*.mp4' -not -name '.*' | sort | head -1)
gst-launch-1.0 -q filesrc location="$first" ! decodebin ! videoconvert ! \
  unetmask model="$root/models/selfie_segmentation_256x256.onnx" mode=overlay ! videoconvert ! \
  pngenc snapshot=true ! filesink location="$out/preview.png"
[ -s "$out/preview.png" ] || { echo "the preview picture could not be made from $first" >&2; exit 1; }

# 6. Where everything is, and the one-line summary from the manifests.
"$EDGEMASK_PYTHON" - "$clips" "$uploaded" "$(( (end - start) / 1000000 ))" <<'PY'
import json, os, sys
clips, uploaded, ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
manifests = sorted(os.path.join(d, f) for d, _, fs in os.walk(clips) for f in fs
                   if f.endswith(".manifest.json") and not f.startswith("."))
frames = sum(json.load(open(m))["frame_count"] for m in manifests)
size = lambda top: sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(top) for f in fs)
objects = sum(len(fs) for _, _, fs in os.walk(uploaded))
local = sum(1 for d, _, fs in os.walk(clips) for f in fs if not f.startswith("."))
covs = [c for mf in manifests for c in json.load(open(mf)).get("coverage_per_second", [])]
print()
print("edgemask demo done")
print(f"  clips + masks  : {clips}/front/  (*.mp4 raw video, *.masks.tar lossless PNG masks)")
print(f"  manifests      : {clips}/front/*.manifest.json")
print(f"  uploaded       : {uploaded}/  ({objects} objects for {local} local files)")
print(f"  preview        : {os.path.join(os.path.dirname(clips), 'preview.png')}")
print(f"  summary        : frames={frames} fps={frames / max(ms, 1) * 1000:.1f} clips={len(manifests)} "
      f"bytes={size(clips)} uploaded={size(uploaded)} "
      f"person_coverage_max={max(covs, default=0):.2f} min={min(covs, default=0):.2f}")
if objects != local:
    sys.exit("not every local file was uploaded")
PY
