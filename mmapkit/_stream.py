"""The stream of ``mmapkit send`` / ``mmapkit recv``: one file over a socket, whole or not
at all.

Format (docs/formats.md, transfer): a 16-byte header -- magic ``MKXF``, format version
(u16), flags (u16, 0), payload length (u64), little-endian -- then the raw file bytes.
After the sender half-closes, the receiver answers ``ok <bytes>\\n``.  The header lets a
receiver tell a finished transfer from a sender that died: only a complete payload is
installed under the output name (an atomic rename), anything else raises BrokenError and
leaves no file.  The header codec is pure; the socket loops are thin wrappers around it,
``mmapkit.send`` (zero-copy) on the way out and splice (or recv_into) on the way in.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from typing import IO, Any

from . import _fileio, _platform
from .errors import BrokenError, ForeignFileError, FormatVersionError

__all__ = ["ACK_PREFIX", "HEADER_SIZE", "decode_header", "encode_header", "receive_file",
           "send_file"]

ACK_PREFIX = b"ok "
# magic, format version, flags (0), payload length; little-endian
_HEADER = struct.Struct("<4sHHQ")
HEADER_SIZE = _HEADER.size
_MAGIC = b"MKXF"
_VERSION = 1


def encode_header(length: int) -> bytes:
    return _HEADER.pack(_MAGIC, _VERSION, 0, length)


def decode_header(data: bytes) -> int:
    """Payload length from a stream header; our errors for anything else."""
    if len(data) < _HEADER.size:
        raise BrokenError(f"the sender closed after {len(data)} of the {_HEADER.size} header "
                          "bytes; nothing was received")
    magic, version, _flags, length = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ForeignFileError(f"the peer did not send an mmapkit stream (magic {magic!r}); "
                               "send with `mmapkit send PATH ADDRESS`")
    if version > _VERSION:
        raise FormatVersionError(f"the sender speaks stream version {version}, this mmapkit "
                                 f"knows {_VERSION}; upgrade mmapkit on the receiving side",
                                 found=version, supported=_VERSION)
    return int(length)


def send_file(sock: socket.socket, f: IO[Any], offset: int, count: int, *, method: str,
              reply_timeout: float) -> tuple[int, int | None]:
    """Send ``count`` bytes of ``f`` from ``offset`` as one stream; half-close and wait up
    to ``reply_timeout`` s for the receiver's count.  (bytes sent, bytes the receiver says
    it got, or None when it said nothing)."""
    from .transfer import send

    sock.sendall(encode_header(count))
    sent = send(sock, f, offset, count, method=method)
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(reply_timeout)
    reply = b""
    with contextlib.suppress(OSError):
        while len(reply) < 64 and not reply.endswith(b"\n"):
            part = sock.recv(64)
            if not part:
                break
            reply += part
    if not reply.startswith(ACK_PREFIX):
        return sent, None
    try:
        return sent, int(reply[len(ACK_PREFIX):].strip())
    except ValueError:
        return sent, -1


def receive_file(conn: socket.socket, out: str, *, overwrite: bool) -> int:
    """Receive one stream from ``conn`` into the file ``out`` (installed only when whole),
    answer the sender, and return the bytes received."""
    try:
        # durable=False: recv never promised an fsync (copy --durable does)
        with _fileio.atomic_file(out, mode=0o666, overwrite=overwrite, durable=False) as fd:
            length = decode_header(_recv_exact(conn, _HEADER.size))
            total = _receive_into(conn, fd, length)
            if total < length:
                raise BrokenError(f"the sender stopped after {total:,} of {length:,} bytes; "
                                  f"{out} was not written")
            if conn.recv(1):
                raise BrokenError(f"the sender sent more than the {length:,} bytes it "
                                  f"announced; {out} was not written")
    except OSError as exc:
        _fileio.raise_if_disk_full(
            exc, f"no space left on the file system of {os.path.dirname(out)} while "
            f"receiving into {out}: free some space and send again. The partial file was "
            f"removed; {out} was not written", out)
        raise
    with contextlib.suppress(OSError):
        conn.sendall(ACK_PREFIX + str(total).encode() + b"\n")
    return total


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = conn.recv(n - len(data))
        if not part:
            break
        data += part
    return data


def _receive_into(conn: socket.socket, fd: int, length: int) -> int:
    """Move ``length`` bytes from ``conn`` into ``fd``; splice when the kernel has it.

    Returns the bytes received, fewer than ``length`` if the sender stopped early.
    """
    if _platform.HAVE_SPLICE:
        with _platform.SplicePipe(1 << 20) as pipe:
            return pipe.run(conn.fileno(), fd, length)
    total = 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while total < length:
        n = conn.recv_into(view[:min(len(buf), length - total)])
        if n == 0:
            return total
        _fileio.write_all(fd, view[:n])
        total += n
    return total
