#!/usr/bin/env bash
# Benchmark: edgemask-syncd --once vs rclone copy, the same files to the same local Garage.
#
#   scripts/bench-syncd.sh                          32 x 64 MiB and 2000 x 256 KiB
#   LARGE_N=8 SMALL_N=500 scripts/bench-syncd.sh    smaller sets
#
# Knobs: LARGE_N LARGE_MIB SMALL_N SMALL_KIB (the sets), ROUNDS (interleaved rounds per
# set, the tool that goes first alternating; default 3: the median and the spread are
# reported, never the best), SYNCD_BIN (a built edgemask-syncd instead of
# `cargo build --release`), LIVE_CLIPS (clips for the latency check; default 5), RESULT
# (where the JSON result goes; default target/bench/syncd-vs-rclone.json — copy it to
# docs/results/ and run scripts/figures.py --write to publish it).
#
# Needs Garage (EDGEMASK_WITH_GARAGE=1 scripts/setup.sh); installs rclone and GNU time with
# apt-get when they are missing. Both tools get the same parallelism: 4 files at a time,
# 8 metadata requests (checks) besides, 2 parts per file, 8 MiB parts, multipart above 16 MiB; each verifies what it sends
# (edgemask-syncd: CRC32C sent and checked by the store, then HeadObject; rclone: MD5).
# For each set it prints wall time, throughput, the ratio and the peak RSS (GNU time) of
# each tool; then the latency from a clip's manifest renamed into place to its first
# upload starting and to its manifest verified in the bucket.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=/dev/null
source "$root/scripts/env.sh"
LARGE_N="${LARGE_N:-32}"; LARGE_MIB="${LARGE_MIB:-64}"
SMALL_N="${SMALL_N:-2000}"; SMALL_KIB="${SMALL_KIB:-256}"
ROUNDS="${ROUNDS:-3}"; LIVE_CLIPS="${LIVE_CLIPS:-5}"
RESULT="${RESULT:-$root/target/bench/syncd-vs-rclone.json}"
garage="${EDGEMASK_GARAGE:-${EDGEMASK_CACHE:-$HOME/.cache/edgemask}/garage/bin/garage}"
[ -x "$garage" ] || { echo "Garage missing: run EDGEMASK_WITH_GARAGE=1 scripts/setup.sh" >&2; exit 1; }

need_pkgs=()
command -v rclone >/dev/null || need_pkgs+=(rclone)
[ -x /usr/bin/time ] || need_pkgs+=(time)
command -v bc >/dev/null || need_pkgs+=(bc)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need_pkgs[*]} (apt-get)" >&2
  $sudo apt-get install -y "${need_pkgs[@]}" >/dev/null || {
    $sudo apt-get update >/dev/null && $sudo apt-get install -y "${need_pkgs[@]}" >/dev/null; }
fi

if [ -n "${SYNCD_BIN:-}" ]; then
  syncd="$SYNCD_BIN"
else
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
  cargo build --release -p edgemask-syncd --quiet
  syncd="$CARGO_TARGET_DIR/release/edgemask-syncd"
fi
[ -x "$syncd" ] || { echo "no edgemask-syncd at $syncd" >&2; exit 1; }

work="$(mktemp -d /tmp/bench-syncd.XXXXXX)"
garage_pid=""; live_pid=""
cleanup() {
  [ -n "$live_pid" ] && kill "$live_pid" 2>/dev/null
  [ -n "$garage_pid" ] && kill "$garage_pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3p=$(port); rpcp=$(port); admp=$(port)
cat > "$work/garage.toml" <<TOML
metadata_dir = "$work/meta"
data_dir = "$work/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpcp"
rpc_public_addr = "127.0.0.1:$rpcp"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3p"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admp"
TOML
g() { RUST_LOG=warn "$garage" -c "$work/garage.toml" "$@"; }
RUST_LOG=warn "$garage" -c "$work/garage.toml" server > "$work/garage.log" 2>&1 &
garage_pid=$!
for _ in $(seq 1 150); do g status >/dev/null 2>&1 && break; sleep 0.2; done
node="$(g node id -q | cut -d@ -f1)"
g layout assign -z dc1 -c 10G "$node" >/dev/null
g layout apply --version 1 >/dev/null
key_json="$(g json-api CreateKey '{"name":"bench"}')"
AWS_ACCESS_KEY_ID="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["accessKeyId"])' <<<"$key_json")"
AWS_SECRET_ACCESS_KEY="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["secretAccessKey"])' <<<"$key_json")"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
ok=""
for _ in $(seq 1 50); do g bucket create bench >/dev/null 2>&1 && { ok=1; break; }; sleep 0.3; done
[ -n "$ok" ] || { echo "could not create the bucket: $(tail -5 "$work/garage.log")" >&2; exit 1; }
g bucket allow --read --write --owner bench --key "$AWS_ACCESS_KEY_ID" >/dev/null
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent
# rclone's remote "g:", from the environment (no config file). Plain HTTP on loopback:
# a CA bundle from the environment (AWS_CA_BUNDLE) only breaks rclone's S3 session.
export RCLONE_CONFIG=/dev/null
export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other \
  RCLONE_CONFIG_G_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" RCLONE_CONFIG_G_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
  RCLONE_CONFIG_G_ENDPOINT="http://127.0.0.1:$s3p" RCLONE_CONFIG_G_REGION=garage \
  RCLONE_CONFIG_G_FORCE_PATH_STYLE=true
rclone() { env -u AWS_CA_BUNDLE rclone "$@"; }

mkset() { # dir count bytes: incompressible files
  mkdir -p "$1"
  python3 - "$1" "$2" "$3" <<'PY'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
block = os.urandom(1 << 20)
for i in range(n):
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        left = size
        while left:
            k = min(left, len(block))
            f.write(os.urandom(16) + block[16:k] if k > 16 else block[:k])
            left -= k
PY
}

fresh() { # dir: new bytes at the start of every 1 MiB block of every file, so each run
  # uploads content the store has never seen (Garage deduplicates blocks by hash: a run
  # after another of the same files would skip the block writes and look faster)
  python3 - "$1" <<'PY'
import os, sys
d = sys.argv[1]
for name in os.listdir(d):
    p = os.path.join(d, name)
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        for off in range(0, size, 1 << 20):
            f.seek(off)
            f.write(os.urandom(min(16, size - off)))
PY
}

measure() { # cmd... -> "secs rss_kib" (wall time of the command, peak RSS from GNU time)
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/rss" "$@" > "$work/cmd.log" 2>&1 || { cat "$work/cmd.log" >&2; return 1; }
  cp "$work/cmd.log" "${TMPDIR:-/tmp}/bench-syncd-last-$(basename "$1").log" 2>/dev/null || true
  t1=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc -l) $(tail -1 "$work/rss")"
}

