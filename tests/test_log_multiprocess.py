"""The log's cross-process protocols (the state table in mmapkit/log/writer.py), with real
unrelated processes (``sys.executable -c``) and fork children.

Each race gets a deterministic test: a test-only pause point (MMAPKIT_PAUSE, read by
the child at import) stops a process between two protocol steps while the test (or
another process) acts.  The torture test runs several writers that SIGKILL-and-restart
at random, recovering each other's buffers, with readers reading all along.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import IO

import pytest
from conftest import child_env

import mmapkit.log as mlog
from mmapkit.lock import FileLock

# These tests SIGKILL children (or servers) whose pipes and sockets the test leaves to
# the garbage collector: the one place an unclosed-resource warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")

WRITER = """
import json, os, sys, warnings
warnings.simplefilter("always")
import mmapkit.log as mlog
d, n, tag, mode, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
w = mlog.Writer(d, "app", buffer_size=size, flush_interval=60)
for i in range(n):
    w.write(f"{tag}-{i}")
st = w.statistics()
print(json.dumps({"recovered": st.recovered, "buffer": st.buffer_path}), flush=True)
if mode == "close":
    w.close()
elif mode == "wait":   # keep the buffer until stdin closes, then die unflushed
    sys.stdin.read()
    os._exit(0)
elif mode == "flush":  # flush when told (a line on stdin), then close when stdin closes
    sys.stdin.readline()
    w.flush()
    print("flushed", flush=True)
    sys.stdin.read()
    w.close()
else:                  # "exit": die without flushing, as a kill -9 would
    os._exit(0)
