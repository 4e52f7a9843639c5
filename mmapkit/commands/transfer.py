"""``mmapkit copy``, ``mmapkit send`` and ``mmapkit recv``: the transfer component's CLI.

Design rules:

- ``copy`` prints one summary line per file (bytes, method, seconds, GB/s) and why faster
  methods were skipped; a progress bar (rich when installed, plain text if not) only for
  large files and only on a terminal.
- ``send``/``recv`` are a loopback tool: addresses must be Unix sockets or loopback hosts,
  because nothing here authenticates or encrypts.  The stream itself (header, whole-or-
  nothing receive, the receiver's answer) is mmapkit._stream; this module only translates
  arguments and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator

from .._stream import receive_file, send_file
from ..errors import (
    MmapkitError,
)
from ..transfer import METHODS, SEND_METHODS, CopyResult, copy

__all__ = ["parse_address", "register"]

PROGRESS_MIN = 64 << 20  # files smaller than this copy too fast for a bar to help


def _usage_errors(handler: Callable[[argparse.Namespace], int]
                  ) -> Callable[[argparse.Namespace], int]:
    """A bad argument (ValueError) prints one line and exits 2, like argparse would."""
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ValueError as exc:
            if isinstance(exc, MmapkitError) or args.debug:
                raise
            print(f"mmapkit {args.command}: {exc}", file=sys.stderr)
            return 2
    return run


# --- copy ------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress_bar(name: str, size: int) -> Iterator[Callable[[int, int], object] | None]:
    if size < PROGRESS_MIN or not sys.stderr.isatty():
        yield None
        return
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TransferSpeedColumn,
        )
    except ImportError:
        last = [-1]

        def plain(done: int, total: int) -> None:
            pct = done * 100 // max(total, 1)
            if pct != last[0]:
                last[0] = pct
                print(f"\r{name}: {pct:3d}%", end="", file=sys.stderr, flush=True)

        yield plain
        print(file=sys.stderr)
        return
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), transient=True,
                  console=Console(stderr=True)) as bar:  # stdout keeps only the summary
        task = bar.add_task(name, total=size)
        yield lambda done, total: bar.update(task, completed=done)


def _first_difference(a: str, b: str) -> int | None:
    """Offset of the first differing byte of two files (the length if one is a prefix)."""
    chunk = 1 << 20
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        pos = 0
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                for i, (p, q) in enumerate(zip(x, y, strict=False)):
                    if p != q:
                        return pos + i
                return pos + min(len(x), len(y))
            if not x:
                return None
            pos += len(x)


def _summary(src: str, res: CopyResult) -> str:
    gbs = res.rate / 1e9
    line = (f"copied {src} -> {res.path}: {res.bytes:,} bytes by {res.method} in "
            f"{res.seconds:.3f} s ({gbs:.2f} GB/s)")
    if res.holes:
        line += f", {res.holes:,} bytes left as holes"
    for method, why in res.skipped:
        line += f"\n  skipped {method}: {why}"
    return line


def _copy(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        print("mmapkit copy: give at least one SRC and a DST", file=sys.stderr)
        return 2
    *sources, dst = args.paths
    if len(sources) > 1 and not os.path.isdir(dst):
        print(f"mmapkit copy: copying {len(sources)} files needs DST to be an existing "
              f"directory; {dst} is not one", file=sys.stderr)
        return 2
    for src in sources:
        size = os.stat(src).st_size
        with _progress_bar(os.path.basename(src), size) as bar:
            res = copy(src, dst, method=args.method, progress=bar, sparse=not args.no_sparse,
                       metadata=args.metadata, overwrite=args.overwrite, durable=args.durable)
        print(_summary(src, res), flush=True)
        if args.verify:
            where = _first_difference(src, res.path)
            if where is not None:
                print(f"mmapkit: error: verify failed: {src} and {res.path} differ from byte "
                      f"{where}; the source probably changed during the copy, copy again",
                      file=sys.stderr)
                return 1
            print(f"  verified: {res.path} is byte-for-byte identical to {src}")
    return 0


# --- send / recv -----------------------------------------------------------------------


def parse_address(text: str) -> tuple[int, str | tuple[str, int]]:
    """``unix:PATH`` or ``HOST:PORT`` (loopback only) -> (family, sockaddr)."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError("unix: needs a socket path, e.g. unix:/tmp/mmapkit.sock")
        return socket.AF_UNIX, path
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"bad address {text!r}: use HOST:PORT (e.g. 127.0.0.1:9000) or "
                         "unix:PATH")
    host = host.strip("[]") or "127.0.0.1"
    infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)
    for family, _, _, _, sockaddr in infos:
        if ipaddress.ip_address(sockaddr[0]).is_loopback:
            return family, (str(sockaddr[0]), int(sockaddr[1]))
    raise ValueError(f"{host} is not a loopback address; mmapkit send/recv is a loopback "
                     "tool (no authentication, no encryption): use 127.0.0.1, ::1, "
                     "localhost or unix:PATH")


