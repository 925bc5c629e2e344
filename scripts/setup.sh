#!/usr/bin/env bash
# edgemask set-up for a fresh Debian 12 machine. Idempotent: a second run only checks.
#
#   scripts/setup.sh            GStreamer 1.22 + ONNX Runtime 1.31.1 (CPU) + test tooling
#   EDGEMASK_GPU=1 scripts/setup.sh   onnxruntime-gpu, its CUDA/cuDNN wheels and NVRTC instead
#                               (auto when nvidia-smi works)
#   EDGEMASK_WITH_GARAGE=1      also builds the Garage S3 server used by the syncd tests
#   EDGEMASK_WITH_NVRTC=1       also installs NVRTC (nvidia-cuda-nvrtc-cu12 wheel): the tests
#                               compile the GPU kernels with it (no GPU needed)
#
# Everything project-local lands in .deps/ (git-ignored):
#   .deps/onnxruntime/lib/libonnxruntime.so   the ONNX Runtime library the element loads
#   .deps/venv/                               Python with onnxruntime, onnx, numpy, Pillow
#                                             (test fixtures and independent references)
#   .deps/nvrtc/lib/libnvrtc.so.12            NVRTC, on GPU hosts or with EDGEMASK_WITH_NVRTC=1
#   .deps/cuda/lib/                           GPU hosts: the CUDA 13 / cuDNN 9 libraries of
#                                             onnxruntime-gpu's CUDA provider
set -euo pipefail

ORT_VERSION=1.31.1
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="$root/.deps"
log() { printf '[setup] %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------
apt_packages=(
  pkg-config build-essential python3-venv
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  gstreamer1.0-rtsp libgstrtspserver-1.0-dev
)
# Test tooling (with EDGEMASK_WITH_GARAGE=1, as scripts/test.sh sets): systemd-analyze, for
# the deployment test that verifies the units in configs/systemd/.
if [ "${EDGEMASK_WITH_GARAGE:-0}" = 1 ]; then
  apt_packages+=(systemd)
fi
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

# --- ONNX Runtime from the PyPI wheel ----------------------------------------------------
gpu="${EDGEMASK_GPU:-auto}"
if [ "$gpu" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=1; else gpu=0; fi
fi
wheel=onnxruntime
[ "$gpu" = 1 ] && wheel=onnxruntime-gpu

if [ ! -x "$deps/venv/bin/python" ]; then
  log "creating $deps/venv"
  python3 -m venv "$deps/venv"
fi
py="$deps/venv/bin/python"
have="$("$py" -c 'import importlib.metadata as m
for d in ("onnxruntime-gpu","onnxruntime"):
    try: print(d, m.version(d)); break
    except Exception: pass' 2>/dev/null || true)"
if [ "$have" != "$wheel $ORT_VERSION" ] || ! "$py" -c 'import onnx, numpy, PIL' 2>/dev/null; then
  log "installing $wheel==$ORT_VERSION (+ onnx, numpy, Pillow for test fixtures)"
  if [ -n "$have" ] && [ "${have%% *}" != "$wheel" ]; then "$py" -m pip uninstall -q -y "${have%% *}"; fi
  "$py" -m pip install -q --disable-pip-version-check "$wheel==$ORT_VERSION" 'onnx>=1.17' 'numpy>=1.26' 'Pillow>=10'
fi
if [ "$gpu" = 1 ]; then
  # onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9: their runtime libraries as wheels
  # (the wheel's own [cuda,cudnn] extras, plus cuBLAS), linked into .deps/cuda/lib, where the
  # element preloads them from (no LD_LIBRARY_PATH needed).
  if ! "$py" -c 'import importlib.metadata as m
for d in ("nvidia-cudnn-cu13", "nvidia-cuda-runtime", "nvidia-cublas"): m.version(d)' 2>/dev/null; then
    log "installing the CUDA 13 / cuDNN 9 runtime wheels for onnxruntime-gpu"
    "$py" -m pip install -q --disable-pip-version-check "onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION" 'nvidia-cublas~=13.0'
  fi
  nvidia="$("$py" -c 'import nvidia; print(list(nvidia.__path__)[0])')"
  mkdir -p "$deps/cuda/lib"
  find "$nvidia" -path '*/lib/*' -name 'lib*.so*' -exec ln -sf {} "$deps/cuda/lib/" \;
  log "CUDA runtime for ONNX Runtime: $deps/cuda/lib"
fi
capi="$("$py" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')"
mkdir -p "$deps/onnxruntime/lib"
for f in "$capi"/libonnxruntime*.so*; do
  ln -sf "$f" "$deps/onnxruntime/lib/$(basename "$f")"
done
ln -sf "libonnxruntime.so.$ORT_VERSION" "$deps/onnxruntime/lib/libonnxruntime.so"
log "ONNX Runtime $ORT_VERSION ($wheel): $deps/onnxruntime/lib/libonnxruntime.so"

# --- NVRTC (CUDA's run-time compiler): the element's GPU kernels on GPU hosts, and the -----
# --- kernel tests everywhere (EDGEMASK_WITH_NVRTC=1) ---------------------------------------
if [ "${EDGEMASK_WITH_NVRTC:-0}" = 1 ] || [ "$gpu" = 1 ]; then
  if ! "$py" -c 'import importlib.metadata as m, sys; sys.exit(not m.version("nvidia-cuda-nvrtc-cu12").startswith("12.8."))' 2>/dev/null; then
    log "installing NVRTC 12.8 (nvidia-cuda-nvrtc-cu12 wheel)"
    "$py" -m pip install -q --disable-pip-version-check 'nvidia-cuda-nvrtc-cu12==12.8.*'
  fi
  nvrtc="$("$py" -c 'import nvidia.cuda_nvrtc, os; print(os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib"))')"
  mkdir -p "$deps/nvrtc/lib"
  for f in "$nvrtc"/libnvrtc*.so*; do
    ln -sf "$f" "$deps/nvrtc/lib/$(basename "$f")"
  done
  log "NVRTC: $deps/nvrtc/lib/libnvrtc.so.12"
fi

# --- Garage (S3-compatible server for the syncd tests), cached ---------------------------
if [ "${EDGEMASK_WITH_GARAGE:-0}" = 1 ]; then
  garage_root="${EDGEMASK_CACHE:-$HOME/.cache/edgemask}/garage"
  if [ ! -x "$garage_root/bin/garage" ]; then
    log "building Garage into $garage_root (about 12 minutes on 2 cores, once)"
    cargo install garage@2.5.0 --locked --root "$garage_root" --quiet
  else
    log "Garage present: $garage_root/bin/garage"
  fi
fi
log "done"
