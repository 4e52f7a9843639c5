"""``mmapkit log ...`` through cli.main, and the demo act."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import mmapkit.log as mlog
from mmapkit import cli
from mmapkit.commands.log import parse_time


def make_log(d: Path) -> None:
    with mlog.Writer(d, "app") as w:
        w.write("first old line", level=20, time_us=1_600_000_000_000_000)
        for i in range(20):
            w.write(f"line {i}", level=30)
        w.write("Needle in the log", level=40)


def test_cat_json_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_log(tmp_path)
    assert cli.main(["log", "cat", str(tmp_path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 22 and rows[0]["message"] == "first old line"
    assert rows[1]["level"] == 30 and rows[1]["pid"] == os.getpid()
    assert cli.main(["log", "cat", str(tmp_path), "--since", "1d"]) == 0
    out = capsys.readouterr().out
    assert "first old line" not in out and "WARNING  line 0" in out


def test_tail_and_grep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_log(tmp_path)
    assert cli.main(["log", "tail", "-n", "2", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[-1].endswith("Needle in the log")
    assert cli.main(["log", "grep", "-i", "needle", str(tmp_path), "--json"]) == 0
    (row,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert row["level"] == 40
    assert cli.main(["log", "grep", "absent", str(tmp_path)]) == 1
    assert cli.main(["log", "grep", "(", str(tmp_path)]) == 2


def test_stats_reports_damage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_log(tmp_path)
    assert cli.main(["log", "stats", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["records"] == 22 and data["ok"] and data["files"] == 1
    (log,) = tmp_path.glob("*.mlog")
    raw = bytearray(log.read_bytes())
    raw[100] ^= 0xFF
    log.write_bytes(bytes(raw))
    assert cli.main(["log", "stats", str(tmp_path)]) == 1
    assert "damage" in capsys.readouterr().out


def test_recover_dead_buffers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            w = mlog.Writer(tmp_path, "app", flush_interval=60)
            for i in range(30):
                w.write(f"unflushed {i}")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert cli.main(["log", "recover", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recovered"] == {"app": 30}
    assert cli.main(["log", "recover", str(tmp_path)]) == 0
    assert "recovered 0" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["log", "cat", str(tmp_path / "missing")]) == 1
    assert "no log file or directory" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("hello, not a log\n")
    assert cli.main(["log", "cat", str(tmp_path / "x.txt")]) == 1
    assert "not an mmapkit log" in capsys.readouterr().err
    private, public = mlog.generate_keypair()
    with mlog.Writer(tmp_path / "enc", "app", public_key=public) as w:
        w.write("secret")
    assert cli.main(["log", "cat", str(tmp_path / "enc")]) == 1
    assert "private_key" in capsys.readouterr().err
    key = tmp_path / "key"
    key.write_text(private.hex())
    assert cli.main(["log", "cat", str(tmp_path / "enc"), "--key", str(key)]) == 0
    assert "secret" in capsys.readouterr().out


def test_parse_time() -> None:
    assert abs(parse_time("1h") - (time.time() - 3600)) < 5
    assert parse_time("1700000000") == 1_700_000_000
    assert parse_time("2024-01-01T00:00:00+00:00") == 1_704_067_200
    with pytest.raises(Exception, match="cannot read"):
        parse_time("yesterday-ish")


def test_demo_act(tmp_path: Path) -> None:
    from mmapkit.demos import d10_log

    said: list[str] = []
    d10_log.run(tmp_path, said.append)
    assert any("recovered 2000 records" in s for s in said)


def test_tail_follow_through_cli(tmp_path: Path) -> None:
    """`mmapkit log tail -f` shows the last lines, then records still in another running
    process's buffer."""
    import subprocess
    import sys

    from conftest import child_env

    make_log(tmp_path)
    follower = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mmapkit import cli; "
         "sys.exit(cli.main(['log', 'tail', '-n', '1', '-f', sys.argv[1]]))", str(tmp_path)],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline().rstrip().endswith("Needle in the log")
        with mlog.Writer(tmp_path, "other", flush_interval=60) as w:
            w.write("live, not flushed")
            line = follower.stdout.readline()
            assert line.rstrip().endswith("live, not flushed")
    finally:
        follower.kill()
        follower.communicate()