objects() { # prefix -> number of objects (not counting edgemask-syncd's endpoint probe)
  rclone lsf -R --files-only "g:bench/$1" | grep -v -c '\.edgemask-syncd-probe$' || true
}

: > "$work/rounds.tsv"
run_set() { # name label count bytes
  local name=$1 label=$2 n=$3 bytes=$4 round
  mkset "$work/src-$name" "$n" "$bytes"
  sync
  run_syncd() {
    # edgemask-syncd: a copy of the set in a watched dir (hard links: same page cache),
    # --once, files retained so the next round has them again.
    rm -rf "$work/watch-$name" "$work/journal-$name".sqlite*
    fresh "$work/src-$name"
    cp -al "$work/src-$name" "$work/watch-$name"
    cat > "$work/syncd-$name.toml" <<TOML
watch = ["$work/watch-$name"]
destination = "s3://bench/syncd-$name-$round"
journal = "$work/journal-$name.sqlite"
key_template = "{rel}"
after_upload = "retain"
[readiness]
settle_secs = 0
[files]
# The watched copy is hard links to the set (the same page cache for both tools).
allow_hard_links = true
[upload]
max_files = 4
max_checks = 8
part_concurrency = 2
part_size = 8388608
multipart_threshold = 16777216
[s3]
endpoint_url = "http://127.0.0.1:$s3p"
region = "garage"
force_path_style = true
TOML
    # SYNCD_WRAP: a command prefix for the daemon (e.g. "perf record -o /tmp/syncd.perf --").
    # shellcheck disable=SC2086
    read -r s_sec s_rss < <(measure ${SYNCD_WRAP:-} "$syncd" --config "$work/syncd-$name.toml" --once)
    [ "$(objects "syncd-$name-$round")" -eq "$n" ] || { echo "edgemask-syncd: not all $n objects in the bucket" >&2; exit 1; }
  }
  run_rclone() {
    fresh "$work/src-$name"
    read -r r_sec r_rss < <(measure env -u AWS_CA_BUNDLE rclone copy "$work/src-$name" "g:bench/rclone-$name-$round" \
      --transfers 4 --s3-upload-concurrency 2 --s3-chunk-size 8M --s3-upload-cutoff 16M \
      --s3-no-check-bucket --checkers 8)
    [ "$(objects "rclone-$name-$round")" -eq "$n" ] || { echo "rclone: not all $n objects in the bucket" >&2; exit 1; }
  }
  for round in $(seq 1 "$ROUNDS"); do
    if (( round % 2 )); then run_syncd; run_rclone; else run_rclone; run_syncd; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$label" "$round" "$s_sec" "$s_rss" "$r_sec" "$r_rss" \
      "$(echo "$n * $bytes / 1048576" | bc -l)" >> "$work/rounds.tsv"
    printf '%s round %s: edgemask-syncd %.2f s, rclone %.2f s, ratio %.2f\n' "$label" "$round" "$s_sec" "$r_sec" \
      "$(echo "$r_sec / $s_sec" | bc -l)" >&2
  done
  rm -rf "$work/src-$name" "$work/watch-$name"
}
run_set large "${LARGE_N} × ${LARGE_MIB} MiB" "$LARGE_N" $((LARGE_MIB << 20))
run_set small "${SMALL_N} × ${SMALL_KIB} KiB" "$SMALL_N" $((SMALL_KIB << 10))

