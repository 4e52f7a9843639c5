"""mmapkit.KV side by side with lmdb, rocksdict, sqlite3 (WAL), dbm, diskcache and shelve.

Cases (16-byte str keys): set int, set 100-byte bytes, get, delete, open+load of a store of
N keys, RSS bytes per key, file size after two overwrite passes; then the same per-op cases
with mmapkit in multiprocess mode against the peers that are safe across processes (lmdb,
sqlite3, diskcache).  Every peer uses one transaction (or commit) per operation, and none
of them fsyncs per operation: the same promise as ours (survives a crash of the process,
not of the OS).  Each set sample overwrites its keys twice, so mmapkit's compactions are
paid inside every sample.  Targets: set >= 3x lmdb and >= 1.5x rocksdict, get >= 3x both.

Contended cases (unrelated processes started at the same moment on one store):
"4 x 2000 locked increments" (update_with; lmdb: one write transaction each; the floor:
four C processes doing flock, read, write, unlock on one file, built with ``cc`` when
there is one) in ms for the whole run, with the spread of the processes' finishing
times; and "2 x 50k set int" in aggregate ops/s.  Targets: increments >= 1.3x lmdb,
aggregate >= 190k/s.
"""

from __future__ import annotations

import argparse
import contextlib
import dbm
import os
import shelve
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import _harness

OURS = _harness.OURS
_INT = struct.Struct("<q")


