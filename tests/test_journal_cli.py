"""``mmapkit journal DIR ...`` through cli.main (and a follower in a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmapkit import cli
from mmapkit.journal import Journal


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_append_cat_tail_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "j")
    assert cli.main(["journal", d, "append", "--create", "one", "two", "three"]) == 0
    assert _lines(capsys) == ["0", "1", "2"]
    assert cli.main(["journal", d, "append", "--key", "k", "--header", "h=v", "--batch",
                     "--json", "four", "five"]) == 0
    assert json.loads(capsys.readouterr().out) == {"offsets": [3, 4]}
    assert cli.main(["journal", d, "cat", "--json"]) == 0
    rows = [json.loads(x) for x in _lines(capsys)]
    assert [r["value"] for r in rows] == ["one", "two", "three", "four", "five"]
    assert [r["offset"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[3]["key"] == "k" and rows[3]["headers"] == {"h": "v"}
    assert rows[0]["key"] is None and "headers" not in rows[0]
    assert cli.main(["journal", d, "cat", "--from", "2", "--count", "2"]) == 0
    out = _lines(capsys)
    assert len(out) == 2 and out[0].startswith("2 ") and out[0].endswith(" three")
    assert out[1].startswith("3 ") and out[1].endswith("[k] four")
    assert cli.main(["journal", d, "cat", "--from", "latest"]) == 0
    assert _lines(capsys) == []
    assert cli.main(["journal", d, "cat", "--from", "1d"]) == 0  # by time: all are newer
    assert len(_lines(capsys)) == 5
    assert cli.main(["journal", d, "tail", "-n", "2", "--json"]) == 0
    assert [json.loads(x)["value"] for x in _lines(capsys)] == ["four", "five"]


def test_binary_values_and_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True) as j:
        j.append(b"\xff\x00bin")
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("a\nb\n"))
    assert cli.main(["journal", str(d), "append"]) == 0
    capsys.readouterr()
    assert cli.main(["journal", str(d), "cat", "--json"]) == 0
    rows = [json.loads(x) for x in _lines(capsys)]
    assert rows[0]["value_b64"] == "/wBiaW4=" and "value" not in rows[0]
    assert [r["value"] for r in rows[1:]] == ["a", "b"]
    assert cli.main(["journal", str(d), "cat"]) == 0
    assert _lines(capsys)[0].endswith(" \\xff\\x00bin")


def test_stats_consumers_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True, segment_bytes=4096) as j:
        for i in range(200):
            j.append(b"x" * 50 + str(i).encode())
        assert cli.main(["journal", str(d), "consumers"]) == 0
        assert "no consumer" in capsys.readouterr().out
        c = j.consumer("billing")
        assert len(c.poll(150, timeout=0)) == 150
        c.commit()
    assert cli.main(["journal", str(d), "consumers", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {"end_offset": 200, "consumers": [{"name": "billing", "committed": 150,
                                                      "lag": 50}]}
    assert cli.main(["journal", str(d), "consumers"]) == 0
    assert "billing" in capsys.readouterr().out
    assert cli.main(["journal", str(d), "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["end_offset"] == 200 and stats["segments"] > 1
    assert cli.main(["journal", str(d), "check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    # damage one batch in the second segment: check reports it and exits 1
    seg = sorted(p for p in d.glob("*.log"))[1]
    raw = bytearray(seg.read_bytes())
    raw[100] ^= 0xFF
    seg.write_bytes(bytes(raw))
    assert cli.main(["journal", str(d), "check"]) == 1
    assert "damaged: offsets" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["journal", str(tmp_path / "absent"), "cat"]) == 1
    assert "create=True" in capsys.readouterr().err
    with Journal(tmp_path / "j", create=True) as j:
        j.append(b"x")
    assert cli.main(["journal", str(tmp_path / "j"), "cat", "--from", "99"]) == 1
    assert "outside the journal" in capsys.readouterr().err
    assert cli.main(["journal", str(tmp_path / "j"), "cat", "--from", "soon"]) == 2
    assert "--from takes" in capsys.readouterr().err
    assert cli.main(["journal", str(tmp_path / "j"), "append", "--header", "bad", "x"]) == 2


def test_cat_follow_sees_appends_from_another_process(tmp_path: Path) -> None:
    d = tmp_path / "j"
    Journal(d, create=True).close()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmapkit", "journal", str(d), "cat", "--follow", "--count",
         "3", "--timeout", "30", "--json"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        with Journal(d) as j:
            for v in (b"a", b"b", b"c"):
                j.append(v)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert [json.loads(x)["value"] for x in out.splitlines()] == ["a", "b", "c"]


def test_tail_follow_times_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True) as j:
        j.append(b"last")
    assert cli.main(["journal", str(d), "tail", "-n", "5", "--follow", "--timeout",
                     "0.2"]) == 0
    assert _lines(capsys)[0].endswith(" last")


def test_demo_act(capsys: pytest.CaptureFixture[str]) -> None:
    # producers in two processes (one SIGKILLed), a consumer killed between processing
    # and commit that resumes, a selector tail, a remote reader; the act checks each
    from mmapkit.commands.demo import run_demo
    assert run_demo(["g10_journal"]) == 0
    out = capsys.readouterr().out
    assert "re-delivered" in out and "Journal.check: ok" in out and "1 of 1 acts" in out
