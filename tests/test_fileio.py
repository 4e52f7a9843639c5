"""mmapkit._fileio: the shared file primitives, each against the real kernel (unrelated
holder processes, SIGKILL, signals that cut writes short, a full tmpfs, /proc)."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
from conftest import run_py, spawn, tiny_tmpfs

from mmapkit import _fileio
from mmapkit.errors import DiskFullError, RegionError

# --- flock_until ------------------------------------------------------------------------

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX if sys.argv[2] == "ex" else fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def _hold(path: Path, mode: str, seconds: float):
    proc = spawn(HOLDER, str(path), mode, str(seconds))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held", proc.stderr.read() if proc.stderr else ""
    return proc


def _fd(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def test_flock_until_free_lock_is_taken_at_once(tmp_path: Path) -> None:
    fd = _fd(tmp_path / "l")
    try:
        assert _fileio.flock_until(fd, fcntl.LOCK_EX, time.monotonic())  # deadline now
    finally:
        os.close(fd)


def test_flock_until_gives_up_at_the_deadline(tmp_path: Path) -> None:
    proc = _hold(tmp_path / "l", "ex", 30)
    fd = _fd(tmp_path / "l")
    try:
        t0 = time.monotonic()
        assert not _fileio.flock_until(fd, fcntl.LOCK_EX, t0 + 0.2)
        waited = time.monotonic() - t0
        assert 0.2 <= waited < 5, waited
        assert not _fileio.flock_until(fd, fcntl.LOCK_SH, time.monotonic() - 1)  # past
    finally:
        proc.kill()
        proc.wait()
        os.close(fd)


def test_flock_until_shared_with_a_shared_holder(tmp_path: Path) -> None:
    proc = _hold(tmp_path / "l", "sh", 30)
    fd = _fd(tmp_path / "l")
    try:
        assert _fileio.flock_until(fd, fcntl.LOCK_SH, time.monotonic() + 0.1)
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert not _fileio.flock_until(fd, fcntl.LOCK_EX, time.monotonic() + 0.1)
    finally:
        proc.kill()
        proc.wait()
        os.close(fd)


@pytest.mark.parametrize("deadline", [None, 20.0])
def test_flock_until_gets_the_lock_of_a_killed_holder(tmp_path: Path,
                                                      deadline: float | None) -> None:
    proc = _hold(tmp_path / "l", "ex", 60)
    fd = _fd(tmp_path / "l")
    killer = threading.Timer(0.3, proc.send_signal, (signal.SIGKILL,))
    killer.start()
    try:
        t0 = time.monotonic()
        until = None if deadline is None else t0 + deadline
        assert _fileio.flock_until(fd, fcntl.LOCK_EX, until)
        assert time.monotonic() - t0 >= 0.25  # it did wait for the kill
        assert proc.wait() == -signal.SIGKILL
    finally:
        killer.cancel()
        proc.kill()
        proc.wait()
        os.close(fd)


# --- fsync_dir --------------------------------------------------------------------------


def test_fsync_dir_of_a_real_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    _fileio.fsync_dir(tmp_path)
    _fileio.fsync_dir(str(tmp_path))


def test_fsync_dir_of_a_file_system_that_cannot_is_not_an_error() -> None:
    # procfs answers EINVAL to fsync of a directory, as some FUSE and network file
    # systems do: nothing more durable is possible there (the policy in _fileio).
    if not os.path.isdir("/proc/self"):
        pytest.skip("no procfs here")
    fd = os.open("/proc/self", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            os.fsync(fd)
        assert info.value.errno == errno.EINVAL  # the premise of this test
    finally:
        os.close(fd)
    _fileio.fsync_dir("/proc/self")


def test_fsync_dir_of_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _fileio.fsync_dir(tmp_path / "nope")


# --- write_all --------------------------------------------------------------------------


def test_write_all_at_an_offset_leaves_the_file_position(tmp_path: Path) -> None:
    fd = _fd(tmp_path / "f")
    try:
        _fileio.write_all(fd, b"abc")
        _fileio.write_all(fd, memoryview(b"XY"), 10)
        _fileio.write_all(fd, bytearray(b"def"))
        assert os.lseek(fd, 0, os.SEEK_CUR) == 6
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"abcdef" + b"\0" * 4 + b"XY"


def test_write_all_takes_a_typed_view_whole(tmp_path: Path) -> None:
    fd = _fd(tmp_path / "f")
    try:
        _fileio.write_all(fd, memoryview(bytearray(16)).cast("Q"), 0)
    finally:
        os.close(fd)
    assert (tmp_path / "f").stat().st_size == 16


def test_write_all_survives_signals_that_cut_writes_short() -> None:
    # A blocking pipe write interrupted by a signal after some bytes returns a short
    # count (and EINTR before any, which Python retries): both must end with every byte
    # delivered, in order.  The timer fires every millisecond while a reader drains.
    data = os.urandom(1 << 22)
    r, w = os.pipe()
    got = bytearray()

    def drain() -> None:
        while True:
            part = os.read(r, 1 << 14)
            if not part:
                return
            got.extend(part)
            time.sleep(0.0002)

    reader = threading.Thread(target=drain)
    old = signal.signal(signal.SIGALRM, lambda *_: None)
    reader.start()
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        _fileio.write_all(w, data)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(w)
        reader.join(30)
        os.close(r)
    assert bytes(got) == data


def test_write_all_on_a_full_disk_raises_enospc_and_translates() -> None:
    with tiny_tmpfs("256k") as mnt:
        path = mnt / "big"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            with pytest.raises(OSError) as info:
                _fileio.write_all(fd, os.urandom(1 << 20))
            exc = info.value
            assert exc.errno == errno.ENOSPC and not isinstance(exc, DiskFullError)
            # the bytes that fitted are in: the writes before ENOSPC were kept
            assert 0 < os.fstat(fd).st_size < 1 << 20
            with pytest.raises(DiskFullError) as full:
                _fileio.raise_if_disk_full(exc, "free some space and retry", path)
            assert full.value.errno == errno.ENOSPC
            assert full.value.filename == str(path)
            assert "free some space" in str(full.value)
            assert full.value.__cause__ is exc
        finally:
            os.close(fd)


def test_raise_if_disk_full_leaves_other_errors_and_its_own() -> None:
    other = OSError(errno.EIO, "I/O error")
    assert _fileio.raise_if_disk_full(other, "never said") is None  # type: ignore[func-returns-value]
    already = DiskFullError(errno.ENOSPC, "kept as it is")
    assert _fileio.raise_if_disk_full(already, "never said") is None  # type: ignore[func-returns-value]
    with pytest.raises(DiskFullError, match="quota"):
        _fileio.raise_if_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), "quota")


# --- atomic_file ------------------------------------------------------------------------


def _temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(_fileio.TEMP_SUFFIX)]


def test_temp_name_is_hidden_unique_and_beside_the_target(tmp_path: Path) -> None:
    a, b = _fileio.temp_name(tmp_path / "x.bin"), _fileio.temp_name(tmp_path / "x.bin")
    assert a != b
    for t in (a, b):
        assert os.path.dirname(t) == str(tmp_path)
        name = os.path.basename(t)
        assert name.startswith(".x.bin.") and name.endswith(".mmapkit-tmp")


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_file_installs_whole(tmp_path: Path, durable: bool) -> None:
    final = tmp_path / "out"
    final.write_bytes(b"old")
    with _fileio.atomic_file(final, durable=durable) as fd:
        _fileio.write_all(fd, b"new contents")
        assert final.read_bytes() == b"old"  # not before the end of the block
        assert len(_temps(tmp_path)) == 1
    assert final.read_bytes() == b"new contents"
    assert _temps(tmp_path) == []
    assert stat.S_IMODE(final.stat().st_mode) == 0o644 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_file_durable_fsyncs_the_file_then_its_directory(
        tmp_path: Path, durable: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every fsync goes on to the kernel; the test only notes what each was of (a lost
    # directory fsync leaves the rename to the page cache: power loss can undo it).
    seen: list[str] = []
    real = os.fsync

    def noting(fd: int) -> None:
        st = os.fstat(fd)
        seen.append("dir" if stat.S_ISDIR(st.st_mode) else "file")
        if seen[-1] == "dir":
            assert (st.st_dev, st.st_ino) == (tmp_path.stat().st_dev, tmp_path.stat().st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", noting)
    with _fileio.atomic_file(tmp_path / "out", durable=durable) as fd:
        _fileio.write_all(fd, b"x")
    assert seen == (["file", "dir"] if durable else [])


def test_atomic_file_error_in_the_body_keeps_the_old_file(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError), _fileio.atomic_file(final) as fd:
        _fileio.write_all(fd, b"half")
        raise RuntimeError("stop")
    assert final.read_bytes() == b"old"
    assert _temps(tmp_path) == []


def test_atomic_file_never_replaces_without_overwrite(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with _fileio.atomic_file(final, overwrite=False) as fd:
        _fileio.write_all(fd, b"first")
    with pytest.raises(FileExistsError), _fileio.atomic_file(final, overwrite=False) as fd:
        _fileio.write_all(fd, b"second")
    with pytest.raises(LookupError, match="taken"), _fileio.atomic_file(
            final, overwrite=False, exists=lambda p: LookupError(f"{p} taken")) as fd:
        _fileio.write_all(fd, b"third")
    assert final.read_bytes() == b"first"
    assert _temps(tmp_path) == []


def test_atomic_file_does_not_clobber_a_file_created_meanwhile(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with pytest.raises(FileExistsError), _fileio.atomic_file(final, overwrite=False) as fd:
        _fileio.write_all(fd, b"ours")
        final.write_bytes(b"someone else's")  # appears after any check a caller made
    assert final.read_bytes() == b"someone else's"
    assert _temps(tmp_path) == []


KILLED_WRITER = """
import os, sys
from mmapkit import _fileio
final = sys.argv[1]
with _fileio.atomic_file(final) as fd:
    for i in range(1 << 30):
        _fileio.write_all(fd, bytes([i % 251]) * 4096)
        if i == 8:
            print("writing", flush=True)
