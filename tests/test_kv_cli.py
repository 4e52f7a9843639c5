"""``mmapkit kv`` through cli.main()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmapkit import cli
from mmapkit.kv import KV


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = str(tmp_path / "c.kv")
    assert run(capsys, "kv", f, "set", "n", "42")[0] == 0
    assert run(capsys, "kv", f, "set", "s", "hello")[0] == 0
    assert run(capsys, "kv", f, "set", "l", "[1, 2]")[0] == 0
    assert run(capsys, "kv", f, "set", "b", "raw", "--bytes", "--sync")[0] == 0
    assert run(capsys, "kv", f, "get", "n") == (0, "42\n", "")
    assert run(capsys, "kv", f, "get", "s")[1] == "hello\n"
    assert json.loads(run(capsys, "kv", f, "get", "b", "--json")[1]) == {"$bytes": "cmF3"}
    assert run(capsys, "kv", f, "get", "nope")[0] == 1
    assert run(capsys, "kv", f, "list")[1].split() == ["b", "l", "n", "s"]
    assert json.loads(run(capsys, "kv", f, "list", "--json", "--prefix", "l")[1]) == ["l"]
    code, out, _ = run(capsys, "kv", f, "dump", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["items"]["l"] == [1, 2]
    assert "n\t42" in run(capsys, "kv", f, "dump")[1]
    stats = json.loads(run(capsys, "kv", f, "stats", "--json")[1])
    assert stats["keys"] == 4
    assert run(capsys, "kv", f, "del", "n", "zz")[0] == 1
    assert run(capsys, "kv", f, "compact")[0] == 0
    assert json.loads(run(capsys, "kv", f, "check", "--json")[1])["ok"] is True
    (tmp_path / "in.json").write_text(json.dumps(doc))
    g = str(tmp_path / "g.kv")
    assert run(capsys, "kv", g, "load", str(tmp_path / "in.json"))[0] == 0
    with KV(g) as kv:
        assert kv["b"] == b"raw" and kv["l"] == [1, 2] and kv["n"] == 42


def test_cli_check_and_repair_damage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "d.kv"
    with KV(f) as kv:
        for i in range(10):
            kv[f"k{i}"] = i
        end = kv.statistics().committed_bytes
    data = bytearray(f.read_bytes())
    data[end - 30] ^= 0xFF
    f.write_bytes(bytes(data))
    code, out, _ = run(capsys, "kv", str(f), "check")
    assert code == 1 and "DAMAGED" in out and "repair" in out
    code, out, _ = run(capsys, "kv", str(f), "repair")
    assert code == 0 and "9 keys" in out
    assert run(capsys, "kv", str(f), "check")[0] == 0


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.kv"
    f.write_bytes(b"not a kv file at all" * 20)
    code, _, err = run(capsys, "kv", str(f), "get", "a")
    assert code == 1 and err.startswith("mmapkit: error:") and "not a mmapkit KV" in err
    code, _, err = run(capsys, "kv", str(tmp_path / "missing.kv"), "list")
    assert code == 1 and "no KV file" in err
    with KV(tmp_path / "busy.kv"):
        code, _, err = run(capsys, "kv", str(tmp_path / "busy.kv"), "list")
        assert code == 1 and "single-process" in err
