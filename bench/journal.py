"""mmapkit.Journal side by side with persist-queue, diskcache.Deque, litequeue and a
sqlite3 WAL queue table.

Cases, 100-byte records: append from one process; append_many (100 a batch: one
transaction for the peers that have one); 4 producer processes (aggregate; each appends once
untimed -- its start-up: attach, lock thread -- then says ready, and all start together on
a time read from stdin); sequential read of everything from
another process (start-up not counted); tail latency append -> seen in another process
(p50/p99; blocking futex wait and spinning poll; sqlite polled for scale); consumer commit
rate (sqlite: an offsets table, one commit each); fetch GB/s of a served journal over TCP
and a Unix socket (RemoteReader, CRCs verified) vs raw ``mmapkit.send`` of the same bytes;
ours alone: reopen after kill -9 of a writer mid-append at 100 MB and 1 GB (a fresh process
opens and appends once) and power-loss recovery speed (every unsynced byte verified).

Every implementation promises the same as ours without ``sync``: an acknowledged record
survives a crash of the process, not of the OS (sqlite: WAL, synchronous=NORMAL).
persist-queue's file queue is not safe across processes, so it sits out the 4-producer
case.  Reading consumes for the queues (persist-queue get, litequeue pop) and iterates for
the logs (ours, diskcache.Deque, sqlite).  Targets (issue 12): append >= 50x persist-queue
and >= 30x diskcache.Deque, fetch >= 0.95x raw send; absolute goals (append >= 500k/s,
append_many >= 1.5M/s, 4 producers >= 300k/s, read >= 2M/s, tail p50 <= 20 us blocking,
<= 5 us spinning, commit >= 300k/s) are printed with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Iterator
from itertools import cycle, islice
from typing import Any

from . import _harness

OURS = _harness.OURS
RECORD = 100
_STAMP = struct.Struct("<q")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _value(i: int) -> bytes:
    return (b"%010d" % i).ljust(RECORD, b"x")


# --- implementations -------------------------------------------------------------------


class Impl:
    name = ""
    batch = True
    multiprocess = True
    scale = 1  # the slow peers run 1/scale of the records (rates are per second)

    def __init__(self, path: str) -> None:
        self.path = path

    def append(self, v: bytes) -> None:
        raise NotImplementedError

    def append_many(self, vs: list[bytes]) -> None:
        raise NotImplementedError

    def read_all(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Ours(Impl):
    name = OURS

    def __init__(self, path: str) -> None:
        super().__init__(path)
        from mmapkit.journal import Journal

        self.j = Journal(path, create=True)
        self.append = self.j.append  # type: ignore[method-assign,assignment]

    def append_many(self, vs: list[bytes]) -> None:
        self.j.append_many(vs)

    def read_all(self) -> int:
        n = 0
        with self.j.reader("earliest") as r:
            for _ in r:  # (record by record, as the peers' loops read)
                n += 1
        return n

    def close(self) -> None:
        self.j.close()


class SqliteWal(Impl):
    name = "sqlite3 WAL table"
    scale = 10

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.db = sqlite3.connect(path + ".db", isolation_level=None, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, v BLOB)")
        self.db.execute("CREATE TABLE IF NOT EXISTS offsets (name TEXT PRIMARY KEY, "
                        "off INTEGER)")

    def append(self, v: bytes) -> None:
        self.db.execute("INSERT INTO q (v) VALUES (?)", (v,))

    def append_many(self, vs: list[bytes]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT INTO q (v) VALUES (?)", [(v,) for v in vs])
        self.db.execute("COMMIT")

    def read_all(self) -> int:
        n = 0
        for _ in self.db.execute("SELECT id, v FROM q ORDER BY id"):
            n += 1
        return n

    def close(self) -> None:
        self.db.close()


class DiskcacheDeque(Impl):
    name = "diskcache.Deque"
    scale = 20

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import diskcache

        self.d = diskcache.Deque(directory=path + ".dc")
        self.append = self.d.append  # type: ignore[method-assign]

    def append_many(self, vs: list[bytes]) -> None:
        with self.d.transact():
            self.d.extend(vs)

    def read_all(self) -> int:
        return sum(1 for _ in self.d)

    def close(self) -> None:
        self.d.cache.close()


class PersistQueue(Impl):
    name = "persist-queue"
    batch = False
    multiprocess = False
    scale = 200

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import persistqueue

        self.q = persistqueue.Queue(path + ".pq", autosave=True)

    def append(self, v: bytes) -> None:
        self.q.put(v)

    def read_all(self) -> int:
        import persistqueue

        n = 0
        while True:
            try:
                self.q.get(block=False)
            except persistqueue.Empty:
                break
            n += 1
        self.q.task_done()
        return n


class LiteQueue(Impl):
    name = "litequeue"
    batch = False
    scale = 100

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import litequeue

        self.q = litequeue.LiteQueue(path + ".lq")

    def append(self, v: bytes) -> None:
        self.q.put(v.decode())  # litequeue stores str

    def read_all(self) -> int:
        n = 0
        while self.q.pop() is not None:
            n += 1
        return n

    def close(self) -> None:
        self.q.close()


IMPLS: list[type[Impl]] = [Ours, PersistQueue, DiskcacheDeque, LiteQueue, SqliteWal]


def by_name(name: str) -> type[Impl]:
    return next(c for c in IMPLS if c.name == name)


def _available(cls: type[Impl], tmp: str) -> str | None:
    try:
        impl = cls(os.path.join(tmp, f"probe-{IMPLS.index(cls)}"))
    except ImportError as exc:
        return f"not installed ({exc.name}); pip install 'mmapkit[bench]'"
    impl.close()
    return None


@contextlib.contextmanager
def _fresh(cls: type[Impl], tmp: str) -> Iterator[Impl]:
    impl = cls(os.path.join(tempfile.mkdtemp(prefix="run", dir=tmp), "q"))
    try:
        yield impl
    finally:
        impl.close()


def _fill(impl: Impl, n: int) -> None:
    values = [_value(i) for i in range(100)]
    if impl.batch:
        for _ in range(n // 100):
            impl.append_many(values)
    else:
        for i in range(n):
            impl.append(values[i % 100])


# --- child processes -------------------------------------------------------------------

_CHILD = """
import sys
sys.path[:0] = [sys.argv[1]]
from bench.journal import child
child(sys.argv[2:])
"""


def _spawn(*args: str) -> subprocess.Popen[str]:
    return _harness.spawn("-c", textwrap.dedent(_CHILD), ROOT, *args)


_ready = _harness.ready


def child(argv: list[str]) -> None:
    """Entry of every child process: ``role impl path n``."""
    role, name, path, n = argv[0], argv[1], argv[2], int(argv[3])
    if role in ("crash-append", "reopen"):
        _crash_child(role, path)
        return
    impl = by_name(name)(path)
    if role == "produce":
        values = [_value(i) for i in range(100)]
        append = impl.append
        # one append before the start (not timed, as the read case's start-up): the
        # first append of a process attaches to the journal (opens and maps the active
        # segment, starts the lock's releaser thread; a peer's first insert prepares
        # its statements), which in --quick's 5,000 appends a producer was a fifth of
        # the window
        append(values[0])
        print("ready", flush=True)
        go = float(sys.stdin.readline())
        while time.time() < go:
            pass
        for v in islice(cycle(values), n):  # (as the append case: inputs prebuilt)
            append(v)
        print(time.time(), flush=True)
    elif role == "read":
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = time.perf_counter()
        got = impl.read_all()
        print(time.perf_counter() - t0, got, flush=True)
    elif role in ("tail-block", "tail-spin", "tail-poll"):
        print(json.dumps(_follow(impl, role, n)), flush=True)
    impl.close()


def _crash_child(role: str, path: str) -> None:
    from mmapkit.journal import Journal
    if role == "crash-append":  # appends until it is killed (-9, mid-append)
        j = Journal(path)
        values = [_value(i) for i in range(100)]
        print("ready", flush=True)
        while True:
            j.append_many(values)
            for v in values:
                j.append(v)
    t0 = time.perf_counter()  # reopen: a writer ready again = opened and appended once
    j = Journal(path)
    j.append(b"after the crash")
    took = time.perf_counter() - t0
    j.close()
    print(took, flush=True)


def _follow(impl: Impl, role: str, n: int) -> list[float]:
    """Latency in microseconds of ``n`` records stamped with CLOCK_MONOTONIC by the
    writer, measured when this process sees each."""
    lat: list[float] = []
    now = time.monotonic_ns
    if isinstance(impl, Ours):
        r = impl.j.reader("latest", follow=True, timeout=30)
        print("ready", flush=True)
        if role == "tail-block":
            for rec in r:
                lat.append((now() - _STAMP.unpack_from(rec.value)[0]) / 1e3)
                if len(lat) == n:
                    break
        else:
            while len(lat) < n:
                for rec in r.poll(500, timeout=0):
                    lat.append((now() - _STAMP.unpack_from(rec.value)[0]) / 1e3)
        return lat
    assert isinstance(impl, SqliteWal)
    last = impl.db.execute("SELECT coalesce(max(id), 0) FROM q").fetchone()[0]
    print("ready", flush=True)
    while len(lat) < n:
        for rid, v in impl.db.execute("SELECT id, v FROM q WHERE id > ? ORDER BY id",
                                      (last,)):
            lat.append((now() - _STAMP.unpack_from(v)[0]) / 1e3)
            last = rid
    return lat


# --- cases -----------------------------------------------------------------------------


def _append_case(report: _harness.Report, impls: list[type[Impl]], tmp: str, n: int,
                 repeat: int) -> None:
    values = [_value(i) for i in range(100)]
    for cls in impls:
        k = max(1000, n // cls.scale)
        samples = []
        for _ in range(repeat):
            with _fresh(cls, tmp) as impl:
                append = impl.append
                # (the same prebuilt values for every implementation, handed out by C
                # iterators: the loop times the appends, not an index and a modulo each)
                todo = islice(cycle(values), k)
                t0 = time.perf_counter()
                for v in todo:
                    append(v)
                samples.append(k / (time.perf_counter() - t0))
        report.add("append", cls.name, samples, "rec/s")
    for cls in impls:
        if not cls.batch:
            continue
        k = max(1000, n * 5 // cls.scale) // 100 * 100
        samples = []
        for _ in range(repeat):
            with _fresh(cls, tmp) as impl:
                t0 = time.perf_counter()
                for _ in range(k // 100):
                    impl.append_many(values)
                samples.append(k / (time.perf_counter() - t0))
        report.add("append_many (100 a batch)", cls.name, samples, "rec/s")


def _producers_case(report: _harness.Report, impls: list[type[Impl]], tmp: str, n: int,
                    repeat: int, procs: int = 4) -> None:
    case = f"{procs} producer processes (aggregate)"
    for cls in impls:
        if not cls.multiprocess:
            continue
        k = max(500, n // (procs * cls.scale))
        samples = []
        for _ in range(max(1, repeat // 2)):
            with _fresh(cls, tmp) as impl:
                children = [_spawn("produce", cls.name, impl.path, str(k))
                            for _ in range(procs)]
                for c in children:
                    _ready(c)
                go = time.time() + 0.05
                for c in children:  # every child gets the start time before any is
                    assert c.stdin is not None  # waited for (communicate() one by one
                    c.stdin.write(f"{go}\n")    # ran the producers one after another)
                    c.stdin.flush()
                ends = []
                for c in children:
                    out, _ = c.communicate(timeout=600)
                    if c.returncode:
                        raise RuntimeError(f"{cls.name} producer failed")
                    ends.append(float(out.split()[-1]))
                samples.append(procs * k / (max(ends) - go))
                if cls is Ours:
                    got = impl.read_all()  # (each producer's untimed first append too)
                    assert got == procs * (k + 1), f"lost records: {got} of {procs * (k + 1)}"
        report.add(case, cls.name, samples, "rec/s")


def _read_case(report: _harness.Report, impls: list[type[Impl]], tmp: str, n: int,
               repeat: int) -> None:
    for cls in impls:
        k = max(1000, n // cls.scale) // 100 * 100
        samples = []
        for _ in range(max(1, repeat // 2)):
            with _fresh(cls, tmp) as impl:
                _fill(impl, k)
                c = _spawn("read", cls.name, impl.path, "0")
                _ready(c)
                out, _ = c.communicate("go\n", timeout=600)
                secs, got = out.split()
                if int(got) != k:
                    raise RuntimeError(f"{cls.name} read {got} of {k} records")
                samples.append(k / float(secs))
        report.add("sequential read (other process)", cls.name, samples, "rec/s")


# The floor of the tail case on this machine: a C writer that sleeps 0.5 ms, stamps the
# clock into a shared page, publishes a sequence word and wakes the futex on it; a C
# reader in another process that sleeps on the word (block) or re-reads it (spin).  No
# Python at all: how much of "append -> seen" is the kernel and the (virtual) CPUs.
_C_TAIL = r"""
#include <linux/futex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}
int main(int argc, char **argv) {
    uint32_t n = (uint32_t)atoi(argv[1]);
    int spin = strcmp(argv[2], "spin") == 0;
    volatile int64_t *page = mmap(0, 4096, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    volatile uint32_t *seq = (volatile uint32_t *)&page[1];
    int64_t *lat = malloc(sizeof(int64_t) * n);
    if (fork() == 0) {
        for (uint32_t i = 0; i < n; i++) {
            while (*seq == i)
                if (!spin) syscall(SYS_futex, seq, FUTEX_WAIT, i, NULL, NULL, 0);
            lat[i] = now_ns() - page[0];
        }
        for (uint32_t i = 0; i < n; i++) printf("%.3f\n", lat[i] / 1e3);
        fflush(stdout);
        _exit(0);
    }
    struct timespec gap = {0, 500000};
    for (uint32_t i = 0; i < n; i++) {
        nanosleep(&gap, NULL);
        page[0] = now_ns();
        __atomic_store_n(seq, i + 1, __ATOMIC_RELEASE);
        if (!spin) syscall(SYS_futex, seq, FUTEX_WAKE, 1, NULL, NULL, 0);
    }
    wait(NULL);
    return 0;
}
"""


def c_tail_floor(n: int, mode: str) -> list[float] | None:
    """Latencies (us) of the C tail, ``mode`` "block" or "spin"; None without a C compiler."""
    with _harness.c_program(_C_TAIL, "tail") as exe:
        if exe is None:
            return None
        out = subprocess.run([exe, str(n), mode], capture_output=True, text=True,
                             timeout=600, check=True).stdout
    return [float(x) for x in out.split()]


def py_tail_floor(n: int) -> list[float]:
    """Latencies (us) of the C floor's steps done in Python, with no journal code: the
    writer stamps a shared page, bumps a word and, when the reader said it sleeps, wakes
    the futex on it (``Waiter.waker``); a fork child sleeps on the word
    (``Waiter.sleeper``), the same 0.5 ms pauses.  What any Python writer and reader
    pay on this machine before the journal's own steps."""
    from mmapkit import Region, Waiter

    with Region.anonymous(4096) as region:
        stamp = region.view.cast("q")  # [0]: the stamp
        words = region.view.cast("I")  # [2]: records published, [3]: "asleep"
        w = Waiter(region, 8)
        sleep, wake = w.sleeper, w.waker
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(rfd)
                now, seen = time.monotonic_ns, 0
                lat: list[float] = []
                while seen < n:
                    while words[2] == seen:
                        words[3] = 1
                        if words[2] == seen:
                            sleep(seen, 1.0)
                    seen = words[2]
                    lat.append((now() - stamp[0]) / 1e3)
                with os.fdopen(wfd, "w") as f:
                    json.dump(lat, f)
                code = 0
            finally:
                os._exit(code)
        os.close(wfd)
        time.sleep(0.05)
        now = time.monotonic_ns
        for i in range(n):
            time.sleep(0.0005)
            stamp[0] = now()
            words[2] = i + 1
            if words[3]:
                words[3] = 0
                wake(0x7FFFFFFF)
        with os.fdopen(rfd) as f:
            lat = json.load(f)
        os.waitpid(pid, 0)
        stamp.release()
        words.release()
        w.close()
    return lat


def _tail_case(report: _harness.Report, impls: list[type[Impl]], tmp: str, n: int) -> None:
    runs: list[tuple[type[Impl], str, str]] = [
        (Ours, "tail-block", f"{OURS} (blocking)"), (Ours, "tail-spin", f"{OURS} (spinning)")]
    if SqliteWal in impls:
        runs.append((SqliteWal, "tail-poll", "sqlite3 WAL table (polling)"))
    for cls, role, label in runs:
        with _fresh(cls, tmp) as impl:
            c = _spawn(role, cls.name, impl.path, str(n))
            _ready(c)
            time.sleep(0.05)
            pad = b"p" * (RECORD - _STAMP.size)
            now = time.monotonic_ns
            took = []
            for _ in range(n):
                t0 = now()  # (the stamp: taken before append() starts)
                impl.append(_STAMP.pack(t0) + pad)
                took.append((now() - t0) / 1e3)
                time.sleep(0.0005)  # each record is a fresh wake-up, not a burst
            out, _ = c.communicate(timeout=120)
            lat = json.loads(out)
        # (the writer's own append() call is part of the latency; shown apart: after each
        # 0.5 ms sleep it runs on a cold core, several times its in-loop cost)
        report.add("tail latency append -> seen", label, lat, "us", higher_is_better=False,
                   note=f"p50 {_harness.percentile(lat, 50):.1f} us, "
                   f"p99 {_harness.percentile(lat, 99):.1f} us; the append() call "
                   f"itself p50 {_harness.percentile(took, 50):.1f} us")
    for mode in ("block", "spin"):
        name = f"C {'futex' if mode == 'block' else 'spinning'} (floor)"
        floor = c_tail_floor(n, mode)
        if floor is None:
            report.skip(name, "no C compiler (cc) here could build it")
            continue
        report.add("tail latency append -> seen", name, floor, "us", higher_is_better=False,
                   note="a C writer and reader, the same 0.5 ms pauses: the machine's floor")
    if hasattr(os, "fork"):
        report.add("tail latency append -> seen", "Python futex (floor)", py_tail_floor(n),
                   "us", higher_is_better=False,
                   note="the C floor's steps in Python, no journal code: the floor of any "
                   "Python writer and reader here")


def _commit_case(report: _harness.Report, impls: list[type[Impl]], tmp: str, n: int,
                 repeat: int) -> None:
    with _fresh(Ours, tmp) as ours:
        assert isinstance(ours, Ours)
        ours.append(b"x")
        c = ours.j.consumer("bench")
        commit = c.commit

        def ours_run() -> None:
            for i in range(n):
                commit(i)

        report.add("consumer commit", OURS, _harness.rate(ours_run, n, repeat), "commits/s")
    if SqliteWal in impls:
        with _fresh(SqliteWal, tmp) as impl:
            assert isinstance(impl, SqliteWal)
            db = impl.db
            db.execute("INSERT INTO offsets VALUES ('bench', 0)")
            k = max(2000, n // 10)

            def sqlite_run() -> None:
                for i in range(k):
                    db.execute("UPDATE offsets SET off = ? WHERE name = 'bench'", (i,))

            report.add("consumer commit", SqliteWal.name,
                       _harness.rate(sqlite_run, k, max(1, repeat // 2)), "commits/s")


def _crash_case(report: _harness.Report, tmp: str, sizes: list[int], repeat: int) -> None:
    """Reopen after kill -9 mid-append (open + one append, in a fresh process; it must
    cost O(unpublished bytes)), and power-loss recovery speed (the boot stamp changed,
    nothing ever synced: every byte is verified)."""
    import random

    from mmapkit.journal import Journal
    from mmapkit.journal import _format as F
    values = [_value(i) for i in range(100)]
    for size in sizes:
        label = f"{size >> 30} GiB" if size >= 1 << 30 else f"{size >> 20} MiB"
        d = os.path.join(tmp, f"crash-{size}")
        with Journal(d, create=True) as j:
            while j.statistics().bytes < size:
                for _ in range(1000):
                    j.append_many(values)
        samples = []
        for _ in range(repeat):
            c = _spawn("crash-append", OURS, d, "0")
            _ready(c)
            time.sleep(random.uniform(0.05, 0.3))
            c.kill()  # SIGKILL, at a random moment of its appends
            c.communicate()
            r = _spawn("reopen", OURS, d, "0")
            out, _ = r.communicate(timeout=120)
            samples.append(float(out) * 1e3)
        report.add(f"reopen after kill -9 at {label}", OURS, samples, "ms",
                   higher_is_better=False)
        if Journal.check(d).problems:
            raise RuntimeError(f"the journal at {d} does not check out after the kills")
        meta = os.path.join(d, "journal.meta")
        with Journal(d) as j:
            verified = j.statistics().bytes
        rates = []
        for k in range(max(1, repeat // 2)):
            with open(meta, "r+b") as f:  # a "reboot": nothing was synced, all is verified
                f.seek(F.OFF_BOOT)
                f.write(bytes([k + 1]) * 16)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Journal(d).close()
            rates.append(verified / (time.perf_counter() - t0) / 1e9)
        report.add(f"recovery of unsynced bytes ({label})", OURS, rates, "GB/s")
        shutil.rmtree(d)


_SERVER = """
import os, socket, sys, threading
sys.path[:0] = [sys.argv[1]]
from mmapkit import send
from mmapkit.journal import Journal
d, unix_j, unix_raw, seg = sys.argv[2:6]
j = Journal(d)
servers = [j.serve("127.0.0.1:0"), j.serve(unix_j)]
raws = [socket.create_server(("127.0.0.1", 0)), socket.socket(socket.AF_UNIX)]
raws[1].bind(unix_raw); raws[1].listen()
def raw_loop(ls):
    while True:
        conn, _ = ls.accept()
        with conn:
            while True:
                req = conn.recv(16)
                if len(req) < 16:
                    break
                off, count = int.from_bytes(req[:8], "little"), int.from_bytes(req[8:], "little")
                send(conn, seg, off, count)
for ls in raws:
    threading.Thread(target=raw_loop, args=(ls,), daemon=True).start()
print(servers[0].address_text, raws[0].getsockname()[1], flush=True)
sys.stdin.readline()
"""


def _fetch_case(report: _harness.Report, tmp: str, size: int, repeat: int) -> None:
    from mmapkit.journal import Journal, RemoteReader

    d = os.path.join(tmp, "fetch")
    values = [_value(i) for i in range(100)]
    with Journal(d, create=True) as j:
        while j.statistics().bytes < size:
            for _ in range(1000):
                j.append_many(values)
        end = j.end_offset
    seg = os.path.join(d, "00000000000000000000.log")
    with Journal(d) as j:  # the bytes of the first segment, to W
        seg_obj = j.reader(0)
        span = seg_obj.next_span(1 << 62)
        assert span is not None
        _, pos, length, _ = span
        seg_obj.close()
    unix_j, unix_raw = os.path.join(tmp, "j.sock"), os.path.join(tmp, "raw.sock")
    server = _harness.spawn("-c", textwrap.dedent(_SERVER), ROOT, d, unix_j, unix_raw, seg)
    try:
        assert server.stdout is not None
        tcp_j, raw_port = server.stdout.readline().split()
        for label, jaddr, raddr in (("TCP", tcp_j, ("127.0.0.1", int(raw_port))),
                                    ("Unix socket", unix_j, unix_raw)):
            case = f"fetch over {label}"

            def fetch(addr: str = jaddr) -> int:
                with RemoteReader(addr, 0, max_bytes=8 << 20) as r:
                    got = 0
                    while r.position < end:
                        got += len(r.fetch_raw())
                    return got

            def raw(addr: Any = raddr) -> int:
                fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
                with socket.socket(fam) as s:
                    s.connect(addr)
                    buf = bytearray(8 << 20)
                    view = memoryview(buf)
                    got = 0
                    while got < length:  # the same 8 MiB requests as the fetches
                        k = min(8 << 20, length - got)
                        s.sendall((pos + got).to_bytes(8, "little") + k.to_bytes(8, "little"))
                        # each reply whole in the buffer, as a fetch_raw returns it (it
                        # used to land at the buffer's start, a socket's worth at a time:
                        # less than a user of the bytes could do; measured the same)
                        have = 0
                        while have < k:
                            n = s.recv_into(view[have:k])
                            if not n:
                                raise ConnectionError("the raw sender closed mid-reply")
                            have += n
                        got += k
                    return got

            for impl, fn in ((OURS, fetch), ("raw mmapkit.send", raw)):
                fn()  # warm: page cache, connection paths
                samples = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    got = fn()
                    samples.append(got / (time.perf_counter() - t0) / 1e9)
                report.add(case, impl, samples, "GB/s")
            report.target(case, "raw mmapkit.send", ">=", 0.95)
    finally:
        server.communicate("\n", timeout=30)


def run(report: _harness.Report, args: argparse.Namespace) -> None:
    quick = args.quick
    repeat = args.repeat
    n = 20_000 if quick else 200_000
    with tempfile.TemporaryDirectory(prefix="mmapkit-bench-journal-") as tmp:
        impls = _harness.runnable(report, args, IMPLS, lambda cls: _available(cls, tmp))
        _append_case(report, impls, tmp, n, repeat)
        _producers_case(report, impls, tmp, n, repeat)
        _read_case(report, impls, tmp, n * 5, repeat)
        _tail_case(report, impls, tmp, 300 if quick else 3000)
        _commit_case(report, impls, tmp, n // 4, repeat)
        _fetch_case(report, tmp, (32 if quick else 256) << 20, max(1, repeat // 2))
        _crash_case(report, tmp, [32 << 20] if quick else [100 << 20, 1 << 30],
                    max(3, repeat))
    from . import mirror  # the Mirror's cases (to Redis over loopback) belong here too
    mirror.run(report, args)
    from . import mirror_kafka  # and to a Kafka-protocol broker
    mirror_kafka.run(report, args)
    report.target("append", "persist-queue", ">=", 50.0)
    report.target("append", "diskcache.Deque", ">=", 30.0)
    goals = [("append", 500e3), ("append_many (100 a batch)", 1.5e6),
             ("4 producer processes (aggregate)", 300e3),
             ("sequential read (other process)", 2e6), ("consumer commit", 300e3)]
    for case, goal in goals:
        m = report.find(case, OURS)
        if m is not None:
            met = "met" if m.median >= goal else "NOT MET"
            print(f"  goal {case} >= {_harness.fmt(goal)}/s: {_harness.fmt(m.median)} {met}",
                  file=sys.stderr)
    for label, goal in ((f"{OURS} (blocking)", 20.0), (f"{OURS} (spinning)", 5.0)):
        m = report.find("tail latency append -> seen", label)
        if m is not None:
            met = "met" if m.median <= goal else "NOT MET"
            print(f"  goal tail p50 {label} <= {goal:g} us: {m.median:.2f} us {met}",
                  file=sys.stderr)
    for m in report.measurements:
        if m.impl != OURS:
            continue
        if m.case.startswith("reopen after kill -9"):
            met = "met" if m.median <= 20 else "NOT MET"
            print(f"  goal {m.case} <= 20 ms: {m.median:.2f} ms {met}", file=sys.stderr)
        elif m.case.startswith("recovery of unsynced bytes"):
            met = "met" if m.median >= 1.0 else "NOT MET"
            print(f"  goal {m.case} >= 1 GB/s: {m.median:.2f} GB/s {met}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return _harness.main_for("journal", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
