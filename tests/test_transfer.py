"""copy(): every method byte for byte, sparse files, fallback chain, permissions, overwrite."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest

from mmapkit import _platform, transfer
from mmapkit.transfer import CopyResult, copy

PAGE = _platform.PAGE_SIZE
FORCED = ["copy_file_range", "sendfile", "mmap", "readwrite"]
SIZES = [0, 1, PAGE, 3 * PAGE + 17, transfer.CHUNK + 12345]


def _data(n: int, seed: int = 1) -> bytes:
    # incompressible-ish but deterministic and quick: a repeating non-periodic-per-page pattern
    block = bytes((i * 131 + seed * 7 + (i >> 8)) & 0xFF for i in range(65521))
    return (block * (n // len(block) + 1))[:n]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _tmp_leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".mmapkit-tmp")]


def _reflink_works(directory: Path) -> bool:
    a, b = directory / "probe-a", directory / "probe-b"
    a.write_bytes(b"x")
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_WRONLY | os.O_CREAT)
    try:
        _platform.reflink(fa, fb)
        return True
    except OSError:
        return False
    finally:
        os.close(fa)
        os.close(fb)
        a.unlink()
        b.unlink()


@pytest.mark.parametrize("method", ["auto", *FORCED])
@pytest.mark.parametrize("size", SIZES)
def test_every_method_copies_byte_for_byte(tmp_path: Path, method: str, size: int) -> None:
    src = _write(tmp_path / "src", _data(size))
    res = copy(src, tmp_path / "dst", method=method)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert isinstance(res, CopyResult)
    assert res.bytes == size
    assert res.path == str(tmp_path / "dst")
    assert res.seconds >= 0
    if method != "auto":
        assert res.method == method and res.skipped == ()
    else:
        assert res.method in transfer.AUTO_CHAIN
    assert _tmp_leftovers(tmp_path) == []


@pytest.mark.parametrize("method", FORCED)
def test_small_chunks_and_windows_cross_many_boundaries(tmp_path: Path, method: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "CHUNK", 3 * PAGE + 5)
    monkeypatch.setattr(transfer, "_RW_BUFFER", 2 * PAGE + 1)
    monkeypatch.setattr(transfer, "_MAP_WINDOW", 16 * PAGE)
    data = _data(100 * PAGE + 999, seed=3)
    src = _write(tmp_path / "src", data)
    seen: list[tuple[int, int]] = []
    res = copy(src, tmp_path / "dst", method=method, progress=lambda d, t: seen.append((d, t)))
    assert (tmp_path / "dst").read_bytes() == data
    assert res.method == method
    done = [d for d, _ in seen]
    assert done == sorted(done) and len(done) > 20
    assert seen[-1] == (len(data), len(data))


def test_reflink_forced_fails_clearly_or_clones(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", _data(3 * PAGE))
    if _reflink_works(tmp_path):
        res = copy(src, tmp_path / "dst", method="reflink")
        assert res.method == "reflink"
        assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    else:
        with pytest.raises(OSError, match=r"reflink .*method='auto'"):
            copy(src, tmp_path / "dst", method="reflink")
        assert not (tmp_path / "dst").exists()
        assert _tmp_leftovers(tmp_path) == []


def _sparse_source(path: Path) -> tuple[bytes, list[tuple[int, int]]]:
    size = 64 * PAGE * 16  # 4 MiB with 4 KiB pages
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(b"A" * PAGE)
        f.seek(20 * PAGE * 16)
        f.write(_data(5 * PAGE + 7))
        f.seek(40 * PAGE * 16)
        f.write(b"Z" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = _platform.data_extents(fd, size)
    finally:
        os.close(fd)
    return path.read_bytes(), extents


@pytest.mark.parametrize("method", ["auto", *FORCED])
def test_sparse_files_keep_their_holes(tmp_path: Path, method: str) -> None:
    data, extents = _sparse_source(tmp_path / "src")
    if len(extents) < 2:
        pytest.skip("this file system does not report holes (no SEEK_DATA support)")
    res = copy(tmp_path / "src", tmp_path / "dst", method=method)
    assert (tmp_path / "dst").read_bytes() == data
    fd = os.open(tmp_path / "dst", os.O_RDONLY)
    try:
        assert _platform.data_extents(fd, len(data)) == extents
    finally:
        os.close(fd)
    assert os.stat(tmp_path / "dst").st_blocks * 512 < len(data) // 4
    assert res.holes == len(data) - sum(e - s for s, e in extents)


def test_sparse_false_writes_the_zeros(tmp_path: Path) -> None:
    data, extents = _sparse_source(tmp_path / "src")
    if len(extents) < 2:
        pytest.skip("this file system does not report holes")
    res = copy(tmp_path / "src", tmp_path / "dst", method="readwrite", sparse=False)
    assert (tmp_path / "dst").read_bytes() == data
    assert res.holes == 0
    assert os.stat(tmp_path / "dst").st_blocks * 512 >= len(data)


def test_all_hole_file(tmp_path: Path) -> None:
    with open(tmp_path / "src", "wb") as f:
        f.truncate(10 * PAGE + 3)
    for method in FORCED:
        dst = tmp_path / f"dst-{method}"
        res = copy(tmp_path / "src", dst, method=method)
        assert dst.read_bytes() == b"\0" * (10 * PAGE + 3)
        assert res.bytes == 10 * PAGE + 3


# --- fallback chain ----------------------------------------------------------------------


def _refuse(err: int) -> object:
    def fail(*args: object, **kw: object) -> int:
        raise OSError(err, os.strerror(err))
    return fail


def test_auto_falls_back_through_the_chain_and_says_why(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_platform, "reflink", _refuse(errno.EOPNOTSUPP))
    monkeypatch.setattr(_platform, "copy_file_range", _refuse(errno.EXDEV))
    monkeypatch.setattr(_platform, "sendfile", _refuse(errno.ENOSYS))
    data = _data(5 * PAGE + 1)
    src = _write(tmp_path / "src", data)
    res = copy(src, tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == data
    assert res.method == "readwrite"
    assert [m for m, _ in res.skipped] == ["reflink", "copy_file_range", "sendfile"]
    reasons = dict(res.skipped)
    assert "EOPNOTSUPP" in reasons["reflink"] or "ENOTSUP" in reasons["reflink"]
    assert "EXDEV" in reasons["copy_file_range"]
    assert "ENOSYS" in reasons["sendfile"]


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ETXTBSY, errno.ENOSYS, errno.EXDEV])
def test_each_fallback_errno_moves_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      err: int) -> None:
    monkeypatch.setattr(_platform, "copy_file_range", _refuse(err))
    src = _write(tmp_path / "src", _data(PAGE + 3))
    res = copy(src, tmp_path / "dst")
    assert res.method == "sendfile"
    assert ("copy_file_range", res.skipped[-1][1]) in res.skipped
    assert errno.errorcode[err] in dict(res.skipped)["copy_file_range"]


def test_fallback_mid_file_resumes_at_the_right_offset(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "CHUNK", 4 * PAGE)
    real = _platform.copy_file_range
    calls = [0]

    def flaky(src: int, dst: int, n: int, so: int, do: int) -> int:
        calls[0] += 1
        if calls[0] > 3:
            raise OSError(errno.EINVAL, "pretend the file system changed its mind")
        return real(src, dst, n, so, do)

    monkeypatch.setattr(_platform, "copy_file_range", flaky)
    data = _data(40 * PAGE + 11)
    src = _write(tmp_path / "src", data)
    res = copy(src, tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == data
    assert res.method == "sendfile"
    assert f"after {12 * PAGE} bytes" in dict(res.skipped)["copy_file_range"]


def test_zero_byte_answer_before_eof_falls_back(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # procfs-like behaviour: the kernel path copies nothing although the file has data
    monkeypatch.setattr(_platform, "copy_file_range", lambda *a: 0)
    src = _write(tmp_path / "src", _data(PAGE))
    res = copy(src, tmp_path / "dst")
    assert res.method == "sendfile"
    assert "0 bytes" in dict(res.skipped)["copy_file_range"]
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_forced_method_that_fails_raises_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_platform, "copy_file_range", _refuse(errno.EXDEV))
    src = _write(tmp_path / "src", _data(PAGE))
    with pytest.raises(OSError, match="copy_file_range cannot copy these files"):
        copy(src, tmp_path / "dst", method="copy_file_range")
    assert not (tmp_path / "dst").exists()
    assert _tmp_leftovers(tmp_path) == []


def test_a_real_io_error_is_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_platform, "copy_file_range", _refuse(errno.EIO))
    src = _write(tmp_path / "src", _data(PAGE))
    with pytest.raises(OSError) as info:
        copy(src, tmp_path / "dst")
    assert info.value.errno == errno.EIO
    assert not (tmp_path / "dst").exists()
    assert _tmp_leftovers(tmp_path) == []


# --- destination rules -------------------------------------------------------------------


def test_dst_directory_takes_the_source_name(tmp_path: Path) -> None:
    src = _write(tmp_path / "src.bin", b"hello")
    (tmp_path / "out").mkdir()
    res = copy(src, tmp_path / "out")
    assert res.path == str(tmp_path / "out" / "src.bin")
    assert (tmp_path / "out" / "src.bin").read_bytes() == b"hello"


def test_existing_dst_needs_overwrite(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", b"new")
    dst = _write(tmp_path / "dst", b"old contents")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        copy(src, dst)
    assert dst.read_bytes() == b"old contents"
    copy(src, dst, overwrite=True)
    assert dst.read_bytes() == b"new"
    assert _tmp_leftovers(tmp_path) == []


def test_dst_created_meanwhile_is_never_clobbered(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = _write(tmp_path / "src", _data(PAGE))
    dst = tmp_path / "dst"

    def sneak(done: int, total: int) -> None:
        if not dst.exists():
            dst.write_bytes(b"someone else's file")

    with pytest.raises(FileExistsError):
        copy(src, dst, progress=sneak)
    assert dst.read_bytes() == b"someone else's file"
    assert _tmp_leftovers(tmp_path) == []


def test_new_file_mode_is_source_mode_minus_umask(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", b"#!/bin/sh\n")
    os.chmod(src, 0o755)
    old = os.umask(0o027)
    try:
        copy(src, tmp_path / "dst")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "dst").st_mode) == 0o750


def test_read_only_source_gives_read_only_copy(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", b"ro")
    os.chmod(src, 0o444)
    copy(src, tmp_path / "dst")
    assert stat.S_IMODE(os.stat(tmp_path / "dst").st_mode) & 0o222 == 0
    assert (tmp_path / "dst").read_bytes() == b"ro"


def test_overwrite_keeps_the_existing_mode(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", b"data")
    os.chmod(src, 0o644)
    dst = _write(tmp_path / "dst", b"old")
    os.chmod(dst, 0o600)
    copy(src, dst, overwrite=True)
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o600


def test_metadata_copies_mode_and_times(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", b"data")
    os.chmod(src, 0o640)
    os.utime(src, ns=(1_000_000_000_123, 2_000_000_000_456))
    dst = _write(tmp_path / "dst", b"old")
    os.chmod(dst, 0o600)
    copy(src, dst, metadata=True, overwrite=True)
    st = os.stat(dst)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 2_000_000_000_456
    assert st.st_atime_ns == 1_000_000_000_123


def test_bad_arguments(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", b"x")
    with pytest.raises(ValueError, match="unknown copy method"):
        copy(src, tmp_path / "dst", method="teleport")
    with pytest.raises(shutil.SameFileError):
        copy(src, src, overwrite=True)
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        copy(tmp_path / "d", tmp_path / "dst")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        copy(tmp_path / "fifo", tmp_path / "dst")
    with pytest.raises(FileNotFoundError):
        copy(tmp_path / "missing", tmp_path / "dst")
    with pytest.raises(FileNotFoundError, match=r"destination directory .* does not exist"):
        copy(src, tmp_path / "no" / "such" / "dir" / "dst")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "src").mkdir()
    with pytest.raises(IsADirectoryError):
        copy(src, tmp_path / "out", overwrite=True)
    assert _tmp_leftovers(tmp_path) == []


def test_durable_copy(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", _data(3 * PAGE))
    res = copy(src, tmp_path / "dst", durable=True)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert res.rate > 0
