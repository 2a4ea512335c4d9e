"""Drives a 3-node pika cluster through py-consul, unmodified.

Run by tests/consul_api.rs with PIKA_NODES=host:port,host:port,host:port,
PIKA_TOKEN (may do anything) and PIKA_NARROW_TOKEN (may read nothing
under PIKA_PREFIX). Prints one line per check; exits 1 at the first that
fails.
"""

import os
import sys
import threading
import time

import consul

nodes = [n.rsplit(":", 1) for n in os.environ["PIKA_NODES"].split(",")]
token = os.environ["PIKA_TOKEN"]
narrow = os.environ["PIKA_NARROW_TOKEN"]
prefix = os.environ.get("PIKA_PREFIX", "py")
c = [consul.Consul(host=h, port=int(p), token=token) for h, p in nodes]


def check(condition, what):
    if not condition:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def key(name):
    return f"{prefix}/{name}"


# put on node 1, get on node 3 right after the answer
check(c[0].kv.put(key("app/a"), "one") is True, "put answers True")
_, item = c[2].kv.get(key("app/a"))
check(item is not None and item["Value"] == b"one", "a put on node 1 is read on node 3")
check(item["CreateIndex"] == item["ModifyIndex"] > 0, "a new key's CreateIndex is its ModifyIndex")
created = item["CreateIndex"]

# flags
check(c[1].kv.put(key("app/flagged"), "x", flags=42) is True, "put with flags")
_, item = c[2].kv.get(key("app/flagged"))
check(item["Flags"] == 42, "flags are kept")

# recurse and keys with a separator
c[1].kv.put(key("app/sub/b"), "two")
_, items = c[0].kv.get(key("app/"), recurse=True)
check(
    [i["Key"] for i in items] == [key("app/a"), key("app/flagged"), key("app/sub/b")],
    "recurse lists every key under the prefix",
)
_, keys = c[2].kv.get(key("app/"), keys=True, separator="/")
check(keys == [key("app/a"), key("app/flagged"), key("app/sub/")], "keys roll up at the separator")
_, keys = c[2].kv.get(key("app/"), keys=True)
check(len(keys) == 3, "keys without a separator lists every key")

# check-and-set
_, item = c[0].kv.get(key("app/a"))
index = item["ModifyIndex"]
check(c[1].kv.put(key("app/a"), "two", cas=index) is True, "cas at the current index succeeds")
check(c[2].kv.put(key("app/a"), "three", cas=index) is False, "cas at an old index fails")
check(c[0].kv.put(key("app/a"), "four", cas=0) is False, "cas=0 on an existing key fails")
check(c[0].kv.put(key("app/new"), "n", cas=0) is True, "cas=0 on a new key creates it")
_, item = c[2].kv.get(key("app/a"))
check(item["Value"] == b"two", "the failed cas writes changed nothing")
check(item["CreateIndex"] == created and item["ModifyIndex"] > index, "CreateIndex stays, ModifyIndex moves")

# binary values round-trip byte for byte
blob = bytes(range(256)) * 4
check(c[0].kv.put(key("blob"), blob) is True, "put of binary data")
_, item = c[2].kv.get(key("blob"))
check(item["Value"] == blob, "binary data round-trips byte for byte")

# a blocking query on node 3 returns soon after a write on node 1
delays = []
for attempt in range(3):
    index, _ = c[2].kv.get(key("watched"))
    answered = {}

    def write_later():
        time.sleep(0.3)
        c[0].kv.put(key("watched"), f"v{attempt}")
        answered["at"] = time.monotonic()

    writer = threading.Thread(target=write_later)
    writer.start()
    new_index, item = c[2].kv.get(key("watched"), index=index, wait="10s")
    returned = time.monotonic()
    writer.join()
    check(new_index != index and item["Value"] == f"v{attempt}".encode(), "a blocking query sees the write")
    delays.append(returned - answered["at"])
print(f"blocking query returned {[round(d * 1000, 1) for d in delays]} ms after the write's answer")
# The machine is shared and noisy: the best of three must be within 100 ms,
# and none may be late by more than a second.
check(min(delays) < 0.1 and max(delays) < 1.0, "a blocking query returns within 100 ms of a write on another node")

# a blocking query that times out keeps its index
index, _ = c[1].kv.get(key("app/a"))
started = time.monotonic()
same, _ = c[1].kv.get(key("app/a"), index=index, wait="1s")
took = time.monotonic() - started
check(same == index and 0.9 <= took < 5, f"a blocking query times out after its wait with the same index ({took:.2f} s)")

# delete recurse
check(c[1].kv.delete(key("app/"), recurse=True) is True, "delete recurse")
_, items = c[2].kv.get(key("app/"), recurse=True)
check(items is None, "nothing is left under the prefix")
_, item = c[0].kv.get(key("blob"))
check(item is not None, "keys outside the prefix stay")

# a token without scope is refused
n = consul.Consul(host=nodes[1][0], port=int(nodes[1][1]), token=narrow)
try:
    n.kv.get(key("blob"))
    check(False, "a token without read scope is refused")
except consul.ACLPermissionDenied:
    check(True, "a token without read scope is refused (403)")
try:
    n.kv.put(key("blob"), "overwritten")
    check(False, "a token without write scope is refused")
except consul.ACLPermissionDenied:
    check(True, "a token without write scope is refused (403)")
_, item = c[0].kv.get(key("blob"))
check(item["Value"] == blob, "the refused write changed nothing")
print("all checks passed")