class Store:
    """One implementation behind the same five calls."""

    name = ""
    multiprocess_safe = False

    def __init__(self, path: str, multiprocess: bool = False) -> None:
        self.path = path

    def set_int(self, k: str, v: int) -> None:
        raise NotImplementedError

    def set_bytes(self, k: str, v: bytes) -> None:
        raise NotImplementedError

    def get(self, k: str) -> Any:
        raise NotImplementedError

    def delete(self, k: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Ours(Store):
    name = OURS
    multiprocess_safe = True

    def __init__(self, path: str, multiprocess: bool = False) -> None:
        from mmapkit.kv import KV

        self.kv = KV(path + ".kv", multiprocess=multiprocess)
        kv = self.kv
        self.set_int = kv.__setitem__  # type: ignore[method-assign,assignment]
        self.set_bytes = kv.__setitem__  # type: ignore[method-assign,assignment]
        self.get = kv.__getitem__  # type: ignore[method-assign,assignment]
        self.delete = kv.__delitem__  # type: ignore[method-assign,assignment]

    def close(self) -> None:
        self.kv.close()


class Lmdb(Store):
    name = "lmdb"
    multiprocess_safe = True

    def __init__(self, path: str, multiprocess: bool = False) -> None:
        import lmdb

        self.env = lmdb.open(path + ".lmdb", map_size=1 << 31, sync=False, metasync=False)

    def set_int(self, k: str, v: int) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(k.encode(), _INT.pack(v))

    def set_bytes(self, k: str, v: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(k.encode(), v)

    def get(self, k: str) -> Any:
        with self.env.begin() as txn:
            return txn.get(k.encode())

    def delete(self, k: str) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(k.encode())

    def close(self) -> None:
        self.env.close()


class Rocks(Store):
    name = "rocksdict"

    def __init__(self, path: str, multiprocess: bool = False) -> None:
        import rocksdict

        self.db = rocksdict.Rdict(path + ".rocks")
        db: Any = self.db  # (typed or not, depending on the rocksdict installed)
        # Bound like ours: the timed call is the store's own, with no wrapper frame.
        self.set_int = db.__setitem__  # type: ignore[method-assign]
        self.set_bytes = db.__setitem__  # type: ignore[method-assign]
        self.get = db.__getitem__  # type: ignore[method-assign]
        self.delete = db.__delitem__  # type: ignore[method-assign]

    def close(self) -> None:
        self.db.close()


class Sqlite(Store):
    name = "sqlite3 WAL"
    multiprocess_safe = True

    def __init__(self, path: str, multiprocess: bool = False) -> None:
        self.db = sqlite3.connect(path + ".sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID")

    def set_int(self, k: str, v: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (k, v))

    def set_bytes(self, k: str, v: bytes) -> None:
        self.set_int(k, v)

    def get(self, k: str) -> Any:
        return self.db.execute("SELECT v FROM kv WHERE k = ?", (k,)).fetchone()[0]

    def delete(self, k: str) -> None:
        self.db.execute("DELETE FROM kv WHERE k = ?", (k,))

    def close(self) -> None:
        self.db.close()


class Dbm(Store):
    name = "dbm"

    def __init__(self, path: str, multiprocess: bool = False) -> None:
        self.db: Any = dbm.open(path + ".dbm", "c")  # noqa: SIM115 (closed in close())
        self.name = f"dbm ({dbm.whichdb(path + '.dbm') or 'dbm'})"

    def set_int(self, k: str, v: int) -> None:
        self.db[k] = _INT.pack(v)

    def set_bytes(self, k: str, v: bytes) -> None:
        self.db[k] = v

    def get(self, k: str) -> Any:
        return self.db[k]

    def delete(self, k: str) -> None:
        del self.db[k]

    def close(self) -> None:
        self.db.close()


class DiskCache(Store):
    name = "diskcache"
    multiprocess_safe = True

    def __init__(self, path: str, multiprocess: bool = False) -> None:
        import diskcache

        self.db = diskcache.Cache(path + ".diskcache")

    def set_int(self, k: str, v: Any) -> None:
        self.db[k] = v

    def set_bytes(self, k: str, v: bytes) -> None:
        self.set_int(k, v)

    def get(self, k: str) -> Any:
        return self.db[k]

    def delete(self, k: str) -> None:
        del self.db[k]

    def close(self) -> None:
        self.db.close()


class Shelve(Store):
    name = "shelve"

    def __init__(self, path: str, multiprocess: bool = False) -> None:
        self.db = shelve.open(path + ".shelve")  # noqa: SIM115 (closed in close())

    def set_int(self, k: str, v: Any) -> None:
        self.db[k] = v

    def set_bytes(self, k: str, v: bytes) -> None:
        self.set_int(k, v)

    def get(self, k: str) -> Any:
        return self.db[k]

    def delete(self, k: str) -> None:
        del self.db[k]

    def close(self) -> None:
        self.db.close()


IMPLS: list[type[Store]] = [Ours, Lmdb, Rocks, Sqlite, Dbm, DiskCache, Shelve]


def _size(path: str) -> int:
    """Bytes on disk of everything the store made next to ``path``."""
    base = os.path.dirname(path)
    total = 0
    for name in os.listdir(base):
        full = os.path.join(base, name)
        if not name.startswith(os.path.basename(path)):
            continue
        if os.path.isdir(full):
            for root, _, files in os.walk(full):
                total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        else:
            total += os.path.getsize(full)
    return total


@contextlib.contextmanager
def _scratch(tmp: str, tag: str) -> Iterator[str]:
    """A path in a fresh directory under ``tmp``, removed with everything in it after."""
    d = tempfile.mkdtemp(dir=tmp)
    try:
        yield os.path.join(d, tag)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def _opened(cls: type[Store], tmp: str, tag: str, multiprocess: bool = False) -> Iterator[Store]:
    with _scratch(tmp, tag) as path:
        store = cls(path, multiprocess)
        try:
            yield store
        finally:
            store.close()


def _sized(fn: Callable[[list[str]], None], keys: list[str], budget: float) -> list[str]:
    """The prefix of ``keys`` that ``fn`` gets through in about ``budget`` seconds.

    Some peers run at a thousand deletes per second: they are measured on fewer keys
    rather than stalling the run (rates are per operation either way).
    """
    probe = keys[:500]
    t0 = time.perf_counter()
    fn(probe)
    rate = len(probe) / max(time.perf_counter() - t0, 1e-9)
    return keys[: min(len(keys), max(len(probe), int(rate * budget)))]


def _ops_cases(report: _harness.Report, cls: type[Store], tmp: str, n: int, repeat: int,
               multiprocess: bool, budget: float) -> None:
    suffix = " (multiprocess)" if multiprocess else ""
    all_keys = [f"{i:016d}" for i in range(n)]
    payload = b"v" * 100
    with _opened(cls, tmp, "ops", multiprocess) as s:
        name = s.name
        set_int, set_bytes, get, delete = s.set_int, s.set_bytes, s.get, s.delete

        def do_set_int(keys: list[str]) -> None:
            for k in keys:
                set_int(k, 12345)

        def do_set_bytes(keys: list[str]) -> None:
            for k in keys:
                set_bytes(k, payload)

        def do_get(keys: list[str]) -> None:
            for k in keys:
                get(k)

        def do_delete(keys: list[str]) -> None:
            for k in keys:
                delete(k)

        written = 0
        for case, fn in (("set int", do_set_int), ("set 100 B", do_set_bytes),
                         ("get", do_get)):
            keys = _sized(fn, all_keys, budget)
            if fn is do_get:
                keys = keys[:written]  # only keys the sets wrote
            written = max(written, len(keys))
            # A write sample overwrites the keys twice: mmapkit compacts about once per two
            # overwrites of its live set, so every sample carries its share of compaction
            # (one pass per sample would let the median pick passes between compactions).
            passes = 1 if fn is do_get else 2

            def sample(fn: Callable[[list[str]], None] = fn, keys: list[str] = keys,
                       passes: int = passes) -> None:
                for _ in range(passes):
                    fn(keys)

            report.add(case + suffix, name,
                       _harness.rate(sample, len(keys) * passes, repeat), "ops/s")
        do_set_bytes(all_keys[:500])
        keys = _sized(do_delete, all_keys, budget)
        rates = []
        for _ in range(repeat):
            do_set_bytes(keys)
            t0 = time.perf_counter()
            do_delete(keys)
            rates.append(len(keys) / (time.perf_counter() - t0))
        report.add("delete" + suffix, name, rates, "ops/s")


def _fill(cls: type[Store], path: str, n: int, passes: int = 1) -> str:
    s = cls(path)
    name = s.name
    payload = b"v" * 100
    for _ in range(passes):
        for i in range(n):
            s.set_bytes(f"{i:016d}", payload)
    s.close()
    return name


def _load_case(report: _harness.Report, cls: type[Store], tmp: str, n: int,
               repeat: int) -> None:
    with _scratch(tmp, "load") as path:
        name = _fill(cls, path, n)
        probe = f"{n - 1:016d}"

        def open_and_get() -> None:
            s = cls(path)
            s.get(probe)
            s.close()

        label = f"open+load {n // 1000}k keys"
        report.add(label, name, _harness.timings(open_and_get, repeat), "s",
                   higher_is_better=False)


def _size_case(report: _harness.Report, cls: type[Store], tmp: str, n: int) -> None:
    with _scratch(tmp, "size") as path:
        name = _fill(cls, path, n, passes=3)
        report.add("file bytes after 2 overwrite passes", name, [_size(path)], "bytes",
                   higher_is_better=False)


_RSS_CHILD = """
import os, sys
sys.path[:0] = sys.argv[4:]
from bench.kv import IMPLS
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
cls = [c for c in IMPLS if c.__name__ == sys.argv[1]][0]
n = int(sys.argv[3])
before = rss()
s = cls(sys.argv[2])
for i in range(n):
    s.get(f"{i:016d}")
print((rss() - before) / n)
"""


def _rss_case(report: _harness.Report, cls: type[Store], tmp: str, n: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    with _scratch(tmp, "rss") as path:
        name = _fill(cls, path, n)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(_RSS_CHILD), cls.__name__,
                              path, str(n), root], capture_output=True, text=True, timeout=300)
        if out.returncode == 0:
            report.add("RSS bytes per key (all read)", name, [float(out.stdout)], "bytes",
                       higher_is_better=False)


# --- contended: several processes on one store ---------------------------------------

_CONTEND_CHILD = """
import os, sys, time
sys.path[:0] = sys.argv[5:]
from bench.kv import contend
print(*contend(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])), flush=True)
"""


def contend(impl: str, case: str, path: str, n: int) -> tuple[float, float]:
    """One process of a contended case: (seconds of work, wall-clock time it finished).

    Prints "ready" once imported and open, then reads the common start time from stdin
    (interpreter start-up is not part of the case)."""
    if impl == OURS:
        from mmapkit.kv import KV

        kv = KV(path + ".kv", multiprocess=True)
        inc: Callable[[], Any] = lambda: kv.update_with("n", lambda v: (v or 0) + 1)  # noqa: E731
        put: Callable[[str], Any] = lambda k: kv.__setitem__(k, 12345)  # noqa: E731
    else:
        import lmdb

        env = lmdb.open(path + ".lmdb", map_size=1 << 30, sync=False, metasync=False,
                        lock=True)

        def inc() -> None:
            with env.begin(write=True) as txn:
                raw = txn.get(b"n")
                txn.put(b"n", _INT.pack((_INT.unpack(raw)[0] if raw else 0) + 1))

        def put(k: str) -> None:
            with env.begin(write=True) as txn:
                txn.put(k.encode(), _INT.pack(12345))
    keys = [f"{os.getpid()}-{i:08d}" for i in range(n)]
    print("ready", flush=True)
    go = float(sys.stdin.readline())
    while time.time() < go:
        pass
    t0 = time.perf_counter()
    if case == "inc":
        for _ in range(n):
            inc()
    else:
        for k in keys:
            put(k)
    return time.perf_counter() - t0, time.time()


def _contended_run(impl: str, case: str, tmp: str, procs: int, n: int) -> tuple[float, float]:
    """(wall seconds from the common start to the last finish, spread of finishing times)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with _scratch(tmp, "contend") as path:
        if impl == OURS:  # created up front: every process opens an existing store
            from mmapkit.kv import KV

            KV(path + ".kv", multiprocess=True).close()
        children = [_harness.spawn("-c", textwrap.dedent(_CONTEND_CHILD), impl, case, path,
                                   str(n), root) for _ in range(procs)]
        for c in children:
            _harness.ready(c, f"{impl} {case} child")
        go = time.time() + 0.05
        for c in children:  # all of them first: communicate() waits for the child's end
            assert c.stdin is not None
            c.stdin.write(f"{go}\n")
            c.stdin.flush()
        ends = []
        for c in children:
            out, _ = c.communicate(timeout=600)
            if c.returncode:
                raise RuntimeError(f"{impl} {case} child failed")
            ends.append(float(out.split()[1]))
        if impl == OURS and case == "inc":
            from mmapkit.kv import KV

            with KV(path + ".kv", multiprocess=True) as kv:
                assert kv["n"] == procs * n, "lost increments"
    return max(ends) - go, max(ends) - min(ends)


_C_FLOCK = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int procs = atoi(argv[2]), n = atoi(argv[3]);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int p = 0; p < procs; p++) {
        if (fork() == 0) {
            int fd = open(argv[1], O_RDWR);
            for (int i = 0; i < n; i++) {
                long v = 0;
                flock(fd, LOCK_EX);
                pread(fd, &v, sizeof v, 0);
                v++;
                pwrite(fd, &v, sizeof v, 0);
                flock(fd, LOCK_UN);
            }
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%f\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
"""


def c_flock_floor(procs: int, n: int, repeat: int) -> list[float] | None:
    """Seconds for ``procs`` C processes to do ``n`` locked increments each, or None."""
    with _harness.c_program(_C_FLOCK, "flock", linux_only=False) as exe, \
            tempfile.TemporaryDirectory(prefix="mmapkit-bench-flock-") as tmp:
        if exe is None:
            return None
        data = os.path.join(tmp, "counter")
        out = []
        for _ in range(repeat):
            with open(data, "wb") as f:
                f.write(bytes(8))
            res = subprocess.run([exe, data, str(procs), str(n)], capture_output=True,
                                 text=True, timeout=600, check=True)
            out.append(float(res.stdout))
            with open(data, "rb") as f:
                assert int.from_bytes(f.read(8), "little") == procs * n
        return out


FLOCK_FLOOR = "C flock (floor)"


def _contended_cases(report: _harness.Report, impls: list[str], tmp: str, repeat: int,
                     quick: bool) -> None:
    procs, n = 4, 2000
    case = f"{procs} x {n} locked increments"
    # Interleaved, at least 9 runs each (a run is 30-60 ms): four processes on two cores
    # swing from run to run, and a drift of the machine must not fall on one side only.
    runs: dict[str, list[tuple[float, float]]] = {impl: [] for impl in impls}
    for _ in range(max(repeat, 9)):
        for impl in impls:
            runs[impl].append(_contended_run(impl, "inc", tmp, procs, n))
    for impl in impls:
        got = runs[impl]
        report.add(case, impl, [r[0] * 1e3 for r in got], "ms", higher_is_better=False,
                   note="spread of finishing times (median): "
                   f"{sorted(r[1] for r in got)[len(got) // 2] * 1e3:.1f} ms")
    floor = c_flock_floor(procs, n, repeat)
    if floor is None:
        report.skip(FLOCK_FLOOR, "no C compiler (cc) here could build it")
    else:
        report.add(case, FLOCK_FLOOR, [x * 1e3 for x in floor], "ms", higher_is_better=False,
                   note="four C processes, flock/read/write/unlock: the machine's floor")
    n = 10_000 if quick else 50_000
    case = f"2 x {n // 1000}k set int (aggregate)"
    for impl in impls:
        sets = [_contended_run(impl, "set", tmp, 2, n) for _ in range(max(1, repeat // 2))]
        report.add(case, impl, [2 * n / r[0] for r in sets], "ops/s")
    # (times: 1.3x lmdb's speed is at most 1/1.3 of its time)
    report.target(f"{procs} x 2000 locked increments", "lmdb", "<=", round(1 / 1.3, 3))


def _available(cls: type[Store], tmp: str) -> str | None:
    try:
        with _opened(cls, tmp, "probe"):
            return None
    except ImportError as exc:
        return f"not installed ({exc.name})"


def run(report: _harness.Report, args: argparse.Namespace) -> None:
    n = 20_000 if args.quick else 100_000
    big = 0 if args.quick else 1_000_000
    repeat = args.repeat
    budget = 0.3 if args.quick else 2.0
    with tempfile.TemporaryDirectory(prefix="mmapkit-bench-kv-") as tmp:
        impls = _harness.runnable(report, args, IMPLS, lambda cls: _available(cls, tmp))
        for cls in impls:
            _ops_cases(report, cls, tmp, n, repeat, multiprocess=False, budget=budget)
        for cls in impls:
            if cls.multiprocess_safe:
                _ops_cases(report, cls, tmp, n, repeat, multiprocess=True, budget=budget)
        for cls in impls:
            _load_case(report, cls, tmp, n, max(1, repeat // 2))
            if big and cls in (Ours, Lmdb, Rocks, Sqlite):
                _load_case(report, cls, tmp, big, 1)
            _size_case(report, cls, tmp, n)
            _rss_case(report, cls, tmp, n)
        _contended_cases(report, [c.name for c in impls if c in (Ours, Lmdb)], tmp,
                         repeat, args.quick)
    for case in ("set int", "set 100 B"):
        report.target(case, "lmdb", ">=", 3.0)
        report.target(case, "rocksdict", ">=", 1.5)
    report.target("get", "lmdb", ">=", 3.0)
    report.target("get", "rocksdict", ">=", 3.0)


def main(argv: list[str] | None = None) -> int:
    return _harness.main_for("kv", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
