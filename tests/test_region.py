"""Region: every mapping pitfall is a named error, and sharing works across real processes."""

from __future__ import annotations

import mmap
import os
import tempfile

import pytest
from conftest import run_py, spawn

from mmapkit import (
    ClosedError,
    DiskFullError,
    EmptyFileError,
    ExportedViewsError,
    InvalidSizeError,
    MmapkitError,
    NotGrowableError,
    OutOfRangeError,
    ReadOnlyError,
    Region,
    RegionError,
)
from mmapkit._platform import PAGE_SIZE

# --- pitfalls -------------------------------------------------------------------------


def test_empty_file_without_size_is_refused_and_size_extends_it(tmp_path):
    path = tmp_path / "empty"
    path.touch()
    with pytest.raises(EmptyFileError, match="pass size="):
        Region.open(path)
    assert isinstance(EmptyFileError("x"), ValueError)
    with Region.open(path, 100) as r:
        assert r.size == 100 and bytes(r.view) == b"\0" * 100
    assert path.stat().st_size == 100


@pytest.mark.parametrize("size", [0, -1])
def test_zero_or_negative_size(tmp_path, size):
    with pytest.raises(InvalidSizeError, match="positive"):
        Region.open(tmp_path / "f", size, create=True)
    with pytest.raises(InvalidSizeError):
        Region.anonymous(size)


def test_unaligned_offset_is_aligned_for_the_kernel_and_view_starts_where_asked(tmp_path):
    path = tmp_path / "data"
    data = bytes(range(256)) * 64  # 16 KiB
    path.write_bytes(data)
    for offset in (1, 100, PAGE_SIZE - 1, PAGE_SIZE + 7):
        with Region.open(path, 50, offset=offset, readonly=True) as r:
            assert r.map_offset % mmap.ALLOCATIONGRANULARITY == 0
            assert r.map_offset <= offset
            assert bytes(r.view) == data[offset : offset + 50]
    with Region.open(path, offset=PAGE_SIZE + 7) as r:  # whole rest of the file, writable
        r.view[0:3] = b"abc"
        r.sync()
    assert os.pread(os.open(path, os.O_RDONLY), 3, PAGE_SIZE + 7) == b"abc"
    with pytest.raises(InvalidSizeError):
        Region.open(path, 10, offset=-1)
    with pytest.raises(InvalidSizeError, match="past the end"):
        Region.open(path, offset=len(data))


