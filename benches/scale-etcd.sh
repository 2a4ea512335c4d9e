#!/usr/bin/env bash
# What seven nodes cost against three, for pika and for etcd on the same
# machine: one client (wrk, one connection) writing 1 KiB values over 1000
# keys through the leader, 3 and 7 nodes, pika and etcd alternated, and
# each node's CPU per write (utime + stime from /proc).
#
#   apt-get install wrk etcd-server        # this script installs nothing
#   benches/scale-etcd.sh [ROUNDS]          # default 2 rounds (~2 min each)
#
# pika runs the release build (the script builds it first) with
# the fanout bench's timings (heartbeat 200 ms, timeout 1 s), every node a
# voter (`replicas` = nodes), on 127.0.1.x. etcd runs its defaults on
# 127.0.2.x and is written through its JSON gateway (`/v3/kv/put`), as
# `benches/compare-etcd.sh` does; the gateway's work shows in the etcd
# leader's CPU, not in its followers'. etcd commits on a quorum of its
# members, pika on a quorum's sync and every member's receipt.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in wrk etcd; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "scale-etcd: $tool not found (apt-get install wrk etcd-server)" >&2
    exit 2
  fi
done
rounds=${1:-2}
cargo build --release --bin pika >&2
pika=target/release/pika
# shellcheck source=benches/scratch.sh
source benches/scratch.sh

# etcd's JSON gateway takes keys in base64: the 1000 keys encoded up front.
python3 - "$value" > "$dir/etcd.lua" <<'EOF'
import base64, sys
keys = ",".join(
    '"%s"' % base64.b64encode(b"bench/%06d" % n).decode() for n in range(1000))
print("local keys = {%s}" % keys)
print("local value = '%s'" % sys.argv[1])
print("""local n = math.random(0, 999)
request = function()
  n = (n + 1) % 1000
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"},
    '{"key":"' .. keys[n + 1] .. '","value":"' .. value .. '"}')
end""")
EOF

ticks=$(getconf CLK_TCK)
# utime + stime of each pid, in clock ticks.
cpu_of() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat"; done; }

# pika's nodes, and the one that leads.
pika_cluster() {
  local n=$1 run=$2 hosts i
  hosts=$(seq -s, -f "127.0.1.%g" 1 "$n")
  for i in $(seq 1 "$n"); do
    PIKA_LOG_LEVEL=warn PIKA_SERVER_HOST="127.0.1.$i" PIKA_SERVER_PORT=8090 \
      PIKA_STORAGE_BW_PATH="$run/n$i" PIKA_CLUSTER_ENABLED=true \
      PIKA_AUTH_ADMIN_TOKEN=$token PIKA_CLUSTER_BIND_ADDR="127.0.1.$i" \
      PIKA_CLUSTER_DNS_ADDR="$hosts" PIKA_CLUSTER_REPLICAS="$n" \
      PIKA_CLUSTER_SECURITY_KEY="scale bench key, 32 bytes long.." \
      PIKA_CLUSTER_HEARTBEAT_INTERVAL=200ms PIKA_CLUSTER_HEARTBEAT_TIMEOUT=1s \
      PIKA_CLUSTER_SYNC_INTERVAL=5m \
      "$pika" > "$run/node$i.log" 2>&1 &
    pids+=($!)
  done
  local urls=()
  for i in $(seq 1 "$n"); do urls+=("http://127.0.1.$i:8090"); done
  lead_among pika pika_leads "$run" "${urls[@]}"
}

# etcd's members, and the one that leads.
etcd_cluster() {
  local n=$1 run=$2 i
  start_etcd "$n" "$run"
  local urls=()
  for i in $(seq 1 "$n"); do urls+=("http://127.0.2.$i:2379"); done
  lead_among etcd etcd_leads "$run" "${urls[@]}"
}

# lead_among NAME LEADS RUN URL...: sets $leader and $url to the member
# that leads, or exits saying where NAME's logs are.
lead_among() {
  local name=$1 leads=$2 run=$3
  shift 3
  local urls=("$@")
  if ! leader=$(leader_of "$leads" "${urls[@]}"); then
    echo "scale-etcd: $name elected no leader within 30 s; logs in $run" >&2
    exit 1
  fi
  url=${urls[leader - 1]}
}

# One row: start, warm up, 10 s at one connection, CPU per write, stop.
row() {
  local server=$1 n=$2 run=$3
  mkdir -p "$run"
  pids=()
  leader="" url=""
  "${server}_cluster" "$n" "$run"
  local script="$dir/post.lua"
  [ "$server" = etcd ] && script="$dir/etcd.lua"
  sleep 2
  wrk -t1 -c1 -d3s -s "$script" "$url" > /dev/null
  local before after
  mapfile -t before < <(cpu_of "${pids[@]}")
  wrk -t1 -c1 -d10s --latency -s "$script" "$url" > "$run/wrk.txt"
  mapfile -t after < <(cpu_of "${pids[@]}")
  if grep -q "Non-2xx\|Socket errors" "$run/wrk.txt"; then
    echo "scale-etcd: $server at $n nodes answered errors:" >&2
    cat "$run/wrk.txt" >&2
    exit 1
  fi
  local writes p50 lead=0 fol=0 i
  writes=$(awk '/requests in/ {print $1}' "$run/wrk.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$run/wrk.txt")
  for i in $(seq 0 $((n - 1))); do
    local us=$(((after[i] - before[i]) * 1000000 / ticks / writes))
    if [ $((i + 1)) -eq "$leader" ]; then lead=$us; else fol=$((fol + us)); fi
  done
  printf '%-5s %5s %8s %10s %14s %16s\n' "$server" "$n" "$p50" "$writes" "$lead" "$((fol / (n - 1)))"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}

printf '%-5s %5s %8s %10s %14s %16s\n' server nodes p50 writes "leader µs/w" "follower µs/w"
for round in $(seq 1 "$rounds"); do
  # The order alternates, so neither server always runs first.
  if [ $((round % 2)) -eq 1 ]; then order=(pika etcd); else order=(etcd pika); fi
  for n in 3 7; do
    for server in "${order[@]}"; do
      row "$server" "$n" "$dir/r$round-$server-$n"
    done
  done
done
