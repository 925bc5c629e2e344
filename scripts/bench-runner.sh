#!/usr/bin/env bash
# Benchmark of the edgemask runner on this host, with the bundled model:
#  1. one 1080p30 H.264 file as fast as it goes (fps, per-stage time, CPU);
#  2. N loopback RTSP 1080p30 streams in real time (per-camera fps, dropped frames, CPU),
#     for N in $BENCH_CAMERAS (default "1 2 4").
# Usage: scripts/bench-runner.sh            (builds release binaries first)
# Env:   EDGEMASK_BIN / RTSP_SERVE_BIN to use prebuilt binaries; BENCH_SECONDS (default 20)
#        length of the test video and of each RTSP run; BENCH_DEVICE (cpu); BENCH_THREADS (0);
#        BENCH_RESIZE (antialias | bilinear); BENCH_INTERVAL (inference-interval, 1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=/dev/null
source scripts/env.sh
target="${CARGO_TARGET_DIR:-$root/target}"
if [ -z "${EDGEMASK_BIN:-}" ] || [ -z "${RTSP_SERVE_BIN:-}" ]; then
  cargo build --release -p edgemask --bin edgemask --example rtsp_serve
fi
bin="${EDGEMASK_BIN:-$target/release/edgemask}"
serve="${RTSP_SERVE_BIN:-$target/release/examples/rtsp_serve}"
secs="${BENCH_SECONDS:-20}"
device="${BENCH_DEVICE:-cpu}"
threads="${BENCH_THREADS:-0}"
resize="${BENCH_RESIZE:-antialias}"
interval="${BENCH_INTERVAL:-1}"
model="$root/models/selfie_segmentation_256x256.onnx"
work="$(mktemp -d)"
server_pid=""; pid=""
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

echo "host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); model $(basename "$model") on $device, resize $resize, inference-interval $interval; load average $(cut -d' ' -f1-3 /proc/loadavg)"
frames=$((secs * 30))
echo "making a ${secs} s 1080p30 H.264 video of the test person ..."
gst-launch-1.0 -q filesrc location="$EDGEMASK_SHARED/testdata/person_400x600.png" ! pngdec ! \
  imagefreeze num-buffers="$frames" ! videoscale ! videoconvert ! \
  video/x-raw,format=I420,width=1920,height=1080,framerate=30/1 ! \
  x264enc speed-preset=ultrafast key-int-max=30 ! h264parse ! mp4mux ! filesink location="$work/in.mp4"

config_head() {
  cat <<EOF
[runner]
output_dir = "$work/out-$1"
disk_floor_mb = 0
progress = false
metrics_listen = "127.0.0.1:$2"
[model]
path = "$model"
device = "$device"
threads = $threads
resize = "$resize"
inference_interval = $interval
[recording]
clip_seconds = 10
EOF
}

stats_summary() { # log file → mean per-stage times from the element's stats messages
  python3 - "$1" <<'EOF'
import re, sys
vals = {"preprocess_ms": [], "inference_ms": [], "postprocess_ms": []}
for line in open(sys.argv[1], errors="replace"):
    if "unetmask stats" not in line:
        continue
    for k in vals:
        m = re.search(k + r"=([0-9.]+)", line)
        if m and float(m.group(1)) > 0:
            vals[k].append(float(m.group(1)))
print("  per frame: " + ", ".join(f"{k.replace('_ms','')} {sum(v)/len(v):.2f} ms" for k, v in vals.items() if v))
EOF
}

echo
echo "== 1. file: 1080p30 H.264, ${frames} frames, as fast as possible =="
config_head file 0 | sed '/metrics_listen/d' > "$work/file.toml"
printf '[cameras.file]\nsource = "file"\npath = "%s"\n' "$work/in.mp4" >> "$work/file.toml"
/usr/bin/time -f '%e %U %S' -o "$work/time" env EDGEMASK_LOG=edgemask=debug,warn "$bin" run "$work/file.toml" 2> "$work/file.log"
read -r real user sys < "$work/time"
got=$(grep -o 'camera summary.*frames=[0-9]*' "$work/file.log" | grep -o 'frames=[0-9]*' | cut -d= -f2)
python3 -c "r,u,s,n=$real,$user,$sys,$got; print(f'  {n} frames in {r:.1f} s: {n/r:.1f} fps (start-up included), CPU {100*(u+s)/r:.0f} % of one core ({(u+s)/r/$(nproc)*100:.0f} % of the host)')"
stats_summary "$work/file.log"

