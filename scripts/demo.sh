#!/usr/bin/env bash
# The main job on the bundled default: the unetmask element with the bundled model
# (models/selfie_segmentation_256x256.onnx) on the sample input, writing local output:
#   output/overlay.mp4   the person tinted yellow (H.264)
#   output/masks.mkv     the per-frame masks, lossless (FFV1, GRAY8)
#   output/preview.png   the first frame with its mask overlaid
# Usage: scripts/demo.sh [OUTPUT_DIR]   (EDGEMASK_SAMPLE=/path/to/image-or-video to change the input)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
cargo build --release --locked -p gst-plugin-unetmask
# shellcheck source=/dev/null
source scripts/env.sh
export GST_PLUGIN_PATH="$root/target/release"

out="${1:-output}"
mkdir -p "$out"
model="$root/models/selfie_segmentation_256x256.onnx"
sample="${EDGEMASK_SAMPLE:-$EDGEMASK_SHARED/testdata/person_400x600.png}"
frames=90
if [ -f "$sample" ]; then
  case "$sample" in
    *.png|*.jpg|*.jpeg) src="filesrc location=$sample ! decodebin ! videoconvert ! imagefreeze num-buffers=$frames ! video/x-raw,framerate=30/1" ;;
    *) src="filesrc location=$sample ! decodebin ! videoconvert"; frames="(all)" ;;
  esac
else
  echo "sample $sample not found: using a test pattern (no person in it)" >&2
  src="videotestsrc num-buffers=$frames pattern=ball ! video/x-raw,width=640,height=480,framerate=30/1"
fi

start=$(date +%s%N)
gst-launch-1.0 -q $src ! unetmask model="$model" mode=overlay ! tee name=t \
  t. ! queue ! videoconvert ! x264enc speed-preset=veryfast ! mp4mux ! filesink location="$out/overlay.mp4" \
  t. ! queue ! videoconvert ! pngenc snapshot=true ! filesink location="$out/preview.png"
gst-launch-1.0 -q $src ! unetmask model="$model" mode=mask ! avenc_ffv1 ! matroskamux ! filesink location="$out/masks.mkv"
end=$(date +%s%N)

bytes=$(du -cb "$out"/overlay.mp4 "$out"/masks.mkv "$out"/preview.png | tail -1 | cut -f1)
echo
echo "edgemask demo done"
echo "  overlay video : $out/overlay.mp4"
echo "  masks (FFV1)  : $out/masks.mkv"
echo "  preview       : $out/preview.png"
ms=$(( (end - start) / 1000000 ))
printf '  summary       : frames=%s bytes=%s wall=%d.%03ds (two passes over the input: overlay, masks)\n' \
  "$frames" "$bytes" $((ms / 1000)) $((ms % 1000))
