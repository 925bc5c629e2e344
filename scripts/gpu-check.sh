#!/usr/bin/env bash
# The GPU path's first run, prepared: build here, copy once, run there.
#
#   scripts/gpu-check.sh --bundle DIR            here (Debian 12, the toolchain, no GPU needed)
#   scripts/gpu-check.sh --bundle-ort WHEEL DIR  here: ONNX Runtime's CUDA provider, in parts
#   DIR/gpu-check.sh --run DIR OUT               on the GPU host, with nothing else installed
#
# The GPU host: x86-64, an NVIDIA GPU (driver 580, CUDA 13), no network, no Rust toolchain,
# no GStreamer; a Python with NVIDIA's CUDA 13 wheels. At most 64 MiB may be copied per run
# and a run may last 10 minutes.
#
# Stage 1 (this bundle) needs no ONNX Runtime CUDA provider: the kernels compiled by the
# host's NVRTC, launched through cudarc on the device and held to their CPU mirrors
# (every kernel, five formats at 1921x1081, 10,000 launches without losing device memory).
# Stage 2, the element's GPU tests and the GPU bench, needs ONNX Runtime's CUDA provider
# (284 MB): `--bundle-ort` packs the onnxruntime-gpu wheel's libraries (built for CUDA 13,
# as the host) into xz-compressed parts of at most 60 MiB with a SHA256SUMS, to be copied
# into DIR/ort-gpu-parts/ over successive runs; `--run` joins them into DIR/ort-gpu/ once
# every part is there and checks out, then runs stage 2 (and says which parts are missing
# until then).
#
# --bundle: the cuda-featured test binaries and bench (stripped), the GStreamer libraries
# and plugins they load (from this machine's Debian packages), the models and test data,
# and this script; it prints the size and fails above 64 MiB. --run: every binary and
# library of the bundle must resolve with the bundle's libraries alone (plus the host's C
# and C++ runtime); then the checks run, each under a time limit, and OUT gets report.md
# and report.json (device, driver, each check's result, the bench's table when it ran).
set -euo pipefail

LIMIT=$((64 * 1024 * 1024))
# What every Linux host has and the bundle must not carry (its own copies would clash).
BASE_LIBS='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libutil|libstdc\+\+|libgcc_s)\.'

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

# The shared libraries `ldd` resolves for ELF files "$@", outside the base set.
closure() {
  ldd "$@" 2>/dev/null | awk '/=> \//{print $1, $3}' | grep -Ev "$BASE_LIBS" | sort -u | awk '{print $2}'
}

