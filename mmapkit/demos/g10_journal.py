"""A journal shared by unrelated processes: two producers (one killed with -9), a named
consumer that is killed and resumes from its commit, a live tail on a selector, and a
remote reader fed by sendfile."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..journal import Journal

TITLE = "journal: producers in two processes (one killed -9), a consumer that resumes, a tail"

_PRODUCER = """
import sys
from mmapkit import Journal
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Journal(path) as j:
    i = 0
    while n < 0 or i < n:
        j.append(b"%s:%d" % (name.encode(), i), key=name.encode())
        i += 1
"""

# Processes each record (a line in its output file), then commits: at-least-once.
_CONSUMER = """
import os, sys, time
from mmapkit import Journal
path, out = sys.argv[1], sys.argv[2]
with Journal(path) as j, j.consumer("billing") as c, open(out, "a") as f:
    print("resumes at", c.position, flush=True)
    batches = 0
    while True:
        recs = c.poll(200, timeout=1.0)
        if not recs:
            break
        f.write("".join("%d\\n" % r.offset for r in recs))
        f.flush()
        batches += 1
        if batches == 40 and len(sys.argv) > 3:  # the demo kills it here: processed,
            print("processed", flush=True)       # not yet committed
            time.sleep(60)
        c.commit()
"""

_REMOTE = """
import sys, time
from mmapkit.journal import RemoteReader
t0 = time.perf_counter()
with RemoteReader(sys.argv[1], "earliest") as r:
    n, want, nxt = 0, int(sys.argv[2]), 0
    while n < want:
        recs = r.poll(10_000, timeout=5)
        if not recs:
            break
        assert recs[0].offset == nxt, (recs[0].offset, nxt)
        nxt = recs[-1].offset + 1
        n += len(recs)
print(n, n / (time.perf_counter() - t0), flush=True)
"""


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))


def _start(code: str, *args: str, stdout: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=_env(), text=True,
                            stdout=stdout)


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()  # reaps it and closes its pipes


def run(workdir: Path, say: Callable[[str], None]) -> None:
    path = str(workdir / "events")
    with Journal(path, create=True, segment_bytes=1 << 20) as j, \
            j.reader("earliest") as tail, selectors.DefaultSelector() as sel:
        sel.register(tail, selectors.EVENT_READ)  # the reader's doorbell (fileno())
        tailed = 0
        last = -1

        def follow(seconds: float) -> None:
            nonlocal tailed, last
            for _ in sel.select(timeout=seconds):
                for rec in tail.poll(10_000, timeout=0):
                    if rec.offset != last + 1:
                        raise RuntimeError(f"the tail jumped from {last} to {rec.offset}")
                    last = rec.offset
                    tailed += 1

        steady = _start(_PRODUCER, path, "steady", "20000")
        doomed = _start(_PRODUCER, path, "doomed", "-1")
        deadline = time.monotonic() + 60
        while j.end_offset < 8000 and time.monotonic() < deadline:
            follow(0.05)
        _kill(doomed)
        killed_at = j.end_offset
        steady.wait(timeout=120)
        if steady.returncode != 0:
            raise RuntimeError(f"the steady producer failed ({steady.returncode})")
        end = j.end_offset
        while tailed < end and time.monotonic() < deadline:
            follow(0.2)
        by: dict[bytes, int] = {b"steady": 0, b"doomed": 0}
        for rec in j.reader():  # each producer's records: all there, once, in its order
            name, _, i = rec.value.partition(b":")
            if rec.key != name or int(i) != by[name]:
                raise RuntimeError(f"offset {rec.offset}: {rec.value!r} out of order")
            by[name] += 1
        if by[b"steady"] != 20_000 or tailed != end:
            raise RuntimeError(f"records {by}, tailed {tailed} of {end}")
        say(f"two unrelated producers appended {end:,} records with dense offsets; "
            f"'doomed' was killed with -9 near offset {killed_at:,}: each of its "
            f"{by[b'doomed']:,} acknowledged records is there once")
        say(f"a live tail in this process (selector on Reader.fileno()) saw all {tailed:,} "
            "in order as they were appended")

        out = workdir / "billing.out"
        first = _start(_CONSUMER, path, str(out), "stop", stdout=subprocess.PIPE)
        assert first.stdout is not None
        first.stdout.readline()  # "resumes at 0"
        if first.stdout.readline().strip() != "processed":
            raise RuntimeError("the consumer did not get to its 40th batch")
        _kill(first)
        committed = j.consumer_offsets().get("billing", 0)
        processed = out.read_text().split()
        say(f"consumer 'billing' in a third process processed {len(processed):,} records, "
            f"committed up to {committed:,}, and was killed with -9 before committing its "
            "last batch")
        again = _start(_CONSUMER, path, str(out), stdout=subprocess.PIPE)
        said, _ = again.communicate(timeout=120)
        if again.returncode != 0:
            raise RuntimeError(f"the restarted consumer failed ({again.returncode})")
        offsets = [int(x) for x in out.read_text().split()]
        redelivered = len(offsets) - len(set(offsets))
        if sorted(set(offsets)) != list(range(end)) or \
                j.consumer_offsets().get("billing") != end:
            raise RuntimeError("the consumer missed records")
        if redelivered != len(processed) - committed:
            raise RuntimeError(f"{redelivered} records were delivered twice, not the "
                               f"{len(processed) - committed} processed after the last commit")
        say(f"restarted, it {said.strip()} (its last commit) and finished: every offset "
            f"processed, {redelivered:,} re-delivered (those processed after that commit: "
            "at-least-once)")

        sock = str(workdir / "journal.sock")
        with j.serve(sock):
            remote = _start(_REMOTE, sock, str(end), stdout=subprocess.PIPE)
            said, _ = remote.communicate(timeout=120)
        got, rate = said.split()
        if remote.returncode != 0 or int(got) != end:
            raise RuntimeError(f"the remote reader got {got} of {end} records")
        say(f"a RemoteReader in a fourth process fetched all {end:,} records over a Unix "
            f"socket (whole batches by sendfile, CRC-checked by the client): "
            f"{float(rate):,.0f} records/s")
    report = Journal.check(path)
    if not report.ok:
        raise RuntimeError(f"Journal.check: {report.problems}")
    say(f"Journal.check: ok ({report.records:,} records in {report.segments} segments)")