# Latency: the daemon running (default settings), clips written the runner's way; from the
# manifest's rename to (a) the clip's first upload starting, (b) its manifest verified.
mkdir -p "$work/live/cam"
cat > "$work/live.toml" <<TOML
watch = ["$work/live"]
destination = "s3://bench/live"
journal = "$work/live.sqlite"
key_template = "{rel}"
[s3]
endpoint_url = "http://127.0.0.1:$s3p"
region = "garage"
force_path_style = true
TOML
: > "$work/live.log"
RUST_LOG=info,edgemask_syncd::upload=debug "$syncd" --config "$work/live.toml" > "$work/live.log" 2>&1 &
live_pid=$!
for _ in $(seq 1 100); do grep -q 'endpoint probed' "$work/live.log" && break; sleep 0.1; done
ts() { date -d "$1" +%s.%N; } # log timestamp (RFC 3339, UTC) -> epoch seconds
worst_start=0; worst_done=0
for i in $(seq 1 "$LIVE_CLIPS"); do
  c="c$i"
  head -c 4000000 /dev/urandom > "$work/live/cam/.$c.mkv.tmp" && mv "$work/live/cam/.$c.mkv.tmp" "$work/live/cam/$c.mkv"
  head -c 300000 /dev/urandom > "$work/live/cam/.$c.mask.mkv.tmp" && mv "$work/live/cam/.$c.mask.mkv.tmp" "$work/live/cam/$c.mask.mkv"
  echo '{"camera":"cam"}' > "$work/live/cam/.$c.manifest.json.tmp"
  t0=$(date +%s.%N); mv "$work/live/cam/.$c.manifest.json.tmp" "$work/live/cam/$c.manifest.json"
  for _ in $(seq 1 500); do
    grep -q "uploaded and verified path=$work/live/cam/$c.manifest.json " "$work/live.log" && break
    sleep 0.02
  done
  start=$(grep "upload starting" "$work/live.log" | grep -E "path=$work/live/cam/$c\." | head -1 | cut -d' ' -f1)
  done_=$(grep "uploaded and verified path=$work/live/cam/$c.manifest.json " "$work/live.log" | head -1 | cut -d' ' -f1)
  [ -n "$start" ] && [ -n "$done_" ] || { echo "clip $c did not go up: $(tail -5 "$work/live.log")" >&2; exit 1; }
  s=$(echo "$(ts "$start") - $t0" | bc -l); d=$(echo "$(ts "$done_") - $t0" | bc -l)
  (( $(echo "$s > $worst_start" | bc -l) )) && worst_start=$s
  (( $(echo "$d > $worst_done" | bc -l) )) && worst_done=$d
  sleep 0.5
done
kill -TERM "$live_pid"; wait "$live_pid" || true; live_pid=""
echo
printf 'finished clip (4.3 MB, 3 files) -> first upload starting: worst of %d %.3f s; -> manifest verified in the bucket: worst %.3f s\n' \
  "$LIVE_CLIPS" "$worst_start" "$worst_done"

# The machine-readable result, and the table rendered from it by the one renderer the
# documents use (scripts/figures.py).
mkdir -p "$(dirname "$RESULT")"
python3 - "$work/rounds.tsv" "$RESULT" "$ROUNDS" "$LIVE_CLIPS" "$worst_start" "$worst_done" <<'PY'
import json, os, statistics, sys, datetime
tsv, out, rounds, clips, w_start, w_done = sys.argv[1:]
sets = {}
for line in open(tsv):
    name, label, rnd, s_s, s_rss, r_s, r_rss, mib = line.rstrip("\n").split("\t")
    sets.setdefault(name, {"key": name, "label": label, "mib": float(mib), "rounds": []})["rounds"].append(
        {"round": int(rnd), "syncd_s": float(s_s), "rclone_s": float(r_s),
         "syncd_rss_kib": int(s_rss), "rclone_rss_kib": int(r_rss),
         "ratio": float(r_s) / float(s_s)})
for s in sets.values():
    r = s["rounds"]
    ratios = [x["ratio"] for x in r]
    s.update(ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
             syncd_s_median=statistics.median(x["syncd_s"] for x in r),
             rclone_s_median=statistics.median(x["rclone_s"] for x in r),
             syncd_rss_mib_max=max(x["syncd_rss_kib"] for x in r) / 1024,
             rclone_rss_mib_max=max(x["rclone_rss_kib"] for x in r) / 1024)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
result = {
    "bench": "scripts/bench-syncd.sh",
    "date": datetime.date.today().isoformat(),
    "machine": f"{os.cpu_count()} cores ({cpu}), Garage on the same cores, files in the page cache",
    "rounds": int(rounds),
    "sets": list(sets.values()),
    "latency": {"clips": int(clips), "first_upload_s_worst": float(w_start), "verified_s_worst": float(w_done)},
}
json.dump(result, open(out, "w"), indent=1)
PY
echo
python3 "$root/scripts/figures.py" --render syncd-vs-rclone "$RESULT"
echo "result: $RESULT"