def _connect(address: str, wait: float) -> socket.socket:
    family, sockaddr = parse_address(address)
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.connect(sockaddr)
            return sock
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            if time.monotonic() >= deadline:
                raise ConnectionRefusedError(f"nothing listens on {address}; start "
                                             f"`mmapkit recv {address} OUT` first") from None
            time.sleep(0.05)
        except BaseException:
            sock.close()
            raise


def _send(args: argparse.Namespace) -> int:
    with _connect(args.address, args.wait) as sock:
        t0 = time.perf_counter()
        with open(args.path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if args.offset < 0 or args.offset > size:
                raise ValueError(f"--offset {args.offset} is outside the file ({size} bytes)")
            count = size - args.offset if args.count is None else args.count
            sent, got = send_file(sock, f, args.offset, count, method=args.method,
                                  reply_timeout=args.wait)
        seconds = time.perf_counter() - t0
    line = (f"sent {args.path} to {args.address}: {sent:,} bytes in {seconds:.3f} s "
            f"({sent / max(seconds, 1e-9) / 1e9:.2f} GB/s)")
    if got is not None:
        if got != sent:
            print(f"mmapkit: error: the receiver got {got} of {sent} bytes", file=sys.stderr)
            return 1
        line += ", confirmed by the receiver"
    print(line, flush=True)
    return 0


def _recv(args: argparse.Namespace) -> int:
    family, sockaddr = parse_address(args.address)
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        print(f"mmapkit recv: {out} is a directory; give the file name to write",
              file=sys.stderr)
        return 2
    if os.path.exists(out) and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET or family == socket.AF_INET6:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(sockaddr)
        listener.listen(1)
        where = listener.getsockname()
        shown = f"unix:{where}" if family == socket.AF_UNIX else f"{where[0]}:{where[1]}"
        print(f"listening on {shown}", file=sys.stderr, flush=True)
        listener.settimeout(args.timeout)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            raise TimeoutError(f"no sender connected within {args.timeout} s") from None
        with conn:
            conn.settimeout(None)
            t0 = time.perf_counter()
            total = receive_file(conn, out, overwrite=args.overwrite)
            seconds = time.perf_counter() - t0
    finally:
        listener.close()
        if family == socket.AF_UNIX and isinstance(sockaddr, str):
            with contextlib.suppress(OSError):
                os.unlink(sockaddr)
    print(f"received {total:,} bytes into {out} in {seconds:.3f} s "
          f"({total / max(seconds, 1e-9) / 1e9:.2f} GB/s)", flush=True)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("copy", help="copy files by the fastest kernel path (reflink, "
                       "copy_file_range, sendfile...)",
                       description="Copy SRC to DST (or several SRC into the directory DST). "
                       "The destination appears complete or not at all. Prints the method "
                       "used, why faster ones were skipped, and the speed.")
    p.add_argument("paths", nargs="+", metavar="SRC... DST", help="sources, then destination")
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="force a method (default auto: reflink -> copy_file_range -> "
                   "sendfile -> readwrite)")
    p.add_argument("--verify", action="store_true", help="compare the copy byte for byte")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.add_argument("--metadata", "-p", action="store_true",
                   help="copy permission bits and access/modification times")
    p.add_argument("--durable", action="store_true",
                   help="fsync the copy and its directory (survives power loss)")
    p.add_argument("--no-sparse", action="store_true", help="write holes out as zeros")
    p.set_defaults(func=_usage_errors(_copy))

    s = sub.add_parser("send", help="send a file to a loopback or Unix socket (zero-copy)",
                       description="Connect to ADDRESS (HOST:PORT on loopback, or unix:PATH) "
                       "and send PATH with splice/sendfile. Pair with `mmapkit recv`.")
    s.add_argument("path", metavar="PATH")
    s.add_argument("address", metavar="HOST:PORT|unix:PATH")
    s.add_argument("--offset", type=int, default=0, help="first byte to send")
    s.add_argument("--count", type=int, default=None, help="bytes to send (default: to EOF)")
    s.add_argument("--method", choices=SEND_METHODS, default=None,
                   help="force a method (default: splice for Unix sockets, sendfile for "
                   "TCP)")
    s.add_argument("--wait", type=float, default=10.0,
                   help="seconds to keep retrying the connection / waiting for the reply")
    s.set_defaults(func=_usage_errors(_send))

    r = sub.add_parser("recv", help="receive one file sent by `mmapkit send` (loopback)",
                       description="Listen on ADDRESS (HOST:PORT on loopback, port 0 picks "
                       "one; or unix:PATH), accept one sender and write the stream to OUT "
                       "(complete or not at all).")
    r.add_argument("address", metavar="HOST:PORT|unix:PATH")
    r.add_argument("out", metavar="OUT")
    r.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    r.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for a sender (default 60)")
    r.set_defaults(func=_usage_errors(_recv))

