"""Writer, reader and Handler of mmapkit.log: behaviour with real files and processes."""

from __future__ import annotations

import dataclasses
import logging
import logging.config
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import run_py, spawn, tiny_tmpfs
from hypothesis import given, settings
from hypothesis import strategies as st

import mmapkit.log as mlog
from mmapkit.errors import (
    ClosedError,
    DecryptionError,
    DiskFullError,
    ForeignFileError,
    InvalidSizeError,
)
from mmapkit.log import writer as writer_mod


def messages(path: Path, **kw: object) -> list[str]:
    return [r.message for r in mlog.read(path, **kw)]  # type: ignore[arg-type]


def test_round_trip_and_statistics(tmp_path: Path) -> None:
    with mlog.Writer(tmp_path, "app", buffer_size=8192, flush_interval=0.01) as w:
        for i in range(3000):
            w.write(f"hello {i}", level=20)
        w.write(b"bytes too")
        stats = w.statistics()
        assert dataclasses.is_dataclass(stats)
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.records = 0  # type: ignore[misc]
        assert stats.records == 3001 and not stats.heap_fallback
    recs = list(mlog.read(tmp_path))
    assert [r.message for r in recs] == [f"hello {i}" for i in range(3000)] + ["bytes too"]
    assert [r.sequence for r in recs] == list(range(1, 3002))
    assert all(r.pid == os.getpid() for r in recs) and recs[0].level == 20
    assert recs[0].time <= recs[-1].time <= time.time()
    report = mlog.check(tmp_path)
    assert report.ok and report.records == 3001 and report.duplicates == 0
    with pytest.raises(ClosedError):
        w.write("after close")


def test_sync(tmp_path: Path) -> None:
    with mlog.Writer(tmp_path, "app") as w:
        w.write("durable")
        w.sync()
        assert w.statistics().buffered == 0
    assert messages(tmp_path) == ["durable"]


def test_reopen_continues_the_stream(tmp_path: Path) -> None:
    for n in range(3):
        with mlog.Writer(tmp_path, "app") as w:
            w.write(f"session {n}")
    assert messages(tmp_path) == ["session 0", "session 1", "session 2"]
    assert [r.sequence for r in mlog.read(tmp_path)] == [1, 2, 3]


def test_unflushed_records_are_readable_while_live(tmp_path: Path) -> None:
    with mlog.Writer(tmp_path, "app", flush_interval=60) as w:
        w.write("only in the buffer")
        assert w.statistics().buffered > 0
        assert messages(tmp_path) == ["only in the buffer"]


def test_record_larger_than_the_buffer(tmp_path: Path) -> None:
    big = "B" * 100_000
    with mlog.Writer(tmp_path, "app", buffer_size=4096) as w:
        w.write("before")
        w.write(big)
        w.write("after")
    assert messages(tmp_path) == ["before", big, "after"]


def test_hot_paths_frame_records_exactly_like_the_codec(tmp_path: Path) -> None:
    """Writer.write, directly and through Handler.handle, puts in the map the very bytes
    _codec.encode_record gives: same layout, same CRC coverage."""
    from mmapkit.log import _codec

    h = mlog.Handler(tmp_path, "app", flush_interval=3600)
    h.setFormatter(logging.Formatter("%(message)s"))
    w = h.writer
    try:
        w.write("from write é", level=30, time_us=1_700_000_000_123_456)
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "from %s", ("handle",),
                                   None)
        h.handle(record)
        area = w._area
        first = _codec.encode_record(1, 1_700_000_000_123_456, os.getpid(), 30,
                                     "from write é".encode())
        second = _codec.encode_record(2, int(record.created * 1e6), os.getpid(), 40,
                                      b"from handle")
        assert bytes(area[: len(first) + len(second)]) == first + second
    finally:
        h.close()


