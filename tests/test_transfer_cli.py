"""The ``mmapkit copy``, ``send`` and ``recv`` commands through cli.main()."""

from __future__ import annotations

import random
import socket
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmapkit import _stream, cli
from mmapkit.commands import transfer as cmd
from mmapkit.errors import BrokenError, ForeignFileError, FormatVersionError
from tests.conftest import spawn

DATA = random.Random(5).randbytes((1 << 20) + 77)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(DATA)
    return path


def test_copy_prints_bytes_method_and_speed(src: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["copy", str(src), str(tmp_path / "dst"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert f"{len(DATA):,} bytes by " in out
    assert "GB/s" in out
    assert "verified" in out
    assert (tmp_path / "dst").read_bytes() == DATA


@pytest.mark.parametrize("method", ["readwrite", "mmap", "sendfile", "copy_file_range"])
def test_copy_forced_method(src: Path, tmp_path: Path, method: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["copy", "--method", method, str(src), str(tmp_path / "dst")]) == 0
    assert f"by {method} in" in capsys.readouterr().out
    assert (tmp_path / "dst").read_bytes() == DATA


def test_copy_refuses_to_overwrite_without_the_flag(src: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "dst"
    dst.write_bytes(b"keep me")
    assert cli.main(["copy", str(src), str(dst)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert dst.read_bytes() == b"keep me"
    assert cli.main(["copy", "--overwrite", str(src), str(dst)]) == 0
    assert dst.read_bytes() == DATA


def test_copy_many_into_a_directory(src: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(b"second")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert cli.main(["copy", str(src), str(other), str(out_dir)]) == 0
    assert (out_dir / "src.bin").read_bytes() == DATA
    assert (out_dir / "other.bin").read_bytes() == b"second"
    assert cli.main(["copy", str(src), str(other), str(tmp_path / "nodir")]) == 2
    assert "directory" in capsys.readouterr().err
    assert cli.main(["copy", str(src)]) == 2


def test_copy_verify_catches_a_difference(src: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    real = cmd.copy

    def corrupting(*args: object, **kw: object) -> object:
        res = real(*args, **kw)  # type: ignore[arg-type]
        with open(res.path, "r+b") as f:
            f.seek(1000)
            f.write(b"\xff" if DATA[1000] != 0xFF else b"\x00")
        return res

    monkeypatch.setattr(cmd, "copy", corrupting)
    assert cli.main(["copy", "--verify", str(src), str(tmp_path / "dst")]) == 1
    assert "differ from byte 1000" in capsys.readouterr().err


def test_copy_missing_source_is_one_line_error(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["copy", str(tmp_path / "nope"), str(tmp_path / "dst")]) == 1
    assert capsys.readouterr().err.startswith("mmapkit: error:")


def test_plain_progress_without_rich(src: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cmd, "PROGRESS_MIN", 1)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    import builtins

    real_import = builtins.__import__

    def no_rich(name: str, *args: object, **kw: object) -> object:
        if name.startswith("rich"):
            raise ImportError("no rich here")
        return real_import(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_rich)
    assert cli.main(["copy", str(src), str(tmp_path / "dst")]) == 0
    assert "100%" in capsys.readouterr().err


def _start_recv(address: str, out: Path) -> tuple[object, str]:
    child = spawn("from mmapkit import cli; import sys; raise SystemExit(cli.main(sys.argv[1:]))",
                  "recv", address, str(out), "--timeout", "30")
    assert child.stderr is not None
    line = child.stderr.readline()
    assert line.startswith("listening on "), line
    return child, line.split("listening on ", 1)[1].strip()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_send_to_recv_in_another_process(src: Path, tmp_path: Path, kind: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "received.bin"
    address = f"unix:{tmp_path / 'sock'}" if kind == "unix" else "127.0.0.1:0"
    child, shown = _start_recv(address, out)
    assert cli.main(["send", str(src), shown]) == 0
    said = capsys.readouterr().out
    assert f"{len(DATA):,} bytes" in said and "confirmed by the receiver" in said
    stdout, stderr = child.communicate(timeout=30)  # type: ignore[attr-defined]
    assert child.returncode == 0, stderr  # type: ignore[attr-defined]
    assert "received" in stdout
    assert out.read_bytes() == DATA
    if kind == "unix":
        assert not (tmp_path / "sock").exists()


def test_send_with_offset_and_count(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "part.bin"
    child, shown = _start_recv(f"unix:{tmp_path / 'sock'}", out)
    assert cli.main(["send", "--offset", "100", "--count", "5000", str(src), shown]) == 0
    child.communicate(timeout=30)  # type: ignore[attr-defined]
    assert out.read_bytes() == DATA[100:5100]


def test_send_and_recv_are_loopback_only(src: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["send", str(src), "192.0.2.1:9000"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert cli.main(["recv", "192.0.2.1:9000", str(tmp_path / "x")]) == 2
    assert cli.main(["send", str(src), "nonsense"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_send_with_nobody_listening(src: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["send", "--wait", "0.2", str(src), f"unix:{tmp_path / 'none'}"]) == 1
    assert "mmapkit recv" in capsys.readouterr().err


def test_recv_refuses_existing_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exists"
    out.write_bytes(b"x")
    assert cli.main(["recv", f"unix:{tmp_path / 's'}", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def _recv_in_thread(tmp_path: Path, out: Path) -> tuple[threading.Thread, list[int], str]:
    address = str(tmp_path / "s")
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(
        cli.main(["recv", f"unix:{address}", str(out), "--timeout", "20"])), daemon=True)
    t.start()
    return t, codes, address


def _connect(address: str) -> socket.socket:
    for _ in range(400):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(address)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            threading.Event().wait(0.01)
    raise AssertionError("recv never listened")


def test_recv_keeps_nothing_when_the_sender_dies_early(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    t, codes, address = _recv_in_thread(tmp_path, out)
    with _connect(address) as s:
        s.sendall(_stream.encode_header(1000) + b"only some bytes")
    t.join(30)
    assert codes == [1]
    assert "stopped after 15 of 1,000 bytes" in capsys.readouterr().err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".mmapkit-tmp")]


def test_recv_refuses_a_foreign_stream(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    t, codes, address = _recv_in_thread(tmp_path, out)
    with _connect(address) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    t.join(30)
    assert codes == [1]
    assert "did not send an mmapkit stream" in capsys.readouterr().err
    assert not out.exists()


def test_stream_header_codec() -> None:
    head = _stream.encode_header(123456789)
    assert len(head) == 16 and head[:4] == b"MKXF"
    assert _stream.decode_header(head) == 123456789
    assert _stream.decode_header(head + b"trailing") == 123456789
    for cut in range(len(head)):
        with pytest.raises(BrokenError):
            _stream.decode_header(head[:cut])
    with pytest.raises(ForeignFileError):
        _stream.decode_header(b"XXXX" + head[4:])
    with pytest.raises(FormatVersionError) as info:
        _stream.decode_header(b"MKXF" + struct.pack("<HHQ", 2, 0, 5))
    assert info.value.found == 2
    for i in range(len(head)):  # any single damaged byte: a length or one of our errors
        damaged = bytearray(head)
        damaged[i] ^= 0xFF
        try:
            assert _stream.decode_header(bytes(damaged)) >= 0
        except (ForeignFileError, FormatVersionError):
            pass


def test_parse_address() -> None:
    assert cmd.parse_address("unix:/tmp/x") == (socket.AF_UNIX, "/tmp/x")
    assert cmd.parse_address("127.0.0.1:80") == (socket.AF_INET, ("127.0.0.1", 80))
    family, addr = cmd.parse_address("localhost:81")
    assert family in (socket.AF_INET, socket.AF_INET6) and addr[1] == 81  # type: ignore[index]
    for bad in ("unix:", "host", "127.0.0.1:http", "10.0.0.1:80"):
        with pytest.raises(ValueError):
            cmd.parse_address(bad)


def test_demo_act_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmapkit.commands.demo import run_demo

    assert run_demo(["transfer"], str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "copy() used" in out and "the child survived" in out


def test_rich_progress_bar_on_a_terminal(src: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rich")
    monkeypatch.setattr(cmd, "PROGRESS_MIN", 1)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert cli.main(["copy", str(src), str(tmp_path / "dst")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("copied ") and "GB/s" in out  # the bar went to stderr
    assert (tmp_path / "dst").read_bytes() == DATA


@given(st.one_of(st.binary(max_size=40), st.binary(max_size=36).map(lambda b: b"MKXF" + b)))
@settings(max_examples=300, deadline=None)
def test_header_decoder_fuzz(garbage: bytes) -> None:
    try:
        assert _stream.decode_header(garbage) >= 0
    except (BrokenError, ForeignFileError, FormatVersionError):
        pass
