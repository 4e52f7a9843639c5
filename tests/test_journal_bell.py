"""Reader.fileno() and ``async for``: a reader's own doorbell FIFO, rung by appends from
unrelated processes (protocol steps A7b, B1-B3 of journal.py), with selectors and asyncio.
Every test ends with Journal.check()."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import child_env, run_py, spawn, wait_reached

from mmapkit import Journal
from mmapkit.errors import ClosedError
from mmapkit.journal import _format as F

APPEND = """
import sys
from mmapkit import Journal
with Journal(sys.argv[1]) as j:
    for v in sys.argv[2:]:
        j.append(v.encode())
"""


def _append_elsewhere(d: str, *values: str) -> None:
    p = run_py(APPEND, d, *values)
    assert p.returncode == 0, p.stderr


def _bells(j: Journal) -> tuple[int, list[int]]:
    u64 = j._meta.u64
    i0 = F.OFF_BELL_SLOTS // 8
    return int(j._meta.u32[F.OFF_BELLS // 4]), [
        int(v) for v in u64[i0 : i0 + F.BELL_SLOTS].tolist() if v]


def _bell_files(d: str) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith("journal.bell-"))


def test_selector_wakes_on_a_record_from_an_unrelated_process(tmp_path: Path) -> None:
    d = str(tmp_path / "j")
    with Journal(d, create=True) as j, j.reader("latest") as r, \
            selectors.DefaultSelector() as sel:
        sel.register(r, selectors.EVENT_READ)  # takes r.fileno()
        assert r.poll(timeout=0) == []          # B2: nothing yet, armed
        assert sel.select(timeout=0) == []      # quiet until an append
        _append_elsewhere(d, "one", "two")
        assert [k.fileobj for k, _ in sel.select(timeout=10)] == [r]
        assert [x.value for x in r.poll(timeout=0)] == [b"one", b"two"]
        assert r.poll(timeout=0) == []          # empties the doorbell
        assert sel.select(timeout=0) == []
        _append_elsewhere(d, "three")
        assert sel.select(timeout=10)
        assert [x.value for x in r.poll(timeout=0)] == [b"three"]
    assert Journal.check(d).ok


def test_records_before_registration_are_seen_without_a_ring(tmp_path: Path) -> None:
    # A7 before B1: the append rang nobody; the first look after fileno() sees it.
    d = str(tmp_path / "j")
    with Journal(d, create=True) as j, j.reader("latest") as r:
        _append_elsewhere(d, "early")
        fd = r.fileno()
        assert [x.value for x in r.poll(timeout=0)] == [b"early"]
        assert fd == r.fileno()  # one doorbell per reader
    assert Journal.check(d).ok


def test_registration_while_a_writer_is_between_publish_and_ring(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The writer read B = 0 under L and is paused before its wake-ups; the reader
    # registers then: its first look must see the record (nobody rings it).
    d = str(tmp_path / "j")
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    with Journal(d, create=True) as j, j.reader("latest") as r:
        monkeypatch.setenv("MMAPKIT_PAUSE", "journal.append.published")
        monkeypatch.setenv("MMAPKIT_PAUSE_DIR", str(pauses))
        p = spawn(APPEND, d, "paused", "next")
        wait_reached(p, pauses, "journal.append.published")
        r.fileno()
        assert [x.value for x in r.poll(timeout=0)] == [b"paused"]
        (pauses / "journal.append.published.go").touch()
        # the second append happens after B1: it rings
        with selectors.DefaultSelector() as sel:
            sel.register(r.fileno(), selectors.EVENT_READ)
            assert sel.select(timeout=10)
        p.communicate(timeout=30)
        assert p.returncode == 0
        assert [x.value for x in r.poll(timeout=0)] == [b"next"]
    assert Journal.check(d).ok


def test_two_readers_each_get_their_own_wake_up(tmp_path: Path) -> None:
    # One FIFO per reader: emptying one doorbell never swallows the other's ring.
    d = str(tmp_path / "j")
    with Journal(d, create=True) as j, j.reader("latest") as a, j.reader("latest") as b:
        a.fileno()
        b.fileno()
        assert _bells(j)[0] == 2 and len(_bell_files(d)) == 2
        _append_elsewhere(d, "x")
        assert [x.value for x in a.poll(timeout=0)] == [b"x"]
        assert a.poll(timeout=0) == []   # a empties its own doorbell
        with selectors.DefaultSelector() as sel:
            sel.register(b, selectors.EVENT_READ)
            assert sel.select(timeout=10)  # b's ring is still there
        assert [x.value for x in b.poll(timeout=0)] == [b"x"]
    assert Journal.check(d).ok


def test_close_frees_the_slot_and_the_fifo(tmp_path: Path) -> None:
    d = str(tmp_path / "j")
    with Journal(d, create=True) as j:
        r = j.reader()
        r.fileno()
        assert _bells(j)[0] == 1 and len(_bell_files(d)) == 1
        j.append(b"rings the open doorbell")  # this handle now holds the FIFO's write end
        r.close()
        assert _bells(j) == (0, []) and _bell_files(d) == []
        j.append(b"after")  # B3 seen by a writer that had the FIFO open: no error
        with pytest.raises(ClosedError):
            r.fileno()
        with pytest.raises(ClosedError):
            r.poll()
    assert Journal.check(d).ok


KILLED_READER = """
import sys, time
from mmapkit import Journal
j = Journal(sys.argv[1])
r = j.reader("latest")
r.fileno()
print("armed", flush=True)
time.sleep(60)
"""


def test_a_killed_readers_slot_is_skipped_then_freed(tmp_path: Path) -> None:
    d = str(tmp_path / "j")
    with Journal(d, create=True) as j:
        p = spawn(KILLED_READER, d)
        assert p.stdout is not None and p.stdout.readline().strip() == "armed"
        j.append(b"rings the live reader")
        assert _bells(j)[0] == 1
        p.send_signal(signal.SIGKILL)
        p.communicate()
        assert p.returncode == -signal.SIGKILL
        for i in range(20):  # its FIFO has no reader now (EPIPE): appends go on
            j.append(b"%d" % i)
        with j.reader("latest") as r:
            r.fileno()  # B1 frees the dead process's slot and unlinks its FIFO
            count, slots = _bells(j)
            assert count == 1 and slots == [r._bell_slot]
            assert len(_bell_files(d)) == 1
        assert _bells(j) == (0, []) and _bell_files(d) == []
    assert Journal.check(d).ok


def test_asyncio_add_reader_and_async_for(tmp_path: Path) -> None:
    d = str(tmp_path / "j")
    Journal(d, create=True).close()

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        with Journal(d) as j, j.reader("latest", follow=True, timeout=10) as r:
            # add_reader on fileno(): the loop wakes for an unrelated process's append
            ready = asyncio.Event()
            loop.add_reader(r.fileno(), ready.set)
            try:
                assert r.poll(timeout=0) == []
                proc = await asyncio.create_subprocess_exec(
                    *_argv(d, "a1", "a2"), env=child_env())
                await asyncio.wait_for(ready.wait(), 10)
                got = [x.value for x in r.poll(timeout=0)]
                await proc.wait()
            finally:
                loop.remove_reader(r.fileno())
            # async for follows (on the doorbell, no thread) until the timeout of silence
            proc = await asyncio.create_subprocess_exec(*_argv(d, "b1", "b2", "b3"),
                                                        env=child_env())
            async for rec in r:
                got.append(rec.value)
                if rec.value == b"b3":
                    break
            await proc.wait()
            return got

    got = asyncio.run(main())
    assert got[0] == b"a1"
    assert got == [b"a1", b"a2", b"b1", b"b2", b"b3"]
    assert Journal.check(d).ok


def _argv(d: str, *values: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(APPEND), d, *values]


def test_async_for_ends_after_the_silence_timeout(tmp_path: Path) -> None:
    with Journal(tmp_path / "j", create=True) as j:
        j.append(b"only")

        async def collect() -> tuple[list[bytes], float]:
            t0 = time.monotonic()
            got = [r.value async for r in j.reader(follow=True, timeout=0.2)]
            return got, time.monotonic() - t0

        got, took = asyncio.run(collect())
        assert got == [b"only"] and 0.15 < took < 5


def test_doorbells_run_out_with_a_clear_error(tmp_path: Path) -> None:
    import errno
    d = str(tmp_path / "j")
    with Journal(d, create=True) as j:
        readers = [j.reader() for _ in range(F.BELL_SLOTS)]
        try:
            for r in readers:
                r.fileno()
            extra = j.reader()
            with pytest.raises(OSError) as info:
                extra.fileno()
            assert info.value.errno == errno.EMFILE and "close readers" in str(info.value)
            assert len(_bell_files(d)) == F.BELL_SLOTS  # the refused one left no FIFO
            readers.pop().close()
            extra.fileno()  # a freed slot is taken
            readers.append(extra)
            j.append(b"rings them all")
            assert all(r.poll(timeout=0)[0].value == b"rings them all" for r in readers)
        finally:
            for r in readers:
                r.close()
        assert _bells(j) == (0, []) and _bell_files(d) == []
    assert Journal.check(d).ok


def test_a_fork_child_closing_an_inherited_reader_leaves_the_doorbell(
        tmp_path: Path) -> None:
    from conftest import exit_code, fork_child
    d = str(tmp_path / "j")
    with Journal(d, create=True) as j, j.reader("latest") as r:
        r.fileno()
        assert exit_code(fork_child(r.close)) == 0
        assert _bells(j)[1] == [r._bell_slot] and len(_bell_files(d)) == 1
        _append_elsewhere(d, "still rung")
        with selectors.DefaultSelector() as sel:
            sel.register(r, selectors.EVENT_READ)
            assert sel.select(timeout=10)
        assert [x.value for x in r.poll(timeout=0)] == [b"still rung"]
    assert Journal.check(d).ok


REGISTERING_READER = """
import sys
from mmapkit import Journal
j = Journal(sys.argv[1])
j.reader("latest").fileno()
"""


def test_a_reader_killed_between_its_slot_and_the_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # B1 killed after the slot store, before B: B is short of a dead slot (harmless);
    # the next registration frees the slot and counts afresh, so a live reader is rung.
    d = str(tmp_path / "j")
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    with Journal(d, create=True) as j, j.reader("latest") as live:
        live.fileno()
        monkeypatch.setenv("MMAPKIT_PAUSE", "journal.bell.slot")
        monkeypatch.setenv("MMAPKIT_PAUSE_DIR", str(pauses))
        p = spawn(REGISTERING_READER, d)
        wait_reached(p, pauses, "journal.bell.slot")
        count, slots = _bells(j)
        assert len(slots) == 2 and count == 1  # the slot is there, the count not yet
        p.send_signal(signal.SIGKILL)
        p.communicate()
        assert p.returncode == -signal.SIGKILL
        monkeypatch.delenv("MMAPKIT_PAUSE")
        _append_elsewhere(d, "rings the live one")
        with selectors.DefaultSelector() as sel:
            sel.register(live, selectors.EVENT_READ)
            assert sel.select(timeout=10)
        assert [x.value for x in live.poll(timeout=0)] == [b"rings the live one"]
        with j.reader("latest") as other:
            other.fileno()  # frees the dead slot (and its FIFO), counts afresh
            assert _bells(j)[0] == 2 and len(_bell_files(d)) == 2
        live.close()
        assert _bells(j) == (0, []) and _bell_files(d) == []
    assert Journal.check(d).ok
