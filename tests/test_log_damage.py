"""Damaged buffers and log files met by a new Writer and by read(): reported, never fatal."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmapkit.log as mlog
from mmapkit.errors import FileFormatError


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
