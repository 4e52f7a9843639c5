"""One spelling of the log format: every path that frames records by hand (the hot path,
the slow path, the wrap, a record bigger than the ring, recovery of a dead buffer and the
salvage of a damaged one) writes the bytes the codec gives, at the table edges; and the
file names are parsed one way by everyone (issue 14)."""

from __future__ import annotations

import contextlib
import os
import signal
import zlib
from pathlib import Path

import pytest
from conftest import spawn

import mmapkit.log as mlog
from mmapkit.log import _codec, _files
from mmapkit.log import writer as writer_mod
from mmapkit.log._compress import compressor, decompress

# message lengths around the 8-byte padding and the 32-byte header, one multi-byte
# character run, one near a chunk, and one bigger than half the 4096-byte ring
EDGES = [b"", b"a", b"x" * 7, b"x" * 8, b"x" * 9, b"y" * 23, b"y" * 24, b"y" * 25,
         b"y" * 31, b"y" * 32, b"y" * 33, "\u00e9".encode() * 50, b"z" * 1000,
         b"big" * 1500]
LEVELS = [0, 1, 65535, 65536 + 7]  # the last one is stored as 7 (16 bits)
T0 = 1_700_000_000_000_000


def _expected(pid: int, rounds: int) -> list[bytes]:
    out, seq = [], 0
    for _ in range(rounds):
        for msg in EDGES:
            for level in LEVELS:
                seq += 1
                out.append(_codec.encode_record(seq, T0 + seq, pid, level & 0xFFFF, msg))
    return out


def _write_edges(w: mlog.Writer, rounds: int) -> None:
    seq = 0
    for _ in range(rounds):
        for msg in EDGES:
            for level in LEVELS:
                seq += 1
                w.write(msg, level=level, time_us=T0 + seq)


def _last_offset(blob: bytes) -> int:
    pos = last = 0
    while pos < len(blob):
        last = pos
        pos += _codec.align8(int.from_bytes(blob[pos : pos + 4], "little"))
    return last


def _file_records(directory: Path, compress: str = "zlib") -> tuple[bytes, int]:
    """The raw records of every frame of the log files, in order, after checking that
    each frame is, byte for byte, the codec's frame of its records; and the frame count."""
    fn = compressor(compress)[1]
    raw, frames = b"", 0
    for path in sorted(directory.glob("*.mlog")):
        data = path.read_bytes()
        for frame in _codec.decode_frames(data):
            assert isinstance(frame, _codec.Frame), frame
            blob = _codec.open_frame(frame, decompress=decompress)
            again, count, last_seq = _codec.encode_chunk(
                blob, _last_offset(blob), stream=frame.stream, compression=frame.compression,
                compress=fn)
            assert again == data[frame.offset : frame.offset + frame.size]
            assert (count, last_seq) == (frame.count, frame.first_seq + frame.count - 1)
            raw += blob
            frames += 1
    return raw, frames


@pytest.mark.parametrize("chunk", [200, 1000, writer_mod.CHUNK])
@pytest.mark.parametrize("compress", ["zlib", "none"])
def test_the_writer_frames_records_and_chunks_like_the_codec(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, compress: str) -> None:
    # A 4096-byte ring: records up to 1 KiB wrap it many times and fill it (the writer
    # flushes itself), chunk marks send records down the slow path, and 4.5 KB records
    # go as one frame of their own.
    monkeypatch.setattr(writer_mod, "CHUNK", chunk)
    with mlog.Writer(tmp_path, "app", buffer_size=4096, flush_interval=3600,
                     compress=compress) as w:
        _write_edges(w, 3)
    raw, frames = _file_records(tmp_path, compress)
    assert raw == b"".join(_expected(os.getpid(), 3))
    assert frames > 3 * 4  # more than the big records' own frames
    assert mlog.check(tmp_path).ok


