#!/usr/bin/env bash
# Soak of the edgemask runner with its upload daemon, the way a camera fleet lives:
# N loopback RTSP cameras (moving H.264 with B-frames and 2 s GOPs) whose streams end every
# SOAK_STREAM_S seconds and are also cut at random, the runner recording them and
# edgemask-syncd uploading every clip to a file:// store and deleting it. The runner's and
# the daemon's RSS, open files and threads and every camera's counters are sampled; at the
# end, a table, a JSON result and a pass/fail verdict (exit 1 on fail):
#   - every camera still flowing in the last minute, none silent for good;
#   - frames sent by the server = frames received by the runner = frames in the uploaded
#     clips, per camera, exactly;
#   - every clip uploaded and deleted locally; the runner exits 0 at SIGTERM, nothing left
#     behind, no GStreamer-CRITICAL;
#   - RSS, open files and threads do not grow (last third against the first, after warm-up);
#   - at least SOAK_MIN_RESTARTS reconnections per camera.
#
# Usage: scripts/soak.sh                     (30 min, 3 cameras at 1080p, release builds)
# Env:   SOAK_SECONDS (1800), SOAK_CAMERAS (3), SOAK_STREAM_S (24: each stream's length),
#        SOAK_CUT_MEAN_S (40: mean time between random cuts of a camera; 0 = none),
#        SOAK_WIDTH x SOAK_HEIGHT (1920x1080), SOAK_BITRATE_KBPS (6000), SOAK_MIN_RESTARTS (0),
#        SOAK_SAMPLE_S (5), SOAK_JSON (write the result there), SOAK_KEEP (keep the work dir);
#        EDGEMASK_BIN, SYNCD_BIN, RTSP_SERVE_BIN: prebuilt binaries (else a release build).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=/dev/null
source scripts/env.sh
target="${CARGO_TARGET_DIR:-$root/target}"
if [ -z "${EDGEMASK_BIN:-}" ] || [ -z "${SYNCD_BIN:-}" ] || [ -z "${RTSP_SERVE_BIN:-}" ]; then
  cargo build --release --locked -p edgemask -p edgemask-syncd --bin edgemask --bin edgemask-syncd --example rtsp_serve
fi
runner_bin="${EDGEMASK_BIN:-$target/release/edgemask}"
syncd_bin="${SYNCD_BIN:-$target/release/edgemask-syncd}"
serve_bin="${RTSP_SERVE_BIN:-$target/release/examples/rtsp_serve}"
secs="${SOAK_SECONDS:-1800}"
cams="${SOAK_CAMERAS:-3}"
stream_s="${SOAK_STREAM_S:-24}"
cut_mean="${SOAK_CUT_MEAN_S:-40}"
width="${SOAK_WIDTH:-1920}"
height="${SOAK_HEIGHT:-1080}"
kbps="${SOAK_BITRATE_KBPS:-6000}"
sample_s="${SOAK_SAMPLE_S:-5}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "${SOAK_KEEP:-}" ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "soak: ${cams} camera(s), ${width}x${height}@30 H.264 ${kbps} kbit/s with B-frames, streams of ${stream_s} s, random cuts every ~${cut_mean} s, ${secs} s; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
frames=$((stream_s * 30))
# A moving scene (the SMPTE bars pan, the ball moves over them): real decode work.
gst-launch-1.0 -q videotestsrc pattern=smpte horizontal-speed=3 num-buffers="$frames" ! \
  "video/x-raw,width=$width,height=$height,framerate=30/1" ! \
  x264enc speed-preset=ultrafast bframes=2 b-adapt=false key-int-max=60 bitrate="$kbps" ! \
  video/x-h264,profile=main ! h264parse ! mp4mux ! filesink location="$work/stream.mp4"

port=$(free_port)
metrics_port=$(free_port)
RTSP_SERVE_CUT_MEAN_S="$cut_mean" "$serve_bin" "$work/stream.mp4" "$port" "$cams" "$work/sent.json" \
  >"$work/serve.log" 2>&1 &
serve_pid=$!; pids+=("$serve_pid")

