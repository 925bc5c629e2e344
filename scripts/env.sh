# Environment for running the project from a checkout: source it (`source scripts/env.sh`).
# Points GStreamer at the plugin cargo built (target/, or $CARGO_TARGET_DIR) and ONNX Runtime
# at .deps/ (setup.sh).
_edgemask_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_edgemask_target="${CARGO_TARGET_DIR:-$_edgemask_root/target}"
export GST_PLUGIN_PATH="$_edgemask_target/release:$_edgemask_target/debug${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
if [ -z "${ORT_DYLIB_PATH:-}" ] && [ -e "$_edgemask_root/.deps/onnxruntime/lib/libonnxruntime.so" ]; then
  export ORT_DYLIB_PATH="$_edgemask_root/.deps/onnxruntime/lib/libonnxruntime.so"
fi
export EDGEMASK_PYTHON="$_edgemask_root/.deps/venv/bin/python"
export EDGEMASK_SHARED="${EDGEMASK_SHARED:-$(cd "$_edgemask_root/.." && pwd)/shared}"
if [ -x "${EDGEMASK_CACHE:-$HOME/.cache/edgemask}/garage/bin/garage" ]; then
  export EDGEMASK_GARAGE="${EDGEMASK_CACHE:-$HOME/.cache/edgemask}/garage/bin/garage"
fi
unset _edgemask_root _edgemask_target