def test_the_records_in_the_map_are_the_codec_bytes(tmp_path: Path) -> None:
    """Before any flush: the fast path's bytes, in the mapped buffer itself."""
    edges = [m for m in EDGES if len(m) < 100]
    with mlog.Writer(tmp_path, "app", flush_interval=3600) as w:
        seq = 0
        for msg in edges:
            for level in LEVELS:
                seq += 1
                w.write(msg, level=level, time_us=T0 + seq)
        want = b"".join(_codec.encode_record(i + 1, T0 + i + 1, os.getpid(),
                                             LEVELS[i % 4] & 0xFFFF, edges[i // 4])
                        for i in range(seq))
        assert bytes(w._area[: len(want)]) == want
        assert not any(w._area[len(want) : len(want) + 64])  # the word after tail is 0


DEAD_WRITER = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
import mmapkit.log as mlog
from test_log_format import _write_edges
w = mlog.Writer(sys.argv[1], "app", buffer_size=1 << 20, flush_interval=3600)
_write_edges(w, 1)
print(os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("damage", [False, True])
def test_recovered_and_salvaged_buffers_are_framed_like_the_codec(tmp_path: Path,
                                                                  damage: bool) -> None:
    """A writer killed with everything in its buffer: the next writer recovers the
    records (_frames_of), or salvages them from a buffer whose header was damaged
    (_salvage_frames); either way the frames carry the codec's bytes."""
    proc = spawn(DEAD_WRITER, str(tmp_path), str(Path(__file__).parent))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    pid = int(out.split()[0])
    assert not list(tmp_path.glob("*.mlog"))  # nothing was flushed: all in the buffer
    (buf,) = tmp_path.glob("*.mbuf")
    if damage:
        with open(buf, "r+b") as f:
            f.seek(17)  # the capacity, covered by the header checksum
            f.write(b"\xff")
    with pytest.warns(mlog.LogWarning) if damage else contextlib.nullcontext(), \
            mlog.Writer(tmp_path, "app", flush_interval=3600) as w:
        assert w.statistics().recovered == len(EDGES) * len(LEVELS)
    raw, _ = _file_records(tmp_path)
    assert raw == b"".join(_expected(pid, 1))
    assert bool(list(tmp_path.glob("*.damaged-*"))) == damage


def test_import_time_check_ties_the_literals_to_the_codec() -> None:
    # What writer.py checks at import, stated here as well so that a change of the codec
    # fails a test with a readable message, not only the import.
    assert (_codec.REC_SIZE_AT, _codec.REC_CRC_AT, _codec.REC_REST_AT) == (0, 4, 8)
    assert _codec.REC_REST_AT + _codec.REC_REST.size == _codec.RECORD_HEADER
    rec = _codec.encode_record(5, 6, 7, 8, b"msg")
    assert int.from_bytes(rec[0:4], "little") == len(rec) - 5  # size, unpadded
    assert int.from_bytes(rec[4:8], "little") == zlib.crc32(rec[8 : len(rec) - 5])
    assert _codec.REC_REST.unpack_from(rec, 8) == (5, 6, 7, 8, 0)
    hdr = _codec.encode_buffer_header(4096, 0x1234, 0, 1, 0, 0)
    assert int.from_bytes(hdr[_codec.BUF_STREAM_AT : _codec.BUF_STREAM_AT + 8],
                          "little") == 0x1234


# --- file names -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["app", "a.b", "app.20240101", "x.1", "9", "my-app_2"])
def test_file_names_parse_back(name: str) -> None:
    log = _files.log_file_name(name, "20240102", 7)
    assert log == f"{name}.20240102.0007.mlog"
    assert _files.parse_log_name(log) == (name, "20240102", 7)
    assert _files.parse_log_name(_files.log_file_name(name, "20240102", 12345)) == \
        (name, "20240102", 12345)
    buf = _files.buffer_file_name(name, 3)
    assert _files.parse_buffer_name(buf) == (name, 3)
    assert _files.is_buffer_file(buf)
    aside = _files.damaged_file_name(buf, 99)
    assert aside == f"{buf}.damaged-99"
    assert _files.is_buffer_file(aside) and _files.parse_buffer_name(aside) is None
    assert _files.parse_log_name(buf) is None and _files.parse_buffer_name(log) is None


@pytest.mark.parametrize("entry", ["app.mlog", "app.2024010.0001.mlog", "app.20240101.001.mlog",
                                   "app.20240101.0001.mlog.tmp", ".mlog", "app.x.mbuf",
                                   "app.mbuf", "app.1.mbufx"])
def test_foreign_names_do_not_parse(entry: str) -> None:
    assert _files.parse_log_name(entry) is None
    assert _files.parse_buffer_name(entry) is None


def test_writer_reader_and_cli_see_the_same_files(tmp_path: Path) -> None:
    """Two names in one directory, one a prefix of the other: each reads only its own."""
    for name in ("app", "app.1", "app.x"):
        with mlog.Writer(tmp_path, name, flush_interval=3600, rotate=None) as w:
            w.write(f"from {name}")
    assert [r.message for r in mlog.read(tmp_path, name="app")] == ["from app"]
    assert [r.message for r in mlog.read(tmp_path, name="app.1")] == ["from app.1"]
    assert sorted(r.message for r in mlog.read(tmp_path)) == \
        ["from app", "from app.1", "from app.x"]
    assert sorted(p.name for p in tmp_path.glob("*.mlog")) == [
        "app.00000000.0000.mlog", "app.1.00000000.0000.mlog", "app.x.00000000.0000.mlog"]