mkdir -p "$work/out" "$work/uploaded"
{
  cat <<EOF
[runner]
output_dir = "$work/out"
disk_floor_mb = 0
progress = false
stall_timeout_s = 5
backoff_initial_s = 0.5
backoff_max_s = 5
metrics_listen = "127.0.0.1:$metrics_port"
[model]
path = "$root/models/selfie_segmentation_256x256.onnx"
device = "cpu"
threads = 1
[recording]
clip_seconds = 10
EOF
  for i in $(seq 0 $((cams - 1))); do
    printf '[cameras.cam%d]\nsource = "rtsp"\nurl = "rtsp://127.0.0.1:%d/cam%d"\ntransport = "tcp"\n' "$i" "$port" "$i"
  done
} >"$work/runner.toml"
cat >"$work/syncd.toml" <<EOF
watch = ["$work/out"]
destination = "file://$work/uploaded"
journal = "$work/journal.sqlite"
key_template = "{camera}/{file}"
after_upload = "delete"
[readiness]
settle_secs = 2.0
rescan_secs = 30.0
EOF

"$runner_bin" run "$work/runner.toml" >"$work/runner.log" 2>&1 &
runner_pid=$!; pids+=("$runner_pid")
"$syncd_bin" --config "$work/syncd.toml" >"$work/syncd.log" 2>&1 &
syncd_pid=$!; pids+=("$syncd_pid")