"""


def start(code: str, *args: object, pause: str | None = None, where: Path | None = None,
          stdin: int | None = None, stderr: IO[str] | int = subprocess.PIPE
          ) -> subprocess.Popen[str]:
    env = child_env()
    if pause:
        assert where is not None
        env["MMAPKIT_PAUSE"] = f"log.{pause}"
        env["MMAPKIT_PAUSE_DIR"] = str(where)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            env=env, text=True, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=stderr)


def writer(d: Path, n: int, tag: str, mode: str = "close", size: int = 8192, *,
           pause: str | None = None, where: Path | None = None) -> subprocess.Popen[str]:
    return start(WRITER, d, n, tag, mode, size, pause=pause, where=where,
                 stdin=subprocess.PIPE if mode in ("wait", "flush") else None)


def finish(p: subprocess.Popen[str]) -> dict[str, object]:
    """Wait for a writer; it must have succeeded without a word on stderr."""
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and not err, err
    result: dict[str, object] = json.loads(out.splitlines()[-1])
    return result


def wait_paused(p: subprocess.Popen[str], where: Path, step: str) -> None:
    deadline = time.monotonic() + 120
    reached = where / f"log.{step}.reached"
    while not (reached.exists() and reached.read_text() == str(p.pid)):
        if p.poll() is not None:
            raise AssertionError(f"exited before {step}: {p.communicate()}")
        assert time.monotonic() < deadline, f"never reached {step}"
        time.sleep(0.005)


def kill(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.communicate()


def messages(d: Path) -> list[str]:
    damages: list[object] = []
    out = [r.message for r in mlog.read(d, on_damage=lambda p, x: damages.append(x))]
    assert not damages, damages
    return out


def assert_once(d: Path, expected: list[str]) -> None:
    got = messages(d)
    assert sorted(got) == sorted(expected), (len(got), len(expected))
    assert mlog.check(d).ok
    assert not list(d.glob("*.damaged-*"))


@pytest.mark.parametrize("step", ["slot-created", "header-written"])
def test_starters_racing_for_a_new_slot(tmp_path: Path, step: str) -> None:
    """A paused while creating slot 0 (file extended, header not or half written): a reader
    sees an empty buffer, B takes another slot, and after A is killed there the next owner
    (with another buffer size) creates the slot afresh: no damage, no .damaged copy."""
    d, where = tmp_path / "logs", tmp_path / "pause"
    where.mkdir()
    a = writer(d, 10, "a", size=65536, pause=step, where=where)
    wait_paused(a, where, step)
    assert messages(d) == []
    assert mlog.check(d).ok
    assert str(finish(writer(d, 50, "b"))["buffer"]).endswith("app.1.mbuf")
    kill(a)
    c = finish(writer(d, 30, "c", "exit", size=8192))
    assert str(c["buffer"]).endswith("app.0.mbuf")
    assert finish(writer(d, 0, "d", size=8192))["recovered"] == 30
    assert_once(d, [f"b-{i}" for i in range(50)] + [f"c-{i}" for i in range(30)])


@pytest.mark.parametrize("step", ["recovered-appended", "flush-appended"])
def test_recovery_killed_between_append_and_head(tmp_path: Path, step: str) -> None:
    """A recovering process killed after it appended a dead buffer's records to the log but
    before it moved that buffer's head: the next one appends them again, and every record
    reads back exactly once (the second copy is dropped by stream and sequence)."""
    d, where = tmp_path / "logs", tmp_path / "pause"
    where.mkdir()
    first = writer(d, 40, "a", "wait")
    assert first.stdout is not None and first.stdin is not None
    json.loads(first.stdout.readline())  # holds slot 0, records unflushed
    assert str(finish(writer(d, 40, "b", "exit"))["buffer"]).endswith("app.1.mbuf")
    first.stdin.close()
    first.wait()
    # Adopts slot 0 (its own recovery goes through a flush), recovers slot 1 as foreign.
    r = writer(d, 0, "r", pause=step, where=where)
    wait_paused(r, where, step)
    kill(r)
    expected = [f"a-{i}" for i in range(40)] + [f"b-{i}" for i in range(40)]
    assert sorted(messages(d)) == sorted(expected)
    assert finish(writer(d, 0, "s"))["recovered"] >= 40
    assert_once(d, expected)
    assert mlog.check(d).duplicates >= 40  # the window was really hit


def test_fork_child_never_flushes_the_parent_buffer(tmp_path: Path) -> None:
    """A fork child that calls flush()/close() (as logging.shutdown does at its exit) after
    its parent released the buffer and another process adopted it: the child must not write
    the parent's stale view into it (that wound back the adopter's head and zeroed its
    unflushed records), and close() must not raise."""
    w = mlog.Writer(tmp_path, "app", buffer_size=8192, flush_interval=60)
    for i in range(30):
        w.write(f"p-{i}")  # unflushed when the child is forked
    r, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.read(r, 1)
            w.flush()
            w.sync()
            w.close()
            code = 0
        except BaseException as exc:
            os.write(2, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    w.close()
    q = finish(writer(tmp_path, 200, "q", "exit"))  # adopts slot 0, wraps its ring
    assert str(q["buffer"]).endswith("app.0.mbuf")
    os.write(wr, b"x")
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:  # the old code hung here
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the fork child's flush/close hung")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
    os.close(r)
    os.close(wr)
    assert_once(tmp_path, [f"p-{i}" for i in range(30)] + [f"q-{i}" for i in range(200)])


PARENT_WITH_CHILD = """
import os, sys, time
import mmapkit.log as mlog
w = mlog.Writer(sys.argv[1], "app", buffer_size=65536, flush_interval=60)
for i in range(50):
    w.write(f"k-{i}")
pid = os.fork()
if pid == 0:
    time.sleep(120)
    os._exit(0)
