"""The writer's prefault thread (journal/segment.py) and _platform.populate_write: pages
are populated, never changed; the file never grows by it; close and roll stop it at once."""

from __future__ import annotations

import gc
import mmap
import os
import random
import signal
import threading
import time
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import JOURNAL_APPENDER, exit_code, fork_child, spawn

from mmapkit import Journal, _platform
from mmapkit.journal import segment

NAME = "mmapkit-journal-prefault"


def prefaulters() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == NAME]


def wait_for(cond: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return bool(cond())  # type: ignore[operator]


def test_populate_write_changes_no_byte(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(5 * mmap.PAGESIZE + 123)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, len(data)) as mm:
            address = _platform.buffer_address(mm)
            ok = _platform.populate_write(address + 10, len(data) - 20)
            assert ok in (True, False)  # (False: a kernel before 5.14)
            assert not _platform.populate_write(address, 0)
            assert mm[:] == data
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert os.path.getsize(path) == len(data)


@pytest.fixture
def small_min(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefault segments from 256 KiB on (the tests' segments are small)."""
    monkeypatch.setattr(segment, "_PREFAULT_MIN", 256 << 10)
    monkeypatch.setattr(segment, "_PREFAULT_START", 0)
    monkeypatch.setattr(segment, "_PREFAULT_AHEAD", 256 << 10)
    monkeypatch.setattr(segment, "_PREFAULT_CHUNK", 64 << 10)


@pytest.mark.skipif(not _platform.HAVE_POPULATE, reason="Linux only")
def test_prefault_leaves_the_bytes_and_the_size(tmp_path: Path, small_min: None) -> None:
    values = [os.urandom(100) for _ in range(4000)]
    with Journal(tmp_path / "j", create=True, segment_bytes=4 << 20) as j:
        for v in values:
            j.append(v)
        seg = j._active
        assert seg is not None and seg._pf is not None
        log = Path(seg.path)
        size = log.stat().st_size
        _, end = seg.commit()
        # the thread populates up to the end of the allocation; give it the time
        time.sleep(0.1)
        assert log.stat().st_size == size == seg.alloc  # never grows the file
        assert seg.mm is not None  # the pages ahead of W are in memory: populated
        ahead = _platform.mincore(_platform.buffer_address(seg.mm) + end, size - end)
        assert ahead.count(1) >= len(ahead) // 2
        assert log.read_bytes()[end:] == bytes(size - end)  # past W: zeros still
        assert [r.value for r in j.reader()] == values
    assert Journal.check(tmp_path / "j").ok
    assert wait_for(lambda: not prefaulters())


@pytest.mark.skipif(not _platform.HAVE_POPULATE, reason="Linux only")
def test_close_and_roll_stop_the_thread_at_once(tmp_path: Path, small_min: None) -> None:
    j = Journal(tmp_path / "j", create=True, segment_bytes=1 << 20)
    v = b"x" * 100
    bases = set()
    for _ in range(20_000):  # ~3 MiB: a few rolls, each with a thread of its own
        j.append(v)
        assert j._active is not None
        bases.add(j._active.base)
    assert len(bases) >= 3
    assert len(prefaulters()) <= 2  # (the old segments' threads stopped; one may be exiting)
    assert j._active is not None
    pf = j._active._pf
    assert pf is not None
    t0 = time.monotonic()
    j.close()
    assert time.monotonic() - t0 < 0.5  # close waits for one chunk at most
    assert pf.stopped and not pf.retired  # old mappings left to the thread: unmapped
    assert wait_for(lambda: not prefaulters())
    with Journal(tmp_path / "j") as j2:
        assert j2.end_offset == 20_000
        assert sum(1 for _ in j2.reader()) == 20_000


def test_small_segments_start_no_thread(tmp_path: Path) -> None:
    before = len(prefaulters())
    with Journal(tmp_path / "j", create=True, segment_bytes=segment._PREFAULT_MIN - 1) as j:
        for _ in range(100):
            j.append(b"x" * 100)
        assert j._active is not None and j._active._pf is None
    assert len(prefaulters()) <= before


@pytest.mark.skipif(not _platform.HAVE_POPULATE, reason="Linux only")
def test_a_segment_dropped_unclosed_ends_its_thread(tmp_path: Path, small_min: None
                                                     ) -> None:
    path = tmp_path / "s.log"
    segment.ActiveSegment.create(str(tmp_path), 0, 0, 16)
    os.rename(tmp_path / ("0" * 20 + ".log"), path)
    seg = segment.ActiveSegment(str(path), 0)
    assert seg.reserve(64, 128, 4 << 20)
    pf = seg._pf
    assert pf is not None and len(prefaulters()) == 1
    del seg  # (the thread holds it weakly: it ends with it, without close())
    gc.collect()
    assert wait_for(lambda: not prefaulters())
    assert not pf.stopped


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_appends_and_closes_with_the_parents_thread_running(
        tmp_path: Path, small_min: None) -> None:
    j = Journal(tmp_path / "j", create=True, segment_bytes=8 << 20)
    for _ in range(2000):
        j.append(b"p" * 100)
    assert j._active is not None and j._active._pf is not None
    def child() -> None:  # the parent's thread (and the lock it may hold) is not here
        for _ in range(5000):  # past a few allocation steps: remaps
            j.append(b"c" * 100)
        j.close()

    assert exit_code(fork_child(child)) == 0
    for _ in range(2000):
        j.append(b"p" * 100)
    assert j.end_offset == 9000
    j.close()
    assert Journal.check(tmp_path / "j").ok


def test_a_writer_that_syncs_starts_no_thread(tmp_path: Path, small_min: None) -> None:
    """A populated page is dirty: a sync would write its zeros first, then its data."""
    with Journal(tmp_path / "j", create=True, segment_bytes=4 << 20, sync=60) as j:
        for _ in range(100):
            j.append(b"x" * 100)
        assert j._active is not None and j._active._pf is None


@pytest.mark.skipif(not _platform.HAVE_POPULATE, reason="Linux only")
def test_kill_9_of_a_prefaulting_writer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    d = str(tmp_path / "j")
    Journal(d, create=True).close()
    acked = -1
    for _ in range(5):
        p = spawn(JOURNAL_APPENDER, d)  # (1 GiB segments: prefaulted)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(random.uniform(0.02, 0.3))
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        assert p.returncode == -signal.SIGKILL
        acked = max([acked, *(int(x) for x in out.split())])
    with Journal(d) as j:
        assert j.end_offset > acked
        got = [r.value[:8] for r in j.reader()]
    assert len(got) > acked
    assert Journal.check(d).ok
    # each writer restarted its count at 0: the values are runs of 0, 1, 2, ...
    assert all(v == b"%08d" % 0 or int(v) == int(prev) + 1 for prev, v in pairwise(got))
