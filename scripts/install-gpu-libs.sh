#!/usr/bin/env bash
# Installs the libraries the GPU path opens at run time into one directory (the runner
# unit's EDGEMASK_CUDA_LIBS, /usr/local/lib/edgemask/cuda by default): NVRTC with its
# builtins library, which NVRTC itself dlopens when it compiles, and, where setup.sh
# installed them (GPU hosts), the CUDA and cuDNN libraries of ONNX Runtime's CUDA provider.
#
#   scripts/install-gpu-libs.sh [DEST]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-/usr/local/lib/edgemask/cuda}"
nvrtc="$root/.deps/nvrtc/lib"
[ -e "$nvrtc/libnvrtc.so.12" ] || { echo "no NVRTC in $nvrtc: run EDGEMASK_GPU=1 scripts/setup.sh" >&2; exit 1; }
mkdir -p "$dest"
n=0
for f in "$nvrtc"/libnvrtc.so.12 "$nvrtc"/libnvrtc-builtins.so.*; do
  case "$f" in *.alt.*) continue ;; esac
  [ -e "$f" ] || continue
  cp -L "$f" "$dest/"; n=$((n + 1))
done
ls "$dest"/libnvrtc-builtins.so.* >/dev/null 2>&1 || { echo "no libnvrtc-builtins.so.* beside NVRTC in $nvrtc" >&2; exit 1; }
if [ -d "$root/.deps/cuda/lib" ]; then
  for f in "$root"/.deps/cuda/lib/*; do cp -L "$f" "$dest/"; n=$((n + 1)); done
fi
echo "installed $n libraries into $dest"
