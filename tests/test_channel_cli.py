"""``mmapkit channel ...`` through cli.main, and the demo act."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmapkit import cli
from mmapkit.commands.demo import run_demo
from mmapkit.ipc import Channel


def test_send_stat_recv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "c")
    assert cli.main(["channel", "send", path, "one", "two", "--create", "--capacity",
                     "4096"]) == 0
    assert cli.main(["channel", "send", path, "three", "--finish"]) == 0
    capsys.readouterr()
    assert cli.main(["channel", "stat", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["capacity"] == 4096 and info["pending_messages"] == 3
    assert [p["role"] for p in info["participants"]] == ["finished"]
    assert cli.main(["channel", "stat", path]) == 0
    assert "pending_messages" in capsys.readouterr().out
    assert cli.main(["channel", "recv", path, "--count", "2"]) == 0
    assert capsys.readouterr().out == "one\ntwo\n"
    assert cli.main(["channel", "recv", path, "--timeout", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "three\n" and "end of channel" in captured.err
    # nothing more: asking for a count that cannot come exits 1
    assert cli.main(["channel", "recv", path, "--count", "1", "--timeout", "0.1"]) == 1


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk").write_bytes(b"junk" * 100)
    assert cli.main(["channel", "stat", str(tmp_path / "junk")]) == 1
    assert "not an mmapkit channel" in capsys.readouterr().err
    path = tmp_path / "full"
    Channel.create(path, capacity=64).close()
    assert cli.main(["channel", "send", str(path), "x" * 40, "y" * 40, "--timeout",
                     "0.1"]) == 1
    assert "stayed full" in capsys.readouterr().err


def test_bench_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b"
    assert cli.main(["channel", "bench", str(path), "--messages", "20000"]) == 0
    assert "messages/s" in capsys.readouterr().out
    assert not path.exists()


def test_demo_act(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(["channel"]) == 0
    out = capsys.readouterr().out
    assert "BrokenError" in out and "1 of 1 acts" in out


def test_stat_shows_subscribers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b"
    with Channel.create(path, capacity=4096, broadcast=True) as ch:
        ch.send(b"x")
        with Channel.open(path) as sub:
            sub.subscribe("dashboard")
            assert sub.recv() == b"x"
            capsys.readouterr()
            assert cli.main(["channel", "stat", str(path)]) == 0
            out = capsys.readouterr().out
            assert "dashboard" in out and "subscriber" in out and "True" in out