print(pid, flush=True)
time.sleep(120)
"""


def test_parent_killed_while_its_fork_child_lives(tmp_path: Path) -> None:
    """The child inherited the parent's locked descriptor and kept it open, so the dead
    parent's buffer stayed locked (not recovered, a new slot used) as long as the child
    lived.  The child now closes its copy at fork: the buffer is recovered at once."""
    p = start(PARENT_WITH_CHILD, tmp_path)
    assert p.stdout is not None
    child = int(p.stdout.readline())
    try:
        p.kill()
        p.wait()  # not communicate(): the child still holds the pipes
        p.stdout.close()
        assert p.stderr is not None
        p.stderr.close()
        got = finish(writer(tmp_path, 0, "n"))
        assert got["recovered"] == 50
        assert str(got["buffer"]).endswith("app.0.mbuf")
    finally:
        os.kill(child, signal.SIGKILL)
    assert_once(tmp_path, [f"k-{i}" for i in range(50)])


def test_retention_of_another_process_deletes_the_file_being_appended(tmp_path: Path
                                                                     ) -> None:
    """P is paused between opening its log file and appending; another process's retention
    deletes that file.  P's append went to a file without a name: it must append again
    before freeing its buffer (the records were lost for good)."""
    d, where = tmp_path / "logs", tmp_path / "pause"
    where.mkdir()
    p = writer(d, 100, "p", "close", pause="sink-opened", where=where)
    wait_paused(p, where, "sink-opened")
    (victim,) = d.glob("*.mlog")
    with mlog.Writer(d, "app", max_bytes=100, max_total_bytes=1, flush_interval=60) as q:
        q.write("q" * 300)
        q.flush()
        q.write("q" * 300)
        q.flush()  # rotates: retention deletes every other file, P's among them
    assert not victim.exists()
    (where / "log.sink-opened.go").touch()
    finish(p)
    got = [m for m in messages(d) if m.startswith("p-")]
    assert got == [f"p-{i}" for i in range(100)]


def test_writers_starting_together(tmp_path: Path) -> None:
    """Eight unrelated processes start on one directory at once: each gets a slot of its
    own, nobody warns, every record reads back exactly once."""
    procs = [writer(tmp_path, 100, f"t{k}", "wait") for k in range(8)]
    buffers = []
    for p in procs:  # all alive at once, each holding its buffer
        assert p.stdout is not None
        buffers.append(json.loads(p.stdout.readline())["buffer"])
    assert len(set(buffers)) == 8
    for p in procs:  # die with their records unflushed
        assert p.stdin is not None and p.stderr is not None
        p.stdin.close()
        assert p.wait() == 0
        assert p.stderr.read() == ""
        p.stderr.close()
        p.stdout.close()  # type: ignore[union-attr]
    assert finish(writer(tmp_path, 0, "z"))["recovered"] == 800
    assert_once(tmp_path, [f"t{k}-{i}" for k in range(8) for i in range(100)])


def test_close_releases_the_slot_even_when_the_flush_fails(tmp_path: Path) -> None:
    w = mlog.Writer(tmp_path, "app", buffer_size=8192, flush_interval=60)
    w.write("kept")
    path = w.statistics().buffer_path
    assert path is not None

    def broken(data: bytes, now: float) -> None:
        raise RuntimeError("broken sink")

    w._sink.append = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="broken sink"):  # not ExportedViewsError
        w.close()
    assert w.closed
    lock = FileLock(path)
    assert lock.try_exclusive()  # released: another process may recover it
    lock.close()
    assert messages(tmp_path) == ["kept"]
    with mlog.Writer(tmp_path, "app") as again:
        assert again.statistics().recovered == 1
    assert_once(tmp_path, ["kept"])


# --- a reader's looks at the files and the buffers (reader.py, its design rules) -----------

READ_ONCE = """
import json, sys
import mmapkit.log as mlog
damages = []
got = [r.message for r in mlog.read(sys.argv[1],
                                    on_damage=lambda p, x: damages.append(x.describe()))]
