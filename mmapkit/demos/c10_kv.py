"""KV: kill -9 mid-write loses nothing acknowledged; processes share exact counters;
one flipped byte costs one record, not the store."""

from __future__ import annotations

import os
import signal
import struct
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from ..kv import KV

TITLE = "KV store: kill -9 mid-write, multi-process counters, a damaged byte salvaged"


def _writer(path: Path, ack: int) -> None:
    code = 1
    try:
        with KV(path, capacity=4096) as kv:  # tiny capacity: growth and compaction happen
            i = 0
            while True:
                kv[f"key{i % 300}"] = [i, "x" * (i % 90)]
                os.write(ack, struct.pack("<I", i))
                i += 1
    finally:
        os._exit(code)


def _counter(path: Path, n: int) -> None:
    code = 1
    try:
        with KV(path, multiprocess=True, capacity=4096) as kv:
            for _ in range(n):
                kv.update_with("count", lambda v: (v or 0) + 1)
        code = 0
    finally:
        os._exit(code)


def run(workdir: Path, say: Callable[[str], None]) -> None:
    # 1. kill -9 in the middle of writing.
    path = workdir / "crash.kv"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _writer(path, w)
    os.close(w)
    data = b""
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # keep draining: a full pipe would stall the writer
        data += os.read(r, 65536)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    last = struct.unpack_from("<I", data, len(data) - len(data) % 4 - 4)[0]
    with KV(path) as kv:
        stats = kv.statistics()
        lost = [i for i in range(max(0, last - 299), last + 1)
                if kv.get(f"key{i % 300}", [None])[0] not in (i, last + 1)]
    if lost or not KV.check(path).ok:
        raise RuntimeError(f"acknowledged writes lost after kill -9: {lost[:5]}")
    say(f"writer killed with SIGKILL after {last + 1:,} acknowledged sets "
        f"({stats.compactions} compactions on the way): every one reads back, check() is clean")

    # 2. Two processes, one counter, no lost updates.
    path = workdir / "count.kv"
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            _counter(path, 500)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError("a counter process failed")
    with KV(path, multiprocess=True) as kv:
        total = kv["count"]
    if total != 1000:
        raise RuntimeError(f"counter is {total}, expected 1000")
    say(f"2 processes x 500 update_with() increments = {total} (MMKV-style lock-free "
        "readers, flock-serialized writers)")

    # 3. One flipped byte in the middle of the file.
    path = workdir / "damaged.kv"
    with KV(path) as kv:
        for i in range(100):
            kv[f"k{i}"] = i
        middle = kv.statistics().committed_bytes // 2
    raw = bytearray(path.read_bytes())
    raw[middle] ^= 0x55
    path.write_bytes(bytes(raw))
    report = KV.check(path)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with KV(path) as kv:
            kept = len(kv)
    if report.ok or kept != 99:
        raise RuntimeError(f"damage not contained: ok={report.ok}, kept {kept} of 100")
    say(f"flipped one byte at offset {middle}: check() reports {report.lost_bytes} bytes in "
        f"{len(report.damaged)} record lost, open kept {kept} of 100 keys (MMKV would wipe "
        "or silently roll back)")
