#!/usr/bin/env bash
# Two pika builds side by side under wrk: a 3-node cluster on 127.0.1.1-3
# (the loopback example's configs, data in a temp dir) per row, builds
# alternating, so that a change is measured against the build before it in
# one run on the same machine.
#
#   apt-get install wrk                          # this script installs nothing
#   benches/ab-wrk.sh OLD_PIKA NEW_PIKA [ROUNDS]  # default 3 rounds (~1 min each)
#
# Each row: 64 connections writing 1 KiB values over 1000 paths through the
# leader for 10 s (after a 3 s warm-up), then 3 × 22 connections writing
# through all three nodes at once for 10 s, then 16 connections reading a
# follower for 10 s, then reads after writes under load for 9 s. wrk is a
# single C thread, a lighter client than the fanout bench's, so both
# builds go faster here than there. "dgram/w" is
# the UDP datagrams the machine sent per spread write (/proc/net/snmp):
# the replication messages, forwards and answers, and QUIC's own.
# "raw" is a read on a follower right after the leader answered the
# write of that path, while 64 connections write through the leader
# (`read_after_write.py`): p50/p90 in ms of the read's wait.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
  echo "usage: benches/ab-wrk.sh OLD_PIKA NEW_PIKA [ROUNDS]" >&2
  exit 2
fi
if ! command -v wrk >/dev/null 2>&1; then
  echo "ab-wrk: wrk not found (apt-get install wrk)" >&2
  exit 2
fi
builds=("$1" "$2")
rounds=${3:-3}
# shellcheck source=benches/scratch.sh
source benches/scratch.sh

# UDP datagrams this machine has sent.
udp_out() { awk '/^Udp:/ && !/OutDatagrams/ {print $5}' /proc/net/snmp; }

# Requests/s of a wrk run, or "errors" when any answer was not 2xx.
rate() {
  if grep -q "Non-2xx\|Socket errors" "$1"; then echo errors; else awk '/Requests\/sec/ {printf "%d", $2}' "$1"; fi
}

row() {
  local pika=$1 run=$2
  pids=()
  for n in 1 2 3; do
    sed "s|path: /tmp/pika$n|path: $run/n$n|" "example/cluster/$n.yaml" > "$run/$n.yaml"
    PIKA_LOG_LEVEL=warn PIKA_CLUSTER_DNS_ADDR=127.0.1.1,127.0.1.2,127.0.1.3 \
      "$pika" --config "$run/$n.yaml" > "$run/node$n.log" 2>&1 &
    pids+=($!)
  done
  local leader
  if ! leader=$(leader_of pika_leads http://127.0.1.1:8091 http://127.0.1.2:8092 http://127.0.1.3:8093); then
    echo "ab-wrk: no leader within 30 s ($pika); logs in $run" >&2
    exit 1
  fi
  sleep 2
  local url="http://127.0.1.$leader:809$leader"
  wrk -t1 -c64 -d3s -s "$dir/post.lua" "$url" > /dev/null
  wrk -t1 -c64 -d10s --latency -s "$dir/post.lua" "$url" > "$run/leader.txt"
  local clients=() sent
  sent=$(udp_out)
  for n in 1 2 3; do
    wrk -t1 -c22 -d10s -s "$dir/post.lua" "http://127.0.1.$n:809$n" > "$run/spread$n.txt" &
    clients+=($!)
  done
  wait "${clients[@]}"
  sent=$(($(udp_out) - sent))
  local writes
  writes=$(cat "$run"/spread?.txt | awk '/requests in/ {s += $1} END {print s + 0}')
  local spread=0
  for n in 1 2 3; do
    local r
    r=$(rate "$run/spread$n.txt")
    [ "$r" = errors ] && spread=errors && break
    spread=$((spread + r))
  done
  local follower=$((leader % 3 + 1))
  wrk -t1 -c16 -d10s -s "$dir/get.lua" "http://127.0.1.$follower:809$follower" > "$run/reads.txt"
  wrk -t1 -c64 -d10s -s "$dir/post.lua" "$url" > /dev/null &
  local load=$!
  sleep 0.5
  local raw
  raw=$(python3 benches/read_after_write.py "127.0.1.$leader:809$leader" \
    "127.0.1.$follower:809$follower" 9 "$token")
  wait "$load"
  printf '%-40s %12s %10s %12s %8s %12s %12s\n' "$pika" "$(rate "$run/leader.txt")" \
    "$(awk '$1=="50%" {print $2}' "$run/leader.txt")" "$spread" \
    "$(awk -v s="$sent" -v w="$writes" 'BEGIN {if (w > 0) printf "%.2f", s / w; else print "-"}')" \
    "$(rate "$run/reads.txt")" "$raw"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}

printf '%-40s %12s %10s %12s %8s %12s %12s\n' build "leader w/s" "p50" "spread w/s" "dgram/w" "reads r/s" "raw p50/p90"
for round in $(seq 1 "$rounds"); do
  # The order alternates too, so neither build always runs first.
  if [ $((round % 2)) -eq 1 ]; then order=(0 1); else order=(1 0); fi
  for i in "${order[@]}"; do
    mkdir -p "$dir/r$round-$i"
    row "${builds[$i]}" "$dir/r$round-$i"
  done
done