print(json.dumps({"got": got, "damages": damages}), flush=True)
"""


def paused_reader(d: Path, where: Path) -> subprocess.Popen[str]:
    """A process reading ``d`` once, stopped after its look at the log files and before its
    look at the buffers."""
    r = start(READ_ONCE, d, pause="files-read", where=where)
    wait_paused(r, where, "files-read")
    return r


def reader_result(r: subprocess.Popen[str], where: Path) -> dict[str, list[str]]:
    (where / "log.files-read.go").touch()
    out, err = r.communicate(timeout=120)
    assert r.returncode == 0 and not err, err
    result: dict[str, list[str]] = json.loads(out)
    return result


def test_a_flush_between_the_readers_looks_loses_nothing(tmp_path: Path) -> None:
    """A live writer flushes after a reader read the (empty) log files and before it read
    the buffers: the records left the buffer for a file in between.  One pass over the files
    then the buffers saw them in neither; the reader found none of the ten."""
    d, where = tmp_path / "logs", tmp_path / "pause"
    where.mkdir()
    w = writer(d, 10, "a", "flush")
    assert w.stdout is not None and w.stdin is not None
    json.loads(w.stdout.readline())  # records in its buffer, no log file written yet
    r = paused_reader(d, where)
    w.stdin.write("\n")
    w.stdin.flush()
    assert w.stdout.readline().strip() == "flushed"  # file written, head moved, ring zeroed
    got = reader_result(r, where)
    assert got == {"got": [f"a-{i}" for i in range(10)], "damages": []}
    w.stdin.close()
    assert w.wait() == 0
    w.stdout.close()
    assert w.stderr is not None and w.stderr.read() == ""
    w.stderr.close()
    assert_once(d, [f"a-{i}" for i in range(10)])


def test_a_recovery_between_the_readers_looks_loses_nothing(tmp_path: Path) -> None:
    """A dead writer's buffer is recovered (its records written to a file, its ring
    emptied) between a reader's look at the files and at the buffers (B5)."""
    d, where = tmp_path / "logs", tmp_path / "pause"
    where.mkdir()
    finish(writer(d, 10, "a", "exit"))  # dies with its ten records unflushed
    r = paused_reader(d, where)
    assert finish(writer(d, 0, "z"))["recovered"] == 10
    got = reader_result(r, where)
    assert got == {"got": [f"a-{i}" for i in range(10)], "damages": []}
    assert_once(d, [f"a-{i}" for i in range(10)])


