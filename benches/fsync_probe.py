#!/usr/bin/env python3
"""What one log flush costs on this disk, by the way the log grows.

    python3 benches/fsync_probe.py [DIR]     # DIR defaults to target/

Writes 2 000 records of 1.1 KiB (one 1 KiB value with its framing), each
followed by a flush, four ways: appending to a new file or overwriting a
file written with zeros beforehand (its size does not change, so ext4
commits no journal entry), each with `fdatasync` after the write or with
O_DSYNC. Prints p50/p99 latency, CPU (user + system) and voluntary
context switches per record. Run twice and compare: the disk is shared.
"""
import os
import resource
import sys
import time

RECORDS = 2000
RECORD = b"x" * 1100


def probe(directory, name, preallocate, odsync):
    path = os.path.join(directory, f"fsync-probe-{os.getpid()}")
    if preallocate:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        os.write(fd, b"\0" * (RECORDS * len(RECORD) + 4096))
        os.fsync(fd)
        os.close(fd)
    flags = os.O_RDWR | os.O_CREAT | (os.O_DSYNC if odsync else 0)
    if not preallocate:
        flags |= os.O_TRUNC
    fd = os.open(path, flags)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF)
        latencies = []
        for i in range(RECORDS):
            start = time.perf_counter()
            os.pwrite(fd, RECORD, i * len(RECORD))
            if not odsync:
                os.fdatasync(fd)
            latencies.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / RECORDS
    switches = (after.ru_nvcsw - before.ru_nvcsw) / RECORDS
    print(
        f"{name:30s} p50 {latencies[RECORDS // 2] * 1e6:6.0f} us"
        f"  p99 {latencies[int(RECORDS * 0.99)] * 1e6:6.0f} us"
        f"  cpu/record {cpu * 1e6:5.1f} us  switches/record {switches:.1f}"
    )


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "target"
    os.makedirs(directory, exist_ok=True)
    probe(directory, "append + fdatasync", False, False)
    probe(directory, "overwrite zeros + fdatasync", True, False)
    probe(directory, "append, O_DSYNC", False, True)
    probe(directory, "overwrite zeros, O_DSYNC", True, True)


if __name__ == "__main__":
    main()