proc_stats() { # pid → "rss_kib fds threads"
  local rss thr fds
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
  thr=$(awk '/^Threads/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
  fds=$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  echo "${rss:-0} ${fds:-0} ${thr:-0}"
}
start=$(date +%s)
: >"$work/samples.tsv"
while [ $(( $(date +%s) - start )) -lt "$secs" ]; do
  sleep "$sample_s"
  kill -0 "$runner_pid" 2>/dev/null || { echo "the runner died"; break; }
  metrics=$(curl -s --max-time 2 "http://127.0.0.1:$metrics_port/metrics" | tr '\n' '|' || true)
  printf '%s\t%s\t%s\t%s\n' "$(( $(date +%s) - start ))" "$(proc_stats "$runner_pid")" \
    "$(proc_stats "$syncd_pid")" "$metrics" >>"$work/samples.tsv"
done

# The end: the server stops sending (sessions stay up), what it sent arrives, then the
# runner finalises; then the server writes its final counts.
kill -USR1 "$serve_pid"; sleep 2
kill -TERM "$runner_pid"
runner_exit=0; wait "$runner_pid" || runner_exit=$?
kill -TERM "$serve_pid"; wait "$serve_pid" || true
# Every clip uploaded and deleted locally (bounded).
for _ in $(seq 1 120); do
  left=$(find "$work/out" -type f \( -name '*.mp4' -o -name '*.tar' -o -name '*.json' \) ! -name '.*' | wc -l)
  [ "$left" -eq 0 ] && break
  sleep 1
done
kill -TERM "$syncd_pid"; wait "$syncd_pid" || true

python3 - "$work" "$runner_exit" "$cams" "${SOAK_MIN_RESTARTS:-0}" "$secs" "${SOAK_JSON:-}" <<'PY'
import glob, json, os, re, statistics, sys
work, runner_exit, cams, min_restarts, secs, out_json = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
sent = json.load(open(f"{work}/sent.json"))
log = open(f"{work}/runner.log", errors="replace").read()
received = {m.group(1): int(m.group(2)) for m in re.finditer(r"camera summary camera=(\S+) received=(\d+)", log)}
restarts = {}
for m in re.finditer(r"restarting the camera pipeline camera=(\S+)", log):
    restarts[m.group(1)] = restarts.get(m.group(1), 0) + 1
recorded, clips = {}, {}
for root in (f"{work}/uploaded", f"{work}/out"):
    for p in glob.glob(f"{root}/**/*.manifest.json", recursive=True):
        if os.path.basename(p).startswith("."):
            continue
        m = json.load(open(p))
        recorded[m["camera"]] = recorded.get(m["camera"], 0) + m["frame_count"]
        clips[m["camera"]] = clips.get(m["camera"], 0) + 1
left = [p for p in glob.glob(f"{work}/out/**/*", recursive=True)
        if os.path.isfile(p) and not os.path.basename(p).startswith(".")]
# Samples: t, runner rss fds threads, syncd rss fds threads, metrics.
samples = []
for line in open(f"{work}/samples.tsv"):
    parts = line.rstrip("\n").split("\t")
    if len(parts) < 4:
        continue
    t = int(parts[0]); r = list(map(int, parts[1].split())); s = list(map(int, parts[2].split()))
    frames = {}
    for l in parts[3].split("|"):
        m = re.match(r'edgemask_frames_received_total\{camera="([^"]+)"\} (\d+)', l)
        if m:
            frames[m.group(1)] = int(m.group(2))
    samples.append((t, r, s, frames))
def growth(idx, which):
    n = len(samples)
    if n < 6:
        return None
    warm = [x for x in samples if x[0] >= min(60, secs / 6)]
    third = max(1, len(warm) // 3)
    first = max(x[which][idx] for x in warm[:third])
    last = max(x[which][idx] for x in warm[-third:])
    return first, last
checks = []
def check(name, ok, detail):
    checks.append({"check": name, "ok": bool(ok), "detail": detail})
check("runner exits 0 at SIGTERM", runner_exit == 0, f"exit {runner_exit}")
check("no pipeline left behind", "left behind" not in log, "")
check("no GStreamer-CRITICAL", "CRITICAL" not in log, "")
rows = []
for i in range(cams):
    cam = f"cam{i}"
    s = sent.get(cam, {})
    rec = recorded.get(cam, 0); rcv = received.get(cam, -1)
    last_minute = [x[3].get(cam) for x in samples if x[0] >= samples[-1][0] - 60] if samples else []
    alive = len(last_minute) >= 2 and last_minute[-1] is not None and last_minute[0] is not None and last_minute[-1] > last_minute[0]
    rows.append({"camera": cam, "sent": s.get("sent"), "received": rcv, "recorded": rec, "clips": clips.get(cam, 0),
                 "sessions": s.get("sessions"), "cuts": s.get("cuts"), "restarts": restarts.get(cam, 0), "alive_last_minute": alive})
    check(f"{cam} flowing in the last minute", alive, f"received {last_minute[:1]} → {last_minute[-1:]}")
    check(f"{cam} sent = received = recorded", s.get("sent") == rcv == rec, f"{s.get('sent')} / {rcv} / {rec}")
    check(f"{cam} ≥ {min_restarts} restarts", restarts.get(cam, 0) >= min_restarts, f"{restarts.get(cam, 0)}")
check("every clip uploaded and deleted locally", not left, f"{len(left)} left")
res = {}
for who, which in (("runner", 1), ("syncd", 2)):
    for idx, what, slack in ((0, "rss_kib", None), (1, "fds", 16), (2, "threads", 8)):
        g = growth(idx, which)
        if g is None:
            continue
        first, last = g
        limit = first * 1.25 + 20 * 1024 if slack is None else first + slack
        res[f"{who}_{what}"] = {"first_third_max": first, "last_third_max": last}
        check(f"{who} {what} does not grow", last <= limit, f"{first} → {last}")
print()
print(f"{'camera':>8} {'sent':>8} {'received':>9} {'recorded':>9} {'clips':>6} {'sessions':>9} {'cuts':>5} {'restarts':>9} {'alive':>6}")
for r in rows:
    print(f"{r['camera']:>8} {r['sent']!s:>8} {r['received']:>9} {r['recorded']:>9} {r['clips']:>6} {r['sessions']!s:>9} {r['cuts']!s:>5} {r['restarts']:>9} {str(r['alive_last_minute']):>6}")
for k, v in res.items():
    print(f"{k:>16}: first third max {v['first_third_max']}, last third max {v['last_third_max']}")
print()
for c in checks:
    print(("PASS " if c["ok"] else "FAIL ") + c["check"] + (f" ({c['detail']})" if c["detail"] else ""))
ok = all(c["ok"] for c in checks)
result = {"seconds": secs, "cameras": rows, "resources": res, "checks": checks, "pass": ok}
if out_json:
    json.dump(result, open(out_json, "w"), indent=1)
print(json.dumps({"soak_pass": ok}))
sys.exit(0 if ok else 1)
PY
