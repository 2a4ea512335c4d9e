#!/usr/bin/env python3
"""How long a read right after a write waits, on another node.

    python3 benches/read_after_write.py LEADER FOLLOWER SECONDS TOKEN

LEADER and FOLLOWER are host:port of two pika nodes. One connection writes
one of 8 paths through LEADER, and as soon as the write is answered a
second connection reads that path on FOLLOWER; the read waits there until
the write is applied (a pending path). Prints the reads' p50 and p90 in
milliseconds. Used by `ab-wrk.sh` while other clients load the cluster:
on an idle one it is the commit's trip to the follower.
"""
import http.client
import sys
import time


def main():
    if len(sys.argv) != 5:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    leader, follower, seconds, token = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    writes = http.client.HTTPConnection(leader, timeout=30)
    reads = http.client.HTTPConnection(follower, timeout=30)
    waits = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        path = f"/api/v1/file/read-after-write/{n % 8}"
        writes.request("POST", path, body='{"meta":{"format":"text"},"data":"eHh4"}', headers=headers)
        answer = writes.getresponse()
        answer.read()
        if answer.status != 201:
            sys.exit(f"read_after_write: the write answered {answer.status}")
        started = time.perf_counter()
        reads.request("GET", path, headers=headers)
        answer = reads.getresponse()
        answer.read()
        waits.append(time.perf_counter() - started)
        if answer.status != 200:
            sys.exit(f"read_after_write: the read answered {answer.status}")
    waits.sort()
    if not waits:
        sys.exit("read_after_write: no write was answered in time")
    p50 = waits[len(waits) // 2] * 1e3
    p90 = waits[int(len(waits) * 0.9)] * 1e3
    print(f"{p50:.1f}/{p90:.1f}")


if __name__ == "__main__":
    main()
