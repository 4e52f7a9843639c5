"""copy() and ``mmapkit recv`` on a full file system (a real 1 MiB tmpfs): DiskFullError
(an OSError with errno ENOSPC) that says what to do, and no partial file left behind."""

from __future__ import annotations

import errno
import os
import random
import socket
import threading
from pathlib import Path

import pytest
from conftest import tiny_tmpfs

import mmapkit
from mmapkit import _stream, cli
from mmapkit.errors import DiskFullError, MmapkitError

pytestmark = pytest.mark.timeout(120)

BIG = random.Random(11).randbytes(3 << 20)  # three times the tmpfs


@pytest.fixture
def small_fs() -> object:
    with tiny_tmpfs("1m") as mnt:
        yield mnt


@pytest.fixture
def big(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(BIG)
    return path


@pytest.mark.parametrize("same_fs", [False, True], ids=["other-fs", "same-fs"])
@pytest.mark.parametrize("method", ["auto", "copy_file_range", "sendfile", "readwrite",
                                    "mmap"])
def test_copy_onto_a_full_disk(big: Path, small_fs: Path, method: str, same_fs: bool) -> None:
    if method == "copy_file_range" and not same_fs:
        pytest.skip("copy_file_range between file systems is refused by many kernels (EXDEV)")
    src = big
    if same_fs:  # 600 KiB that fit, whose copy does not
        src = small_fs / "src.bin"
        src.write_bytes(BIG[: 600 << 10])
    before = sorted(os.listdir(small_fs))
    free = os.statvfs(small_fs).f_bfree
    dst = small_fs / "copy.bin"
    with pytest.raises(DiskFullError) as info:
        mmapkit.copy(src, dst, method=method)
    exc = info.value
    assert isinstance(exc, OSError) and isinstance(exc, MmapkitError)
    assert exc.errno == errno.ENOSPC
    assert "free some space" in str(exc) and "was not created" in str(exc)
    assert sorted(os.listdir(small_fs)) == before  # no destination, no temporary file
    assert os.statvfs(small_fs).f_bfree == free  # the space was given back


def test_overwrite_on_a_full_disk_keeps_the_old_file(big: Path, small_fs: Path) -> None:
    dst = small_fs / "copy.bin"
    dst.write_bytes(b"old contents")
    with pytest.raises(DiskFullError, match="left as it was"):
        mmapkit.copy(big, dst, overwrite=True)
    assert dst.read_bytes() == b"old contents"
    assert os.listdir(small_fs) == ["copy.bin"]


def test_a_copy_that_fits_still_works(tmp_path: Path, small_fs: Path) -> None:
    src = tmp_path / "small.bin"
    src.write_bytes(BIG[:100_000])
    result = mmapkit.copy(src, small_fs / "ok.bin")
    assert result.bytes == 100_000
    assert (small_fs / "ok.bin").read_bytes() == BIG[:100_000]


def test_copy_command_on_a_full_disk(big: Path, small_fs: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["copy", str(big), str(small_fs / "x.bin")]) == 1
    assert "free some space" in capsys.readouterr().err
    assert os.listdir(small_fs) == []


def test_recv_command_on_a_full_disk(small_fs: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = small_fs / "received.bin"
    address = str(tmp_path / "s")
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(
        cli.main(["recv", f"unix:{address}", str(out), "--timeout", "20"])), daemon=True)
    t.start()
    for _ in range(400):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(address)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            threading.Event().wait(0.01)
    else:
        raise AssertionError("recv never listened")
    with s:
        try:
            s.sendall(_stream.encode_header(len(BIG)) + BIG)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the receiver gave up: that is the point
    t.join(30)
    assert codes == [1]
    err = capsys.readouterr().err
    assert "no space left" in err and "was not written" in err
    assert os.listdir(small_fs) == []