def test_a_frame_being_appended_when_the_reader_looks_is_not_damage(tmp_path: Path) -> None:
    """The reader's look at the files finds a frame whose first half is written (a writer
    inside its append): reported as cut short but read again at the next look, where it is
    whole.  Read in one pass, its ten records were reported lost."""
    d, other, where = tmp_path / "logs", tmp_path / "other", tmp_path / "pause"
    where.mkdir()
    finish(writer(d, 5, "c"))
    finish(writer(other, 10, "a"))
    (log,) = d.glob("*.mlog")
    (frame_file,) = other.glob("*.mlog")
    frame = frame_file.read_bytes()  # one frame of ten records, of another stream
    with open(log, "ab") as f:
        f.write(frame[: len(frame) // 2])
    r = paused_reader(d, where)
    with open(log, "ab") as f:
        f.write(frame[len(frame) // 2 :])
    got = reader_result(r, where)
    assert got["damages"] == []
    assert sorted(got["got"]) == sorted([f"c-{i}" for i in range(5)]
                                        + [f"a-{i}" for i in range(10)])
    assert_once(d, [f"c-{i}" for i in range(5)] + [f"a-{i}" for i in range(10)])


# --- torture -----------------------------------------------------------------------------

TORTURE_WRITER = """
import os, sys, mmap, random, warnings
warnings.simplefilter("always")
import mmapkit.log as mlog
d, ackpath, k, tag, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
fd = os.open(ackpath, os.O_RDWR)
acks = memoryview(mmap.mmap(fd, 0)).cast("Q")
w = mlog.Writer(d, "t", buffer_size=8192, flush_interval=0.003, max_bytes=48 * 1024,
                retention=None)
rng = random.Random()
i = 0
while True:
    w.write(f"{tag}-{i} " + "x" * rng.randrange(120))
    i += 1
    acks[k] = i  # write i-1 returned: acknowledged
    if i % 256 == 0 and os.path.exists(stop):
        break
w.close()
print(i, flush=True)
"""

TORTURE_READER = """
import json, os, sys, time
import mmapkit.log as mlog
d, stop = sys.argv[1], sys.argv[2]
reads = records = 0
damages, disorder = [], []
while not os.path.exists(stop):
    seen = {}
    for r in mlog.read(d, name="t", on_damage=lambda p, x: damages.append(f"{p}: {x.describe()}")):
        if r.sequence <= seen.get(r.stream, 0):
            disorder.append((r.stream, r.sequence))
        seen[r.stream] = r.sequence
        records += 1
    reads += 1
    time.sleep(0.01)
print(json.dumps({"reads": reads, "records": records, "damages": damages[:5],
                  "n_damages": len(damages), "disorder": disorder[:5]}), flush=True)
"""


def torture(tmp_path: Path, seconds: float, writers: int = 3, readers: int = 1) -> dict[str, int]:
    d = tmp_path / "logs"
    d.mkdir()
    ackpath = tmp_path / "acks"
    max_runs = 4096
    ackpath.write_bytes(bytes(8 * max_runs))
    stop = tmp_path / "stop"
    errs = tmp_path / "stderr"
    errs.mkdir()
    fd = os.open(ackpath, os.O_RDWR)
    acks_map = mmap.mmap(fd, 0)
    os.close(fd)
    acks = memoryview(acks_map).cast("Q")
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    runs: dict[int, str] = {}     # run index -> tag
    closed: set[int] = set()      # runs that closed normally
    live: dict[int, tuple[subprocess.Popen[str], int, IO[str]]] = {}

    def launch(wid: int) -> None:
        k = len(runs)
        assert k < max_runs
        runs[k] = f"w{wid}r{k}"
        err = open(errs / f"{k}.txt", "w")  # noqa: SIM115 (closed when the run ends)
        p = start(TORTURE_WRITER, d, ackpath, k, runs[k], stop, stderr=err)
        live[wid] = (p, k, err)

    reader_err = open(errs / "readers.txt", "w")  # noqa: SIM115
    rdrs = [start(TORTURE_READER, d, stop, stderr=reader_err) for _ in range(readers)]
    for wid in range(writers):
        launch(wid)
    kills = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.02, 0.3))
            wid = rng.randrange(writers)
            p, k, err = live[wid]
            if acks[k] == 0 and rng.random() < 0.7:
                continue  # mostly kill writers that run; sometimes one still starting
            assert p.poll() is None, (errs / f"{k}.txt").read_text()
            p.kill()
            p.wait()
            err.close()
            kills += 1
            launch(wid)
        stop.touch()  # the last run of each writer closes normally
        for p, k, err in live.values():
            out, _ = p.communicate(timeout=120)
            err.close()
            assert p.returncode == 0, (errs / f"{k}.txt").read_text()
            assert int(out) == acks[k]
            closed.add(k)
        reports = []
        for rp in rdrs:
            out, _ = rp.communicate(timeout=120)
            assert rp.returncode == 0
            reports.append(json.loads(out))
    finally:
        for p, _, _ in live.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
        for rp in rdrs:
            if rp.poll() is None:
                rp.kill()
                rp.communicate()
        reader_err.close()
    for f in errs.iterdir():  # no warning, no traceback, in any writer or reader
        assert f.read_text() == "", f"{f.name}: {f.read_text()}"
    for rep in reports:       # readers saw no damage and each stream in order
        assert rep["n_damages"] == 0 and not rep["disorder"], rep
        assert rep["reads"] > 0

    def verify() -> int:
        got: dict[str, list[int]] = {}
        for m in messages(d):
            tag, i = m.split(" ", 1)[0].rsplit("-", 1)
            got.setdefault(tag, []).append(int(i))
        total = 0
        for k, tag in runs.items():
            n = acks[k]
            seq = got.get(tag, [])
            # every acknowledged write exactly once, in order; the write in flight at the
            # kill may be there too; a run that closed has exactly what it wrote
            assert seq[:n] == list(range(n)), (tag, n, seq[:5], len(seq))
            assert len(seq) == n or (len(seq) == n + 1 and k not in closed), (tag, n, len(seq))
            total += n
        return total

    acked = verify()
    # The component's check: a last writer recovers every dead buffer, then all reads back
    # once more, check() is clean, and nothing was set aside.
    with mlog.Writer(d, "t", buffer_size=8192):
        pass
    assert verify() == acked
    report = mlog.check(d)
    assert report.ok, report.damages[:3]
    assert not list(d.glob("*.damaged-*"))
    acks.release()
    acks_map.close()
    return {"processes": len(runs), "kills": kills, "acked": acked,
            "reads": sum(r["reads"] for r in reports)}


def test_torture_short(tmp_path: Path) -> None:
    stats = torture(tmp_path, 3.0)
    print("log torture:", stats)
    assert stats["kills"] >= 5 and stats["acked"] > 200, stats


@pytest.mark.slow
def test_torture_long(tmp_path: Path) -> None:
    stats = torture(tmp_path, 40.0, writers=4, readers=2)
    print("log torture:", stats)
    assert stats["kills"] >= 30, stats


def test_retention_at_start_keeps_the_newest_file(tmp_path: Path) -> None:
    """A process starting has no file of its own yet; its retention by size deleted every
    file, the newest too, where live processes were appending."""
    live = writer(tmp_path, 20, "live", "wait")
    assert live.stdout is not None and live.stdin is not None
    json.loads(live.stdout.readline())
    with mlog.Writer(tmp_path, "app", max_bytes=200, flush_interval=60) as w:
        for i in range(6):
            w.write(f"old-{i} " + "o" * 300)
            w.flush()  # one file each
    files = sorted(tmp_path.glob("*.mlog"))
    assert len(files) >= 3
    with mlog.Writer(tmp_path, "app", max_total_bytes=1, flush_interval=60):
        pass
    assert [p.exists() for p in files] == [False] * (len(files) - 1) + [True]
    live.stdin.close()
    assert live.wait() == 0
    live.stdout.close()
    assert live.stderr is not None
    live.stderr.close()
    got = messages(tmp_path)
    assert [m for m in got if m.startswith("live-")] == [f"live-{i}" for i in range(20)]


def test_following_reader_sees_a_file_made_again_under_the_same_name(tmp_path: Path
                                                                    ) -> None:
    """A follower kept its byte offset in a file that retention deleted and a writer then
    made again under the same name: it skipped the new file's first records."""
    from mmapkit.log.reader import _Reader

    reader = _Reader(tmp_path, None, None, None, None, lambda p, d: None)
    with mlog.Writer(tmp_path, "app", rotate=None) as w:
        for i in range(50):
            w.write(f"first-{i} " + "f" * 100)
    assert len(reader.poll(final=False)) == 50
    (log,) = tmp_path.glob("*.mlog")
    log.unlink()
    for buf in tmp_path.glob("*.mbuf"):
        buf.unlink()  # a new stream: nothing to drop as already seen
    with mlog.Writer(tmp_path, "app", rotate=None) as w:
        for i in range(5):
            w.write(f"second-{i}")
    assert log.exists()
    assert [r.message for r in reader.poll(final=False)] == [f"second-{i}" for i in range(5)]


# --- a buffer of another capacity (B5r) ----------------------------------------------------


def _capacity(buf: Path) -> int:
    from mmapkit.log import _codec

    return _codec.decode_buffer_header(buf.read_bytes()).capacity


@pytest.mark.parametrize("old, new", [(8192, 16384), (16384, 8192), (8192, 8192)])
def test_buffer_size_changed_between_runs(tmp_path: Path, old: int, new: int) -> None:
    """The buffer of a process that died unflushed, adopted by a writer asking for another
    buffer_size: its records go to the log, the slot is re-made at the new size; no
    damage, no warning, each record once."""
    finish(writer(tmp_path, 100, "old", "exit", old))
    (buf,) = tmp_path.glob("*.mbuf")
    assert buf.stat().st_size == 4096 + old and len(mlog.read_buffer(buf)[1]) == 100
    p = start(WRITER, tmp_path, 5, "new", "close", new)
    result = finish(p)  # (finish: no word on stderr, so no LogWarning either)
    assert result == {"recovered": 100, "buffer": str(buf)}  # the same slot, re-made
    assert buf.stat().st_size == 4096 + new and _capacity(buf) == new
    assert_once(tmp_path, [f"old-{i}" for i in range(100)] + [f"new-{i}" for i in range(5)])
    if old == new:  # adopted as it was: the stream and its sequence continue
        assert [r.sequence for r in mlog.read(tmp_path)] == list(range(1, 106))


def test_a_resize_cut_short_is_not_damage(tmp_path: Path) -> None:
    """A file longer than its header's capacity, the excess zero (what a writer killed
    while growing a buffer leaves): read as it is, then re-made at the asked size."""
    finish(writer(tmp_path, 100, "old", "exit", 8192))
    (buf,) = tmp_path.glob("*.mbuf")
    os.truncate(buf, 4096 + 3 * 8192)  # grown; the header still says 8192
    _, recs, damages = mlog.read_buffer(buf)
    assert len(recs) == 100 and damages == []
    assert mlog.check(tmp_path).ok
    assert finish(writer(tmp_path, 1, "new", "close", 8192))["recovered"] == 100
    assert buf.stat().st_size == 4096 + 8192
    assert_once(tmp_path, [f"old-{i}" for i in range(100)] + ["new-0"])


def test_bytes_past_the_ring_are_damage(tmp_path: Path) -> None:
    finish(writer(tmp_path, 100, "old", "exit", 8192))
    (buf,) = tmp_path.glob("*.mbuf")
    with open(buf, "ab") as f:
        f.write(b"\x01" * 4096)
    _, recs, damages = mlog.read_buffer(buf)
    assert len(recs) == 100 and len(damages) == 1
    assert "not zero" in damages[0].reason
    p = start(WRITER, tmp_path, 1, "new", "close", 8192)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "not zero" in err and "copied to" in err, err
    assert json.loads(out.splitlines()[-1])["recovered"] == 100
    assert len(list(tmp_path.glob("*.damaged-*"))) == 1
    got = sorted(r.message for r in mlog.read(tmp_path, on_damage=lambda p, x: None))
    assert got == sorted([f"old-{i}" for i in range(100)] + ["new-0"])


@pytest.mark.parametrize("step", ["recovered-appended", "slot-created", "header-written"])
def test_kill9_while_a_buffer_is_resized(tmp_path: Path, step: str) -> None:
    """SIGKILL of the writer re-making a slot at another size, between each two steps of
    B5r: the next writer finds every record, once, and no damage."""
    finish(writer(tmp_path, 100, "old", "exit", 8192))
    where = tmp_path / "pauses"
    where.mkdir()
    p = writer(tmp_path, 1, "lost", "close", 16384, pause=step, where=where)
    wait_paused(p, where, step)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    result = finish(writer(tmp_path, 1, "new", "close", 16384))
    (buf,) = tmp_path.glob("*.mbuf")
    assert _capacity(buf) == 16384
    expected = [f"old-{i}" for i in range(100)] + ["new-0"]
    assert sorted(messages(tmp_path)) == sorted(expected)
    assert mlog.check(tmp_path).ok
    assert not list(tmp_path.glob("*.damaged-*"))
    # killed after the append: the next writer found the records in both places and
    # appended them again (readers drop the copy); killed later: nothing was left
    assert result["recovered"] == (100 if step == "recovered-appended" else 0)