def test_chunks_cut_at_marks_wraps_and_the_exact_end_of_the_ring(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers cut chunks as they go: every frame holds whole records of one lap, at most
    one chunk and one record long, also when records end exactly at the end of the ring."""
    from mmapkit.log import _codec

    monkeypatch.setattr(writer_mod, "CHUNK", 1000)
    sent = []
    with mlog.Writer(tmp_path, "app", buffer_size=4096, flush_interval=0.001) as w:
        for i in range(3000):
            # 64-byte records first: 64 of them fill the 4096-byte ring exactly
            msg = f"{i:08d}" + "e" * (24 if i < 1500 else i % 97)
            w.write(msg)
            sent.append(msg)
            if i % 700 == 0:
                w.flush()
            if i % 301 == 0:
                time.sleep(0.002)  # let the flush thread take whole chunks too
    assert messages(tmp_path) == sent
    for path in tmp_path.glob("*.mlog"):
        for frame in _codec.decode_frames(path.read_bytes()):
            assert isinstance(frame, _codec.Frame)
            assert frame.raw_size <= 1000 + 32 + 8 + 120
            assert frame.count >= 1


def test_threads_write_concurrently(tmp_path: Path) -> None:
    with mlog.Writer(tmp_path, "app", buffer_size=16384, flush_interval=0.005) as w:
        def work(t: int) -> None:
            for i in range(2000):
                w.write(f"{t}:{i}")
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    recs = list(mlog.read(tmp_path))
    assert [r.sequence for r in recs] == sorted(r.sequence for r in recs)
    for t in range(4):
        mine = [int(m.split(":")[1]) for m in (r.message for r in recs) if m.startswith(f"{t}:")]
        assert mine == list(range(2000))
    assert mlog.check(tmp_path).ok


def test_heap_fallback_when_mapping_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    def refuse(*a: object, **k: object) -> None:
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(writer_mod.Region, "open", refuse)
    with pytest.warns(mlog.LogWarning, match="process memory"):
        w = mlog.Writer(tmp_path, "app")
    monkeypatch.undo()
    assert w.statistics().heap_fallback
    w.write("still logged")
    w.close()
    assert messages(tmp_path) == ["still logged"]


def test_dead_process_buffer_is_read_and_recovered(tmp_path: Path) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            w = mlog.Writer(tmp_path, "app", flush_interval=60)
            for i in range(100):
                w.write(f"dead {i}")
        finally:
            os._exit(0)  # no close, no flush: records only in the mapped buffer
    os.waitpid(pid, 0)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".mlog" and p.stat().st_size]
    assert messages(tmp_path) == [f"dead {i}" for i in range(100)]
    with mlog.Writer(tmp_path, "app") as w:
        assert w.statistics().recovered == 100
        w.write("next start")
    assert messages(tmp_path) == [f"dead {i}" for i in range(100)] + ["next start"]
    assert mlog.check(tmp_path).ok


def test_fork_child_gets_its_own_buffer(tmp_path: Path) -> None:
    with mlog.Writer(tmp_path, "app", flush_interval=60) as w:
        w.write("parent before fork")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                w.write("child")
                w.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        w.write("parent after fork")
    msgs = messages(tmp_path)
    assert sorted(msgs) == sorted(["parent before fork", "child", "parent after fork"])
    assert len({r.stream for r in mlog.read(tmp_path)}) == 2


def test_one_fork_hook_serves_every_live_writer(tmp_path: Path) -> None:
    """Two live writers of two names: a fork child gets a buffer of its own for each;
    a closed writer leaves nothing behind for the hook (no hook per writer)."""
    import gc

    before = len(writer_mod._LIVE)
    for _ in range(3):
        mlog.Writer(tmp_path, "gone").close()
    gc.collect()
    assert len(writer_mod._LIVE) == before
    with mlog.Writer(tmp_path, "a", flush_interval=60) as a, \
            mlog.Writer(tmp_path, "b", flush_interval=60) as b:
        assert len(writer_mod._LIVE) == before + 2
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                a.write("child a")
                b.write("child b")
                a.close()
                b.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        a.write("parent a")
        b.write("parent b")
    for name in ("a", "b"):
        recs = list(mlog.read(tmp_path, name=name))
        assert sorted(r.message for r in recs) == [f"child {name}", f"parent {name}"]
        assert len({r.stream for r in recs}) == 2  # the child logged through its own buffer
    assert mlog.check(tmp_path).ok


WRITER = """
import sys, mmapkit.log as mlog
w = mlog.Writer(sys.argv[1], "shared", buffer_size=8192, flush_interval=0.01, max_bytes=20000)
for i in range(3000):
    w.write(f"{sys.argv[2]}:{i}")
w.close()
"""


def test_several_processes_one_directory(tmp_path: Path) -> None:
    procs = [spawn(WRITER, str(tmp_path), f"p{n}") for n in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    recs = list(mlog.read(tmp_path))
    assert len(recs) == 9000
    for n in range(3):
        mine = [int(r.message.split(":")[1]) for r in recs if r.message.startswith(f"p{n}:")]
        assert mine == list(range(3000))
    logs = [p for p in tmp_path.iterdir() if p.suffix == ".mlog"]
    assert len(logs) > 1  # rotated by size while three processes appended
    assert mlog.check(tmp_path).ok


def test_rotation_by_size_and_retention_by_bytes(tmp_path: Path) -> None:
    with mlog.Writer(tmp_path, "app", buffer_size=8192, max_bytes=4000,
                     max_total_bytes=20000, compress="none") as w:
        for i in range(5000):
            w.write(f"record {i} " + "z" * 40)  # never refused, however full the cap is
            if i % 200 == 0:
                w.flush()
    logs = sorted(p for p in tmp_path.iterdir() if p.suffix == ".mlog")
    assert len(logs) >= 2 and int(logs[-1].name.split(".")[2]) > 5  # rotated, old deleted
    assert sum(p.stat().st_size for p in logs) <= 20000 + 8192 + 4000
    msgs = messages(tmp_path)
    assert msgs[-1] == "record 4999 " + "z" * 40  # the newest are kept
    assert mlog.check(tmp_path).ok


def test_daily_rotation_and_retention_by_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    old = tmp_path / "app.20000101.0000.mlog"
    old.write_bytes(b"")
    os.utime(old, (time.time() - 90 * 86400,) * 2)
    with mlog.Writer(tmp_path, "app", retention=30 * 86400) as w:
        assert not old.exists()  # retention runs at open
        w.write("today")
        w.flush()
        real = time.time
        monkeypatch.setattr(writer_mod.time, "time", lambda: real() + 86400)
        w.write("tomorrow")
        w.flush()
        monkeypatch.undo()
    days = sorted(p.name.split(".")[1] for p in tmp_path.iterdir() if p.suffix == ".mlog")
    assert len(days) == 2 and days[0] != days[1]
    assert messages(tmp_path) == ["today", "tomorrow"]


def test_damaged_log_file_loses_only_the_damaged_frame(tmp_path: Path) -> None:
    with mlog.Writer(tmp_path, "app", compress="none") as w:
        for i in range(300):
            w.write(f"line {i}")
            if i % 100 == 99:
                w.flush()
    (log,) = [p for p in tmp_path.iterdir() if p.suffix == ".mlog"]
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0xFF
    log.write_bytes(bytes(data))
    damages: list[mlog.Damage] = []
    msgs = messages(tmp_path, on_damage=lambda p, d: damages.append(d))
    assert len(msgs) == 200 and len(damages) == 1 and damages[0].lost == 100
    assert damages[0].first_time is not None
    with pytest.warns(mlog.LogWarning, match="100 records lost"):
        list(mlog.read(tmp_path))
    report = mlog.check(tmp_path)
    assert not report.ok and report.records == 200


def test_truncated_log_tail(tmp_path: Path) -> None:
    with mlog.Writer(tmp_path, "app") as w:
        for i in range(50):
            w.write(f"line {i}")
        w.flush()
        for i in range(50, 60):
            w.write(f"line {i}")
    (log,) = [p for p in tmp_path.iterdir() if p.suffix == ".mlog"]
    data = log.read_bytes()
    log.write_bytes(data[:-10])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msgs = messages(tmp_path)
    assert msgs == [f"line {i}" for i in range(50)]


def test_damaged_buffer_is_kept_and_reported(tmp_path: Path) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            w = mlog.Writer(tmp_path, "app", flush_interval=60)
            for i in range(50):
                w.write(f"buffered {i}")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    buf = tmp_path / "app.0.mbuf"
    data = bytearray(buf.read_bytes())
    data[4096 + 20 * 48 + 40] ^= 0xFF  # inside a record in the middle
    buf.write_bytes(bytes(data))
    damages: list[mlog.Damage] = []
    msgs = messages(tmp_path, on_damage=lambda p, d: damages.append(d))
    assert 40 <= len(msgs) < 50 and damages
    # A damaged buffer header: the file is set aside, never wiped.
    data[20] ^= 0xFF
    buf.write_bytes(bytes(data))
    with pytest.warns(mlog.LogWarning, match="moved it to|copied"):
        mlog.Writer(tmp_path, "app").close()
    assert [p for p in tmp_path.iterdir() if ".damaged-" in p.name]


def test_foreign_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("not a log\n" * 20)
    with pytest.raises(ForeignFileError):
        list(mlog.read(f))
    with pytest.raises(FileNotFoundError):
        list(mlog.read(tmp_path / "missing"))
    with pytest.raises(InvalidSizeError):
        mlog.Writer(tmp_path, "app", buffer_size=10)
    with pytest.raises(ValueError):
        mlog.Writer(tmp_path, "../escape")


def test_encryption(tmp_path: Path) -> None:
    private, public = mlog.generate_keypair()
    with mlog.Writer(tmp_path, "secret", public_key=public) as w:
        w.write("the password is swordfish")
    assert b"swordfish" not in b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.suffix == ".mlog")
    assert messages(tmp_path, private_key=private) == ["the password is swordfish"]
    with pytest.raises(DecryptionError, match="private_key"):
        list(mlog.read(tmp_path))
    wrong, _ = mlog.generate_keypair()
    with pytest.raises(DecryptionError, match="wrong key"):
        list(mlog.read(tmp_path, private_key=wrong))


def test_since_until(tmp_path: Path) -> None:
    with mlog.Writer(tmp_path, "app") as w:
        w.write("old", time_us=1_000_000_000_000_000)
        w.write("new", time_us=2_000_000_000_000_000)
    assert messages(tmp_path, since=1.5e9) == ["new"]
    assert messages(tmp_path, until=1.5e9) == ["old"]


def test_follow_sees_another_process_buffer(tmp_path: Path) -> None:
    child = spawn("""
        import sys, time, mmapkit.log as mlog
        w = mlog.Writer(sys.argv[1], "live", flush_interval=60)
        for i in range(5):
            w.write(f"live {i}")
        print("ready", flush=True)
        sys.stdin.readline()
        w.close()
    """, str(tmp_path), stdin=-1)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        got: list[str] = []
        for rec in mlog.read(tmp_path, follow=True, poll_interval=0.05):
            got.append(rec.message)
            if len(got) == 5:
                break
        assert got == [f"live {i}" for i in range(5)]
    finally:
        child.communicate(input="", timeout=30)


def test_disk_full_keeps_records_in_the_buffer(tmp_path: Path) -> None:
    with tiny_tmpfs("256k") as mnt:
        w = mlog.Writer(mnt, "app", buffer_size=16384, flush_interval=60, compress="none")
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 1024)
        except OSError:
            pass
        finally:
            os.close(fd)
        accepted = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(DiskFullError):
                for i in range(10_000):
                    w.write(f"record {i} " + "d" * 50)
                    accepted.append(i)
        assert any("no space" in str(c.message) for c in caught)
        assert 100 < len(accepted) < 10_000
        with pytest.raises(DiskFullError):
            w.flush()
        assert w.statistics().failed_flushes > 0
        filler.unlink()
        with warnings.catch_warnings():
            # "writable again" comes from whichever thread flushes first: not asserted
            warnings.simplefilter("ignore")
            w.flush()
        w.write("after space returned")
        w.close()
        msgs = messages(mnt)
        assert msgs == [f"record {i} " + "d" * 50 for i in accepted] + ["after space returned"]


# --- Handler ------------------------------------------------------------------------------


def test_handler_formats_exactly_like_logging(tmp_path: Path) -> None:
    fmts = ["%(asctime)s %(levelname)s %(name)s: %(message)s", "%(message)s",
            "[%(asctime)s] %(process)d %(message)s",
            "%(levelname)-8s|%(lineno)4d|%(name)r 100%% %(message)s",
            "%(asctime)s %(msecs)03d %(relativeCreated).1f %(message)s"]
    h = mlog.Handler(tmp_path, "h")
    lg = logging.getLogger("mmapkit-test-format")
    lg.propagate = False
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    expected = []
    try:
        for fmt in fmts:
            for datefmt in (None, "%H:%M:%S"):
                formatter = logging.Formatter(fmt, datefmt)
                h.setFormatter(formatter)
                for i in range(3):
                    record = lg.makeRecord(lg.name, logging.INFO, __file__, 1,
                                           "value %d %s", (i, "é"), None)
                    expected.append(formatter.format(record))
                    h.handle(record)
                    time.sleep(0.001)
                # same millisecond, a mapping argument, a message that is not a str
                for msg, args in (("a %(k)s", ({"k": 1},)), (ValueError("x"), ()),
                                  ("no args %s", ())):
                    record = lg.makeRecord(lg.name, logging.INFO, __file__, 1, msg, args, None)
                    expected.append(formatter.format(record))
                    h.handle(record)
        h.setFormatter(logging.Formatter("%(message)s"))
        try:
            raise KeyError("boom")
        except KeyError:
            lg.exception("failed")
    finally:
        lg.removeHandler(h)
        h.close()
    recs = list(mlog.read(tmp_path))
    assert [r.message for r in recs[:-1]] == expected
    assert "KeyError: 'boom'" in recs[-1].message and recs[-1].level == logging.ERROR


def test_handler_dictconfig_and_filters(tmp_path: Path) -> None:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(message)s"}},
        "handlers": {"mm": {"class": "mmapkit.log.Handler", "directory": str(tmp_path),
                            "name": "cfg", "level": "INFO", "formatter": "plain",
                            "flush_interval": 0.5}},
        "loggers": {"mmapkit-test-cfg": {"handlers": ["mm"], "level": "DEBUG",
                                         "propagate": False}},
    })
    lg = logging.getLogger("mmapkit-test-cfg")
    (h,) = lg.handlers
    h.addFilter(lambda r: "secret" not in r.getMessage())
    lg.debug("not at INFO")
    lg.info("kept")
    lg.info("a secret")
    lg.warning("warned")
    lg.removeHandler(h)
    h.close()
    assert messages(tmp_path) == ["INFO kept", "WARNING warned"]


def test_handler_as_loguru_sink(tmp_path: Path) -> None:
    loguru = pytest.importorskip("loguru")
    h = mlog.Handler(tmp_path, "lg")
    sink_id = loguru.logger.add(h.write, format="{message}")
    try:
        loguru.logger.warning("from loguru")
    finally:
        loguru.logger.remove(sink_id)
        h.close()
    (rec,) = list(mlog.read(tmp_path))
    assert rec.message == "from loguru" and rec.level == 30
    # loguru also takes the Handler itself (it then builds logging records for it)
    h2 = mlog.Handler(tmp_path / "std", "lg")
    sink_id = loguru.logger.add(h2, format="{message}")
    try:
        loguru.logger.error("handler sink")
    finally:
        loguru.logger.remove(sink_id)
        h2.close()
    (rec,) = list(mlog.read(tmp_path / "std"))
    assert rec.message.endswith("handler sink") and rec.level == logging.ERROR


def test_handler_survives_disk_full_without_raising(tmp_path: Path) -> None:
    res = run_py("""
        import logging, sys, warnings, mmapkit.log as mlog
        from mmapkit.errors import DiskFullError
        h = mlog.Handler(sys.argv[1], "h", buffer_size=4096, flush_interval=60)
        def full(*a, **k):
            raise DiskFullError(28, "no space left (simulated by the test)")
        h.writer._sink.append = full
        lg = logging.getLogger("x"); lg.addHandler(h); lg.propagate = False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(500):
                lg.warning("line %d", i)
        assert h.dropped > 0, h.dropped
        assert any("dropped" in str(c.message) for c in caught)
        print("ok", h.dropped)
        import os; os._exit(0)
    """, str(tmp_path))
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr
    # what fitted in the buffer is still recovered by the next reader
    assert len(messages(tmp_path)) > 10


def test_follow_a_busy_writer_exactly_once(tmp_path: Path) -> None:
    """Following while another process writes, wraps its ring and flushes all the time:
    torn copies of its live buffer must never make the reader skip or repeat a record."""
    from mmapkit.log.reader import _Reader

    child = spawn("""
        import sys, time, mmapkit.log as mlog
        w = mlog.Writer(sys.argv[1], "busy", buffer_size=8192, flush_interval=0.003)
        for i in range(6000):
            w.write(f"busy {i} " + "p" * (i % 90))
            if i % 500 == 0:
                time.sleep(0.01)
        w.close()
    """, str(tmp_path))
    reader = _Reader(tmp_path, None, None, None, None, lambda p, d: None)
    got: list[int] = []
    deadline = time.monotonic() + 60
    while len(got) < 6000 and time.monotonic() < deadline:
        got.extend(int(r.message.split()[1]) for r in reader.poll(final=False))
        time.sleep(0.002)
    child.communicate(timeout=60)
    got.extend(int(r.message.split()[1]) for r in reader.poll(final=True))
    assert got == list(range(6000))
    assert mlog.check(tmp_path).ok


def test_half_created_buffers_are_harmless(tmp_path: Path) -> None:
    """Slots left by writers killed while creating them (empty, or never given a header)."""
    (tmp_path / "app.0.mbuf").write_bytes(b"")
    (tmp_path / "app.1.mbuf").write_bytes(bytes(8192))
    (tmp_path / "app.2.mbuf").write_bytes(bytes(100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert messages(tmp_path) == []
        with mlog.Writer(tmp_path, "app") as w:
            w.write("fine")
        with mlog.Writer(tmp_path, "app") as w1, mlog.Writer(tmp_path, "app") as w2:
            w1.write("one")
            w2.write("two")
    assert sorted(messages(tmp_path)) == ["fine", "one", "two"]
    assert mlog.check(tmp_path).ok


# The Writer against a list: records of every size (empty, text, bytes, longer than the
# buffer), flushes, syncs and reopens, with both compressions and small files that rotate;
# read() returns exactly what was written, in order, and check() is clean.
_LOG_OPS = st.lists(st.one_of(
    st.tuples(st.just("text"), st.text(max_size=300)),
    st.tuples(st.just("bytes"), st.binary(max_size=300)),
    st.tuples(st.just("big"), st.integers(4096, 20000)),
    st.tuples(st.sampled_from(["flush", "sync", "reopen"]), st.none()),
), max_size=40)


@given(ops=_LOG_OPS, compress=st.sampled_from(["zlib", "none"]))
@settings(max_examples=150, deadline=None)
def test_writer_matches_a_list_model(ops: list[tuple[str, Any]], compress: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        written: list[str | bytes] = []
        opts: dict[str, Any] = dict(buffer_size=4096, max_bytes=6000, flush_interval=60,
                                    compress=compress)
        w = mlog.Writer(tmp, "model", **opts)
        try:
            for op, arg in ops:
                if op in ("text", "bytes"):
                    w.write(arg)
                    written.append(arg)
                elif op == "big":
                    msg = "b" * arg
                    w.write(msg)
                    written.append(msg)
                elif op == "flush":
                    w.flush()
                elif op == "sync":
                    w.sync()
                else:
                    w.close()
                    w = mlog.Writer(tmp, "model", **opts)
        finally:
            w.close()
        got = [r.message for r in mlog.read(tmp)]
        want = [m.decode("utf-8", "replace") if isinstance(m, bytes) else m for m in written]
        assert got == want
        assert mlog.check(tmp).ok