bundle() {
  local dir=$1 root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  cd "$root"
  # shellcheck source=/dev/null
  source scripts/env.sh
  rm -rf "$dir"
  mkdir -p "$dir"/{bin,lib,gst,shared}
  local exes
  # GPU_CHECK_BENCH=0 leaves the bench out (the test command's check of the bundle: the
  # bench's release build would add minutes and no library).
  local bench=${GPU_CHECK_BENCH:-1}
  exes=$( {
    cargo test -p gst-plugin-unetmask --features cuda --no-run --locked --message-format=json
    if [ "$bench" = 1 ]; then
      cargo bench -p gst-plugin-unetmask --features cuda --bench element --no-run --locked --message-format=json
    fi
  } 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        t = m["target"]
        kind = "unit" if set(t["kind"]) & {"lib", "rlib", "cdylib"} else t["name"]
        print(kind, m["executable"])
')
  echo "$exes" | while read -r kind exe; do
    case $kind in
      unit) name=unit-tests ;;
      gpu) name=gpu-tests ;;
      element) name=element-bench ;;
      *) continue ;;
    esac
    cp "$exe" "$dir/bin/$name"
    strip "$dir/bin/$name"
  done
  for need in unit-tests gpu-tests $([ "$bench" = 1 ] && echo element-bench); do
    [ -x "$dir/bin/$need" ] || { echo "gpu-check: $need was not built" >&2; exit 1; }
  done
  local gstdir=/usr/lib/x86_64-linux-gnu/gstreamer-1.0
  # The elements the tests build (`filesrc ! decodebin ! videoconvert ! videoscale !
  # appsink`, `videotestsrc ! … ! fakesink`) and the registry's scanner.
  for p in coreelements app playback png videoconvertscale videotestsrc typefindfunctions; do
    cp "$gstdir/libgst$p.so" "$dir/gst/"
  done
  cp /usr/lib/x86_64-linux-gnu/gstreamer1.0/gstreamer-1.0/gst-plugin-scanner "$dir/gst/"
  # ldd lists each file's whole closure, dependencies' dependencies included.
  # shellcheck disable=SC2046
  cp -L $(closure "$dir"/bin/* "$dir"/gst/*) "$dir/lib/"
  # The shared models and test data as the tests find them (SOURCES.md marks the folder).
  mkdir -p "$dir/shared/models" "$dir/shared/testdata"
  cp "$EDGEMASK_SHARED"/models/*.onnx "$EDGEMASK_SHARED"/models/SOURCES.md "$dir/shared/models/"
  cp "$EDGEMASK_SHARED"/testdata/*.png "$dir/shared/testdata/"
  cp "$root/scripts/gpu-check.sh" "$dir/gpu-check.sh"
  chmod +x "$dir/gpu-check.sh"
  local size
  size=$(du -sb "$dir" | awk '{print $1}')
  printf 'gpu-check: bundle %s: %d bytes (%.1f MiB of %d MiB): %d binaries, %d libraries, %d GStreamer plugins\n' \
    "$dir" "$size" "$(awk -v s="$size" 'BEGIN{print s/1048576}')" $((LIMIT / 1048576)) \
    "$(ls "$dir/bin" | wc -l)" "$(ls "$dir/lib" | wc -l)" "$(ls "$dir"/gst/*.so | wc -l)"
  if [ "$size" -gt "$LIMIT" ]; then
    echo "gpu-check: the bundle is over the 64 MiB a run may copy" >&2
    exit 1
  fi
}

bundle_ort() {
  local wheel=$1 dir=$2 tmp
  tmp=$(mktemp -d)
  rm -rf "$dir"
  mkdir -p "$dir"
  python3 -m zipfile -e "$wheel" "$tmp/wheel"
  local capi="$tmp/wheel/onnxruntime/capi"
  [ -e "$capi/libonnxruntime_providers_cuda.so" ] || {
    echo "gpu-check: $wheel holds no CUDA provider (an onnxruntime-gpu wheel is needed)" >&2
    exit 1
  }
  local lib
  lib=$(cd "$capi" && ls libonnxruntime.so.1.*)
  ln -s "$lib" "$capi/libonnxruntime.so"
  tar -C "$capi" -cf - libonnxruntime.so "$lib" libonnxruntime_providers_shared.so \
    libonnxruntime_providers_cuda.so | xz -T0 -6 | split -b $((60 * 1024 * 1024)) -d -a 2 - "$dir/part-"
  (cd "$dir" && sha256sum part-* >SHA256SUMS)
  rm -rf "$tmp"
  echo "gpu-check: $(ls "$dir"/part-* | wc -l) parts in $dir ($(du -sh "$dir" | cut -f1)); copy them into" \
    "BUNDLE/ort-gpu-parts/ (each at most 60 MiB), one or more runs at a time"
}

# DIR/ort-gpu from the parts in DIR/ort-gpu-parts, once all are there: prints what it did.
join_ort() {
  local dir=$1 parts="$1/ort-gpu-parts"
  [ -e "$dir/ort-gpu/libonnxruntime.so" ] && { echo "present"; return 0; }
  [ -e "$parts/SHA256SUMS" ] || { echo "no parts (run --bundle-ort)"; return 0; }
  local have want
  want=$(wc -l <"$parts/SHA256SUMS")
  have=$(cd "$parts" && ls part-* 2>/dev/null | wc -l)
  if [ "$have" -lt "$want" ]; then
    echo "$have of $want parts here: copy the others into $parts"
    return 0
  fi
  if ! (cd "$parts" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1); then
    echo "parts present but a checksum differs: copy them again"
    return 0
  fi
  mkdir -p "$dir/ort-gpu"
  cat "$parts"/part-* | xz -dc | tar -C "$dir/ort-gpu" -xf -
  echo "joined $want parts"
}

# The host Python's NVIDIA wheel libraries (CUDA 13: nvidia/cu13/lib; CUDA 12: nvidia/*/lib).
host_cuda_libs() {
  local py
  for py in python3 python; do
    command -v "$py" >/dev/null || continue
    "$py" - <<'EOF' 2>/dev/null && return 0
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)})
print(":".join(dirs))
EOF
  done
  return 0
}

