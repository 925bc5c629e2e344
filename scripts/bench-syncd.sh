#!/usr/bin/env bash
# Benchmark: edgemask-syncd --once vs rclone copy, same files, same local Garage.
#
#   scripts/bench-syncd.sh                 32 x 64 MiB and 2000 x 256 KiB
#   LARGE_N=8 SMALL_N=500 scripts/bench-syncd.sh   smaller sets
#
# Needs Garage (EDGEMASK_WITH_GARAGE=1 scripts/setup.sh) and rclone (apt-get install rclone).
# Prints throughput, the ratio and peak RSS (GNU time) of each tool for each set, and the
# latency from a clip's manifest appearing to its object being in the bucket.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=/dev/null
source "$root/scripts/env.sh"
LARGE_N="${LARGE_N:-32}"; LARGE_MIB="${LARGE_MIB:-64}"
SMALL_N="${SMALL_N:-2000}"; SMALL_KIB="${SMALL_KIB:-256}"
garage="${EDGEMASK_GARAGE:-$HOME/.cache/edgemask/garage/bin/garage}"
[ -x "$garage" ] || { echo "Garage missing: run EDGEMASK_WITH_GARAGE=1 scripts/setup.sh" >&2; exit 1; }
command -v rclone >/dev/null || { echo "rclone missing: apt-get install rclone" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time missing: apt-get install time" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -p edgemask-syncd --quiet
syncd="$CARGO_TARGET_DIR/release/edgemask-syncd"

work="$(mktemp -d /tmp/bench-syncd.XXXXXX)"
garage_pid=""
cleanup() { [ -n "$garage_pid" ] && kill "$garage_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
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
export AWS_ACCESS_KEY_ID="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["accessKeyId"])' <<<"$key_json")"
export AWS_SECRET_ACCESS_KEY="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["secretAccessKey"])' <<<"$key_json")"
for _ in $(seq 1 50); do g bucket create bench >/dev/null 2>&1 && break; sleep 0.3; done
g bucket allow --read --write --owner bench --key "$AWS_ACCESS_KEY_ID" >/dev/null
export AWS_EC2_METADATA_DISABLED=true
export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other RCLONE_CONFIG_G_ENV_AUTH=true \
  RCLONE_CONFIG_G_ENDPOINT="http://127.0.0.1:$s3p" RCLONE_CONFIG_G_REGION=garage \
  RCLONE_CONFIG_G_FORCE_PATH_STYLE=true

mkset() { # name count bytes
  local d="$work/src-$1"; mkdir -p "$d"
  python3 - "$d" "$2" "$3" <<'PY'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
block = os.urandom(1 << 20)
for i in range(n):
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        left = size
        while left:
            k = min(left, len(block)); f.write(os.urandom(16) + block[16:k] if k > 16 else block[:k]); left -= k
PY
}

measure() { # label cmd... -> "secs rss_kib"
  local t0 t1; t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/rss" "$@" > "$work/cmd.log" 2>&1 || { cat "$work/cmd.log" >&2; return 1; }
  t1=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc -l) $(cat "$work/rss")"
}

printf '%-22s %-14s %10s %10s %12s\n' set tool seconds MiB/s peak_RSS_MiB
run_set() { # name count bytes
  local name=$1 n=$2 bytes=$3 mib
  mkset "$name" "$n" "$bytes"
  mib=$(echo "$n * $bytes / 1048576" | bc -l)
  # edgemask-syncd: a copy of the set in a watched dir, --once, files retained.
  cp -r "$work/src-$name" "$work/watch-$name"
  cat > "$work/syncd-$name.toml" <<TOML
watch = ["$work/watch-$name"]
destination = "s3://bench/syncd-$name"
journal = "$work/journal-$name.sqlite"
key_template = "{rel}"
after_upload = "retain"
[readiness]
settle_secs = 0
[upload]
max_files = 8
part_size = 8388608
multipart_threshold = 16777216
part_concurrency = 4
[s3]
endpoint_url = "http://127.0.0.1:$s3p"
region = "garage"
force_path_style = true
TOML
  read -r s_sec s_rss < <(measure "$syncd" --config "$work/syncd-$name.toml" --once)
  read -r r_sec r_rss < <(measure rclone copy "$work/src-$name" "G:bench/rclone-$name" --transfers 8 --s3-upload-concurrency 4 --s3-chunk-size 8M)
  printf '%-22s %-14s %10.2f %10.1f %12.1f\n' "$name" edgemask-syncd "$s_sec" "$(echo "$mib / $s_sec" | bc -l)" "$(echo "$s_rss / 1024" | bc -l)"
  printf '%-22s %-14s %10.2f %10.1f %12.1f\n' "$name" rclone "$r_sec" "$(echo "$mib / $r_sec" | bc -l)" "$(echo "$r_rss / 1024" | bc -l)"
  printf '%-22s throughput ratio syncd/rclone: %.2f\n' "$name" "$(echo "$r_sec / $s_sec" | bc -l)"
  rm -rf "$work/src-$name" "$work/watch-$name"
}
run_set "${LARGE_N}x${LARGE_MIB}MiB" "$LARGE_N" $((LARGE_MIB << 20))
run_set "${SMALL_N}x${SMALL_KIB}KiB" "$SMALL_N" $((SMALL_KIB << 10))

# Latency: a clip's manifest renamed into place -> its object in the bucket.
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
"$syncd" --config "$work/live.toml" > "$work/live.log" 2>&1 &
spid=$!
sleep 2
head -c 100000 /dev/urandom > "$work/live/cam/.c1.mkv.tmp" && mv "$work/live/cam/.c1.mkv.tmp" "$work/live/cam/c1.mkv"
echo '{"camera":"cam"}' > "$work/live/cam/.c1.manifest.json.tmp"
t0=$(date +%s.%N); mv "$work/live/cam/.c1.manifest.json.tmp" "$work/live/cam/c1.manifest.json"
for _ in $(seq 1 200); do
  grep -q 'key=live/cam/c1.manifest.json' "$work/live.log" && grep 'c1.manifest.json' "$work/live.log" | grep -q 'uploaded and verified' && break
  sleep 0.02
done
t1=$(date +%s.%N)
kill -TERM "$spid"; wait "$spid" || true
printf 'finished clip -> manifest verified in the bucket: %.2f s\n' "$(echo "$t1 - $t0" | bc -l)"