echo
echo "== 2. RTSP: N loopback 1080p30 streams in real time, ${secs} s each =="
for n in ${BENCH_CAMERAS:-1 2 4}; do
  port=$((20000 + RANDOM % 20000)); mport=$((port + 1))
  "$serve" "$work/in.mp4" "$port" "$n" > "$work/serve.log" 2>&1 &
  server_pid=$!
  sleep 1
  config_head "rtsp$n" "$mport" > "$work/rtsp$n.toml"
  for i in $(seq 0 $((n - 1))); do
    printf '[cameras.cam%d]\nsource = "rtsp"\nurl = "rtsp://127.0.0.1:%d/cam%d"\n' "$i" "$port" "$i" >> "$work/rtsp$n.toml"
  done
  EDGEMASK_LOG=edgemask=debug,warn "$bin" run "$work/rtsp$n.toml" 2> "$work/rtsp$n.log" &
  pid=$!
  scrape() { curl -s "http://127.0.0.1:$mport/metrics" | awk -v c="$1" '$1 ~ "^edgemask_frames_total\\{camera=\""c"\"\\}" {print $2}'; }
  scrape_qos() { curl -s "http://127.0.0.1:$mport/metrics" | awk '$1 ~ "^edgemask_dropped_frames_total" {s += $2} END {print s + 0}'; }
  cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
  sleep 5 # connect + warm up
  t0=$(date +%s.%N); c0=$(cpu)
  declare -A f0=() s0=()
  # Each camera's count is taken with its own timestamp, so the scrapes' own time does not
  # show up as drops.
  for i in $(seq 0 $((n - 1))); do s0[$i]=$(date +%s.%N); f0[$i]=$(scrape "cam$i"); f0[$i]=${f0[$i]:-0}; done
  q0=$(scrape_qos)
  window=$((secs - 8))
  sleep "$window"
  t1=$(date +%s.%N); c1=$(cpu)
  line="  N=$n:"
  total_drop=0; total_got=0; total_want=0
  for i in $(seq 0 $((n - 1))); do
    s1=$(date +%s.%N); f1=$(scrape "cam$i"); f1=${f1:-0}
    read -r fps drop < <(python3 -c "d=$s1-${s0[$i]}; got=$f1-${f0[$i]}; print(f'{got/d:.1f}', max(0, round(30*d-got)))")
    line="$line cam$i ${fps} fps (dropped ~${drop});"
    read -r g w < <(python3 -c "print(round($f1-${f0[$i]}), round(30*($s1-${s0[$i]})))")
    total_got=$((total_got + g)); total_want=$((total_want + w))
    total_drop=$((total_drop + drop))
  done
  q1=$(scrape_qos)
  hz=$(getconf CLK_TCK)
  cpu_pct=$(python3 -c "print(f'{100*($c1-$c0)/$hz/($t1-$t0):.0f}')")
  echo "$line CPU ${cpu_pct} % of one core; dropped total ~${total_drop} over ${window} s; masks skipped by QoS (late frames) $((q1 - q0))"
  echo "    all cameras: ${total_got} frames of ${total_want} sent at 30 fps in the window (the frame counter moves once a second: +-30 frames per camera)"
  stats_summary "$work/rtsp$n.log"
  kill -TERM "$pid"
  # A clean stop finalises every clip; a runner still there after 30 s is reported.
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then echo "  runner did not stop within 30 s of SIGTERM" >&2; kill -KILL "$pid"; fi
  wait "$pid" || true; pid=""
  kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; server_pid=""
done
