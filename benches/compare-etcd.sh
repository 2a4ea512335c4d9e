#!/usr/bin/env bash
# pika and etcd side by side: a 3-node etcd on 127.0.2.1-3 (default
# durability: every commit fsynced on a quorum) and a 3-node pika cluster on
# 127.0.1.80-82, the same writes and reads from the same client in one run.
#
#   apt-get install etcd-server     # this script installs nothing
#   benches/compare-etcd.sh         # quick: 2 rounds of 1.5 s rows per case
#   benches/compare-etcd.sh --full  # 3 rounds of 5 s rows per case (~4 min)
#
# etcd is driven through its HTTP/JSON gateway (/v3/kv/put, /v3/kv/range),
# so both servers see the same HTTP/1.1 + JSON + base64 client. The gateway
# costs etcd an in-process gRPC hop that its native client would not pay.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null 2>&1; then
  echo "compare-etcd: etcd not found; install Debian's etcd-server (apt-get install etcd-server)" >&2
  exit 2
fi

# shellcheck source=benches/scratch.sh
source benches/scratch.sh

start_etcd 3 "$dir"
echo "etcd $(etcd --version | head -1 | awk '{print $3}') on 127.0.2.1-3, data in $dir"

# The bench waits for etcd's leader itself (30 s at most).
cargo bench --bench fanout -- \
  --etcd http://127.0.2.1:2379,http://127.0.2.2:2379,http://127.0.2.3:2379 "$@"
