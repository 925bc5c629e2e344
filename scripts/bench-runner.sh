#!/usr/bin/env bash
# Benchmark of the edgemask runner on this host, with the bundled model, on moving 1080p30
# content with a camera's decode cost (H.264 high profile, CABAC, B-frames, 2 s GOP,
# BENCH_KBPS kbit/s: the SMPTE bars panning under the test person):
#  1. one file as fast as it goes (fps, per-stage time, CPU);
#  2. N loopback RTSP cameras in real time, for N in $BENCH_CAMERAS, BENCH_ROUNDS rounds
#     (interleaved): per camera, counted exactly, the frames the server sent, the frames
#     that reached the runner, the frames in finalised clips and how many of them have a
#     fresh mask (the rest carry the previous one: the element skipped inference for late
#     frames); the runner's CPU.
# Prints a table per round, a summary (median and spread over the rounds), what the host
# carries (the most cameras with no frame lost and >= 99 % fresh masks in every round), and
# a machine-readable result (BENCH_JSON=path writes it there too).
# Usage: scripts/bench-runner.sh            (builds release binaries first)
# Env:   EDGEMASK_BIN / RTSP_SERVE_BIN to use prebuilt binaries; BENCH_SECONDS (20) per RTSP
#        run; BENCH_CAMERAS ("1 2 4 6"); BENCH_ROUNDS (1); BENCH_KBPS (6000); BENCH_DEVICE
#        (cpu); BENCH_THREADS (0); BENCH_RESIZE (antialias | bilinear; unset: the
#        runner's default); BENCH_INTERVAL
#        (inference-interval, 1); BENCH_PIPELINED (false); BENCH_FILE (1: run part 1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=/dev/null
source scripts/env.sh
target="${CARGO_TARGET_DIR:-$root/target}"
if [ -z "${EDGEMASK_BIN:-}" ] || [ -z "${RTSP_SERVE_BIN:-}" ]; then
  cargo build --release --locked -p edgemask --bin edgemask --example rtsp_serve
fi
bin="${EDGEMASK_BIN:-$target/release/edgemask}"
serve="${RTSP_SERVE_BIN:-$target/release/examples/rtsp_serve}"
secs="${BENCH_SECONDS:-20}"
rounds="${BENCH_ROUNDS:-1}"
kbps="${BENCH_KBPS:-6000}"
device="${BENCH_DEVICE:-cpu}"
threads="${BENCH_THREADS:-0}"
resize="${BENCH_RESIZE:-}"
interval="${BENCH_INTERVAL:-1}"
pipelined="${BENCH_PIPELINED:-false}"
model="$root/models/selfie_segmentation_256x256.onnx"
work="$(mktemp -d)"
server_pid=""; pid=""
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  [ -n "$server_pid" ] && kill -KILL "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); model $(basename "$model") on $device, resize ${resize:-"(runner default)"}, inference-interval $interval, pipelined $pipelined; load average $(cut -d' ' -f1-3 /proc/loadavg)"
frames=$((secs * 30))
echo "making a ${secs} s 1080p30 H.264 video (high profile, B-frames, 2 s GOP, ${kbps} kbit/s) of moving content ..."
gst-launch-1.0 -q compositor name=c background=black sink_1::xpos=760 sink_1::ypos=240 ! \
  video/x-raw,width=1920,height=1080,framerate=30/1,format=I420 ! \
  x264enc speed-preset=superfast bframes=2 b-adapt=false key-int-max=60 bitrate="$kbps" ! \
  video/x-h264,profile=high ! h264parse ! mp4mux ! filesink location="$work/in.mp4" \
  videotestsrc pattern=smpte horizontal-speed=4 num-buffers="$frames" ! \
  video/x-raw,width=1920,height=1080,framerate=30/1 ! c.sink_0 \
  filesrc location="$EDGEMASK_SHARED/testdata/person_400x600.png" ! pngdec ! videoconvert ! \
  imagefreeze num-buffers="$frames" ! video/x-raw,framerate=30/1 ! c.sink_1

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
$([ -n "$resize" ] && echo "resize = \"$resize\"")
inference_interval = $interval
pipelined = $pipelined
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

if [ "${BENCH_FILE:-1}" = 1 ]; then
  echo
  echo "== 1. file: 1080p30 H.264, ${frames} frames, as fast as possible =="
  config_head file 0 | sed '/metrics_listen/d' > "$work/file.toml"
  printf '[cameras.file]\nsource = "file"\npath = "%s"\n' "$work/in.mp4" >> "$work/file.toml"
  /usr/bin/time -f '%e %U %S' -o "$work/time" env EDGEMASK_LOG=edgemask=debug,warn "$bin" run "$work/file.toml" 2> "$work/file.log"
  read -r real user sys < "$work/time"
  got=$(grep -o 'camera summary.*frames=[0-9]*' "$work/file.log" | grep -o ' frames=[0-9]*' | cut -d= -f2)
  python3 -c "r,u,s,n=$real,$user,$sys,$got; print(f'  {n} frames in {r:.1f} s: {n/r:.1f} fps (start-up included), CPU {100*(u+s)/r:.0f} % of one core ({(u+s)/r/$(nproc)*100:.0f} % of the host)')"
  stats_summary "$work/file.log"
fi

