"""Damaged buffers and log files met by a new Writer and by read(): reported, never fatal."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from conftest import run_py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmapkit.log as mlog
from mmapkit.errors import FileFormatError
from mmapkit.lock import FileLock


@pytest.fixture(scope="module")
def dead_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with one log file and the buffer of a process that died unflushed."""
    d = tmp_path_factory.mktemp("dead")
    pid = os.fork()
    if pid == 0:
        try:
            w = mlog.Writer(d, "app", buffer_size=8192, flush_interval=60)
            for i in range(80):
                w.write(f"rec {i} " + "q" * (i % 40))
                if i == 39:
                    w.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return d


def _check_content(recs: list[mlog.Record]) -> None:
    seqs = [r.sequence for r in recs]
    assert len(seqs) == len(set(seqs))
    for r in recs:
        i = int(r.message.split()[1])
        assert r.message == f"rec {i} " + "q" * (i % 40) and r.sequence == i + 1


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["mbuf", "mlog"]),
       flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)),
                      min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(1, 3000)))
def test_damaged_files_never_crash(dead_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                                   which: str, flips: list[tuple[int, int]],
                                   cut: int | None) -> None:
    d = tmp_path_factory.mktemp("case")
    shutil.copytree(dead_dir, d, dirs_exist_ok=True)
    (target,) = d.glob(f"*.{which}")
    data = bytearray(target.read_bytes())
    for pos, val in flips:
        data[pos % len(data)] ^= val
    if cut is not None and which == "mlog":
        del data[max(0, len(data) - cut):]
    target.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            recs = list(mlog.read(d))
        except FileFormatError:
            recs = []
        _check_content(recs)
        # A new writer recovers what it can; nothing it does may raise.
        with mlog.Writer(d, "app", buffer_size=8192) as w:
            w.write("rec 999 " + "q" * (999 % 40))
        try:
            after = list(mlog.read(d))
        except FileFormatError:
            return
    kept = [r for r in after if not r.message.startswith("rec 999")]
    _check_content(kept)
    assert {r.sequence for r in recs} <= {r.sequence for r in after}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(fmt=st.lists(st.sampled_from(["%(asctime)s", "%(levelname)s", "%(name)s", " ",
                                     "%(message)s", "%(process)d", "[%(lineno)d]", "%%"]),
                    min_size=1, max_size=6).map("".join).filter(lambda f: "%(" in f),
       datefmt=st.sampled_from([None, "%Y-%m-%d", "%H:%M:%S"]),
       msg=st.text(max_size=30))
def test_fast_format_equals_logging(tmp_path: Path, fmt: str, datefmt: str | None,
                                    msg: str) -> None:
    h = mlog.Handler(tmp_path, "fmt")
    formatter = logging.Formatter(fmt, datefmt)
    h.setFormatter(formatter)
    record = logging.LogRecord("n", logging.WARNING, "f.py", 3, "%s", (msg,), None)
    expected = formatter.format(record)
    assert h._format(record) == expected
    assert h._format(record) == expected  # second time from the per-second cache
    h.close()


# --- every field of a buffer header, flipped or absurd --------------------------------
#
# A dead writer's buffer holding 40 flushed-then-zeroed and 40 unflushed records (so head
# is not 0).  Whatever a header field holds, a new Writer (and a Handler) starts without an
# internal error, keeps every record (salvaging what verifies when it cannot trust the
# header, with the damaged file copied aside), and read() gives each record exactly once.

_FIELDS = {  # name: (offset, size, covered by the header checksum)
    "magic": (0, 8, True), "version": (8, 2, True), "flags": (10, 2, True),
    "data_offset": (12, 4, True), "capacity": (16, 8, True), "stream": (24, 8, True),
    "head": (32, 8, False), "head_seq": (40, 8, False), "created": (48, 8, True),
    "pid": (56, 4, True), "crc": (60, 4, False),
}


@pytest.fixture(scope="module")
def unflushed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("unflushed")
    pid = os.fork()
    if pid == 0:
        try:
            w = mlog.Writer(d, "app", buffer_size=8192, flush_interval=60)
            for i in range(80):
                w.write(f"rec {i} " + "q" * (i % 40))
                if i == 39:
                    w.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return d


def _damage(data: bytearray, field: str, how: str) -> None:
    off, size, checked = _FIELDS[field]
    if how == "flip":
        data[off] ^= 0x08 if field in ("head", "head_seq") else 0x01  # head stays aligned
    else:
        data[off : off + size] = b"\xff" * size
        if how == "absurd+crc" and checked:  # what a buggy writer, not a bad disk, leaves
            struct.pack_into("<I", data, 60, zlib.crc32(bytes(data[48:60]),
                                                        zlib.crc32(bytes(data[:32]))))


