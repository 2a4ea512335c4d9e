# Sourced by the bench scripts after they `cd` to the repository: a scratch
# directory ($dir) and the processes they start ($pids), both gone when the
# script exits, on an error or Ctrl-C too; and what more than one of them
# starts or writes (an etcd cluster, wrk's scripts for pika's API).
dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# The admin token of the loopback example's configs.
token=pika_de30de30de30de30de30de30de30de30de30de30de30de30de30de30de30de30
# A 1 KiB value, base64 (pika's `data` and etcd's JSON gateway take it so).
value=$(python3 -c "import base64; print(base64.b64encode(b'x' * 1024).decode())")

# wrk scripts for pika's API over 1000 paths from a random start:
# $dir/post.lua writes the value, $dir/get.lua reads.
cat > "$dir/post.lua" <<LUA
local body = '{"meta":{"format":"text"},"data":"$value"}'
local n = math.random(0, 999)
request = function()
  n = (n + 1) % 1000
  return wrk.format("POST", string.format("/api/v1/file/bench/%06d", n),
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer $token"}, body)
end
LUA
cat > "$dir/get.lua" <<LUA
local n = math.random(0, 999)
request = function()
  n = (n + 1) % 1000
  return wrk.format("GET", string.format("/api/v1/data/bench/%06d", n),
    {["Authorization"] = "Bearer $token"})
end
LUA

# start_etcd N DIR: N etcd members with their defaults on 127.0.2.1..N
# (clients on :2379), data and logs under DIR, their pids added to $pids.
start_etcd() {
  local n=$1 data=$2 peers i
  peers=$(for i in $(seq 1 "$n"); do printf 'e%s=http://127.0.2.%s:2380,' "$i" "$i"; done)
  for i in $(seq 1 "$n"); do
    etcd --name "e$i" --data-dir "$data/e$i" \
      --listen-peer-urls "http://127.0.2.$i:2380" \
      --initial-advertise-peer-urls "http://127.0.2.$i:2380" \
      --listen-client-urls "http://127.0.2.$i:2379" \
      --advertise-client-urls "http://127.0.2.$i:2379" \
      --initial-cluster "${peers%,}" --initial-cluster-state new \
      --initial-cluster-token "pika-bench-$n" \
      --logger zap --log-level warn > "$data/e$i.log" 2>&1 &
    pids+=("$!")
  done
}

# Whether the pika node / the etcd member at URL leads.
pika_leads() {
  curl -s -H "Authorization: Bearer $token" "$1/api/v1/cluster/status" | grep -q '"is_leader":true'
}
etcd_leads() {
  curl -s -X POST "$1/v3/maintenance/status" -d '{}' |
    python3 -c 'import sys, json; j = json.load(sys.stdin); sys.exit(0 if j.get("leader") and j["leader"] == j["header"]["member_id"] else 1)' 2>/dev/null
}

# leader_of LEADS URL...: prints the 1-based position of the first URL
# whose node LEADS (pika_leads, etcd_leads) says leads, asking every half
# second for 30 s at most; fails if none does by then.
leader_of() {
  local leads=$1 i url
  shift
  for _ in $(seq 1 60); do
    sleep 0.5
    i=0
    for url in "$@"; do
      i=$((i + 1))
      if "$leads" "$url"; then
        echo "$i"
        return 0
      fi
    done
  done
  return 1
}