"""


def test_atomic_file_killed_midway_leaves_the_old_file(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.write_bytes(b"old")
    for _ in range(3):
        proc = spawn(KILLED_WRITER, str(final))
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        assert final.read_bytes() == b"old"
    left = _temps(tmp_path)
    assert len(left) == 3  # recognisable, hidden debris, one per killed writer
    assert all(name.startswith(".out.") for name in left)


def test_atomic_file_on_a_full_disk_leaves_nothing() -> None:
    with tiny_tmpfs("256k") as mnt:
        final = mnt / "out"
        with pytest.raises(OSError) as info, _fileio.atomic_file(final) as fd:
            _fileio.write_all(fd, os.urandom(1 << 20))
        assert info.value.errno == errno.ENOSPC
        assert not final.exists()
        assert _temps(mnt) == []
        with _fileio.atomic_file(final) as fd:  # the space came back with the temp file
            _fileio.write_all(fd, b"fits")
        assert final.read_bytes() == b"fits"


# --- require_regular --------------------------------------------------------------------


def test_require_regular(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    _fileio.require_regular(f.stat(), f, "never said")
    with pytest.raises(ValueError, match=r"d is not a regular file; files only"):
        _fileio.require_regular((tmp_path / "d").mkdir() or (tmp_path / "d").stat(),
                                tmp_path / "d", "files only")
    with pytest.raises(IsADirectoryError, match="name a file inside") as info:
        _fileio.require_regular((tmp_path / "d").stat(), tmp_path / "d", "files only",
                                directory="name a file inside it")
    assert info.value.errno == errno.EISDIR and info.value.filename == str(tmp_path / "d")
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    with pytest.raises(RegionError, match="p is not a regular file; map files"):
        _fileio.require_regular(fifo.stat(), fifo, "map files", error=RegionError,
                                directory="never said for a FIFO")


# --- the private surfaces these primitives live in ----------------------------------------


def _imported_from(module: str) -> set[str]:
    """Names the rest of mmapkit (and bench) takes from ``mmapkit.<module>``, by reading
    the source: ``from .<module> import X`` and ``<module>.X``."""
    import ast

    root = Path(__file__).resolve().parents[1]
    names: set[str] = set()
    for path in [*(root / "mmapkit").rglob("*.py"), *(root / "bench").rglob("*.py")]:
        if path.stem == module:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == module:
                names.update(a.name for a in node.names)
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id == module):
                names.add(node.attr)
    return names


@pytest.mark.parametrize("module", ["_fileio", "_platform"])
def test_every_name_a_sibling_uses_is_in_all(module: str) -> None:
    import importlib

    mod = importlib.import_module(f"mmapkit.{module}")
    used = _imported_from(module)
    assert used, module  # the scan found the users
    assert sorted(used - set(mod.__all__)) == []
    assert all(hasattr(mod, name) for name in mod.__all__)


def test_boot_id_is_this_boots_identity_as_linux_spells_it():
    from mmapkit import _platform
    from mmapkit.mirror.redis import _boot_id

    raw = _platform.boot_id()
    assert len(raw) == 16
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            linux = f.read().strip()
    except OSError:
        assert raw == bytes(16) and _boot_id() == "-"
        return
    assert raw.hex() == linux.replace("-", "") and _boot_id() == linux


def test_buffer_address_is_not_bound_to_ctypes_pythonapi_settings():
    # Another library setting other argtypes on ctypes.pythonapi's function objects (they
    # are process-wide) must not break ours.
    res = run_py("""
        import ctypes, mmap
        from mmapkit import _platform
        _platform.buffer_address(bytearray(1))  # (ours are set up first)
        ctypes.pythonapi.PyObject_GetBuffer.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                                       ctypes.c_int]
        ctypes.pythonapi.PyBuffer_Release.argtypes = [ctypes.c_char_p]
        m = mmap.mmap(-1, 4096)
        b = bytearray(16)
        a = _platform.buffer_address(b)
        ctypes.memmove(a, b"xyz", 3)
        assert bytes(b[:3]) == b"xyz"
        assert _platform.buffer_address(m) != 0
        m.close()
        print("ok")
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
