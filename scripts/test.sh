#!/usr/bin/env bash
# The project's test command (README, CI): set-up, formatting, lints (with and without the
# GPU features, so the CUDA code compiles everywhere), then every test of the workspace
# against real GStreamer, real ONNX Runtime and the real models in ../shared.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

EDGEMASK_WITH_GARAGE="${EDGEMASK_WITH_GARAGE:-1}" EDGEMASK_WITH_NVRTC="${EDGEMASK_WITH_NVRTC:-1}" bash scripts/setup.sh
# shellcheck source=/dev/null
source scripts/env.sh

step() { printf '\n=== %s ===\n' "$*"; }

# A one-shot run gains nothing from incremental caches, and they were the larger part of a
# debug target directory; export CARGO_INCREMENTAL=1 to keep them between runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "published figures match their recorded results (scripts/figures.py)"
python3 "$root/scripts/figures.py" --self-test
python3 "$root/scripts/figures.py" --check

step "no module imports one that imports it back (scripts/module-cycles.py)"
python3 "$root/scripts/module-cycles.py" --self-test
python3 "$root/scripts/module-cycles.py"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (default features)"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Every feature combination the README documents: none (above), cuda, tensorrt (which
# implies cuda). Code under `cfg(all(feature = "cuda", not(feature = "tensorrt")))` is
# compiled only by the cuda-only run.
step "cargo clippy (runner with its test-only fault-injection feature)"
cargo clippy -p edgemask --all-targets --locked --features fault-injection -- -D warnings

step "cargo clippy (plugin and runner with the cuda feature)"
cargo clippy -p gst-plugin-unetmask -p edgemask --all-targets --locked \
  --features edgemask/cuda -- -D warnings

step "cargo clippy (plugin and runner with the tensorrt feature, which implies cuda)"
cargo clippy -p gst-plugin-unetmask -p edgemask --all-targets --locked \
  --features edgemask/tensorrt -- -D warnings

step "cargo build (plugin for gst-launch tests)"
cargo build -p gst-plugin-unetmask --locked

step "cargo test"
cargo test --workspace --locked -- --test-threads="${EDGEMASK_TEST_THREADS:-2}"

step "soak, short (scripts/soak.sh: 3 RTSP cameras ending and cut at random, >= 20 reconnections each, uploads with deletion)"
# The debug binaries that cargo test built; before the fault step, which rebuilds the runner.
SOAK_SECONDS=100 SOAK_CAMERAS=3 SOAK_STREAM_S=3 SOAK_CUT_MEAN_S=6 SOAK_WIDTH=640 SOAK_HEIGHT=360 \
  SOAK_BITRATE_KBPS=1500 SOAK_MIN_RESTARTS=20 \
  EDGEMASK_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/edgemask" \
  SYNCD_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/edgemask-syncd" \
  RTSP_SERVE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/examples/rtsp_serve" bash scripts/soak.sh

step "cargo test (the runner under injected faults: a source that hangs, pipelines that cannot stop)"
# Last among the runner's tests: it rebuilds target/debug/edgemask with the test-only feature.
cargo test -p edgemask --locked --features fault-injection --test faults -- --test-threads=1

step "cargo test (the plugin's unit tests with the cuda feature: kernel mirrors, NVRTC compile; no GPU needed)"
LD_LIBRARY_PATH="$root/.deps/nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" EDGEMASK_REQUIRE_NVRTC=1 \
  cargo test -p gst-plugin-unetmask --locked --features cuda --lib

step "cargo test (the element's GPU path: runs on a GPU host, says \"skipped: no GPU\" elsewhere)"
cargo test -p gst-plugin-unetmask --locked --features cuda --test gpu -- --nocapture

step "the GPU host's bundle (scripts/gpu-check.sh): built, under 64 MiB, every library resolved from it alone"
gpu_bundle="$(mktemp -d)"
GPU_CHECK_BENCH=0 bash scripts/gpu-check.sh --bundle "$gpu_bundle/bundle"
env -i PATH=/usr/bin:/bin HOME="$HOME" bash "$gpu_bundle/bundle/gpu-check.sh" --run "$gpu_bundle/bundle" "$gpu_bundle/out"
rm -rf "$gpu_bundle"