@pytest.mark.parametrize("how", ["flip", "absurd", "absurd+crc"])
@pytest.mark.parametrize("field", list(_FIELDS))
def test_damaged_header_field(unflushed_dir: Path, tmp_path: Path, field: str,
                              how: str) -> None:
    shutil.copytree(unflushed_dir, tmp_path, dirs_exist_ok=True)
    buf = tmp_path / "app.0.mbuf"
    data = bytearray(buf.read_bytes())
    _damage(data, field, how)
    buf.write_bytes(bytes(data))
    everything = [f"rec {i} " + "q" * (i % 40) for i in range(80)]

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        before = [r.message for r in mlog.read(tmp_path)]
        assert len(before) == len(set(before)) and set(before) <= set(everything)
        if field == "version" and how == "absurd+crc":
            # A newer format: left untouched for the newer code, logging goes elsewhere.
            with mlog.Writer(tmp_path, "app") as w:
                w.write("new")
                assert w.statistics().buffer_path != str(buf)
            assert buf.read_bytes() == bytes(data)
            assert any("upgrade" in str(x.message) for x in seen)
            return
        h = mlog.Handler(tmp_path, "app")
        h.handle(logging.LogRecord("n", logging.INFO, "f.py", 1, "new", None, None))
        h.close()
    lock = FileLock(buf)
    assert lock.try_exclusive()  # close() released the slot
    lock.close()
    after = [r.message for r in mlog.read(tmp_path)]
    assert sorted(after) == sorted([*everything, "n: new"])
    assert mlog.check(tmp_path).ok
    asides = list(tmp_path.glob("app.0.mbuf.damaged-*"))
    if asides:  # copied aside, never wiped: the copy is the damaged file as it was
        (aside,) = asides
        assert aside.read_bytes() == bytes(data)
        assert any("copied to" in str(x.message) for x in seen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kept = [r.message for r in mlog.read(aside)]
        assert sorted(kept) == everything[40:]
    else:  # only fields nothing depends on may go unnoticed
        assert how == "absurd+crc" and field in ("stream", "flags", "created", "pid"), seen


HANDLER_AT_EXIT = """
import logging, os, struct, sys
import mmapkit.log as mlog
d = sys.argv[1]
pid = os.fork()
if pid == 0:
    w = mlog.Writer(d, "app", buffer_size=65536, flush_interval=60)
    for i in range(323):
        w.write(f"rec {i}")
    os._exit(0)
os.waitpid(pid, 0)
with open(os.path.join(d, "app.0.mbuf"), "r+b") as f:
    f.seek(32)
    f.write(struct.pack("<QQ", 2**64 - 8, 2**64 - 1))
h = mlog.Handler(d, "app")
logging.getLogger().addHandler(h)
logging.getLogger().warning("after")
print(len(list(mlog.read(d))), flush=True)
# no close: logging.shutdown() at exit flushes and closes it
"""

FAILED_HANDLER = """
import sys
import mmapkit.log as mlog
mlog.Handler(sys.argv[1], "app", buffer_size=10)
"""


def test_absurd_head_fields_do_not_block_logging(tmp_path: Path) -> None:
    """The issue's case: head fields of 2**64-8 / 2**64-1 made every start raise
    ValueError from _store_head, close() raise ExportedViewsError, exit AttributeError."""
    res = run_py(HANDLER_AT_EXIT, str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) == 324
    assert "Traceback" not in res.stderr and "Error" not in res.stderr, res.stderr
    assert "copied to" in res.stderr  # the one LogWarning: what was done with the buffer
    assert len(list(mlog.read(tmp_path))) == 324


def test_a_handler_that_cannot_start_is_never_registered(tmp_path: Path) -> None:
    res = run_py(FAILED_HANDLER, str(tmp_path))
    assert res.returncode == 1
    assert "InvalidSizeError" in res.stderr
    assert "AttributeError" not in res.stderr, res.stderr


def test_wrong_head_keeps_unflushed_records(unflushed_dir: Path, tmp_path: Path) -> None:
    """A plausible but wrong head (pointing into the middle of the live records) made the
    next Writer zero everything outside [head, tail): the records before it were wiped."""
    shutil.copytree(unflushed_dir, tmp_path, dirs_exist_ok=True)
    buf = tmp_path / "app.0.mbuf"
    data = bytearray(buf.read_bytes())
    head = struct.unpack_from("<Q", data, 32)[0]
    # forward by 10 whole records: the scan from there finds records, but not all
    pos = head
    for _ in range(10):
        size = struct.unpack_from("<I", data, 4096 + pos % 8192)[0]
        pos += (size + 7) & ~7
    struct.pack_into("<Q", data, 32, pos)
    buf.write_bytes(bytes(data))
    with pytest.warns(mlog.LogWarning, match="copied to"):
        mlog.Writer(tmp_path, "app").close()
    got = [r.message for r in mlog.read(tmp_path)]
    assert sorted(got) == sorted(f"rec {i} " + "q" * (i % 40) for i in range(80))