run() {
  local dir out
  dir=$(cd "$1" && pwd)
  mkdir -p "$2"
  out=$(cd "$2" && pwd)
  local cuda_libs nvrtc=""
  cuda_libs=$(host_cuda_libs)
  # cudarc looks for libnvrtc.so first: point it at the host's NVRTC, whatever its major.
  mkdir -p "$out/lib"
  nvrtc=$(IFS=:; for d in $cuda_libs; do ls "$d"/libnvrtc.so.* 2>/dev/null; done | { grep -v builtins || true; } | sort -V | tail -1)
  [ -n "$nvrtc" ] && ln -sf "$nvrtc" "$out/lib/libnvrtc.so"
  export LD_LIBRARY_PATH="$dir/lib:$out/lib${cuda_libs:+:$cuda_libs}"
  export GST_PLUGIN_SYSTEM_PATH="$dir/gst" GST_PLUGIN_PATH="" GST_PLUGIN_SCANNER="$dir/gst/gst-plugin-scanner"
  export GST_REGISTRY="$out/registry.bin" EDGEMASK_SHARED="$dir/shared" EDGEMASK_CUDA_LIBS="$out/lib"
  local ort
  ort=$(join_ort "$dir")
  if [ -e "$dir/ort-gpu/libonnxruntime.so" ]; then
    export ORT_DYLIB_PATH="$dir/ort-gpu/libonnxruntime.so" LD_LIBRARY_PATH="$dir/ort-gpu:$LD_LIBRARY_PATH"
  fi
  local report="$out/report.md" json="$out/report.json"
  : >"$report"
  say() { echo "$*" | tee -a "$report"; }
  say "# gpu-check $(date -u +%FT%TZ) on $(uname -n)"
  # 1. Everything in the bundle resolves from the bundle (and the host's C/C++ runtime).
  local missing
  # Not found, or found outside the bundle, the host's CUDA wheels and its driver other than
  # the C/C++ runtime (a system GStreamer here would hide a library the bundle lacks there).
  missing=$(ldd "$dir"/bin/* "$dir"/gst/*.so "$dir"/gst/gst-plugin-scanner "$dir"/lib/*.so* \
    $(ls "$dir"/ort-gpu/*.so* 2>/dev/null) 2>&1 |
    awk -v ok="$dir/:$out/lib/:$cuda_libs" '/not found/ {print $1 " not found"; next}
      /=> \// { n = split(ok, p, ":"); for (i = 1; i <= n; i++) if (p[i] != "" && index($3, p[i]) == 1) next;
                print $1 " from " $3 }' | grep -Ev "$BASE_LIBS|^libcuda\.so" | sort -u || true)
  if [ -n "$missing" ]; then
    say "libraries: NOT resolved from the bundle:"
    say "$missing"
  else
    say "libraries: every binary, plugin and library of the bundle resolves (LD_LIBRARY_PATH=$dir/lib)"
  fi
  say "NVRTC: ${nvrtc:-none found in the Python wheels of this host (nvidia-cuda-nvrtc)}"
  say "ONNX Runtime CUDA provider: $ort"
  # 2. The GPU.
  local gpu=""
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
    say "GPU: $gpu"
  else
    say "GPU: no GPU (nvidia-smi finds none); the checks below say skipped"
  fi
  # 3. The checks, each bounded so that the run ends inside its 10 minutes.
  local results=()
  check() {
    local name=$1 limit=$2
    shift 2
    local log="$out/$name.log" rc=0
    timeout "$limit" "$@" >"$log" 2>&1 || rc=$?
    local summary
    summary=$(grep -E '^test result:|skipped: no GPU|^\| ' "$log" | tail -3 | tr '\n' ' ')
    say "- $name: exit $rc; $summary(log: $name.log)"
    results+=("{\"check\":\"$name\",\"exit\":$rc}")
  }
  cd "$out"
  # The kernels on the device against their CPU mirrors, and NVRTC compiling them. Not
  # here: the host emulation (needs a C++ compiler) and the install-directory test (needs
  # the checkout).
  check kernels 240 env EDGEMASK_REQUIRE_NVRTC="$([ -n "$nvrtc" ] && echo 1 || echo 0)" \
    "$dir/bin/unit-tests" --test-threads=1 --nocapture \
    gpu::launch gpu::mirror gpu::nvrtc::tests::a_failure_is_not_kept \
    gpu::nvrtc::tests::kernels_compile_to_cubin
  if [ -n "${ORT_DYLIB_PATH:-}" ] && [ -x "$dir/bin/element-bench" ]; then
    check element 240 "$dir/bin/gpu-tests" --test-threads=1 --nocapture
    [ -n "$gpu" ] && check bench 120 env BENCH_DEVICE=cuda:0 BENCH_UNET=0 BENCH_STREAMS=1,2,4,8,16,32 \
      BENCH_JSON="$out/bench.json" "$dir/bin/element-bench" --bench
  else
    say "- element, bench (stage 2): not run: no ONNX Runtime CUDA provider in $dir/ort-gpu ($ort)"
  fi
  printf '{"host":"%s","gpu":"%s","nvrtc":"%s","libraries_missing":%s,"checks":[%s]}\n' \
    "$(uname -n)" "$gpu" "$nvrtc" "$([ -n "$missing" ] && echo true || echo false)" \
    "$(IFS=,; echo "${results[*]}")" >"$json"
  say "report: $report, $json"
  [ -z "$missing" ]
}

case ${1:-} in
  --bundle) [ $# -eq 2 ] || usage; bundle "$2" ;;
  --bundle-ort) [ $# -eq 3 ] || usage; bundle_ort "$2" "$3" ;;
  --run) [ $# -eq 3 ] || usage; run "$2" "$3" ;;
  *) usage ;;
esac
