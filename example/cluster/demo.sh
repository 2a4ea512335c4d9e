#!/usr/bin/env bash
# `make demo`: the three loopback nodes of example/cluster in one terminal.
# No /etc/hosts edit: PIKA_CLUSTER_DNS_ADDR lists the three addresses in
# place of pika.local. Each log line is prefixed with its node; Ctrl-C (or
# SIGTERM) stops all three.
set -euo pipefail
cd "$(dirname "$0")/../.."
PIKA=${PIKA:-target/release/pika}
if [ ! -x "$PIKA" ]; then
  cargo build --release --bin pika
fi
pids=()
stop() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop INT TERM EXIT
for n in 1 2 3; do
  # The node's output goes through sed in a process substitution, so $!
  # is the node itself, the process to stop.
  PIKA_CLUSTER_DNS_ADDR=127.0.1.1,127.0.1.2,127.0.1.3 \
    "$PIKA" --config "example/cluster/$n.yaml" \
    > >(sed -u "s/^/[node$n] /") 2>&1 &
  pids+=($!)
done
token=pika_de30de30de30de30de30de30de30de30de30de30de30de30de30de30de30de30
echo "[demo] UIs: http://127.0.1.1:8091/#token=$token http://127.0.1.2:8092/#token=$token http://127.0.1.3:8093/#token=$token (Ctrl-C stops all three)"
wait "${pids[@]}"
