"""bench/journal.py: registered with `mmapkit bench`, its adapters count what they wrote,
and a missing peer is skipped, not faked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import _harness
from bench import journal as bj
from mmapkit.commands.bench import components


def test_registered() -> None:
    assert "journal" in components()


@pytest.mark.parametrize("cls", [bj.Ours, bj.SqliteWal])
def test_adapters_read_back_what_they_wrote(tmp_path: Path, cls: type[bj.Impl]) -> None:
    impl = cls(str(tmp_path / "x"))
    try:
        bj._fill(impl, 300)
        impl.append(bj._value(1))
        assert impl.read_all() == 301
    finally:
        impl.close()


def test_missing_peer_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "persistqueue", None)  # import fails as if absent
    monkeypatch.setitem(sys.modules, "litequeue", None)
    assert "not installed" in (bj._available(bj.PersistQueue, str(tmp_path)) or "")
    report = _harness.Report("journal", quick=True)
    for cls in (bj.PersistQueue, bj.LiteQueue):
        why = bj._available(cls, str(tmp_path))
        assert why is not None
        report.skip(cls.name, why)
    assert set(report.skipped) == {"persist-queue", "litequeue"}


def test_python_tail_floor_sees_every_stamp() -> None:
    """The bare Python pair behind the tail case's floor row: a latency per record the
    reader woke for (two published while it was off the CPU count once), each positive
    (a stamp read before it was written would be negative)."""
    lat = bj.py_tail_floor(50)
    assert 0 < len(lat) <= 50 and all(x > 0 for x in lat)
