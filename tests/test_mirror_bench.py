"""bench/mirror.py: registered with `mmapkit bench`; its redis-server helper serves and
stops; a machine without redis-server gets a skip note, not a fake figure."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import _harness
from bench import mirror as bm
from mmapkit.commands.bench import components


def test_registered() -> None:
    assert "mirror" in components()


def test_missing_server_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm, "redis_binary", lambda: None)
    report = _harness.Report("mirror", quick=True)
    bm.run(report, argparse.Namespace(quick=True, repeat=1))
    assert "redis" in report.skipped and not report.measurements


@pytest.mark.redis
def test_server_helper_serves_and_stops(tmp_path: Path) -> None:
    binary = bm.redis_binary()
    if binary is None:
        pytest.skip("no redis-server")
    import redis
    server = bm.Server(binary, str(tmp_path))
    try:
        r = redis.Redis.from_url(server.url)
        assert r.ping()
        r.close()
    finally:
        server.stop()
    assert server.proc.returncode is not None
