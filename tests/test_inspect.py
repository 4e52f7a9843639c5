"""mmapkit.inspect and `mmapkit inspect`: page-cache residency and process mappings."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import spawn, tiny_tmpfs
from hypothesis import given, settings
from hypothesis import strategies as st

from mmapkit import _platform
from mmapkit.cli import main
from mmapkit.commands.demo import run_demo
from mmapkit.errors import UnsupportedPlatformError
from mmapkit.inspect import (
    Mapping,
    Residency,
    chart,
    evict,
    mappings,
    parse_smaps,
    residency,
    totals,
    touch,
)
from mmapkit.region import Region

PAGE = _platform.PAGE_SIZE
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def _file(path: Path, pages: float, *, synced: bool = True) -> Path:
    data = os.urandom(int(pages * PAGE))
    with open(path, "wb") as f:
        f.write(data)
        if synced:
            f.flush()
            os.fsync(f.fileno())
    return path


def _evicted(path: Path) -> int:
    """Evict ``path`` and return how many pages stayed; skip where the fs ignores it."""
    try:
        res = evict(path)
    except UnsupportedPlatformError:
        pytest.skip("no posix_fadvise on this system")
    if res.resident_pages == res.pages:
        pytest.skip("this file system ignores POSIX_FADV_DONTNEED")
    return res.resident_pages


# --- chart: a pure function -------------------------------------------------------------


def test_chart_shapes() -> None:
    assert chart(b"", 60) == "[]"
    assert chart(b"\1\1\1\1", 60) == "[OOOO]"
    assert chart(b"\0\0\0\0", 60) == "[    ]"
    assert chart(b"\1\0\1\0", 60) == "[O O ]"
    assert chart(b"\1\0\1\0", 2) == "[oo]"
    assert chart(b"\1\1\0\0", 2) == "[O ]"
    assert chart(b"\1\1\1\1\1\0\0\0", 4) == "[OOo ]"
    assert chart(b"\0" * 99 + b"\1", 1) == "[o]"
    assert chart(bytes([1] * 100), 1) == "[O]"
    assert chart(bytes(1000), 10) == "[" + " " * 10 + "]"


@settings(deadline=None)
@given(st.binary(max_size=300).map(lambda b: bytes(x & 1 for x in b)))
def test_ranges_rebuild_the_page_map(page_map: bytes) -> None:
    res = Residency("p", len(page_map) * PAGE, PAGE, len(page_map),
                    len(page_map) - page_map.count(0), page_map)
    rebuilt = bytearray(len(page_map))
    for lo, hi in res.ranges():
        assert lo < hi
        rebuilt[lo:hi] = b"\1" * (hi - lo)
    assert bytes(rebuilt) == page_map
    assert all(b[0] < a[0] for a, b in zip(res.ranges()[1:], res.ranges(), strict=False))
    assert res.resident_pages == sum(hi - lo for lo, hi in res.ranges())


def test_chart_rejects_zero_width() -> None:
    with pytest.raises(ValueError, match="width"):
        chart(b"\1", 0)


@settings(deadline=None)
@given(st.binary(max_size=300).map(lambda b: bytes(x & 1 for x in b)),
       st.integers(min_value=1, max_value=80))
def test_chart_cells_summarise_runs(page_map: bytes, width: int) -> None:
    text = chart(page_map, width)
    assert text[0] == "[" and text[-1] == "]"
    cells = text[1:-1]
    assert len(cells) == min(width, len(page_map))
    assert set(cells) <= {"O", "o", " "}
    if page_map and all(page_map):
        assert cells == "O" * len(cells)
    if not any(page_map):
        assert cells.strip() == ""
    if any(page_map):
        assert cells.strip() != ""


# --- residency of files -----------------------------------------------------------------


def test_touch_then_evict(tmp_path: Path) -> None:
    f = _file(tmp_path / "data", 40.5)
    res = touch(f)
    assert res.pages == 41
    assert res.size == int(40.5 * PAGE)
    assert res.page_size == PAGE
    assert res.resident_pages == 41 and res.fraction == 1.0
    assert res.page_map == b"\1" * 41
    assert res.chart(41) == "[" + "O" * 41 + "]"
    assert res.ranges() == [(0, 41)]
    assert res.resident_bytes == res.size
    left = _evicted(f)
    after = residency(f)
    assert after.resident_pages <= left < 41
    assert after.fraction < 1.0


def test_partial_read_shows_in_the_map(tmp_path: Path) -> None:
    f = _file(tmp_path / "data", 64)
    _evicted(f)
    if residency(f).resident_pages:
        pytest.skip("the file system kept some pages after DONTNEED")
    fd = os.open(f, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead around our read
        os.pread(fd, 4 * PAGE, 32 * PAGE)
    finally:
        os.close(fd)
    res = residency(f)
    assert res.page_map[32:36] == b"\1\1\1\1"
    assert res.page_map[:16] == bytes(16)  # read-ahead never goes backwards
    assert (32, 36) in [(lo, min(hi, 36)) for lo, hi in res.ranges() if lo <= 32 < hi]


def test_cachestat_agrees_with_mincore(tmp_path: Path) -> None:
    f = _file(tmp_path / "data", 20)
    res = touch(f)
    if res.cachestat is None:
        pytest.skip("the kernel has no cachestat (Linux 6.5+)")
    assert res.cachestat.cached == res.resident_pages == 20
    assert res.cachestat.dirty == 0  # fsynced before
    _evicted(f)
    res = residency(f)
    assert res.cachestat is not None
    assert abs(res.cachestat.cached - res.resident_pages) <= 2


def test_cachestat_syscall_errors(tmp_path: Path) -> None:
    f = _file(tmp_path / "data", 2)
    fd = os.open(f, os.O_RDONLY)
    counts = _platform.cachestat(fd)
    os.close(fd)
    if counts is None:
        pytest.skip("the kernel has no cachestat (Linux 6.5+)")
    assert len(counts) == 5 and counts[0] <= 2
    with pytest.raises(OSError, match="cachestat") as info:
        _platform.cachestat(fd)  # closed descriptor
    assert info.value.errno == errno.EBADF


def test_residency_of_a_mapped_file_written_through_the_map(tmp_path: Path) -> None:
    f = tmp_path / "mapped"
    with Region.open(f, 8 * PAGE, create=True) as region:
        region.view[:] = b"x" * (8 * PAGE)
        res = residency(f)
    assert res.resident_pages == 8
    if res.cachestat is not None:
        assert res.cachestat.cached == 8


def test_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "empty"
    f.touch()
    for res in (residency(f), touch(f), evict(f)):
        assert res.pages == 0 and res.resident_pages == 0 and res.size == 0
        assert res.page_map == b"" and res.fraction == 1.0
        assert res.chart() == "[]" and res.ranges() == []


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        residency(tmp_path / "missing")
    with pytest.raises(IsADirectoryError, match="name the files inside"):
        residency(tmp_path)
    with pytest.raises(IsADirectoryError):
        touch(tmp_path)
    with pytest.raises(IsADirectoryError):
        evict(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        residency(fifo)


def test_residency_is_frozen_and_serialisable(tmp_path: Path) -> None:
    res = touch(_file(tmp_path / "data", 3))
    with pytest.raises(AttributeError):
        res.pages = 1  # type: ignore[misc]
    d = json.loads(json.dumps(res.to_dict(width=3)))
    assert d["chart"] == "[OOO]" and d["resident_ranges"] == [[0, 3]]
    assert d["pages"] == 3 and d["fraction"] == 1.0


# --- process mappings -------------------------------------------------------------------

SMAPS = """\
55cbced90000-55cbced92000 r--p 00000000 fe:00 260131                     /usr/bin/cat
Size:                  8 kB
Rss:                   8 kB
Pss:                   4 kB
Swap:                  0 kB
VmFlags: rd mr mw me
55cbced92000-55cbced97000 r-xp 00002000 fe:00 260131                     /usr/bin/cat
Size:                 20 kB
Rss:                  16 kB
Pss:                  16 kB
Swap:                  0 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 100 kB
Pss:                 100 kB
Swap:                 12 kB
7f0000200000-7f0000201000 rw-s 00000000 fe:00 99                         /tmp/a file (deleted)
Size:                  4 kB
Rss:                   4 kB
Pss:                   2 kB
Swap:                  0 kB
7f0000300000-7f0000301000 rw-s 00000000 00:01 5                          /dev/zero (deleted)
Size:                  4 kB
Rss:                   4 kB
Pss:                   4 kB
Swap:                  0 kB
7f0000400000-7f0000402000 rw-p 00000000 00:00 0                          [anon:arena]
Size:                  8 kB
Rss:                   0 kB
Pss:                   0 kB
Swap:                  0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  12 kB
Pss:                  12 kB
Swap:                  0 kB
"""


def test_parse_smaps_groups_per_file() -> None:
    rows = {m.name: m for m in parse_smaps(SMAPS)}
    assert rows["/usr/bin/cat"] == Mapping("/usr/bin/cat", "file", 28 * 1024, 24 * 1024,
                                           20 * 1024, 0, 2)
    assert rows["[anon]"] == Mapping("[anon]", "anon", 1 << 20, 100 * 1024, 100 * 1024,
                                     12 * 1024, 1)
    assert rows["/tmp/a file (deleted)"].kind == "file"
    assert rows["[stack]"].kind == "special"
    assert rows["/dev/zero (deleted)"].kind == "anon" and rows["[anon:arena]"].kind == "anon"
    total = totals(rows.values())
    assert total.size == (8 + 20 + 1024 + 4 + 4 + 8 + 132) * 1024 and total.areas == 7
    assert parse_smaps("") == []
    assert parse_smaps("garbage\nSize: x kB\n") == []


def _entry(rows: list[Mapping], path: Path) -> Mapping:
    real = os.path.realpath(path)
    found = [m for m in rows if m.name == real]
    assert found, f"{real} not among {[m.name for m in rows]}"
    return found[0]


@linux_only
def test_mappings_of_this_process(tmp_path: Path) -> None:
    f = tmp_path / "mapped-by-me"
    with Region.open(f, 3 * PAGE, create=True) as region:
        region.view[:] = b"y" * (3 * PAGE)
        rows = mappings(os.getpid())
        m = _entry(rows, f)
        assert m.kind == "file" and m.size == 3 * PAGE and m.areas == 1
        assert m.rss == 3 * PAGE and 0 < m.pss <= m.rss
        assert [r.size for r in rows] == sorted((r.size for r in rows), reverse=True)
        by_rss = mappings(os.getpid(), sort="rss")
        assert [r.rss for r in by_rss] == sorted((r.rss for r in by_rss), reverse=True)
    assert os.path.realpath(f) not in [m.name for m in mappings(os.getpid())]
    with Region.anonymous(5 * PAGE):
        shared = {m.name: m for m in mappings(os.getpid())}["/dev/zero (deleted)"]
        assert shared.kind == "anon" and shared.size >= 5 * PAGE


@linux_only
def test_mappings_of_an_unrelated_process(tmp_path: Path) -> None:
    f = _file(tmp_path / "shared", 5)
    child = spawn("""
        import sys
        from mmapkit.region import Region
        r = Region.open(sys.argv[1], readonly=True)
        print("mapped", flush=True)
        sys.stdin.readline()
        r.close()
    """, str(f), stdin=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "mapped"
        m = _entry(mappings(child.pid), f)
        assert m.size == 5 * PAGE and m.rss == 0  # mapped, never touched
    finally:
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.close()
        assert child.wait(30) == 0, child.stderr.read() if child.stderr else ""


@linux_only
def test_mappings_errors() -> None:
    child = spawn("pass")
    child.wait(30)
    with pytest.raises(ProcessLookupError, match=f"no process with pid {child.pid}"):
        mappings(child.pid)
    for bad in (0, -5, True):
        with pytest.raises(ValueError, match="positive"):
            mappings(bad)
    with pytest.raises(ValueError, match="sort"):
        mappings(os.getpid(), sort="name")


@linux_only
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_mappings_of_another_users_process(tmp_path: Path) -> None:
    secret = _file(tmp_path / "secret", 1)
    secret.chmod(0o600)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)  # now "nobody", looking at root's process and files
            try:
                mappings(parent)
            except PermissionError as exc:
                code = 0 if "another user" in str(exc) else 2
            try:
                residency(secret)
                code = 3
            except PermissionError:
                pass
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_mappings_refused_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(UnsupportedPlatformError, match="vmmap"):
        mappings(os.getpid())


# --- command line -----------------------------------------------------------------------


def test_cli_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _file(tmp_path / "a", 10)
    b = tmp_path / "b"
    b.touch()
    assert main(["inspect", "--touch", str(a), str(b), "--width", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["10/10", "pages", "100.0%"] and "[OOOOO]" in out[0]
    assert out[0].endswith(str(a))
    assert "[]" in out[1] and out[1].endswith(str(b))
    assert out[2].startswith("total: 10 of 10 pages resident (100.0%)")
    assert "2 files" in out[2]
    left = _evicted(a)
    assert main(["inspect", "--evict", str(a)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert int(out[0].split("/")[0]) <= left


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _file(tmp_path / "a", 4)
    assert main(["inspect", "--touch", "--json", "--width", "2", str(a)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["errors"] == []
    (entry,) = doc["files"]
    assert entry["path"] == str(a) and entry["pages"] == 4 and entry["resident_pages"] == 4
    assert entry["chart"] == "[OO]"
    assert doc["total"] == {"files": 1, "pages": 4, "resident_pages": 4, "size": 4 * PAGE,
                            "resident_bytes": 4 * PAGE, "fraction": 1.0}


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _file(tmp_path / "a", 1)
    assert main(["inspect", str(tmp_path / "missing"), str(a), str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "missing: No such file or directory" in captured.err
    assert "is a directory" in captured.err
    assert str(a) in captured.out and "total:" in captured.out
    assert main(["inspect", "--json", str(tmp_path / "missing")]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"] == [] and doc["errors"][0]["path"].endswith("missing")
    assert main(["inspect"]) == 2
    assert main(["inspect", "--width", "0", str(a)]) == 2
    assert main(["inspect", "--pid", "1", str(a)]) == 2
    with pytest.raises(SystemExit):
        main(["inspect", "--touch", "--evict", str(a)])


@linux_only
def test_cli_pid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "cli-mapped"
    with Region.open(f, 16 * PAGE, create=True):
        assert main(["inspect", "--pid", str(os.getpid()), "--json", "--top", "0"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["pid"] == os.getpid() and doc["more"] == 0
        sizes = {m["name"]: m["size"] for m in doc["mappings"]}
        assert sizes[os.path.realpath(f)] == 16 * PAGE
        assert doc["total"]["size"] == sum(m["size"] for m in doc["mappings"])
        assert main(["inspect", "--pid", str(os.getpid()), "--top", "3"]) == 0
        out = capsys.readouterr().out
        assert "mappings of process" in out and "[total]" in out and "more mappings" in out
    child = spawn("pass")
    child.wait(30)
    assert main(["inspect", "--pid", str(child.pid)]) == 1
    assert "no process with pid" in capsys.readouterr().err


# --- demo acts of the foundation (unrelated processes; private map + residency) --------


def test_demo_acts(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(["a20_", "a30_"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 acts ran as described" in out
    assert "hello back from pid" in out and "PRIVATE SCRIBBLE HERE!" in out
    assert "after touch:      [" + "O" * 32 + "] 64/64" in out


def test_demo_acts_fail_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmapkit.demos import a20_unrelated_file, a30_private_and_residency

    monkeypatch.setattr(a20_unrelated_file, "_CHILD", "import sys; sys.exit('gave up')")
    (tmp_path / "a20").mkdir()
    with pytest.raises(RuntimeError, match="never wrote its message: gave up"):
        a20_unrelated_file.run(tmp_path / "a20", lambda text: None)
    # A "touch" that reads nothing: the act must notice the pages are not all resident.
    monkeypatch.setattr(a30_private_and_residency, "touch", residency)
    (tmp_path / "a30").mkdir()
    _evicted(_file(tmp_path / "probe", 4))
    with pytest.raises(RuntimeError, match="touch left"):
        a30_private_and_residency.run(tmp_path / "a30", lambda text: None)


def test_demo_residency_act_on_tmpfs(capsys: pytest.CaptureFixture[str]) -> None:
    # tmpfs keeps every page in memory and ignores DONTNEED: the act says so and still runs.
    with tiny_tmpfs("2m") as mnt:
        assert run_demo(["a30_"], workdir=str(mnt)) == 0
    out = capsys.readouterr().out
    assert "1 of 1 acts ran as described" in out
    assert "64/64 pages in the page cache" in out and "ignores POSIX_FADV_DONTNEED" in out