def test_readonly_file_opened_for_writing(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write any file; permission checks do not apply")
    path = tmp_path / "ro"
    path.write_bytes(b"x" * 10)
    path.chmod(0o444)
    with pytest.raises(ReadOnlyError, match="readonly=True") as info:
        Region.open(path)
    assert isinstance(info.value, PermissionError)
    with Region.open(path, readonly=True) as r:
        assert bytes(r.view) == b"x" * 10


def test_readonly_file_opened_for_writing_as_other_user(tmp_path):
    """The same check, made real for root by dropping to nobody in a child process."""
    if os.geteuid() != 0:
        pytest.skip("only root can switch user")
    shared_dir = tempfile.mkdtemp()  # pytest's own tmp dirs are private to root
    os.chmod(shared_dir, 0o755)
    path = os.path.join(shared_dir, "ro")
    with open(path, "wb") as f:
        f.write(b"x" * 10)
    os.chmod(path, 0o444)
    res = run_py(f"""
        import os
        from mmapkit import Region, ReadOnlyError  # import first: nobody cannot read ~root
        os.setgid(65534); os.setuid(65534)
        try:
            Region.open({str(path)!r})
        except ReadOnlyError as e:
            assert isinstance(e, PermissionError) and "readonly=True" in str(e)
            print("refused")
        with Region.open({str(path)!r}, readonly=True) as r:
            print(bytes(r.view).decode())
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["refused", "x" * 10]


def test_write_through_readonly_region(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with Region.open(path, readonly=True) as r:
        assert r.readonly
        with pytest.raises(ReadOnlyError, match="read-only"):
            r.write(0, b"x")
        with pytest.raises(TypeError):
            r.view[0:1] = b"x"  # the standard memoryview error, never a crash
    assert path.read_bytes() == b"abc"


def test_any_access_after_close(tmp_path):
    r = Region.open(tmp_path / "f", 64, create=True)
    view = r.view
    r.close()
    r.close()  # idempotent
    assert r.closed
    for action in (lambda: r.view, lambda: r.read(0, 1), lambda: r.write(0, b"x"),
                   lambda: r.sync(), lambda: r.advise("random"), lambda: r.resident(),
                   lambda: r.grow(128), lambda: r.address):
        with pytest.raises(ClosedError, match="closed"):
            action()
    with pytest.raises(ValueError):
        view[0]  # the view we handed out was released: a ValueError, not a segfault
    assert issubclass(ClosedError, ValueError)


def test_out_of_range_access(tmp_path):
    with Region.open(tmp_path / "f", 100, create=True) as r:
        r.write(96, b"1234")
        assert r.read(96, 4) == b"1234"
        for start, n in ((97, 4), (-1, 1), (100, 1), (0, 101)):
            with pytest.raises(OutOfRangeError, match="outside the region"):
                r.read(start, n)
        with pytest.raises(OutOfRangeError):
            r.write(99, b"ab")
        with pytest.raises(IndexError):  # OutOfRangeError is an IndexError, and so is
            r.view[100]                   # the plain memoryview index error
        with pytest.raises(OutOfRangeError):
            r.sync(50, 60)


def test_grow_of_anonymous_memory_is_refused():
    with Region.anonymous(PAGE_SIZE) as r:
        with pytest.raises(NotGrowableError, match="fixed size"):
            r.grow(2 * PAGE_SIZE)


def test_grow_extends_keeps_bytes_and_never_shrinks(tmp_path):
    path = tmp_path / "g"
    with Region.open(path, 100, create=True) as r:
        r.write(0, b"keep")
        old = r.view[0:4]
        r.grow(3 * PAGE_SIZE + 5)
        assert r.size == 3 * PAGE_SIZE + 5 and path.stat().st_size == 3 * PAGE_SIZE + 5
        assert r.read(0, 4) == b"keep"
        r.write(3 * PAGE_SIZE, b"tail")
        assert bytes(old) == b"keep"  # a view from before the growth stays valid
        old.release()
        with pytest.raises(InvalidSizeError, match="never shrink"):
            r.grow(10)
        r.grow(r.size)  # same size: nothing to do
    assert path.read_bytes()[3 * PAGE_SIZE : 3 * PAGE_SIZE + 4] == b"tail"


def test_close_with_exported_views_is_refused_then_works(tmp_path):
    r = Region.open(tmp_path / "f", 64, create=True)
    part = r.view[8:16]
    with pytest.raises(ExportedViewsError, match="release them") as info:
        r.close()
    assert isinstance(info.value, BufferError)
    assert not r.closed
    r.write(8, b"still ok")  # the region stays usable after the refusal
    assert bytes(part) == b"still ok"
    part.release()
    r.close()
    assert r.closed


def test_not_a_regular_file_and_missing_file(tmp_path):
    with pytest.raises(RegionError, match="not a regular file"):
        Region.open(tmp_path, readonly=True)
    with pytest.raises(IsADirectoryError):
        Region.open(tmp_path, 10)
    with pytest.raises(FileNotFoundError):
        Region.open(tmp_path / "missing")
    with pytest.raises(ValueError, match="create=True needs write"):
        Region.open(tmp_path / "x", 10, create=True, readonly=True)


def test_readonly_larger_than_file(tmp_path):
    path = tmp_path / "small"
    path.write_bytes(b"abc")
    with pytest.raises(InvalidSizeError, match="read-only"):
        Region.open(path, 10, readonly=True)
    assert path.stat().st_size == 3  # nothing was extended


def test_every_region_error_is_an_mmapkit_error():
    for cls in (EmptyFileError, InvalidSizeError, ReadOnlyError, OutOfRangeError,
                NotGrowableError, ExportedViewsError):
        assert issubclass(cls, RegionError) and issubclass(cls, MmapkitError)


def test_advise_names_and_resident(tmp_path):
    path = tmp_path / "adv"
    with Region.open(path, 8 * PAGE_SIZE, create=True) as r:
        for name in ("sequential", "random", "willneed", "normal", "populate"):
            r.advise(name)
        r.advise("dontneed", PAGE_SIZE, PAGE_SIZE)
        with pytest.raises(ValueError, match="unknown advice"):
            r.advise("fast")
        r.view[:] = b"\1" * r.size  # touch every page
        resident = r.resident()
        assert len(resident) == 8 and all(resident)


def test_disk_full_is_an_error_before_mapping(tmpfs):
    path = tmpfs / "big"
    with pytest.raises(DiskFullError, match="no space left"):
        Region.open(path, 4 << 20, create=True)
    assert path.stat().st_size == 0  # the partial extension was given back
    with Region.open(tmpfs / "small", PAGE_SIZE, create=True) as r:
        with pytest.raises(DiskFullError):
            r.grow(8 << 20)
        r.write(0, b"still fine")  # the region survives the failed growth
        assert r.read(0, 10) == b"still fine"


# --- sharing across processes ---------------------------------------------------------


def test_anonymous_region_is_shared_with_a_fork_child_both_ways():
    with Region.anonymous(PAGE_SIZE) as r:
        r.view[0:6] = b"parent"
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: sees the parent's bytes, writes its own
            code = 1
            try:
                seen = bytes(r.view[0:6])
                r.view[100:105] = b"child"
                code = 0 if seen == b"parent" else 2
            finally:
                os.write(wfd, b"x")
                os._exit(code)
        os.read(rfd, 1)
        _, status = os.waitpid(pid, 0)
        os.close(rfd)
        os.close(wfd)
        assert os.waitstatus_to_exitcode(status) == 0
        assert bytes(r.view[100:105]) == b"child"


def test_two_unrelated_processes_share_a_file(tmp_path):
    path = tmp_path / "shared"
    with Region.open(path, PAGE_SIZE, create=True) as r:
        child = spawn(f"""
            import sys, time
            from mmapkit import Region
            with Region.open({str(path)!r}) as r:
                deadline = time.monotonic() + 30
                while bytes(r.view[0:4]) != b"ping":
                    assert time.monotonic() < deadline, "no ping"
                    time.sleep(0.001)
                r.view[8:12] = b"pong"
        """)
        r.view[0:4] = b"ping"
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert bytes(r.view[8:12]) == b"pong"


def test_private_mapping_writes_never_reach_the_file(tmp_path):
    path = tmp_path / "cow"
    path.write_bytes(b"original" * 512)
    with Region.open(path, private=True) as r:
        assert r.private and not r.readonly
        r.view[0:8] = b"CHANGED!"
        r.sync()  # no-op for private maps: there is nothing to write back
        assert bytes(r.view[0:8]) == b"CHANGED!"
        fd = os.open(path, os.O_RDONLY)
        assert os.pread(fd, 8, 0) == b"original"
        os.close(fd)
        with Region.open(path, readonly=True) as other:
            assert bytes(other.view[0:8]) == b"original"
    assert path.read_bytes()[:8] == b"original"


def test_mapping_stays_valid_after_the_descriptor_is_closed(tmp_path):
    """Region closes its descriptor at once; here a child also closes the one CPython's
    mmap keeps, so no descriptor of the file is left, and the mapping still works."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to find the descriptors")
    path = tmp_path / "fd"
    path.write_bytes(b"\0" * PAGE_SIZE)
    res = run_py(f"""
        import os
        from mmapkit import Region
        path = {str(path)!r}
        r = Region.open(path)
        def open_fds():
            return [fd for fd in os.listdir("/proc/self/fd")
                    if os.path.realpath(f"/proc/self/fd/{{fd}}") == path]
        for fd in open_fds():
            os.close(int(fd))
        assert open_fds() == []
        r.view[0:5] = b"alive"
        assert bytes(r.view[0:5]) == b"alive"
        r.sync()
        print("ok")
        os._exit(0)  # skip mmap's own close of the descriptor we closed under it
    """)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    assert path.read_bytes()[:5] == b"alive"


def test_sync_puts_bytes_where_pread_sees_them(tmp_path):
    path = tmp_path / "s"
    with Region.open(path, 3 * PAGE_SIZE + 10, create=True) as r:
        fd = os.open(path, os.O_RDONLY)
        try:
            r.write(PAGE_SIZE + 3, b"synced")
            r.sync(PAGE_SIZE + 3, 6)  # an unaligned range is widened to pages
            assert os.pread(fd, 6, PAGE_SIZE + 3) == b"synced"
            r.write(3 * PAGE_SIZE, b"async")
            r.sync(wait=False)
            assert os.pread(fd, 5, 3 * PAGE_SIZE) == b"async"
        finally:
            os.close(fd)