echo
echo "== 2. RTSP: N loopback 1080p30 cameras in real time, ${secs} s each, ${rounds} round(s) =="
: > "$work/runs.jsonl"
for round in $(seq 1 "$rounds"); do
  for n in ${BENCH_CAMERAS:-1 2 4 6}; do
    port=$(free_port); mport=$(free_port)
    rm -f "$work/sent.json"
    "$serve" "$work/in.mp4" "$port" "$n" "$work/sent.json" > "$work/serve.log" 2>&1 &
    server_pid=$!
    sleep 1
    config_head "rtsp$n-$round" "$mport" > "$work/rtsp.toml"
    for i in $(seq 0 $((n - 1))); do
      printf '[cameras.cam%d]\nsource = "rtsp"\nurl = "rtsp://127.0.0.1:%d/cam%d"\ntransport = "tcp"\n' "$i" "$port" "$i" >> "$work/rtsp.toml"
    done
    EDGEMASK_LOG=edgemask=debug,warn "$bin" run "$work/rtsp.toml" 2> "$work/rtsp.log" &
    pid=$!
    hz=$(getconf CLK_TCK)
    t0=$(date +%s.%N)
    # The file is one session per camera: it ends after $secs s. The server then stops
    # sending for good, so what it sent is final, and the runner finalises its clips.
    sleep "$secs"; sleep 2
    c1=$(awk '{print $14 + $15}' "/proc/$pid/stat"); t1=$(date +%s.%N)
    kill -USR1 "$server_pid"; sleep 1
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then echo "  runner did not stop within 30 s of SIGTERM" >&2; kill -KILL "$pid"; fi
    wait "$pid" || true; pid=""
    kill -TERM "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; server_pid=""
    python3 - "$work" "$n" "$round" "$c1" "$hz" "$t0" "$t1" "$work/out-rtsp$n-$round" >> "$work/runs.jsonl" <<'EOF'
import glob, json, re, sys
work, n, rnd, cpu, hz, t0, t1, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7]), sys.argv[8]
sent = json.load(open(f"{work}/sent.json"))
log = open(f"{work}/rtsp.log", errors="replace").read()
received = {m.group(1): int(m.group(2)) for m in re.finditer(r"camera summary camera=(\S+) received=(\d+)", log)}
cams = []
for i in range(n):
    cam = f"cam{i}"
    rec = fresh = 0
    for p in glob.glob(f"{out}/{cam}/*.manifest.json"):
        m = json.load(open(p))
        rec += m["frame_count"]; fresh += m["fresh_masks"]
    cams.append({"camera": cam, "sent": sent[cam]["sent"], "received": received.get(cam, 0), "recorded": rec, "fresh": fresh})
print(json.dumps({"cameras": n, "round": rnd, "cpu_percent": round(100 * cpu / hz / (t1 - t0), 1), "per_camera": cams}))
EOF
    python3 - "$work/runs.jsonl" <<'EOF'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])][-1]
c = r["per_camera"]
sent = sum(x["sent"] for x in c); rec = sum(x["recorded"] for x in c); fresh = sum(x["fresh"] for x in c)
print(f"  round {r['round']}, N={r['cameras']}: sent {sent}, received {sum(x['received'] for x in c)}, recorded {rec}, lost {sent - rec}, "
      f"fresh masks {100 * fresh / max(rec, 1):.2f} %, runner CPU {r['cpu_percent']} % (200 % = 2 cores)")
EOF
    stats_summary "$work/rtsp.log"
  done
done

echo
python3 - "$work/runs.jsonl" "${BENCH_JSON:-}" "${resize:-bilinear}" "$interval" "$pipelined" "$kbps" "$secs" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
out, resize, interval, pipelined, kbps, secs = sys.argv[2:8]
by_n = {}
for r in runs:
    c = r["per_camera"]
    sent = sum(x["sent"] for x in c); rec = sum(x["recorded"] for x in c); fresh = sum(x["fresh"] for x in c)
    by_n.setdefault(r["cameras"], []).append({"lost": sent - rec, "fresh_pct": 100 * fresh / max(rec, 1), "cpu": r["cpu_percent"],
                                             "sent": sent, "received": sum(x["received"] for x in c), "recorded": rec})
summary = {}
print(f"{'cameras':>8} {'rounds':>7} {'lost (max)':>11} {'fresh % median [min, max]':>28} {'CPU % median [min, max]':>26}")
for n in sorted(by_n):
    v = by_n[n]
    fp = [x["fresh_pct"] for x in v]; cpu = [x["cpu"] for x in v]
    s = {"rounds": len(v), "lost_max": max(x["lost"] for x in v), "fresh_pct_median": round(statistics.median(fp), 2),
         "fresh_pct_min": round(min(fp), 2), "fresh_pct_max": round(max(fp), 2),
         "cpu_percent_median": round(statistics.median(cpu), 1), "cpu_percent_min": min(cpu), "cpu_percent_max": max(cpu),
         "carried_without_loss": all(x["lost"] == 0 for x in v)}
    summary[str(n)] = s
    print(f"{n:>8} {len(v):>7} {s['lost_max']:>11} {s['fresh_pct_median']:>10.2f} [{s['fresh_pct_min']:.2f}, {s['fresh_pct_max']:.2f}] {s['cpu_percent_median']:>12.1f} [{s['cpu_percent_min']}, {s['cpu_percent_max']}]")
ok = [n for n in sorted(by_n) if all(x["lost"] == 0 and x["fresh_pct"] >= 99.0 for x in by_n[n])]
carries = max(ok) if ok else 0
print(f"carries: {carries} camera(s) with no frame lost and >= 99 % fresh masks in every round")
result = {"content": f"1080p30 H.264 high, B-frames, 2 s GOP, {kbps} kbit/s, moving", "seconds": int(secs),
          "resize": resize, "inference_interval": int(interval), "pipelined": pipelined == "true",
          "carries": carries, "by_cameras": summary, "runs": runs}
if out:
    json.dump(result, open(out, "w"), indent=1)
print(json.dumps({"carries": carries, "by_cameras": {k: {"lost_max": v["lost_max"], "fresh_pct_median": v["fresh_pct_median"]} for k, v in summary.items()}}))
EOF
