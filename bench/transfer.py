"""Transfer: mmapkit.copy() per method vs cp and shutil.copyfile; mmapkit.send() vs
read+sendall and socket.sendfile over TCP loopback and Unix sockets.

Design rules:

- One source file (512 MiB, 128 MiB with --quick) of random bytes.  Copies run round-robin
  (every implementation once per round, the order rotated each round) so drift in the
  machine's state hits all alike;
  the destination is deleted and dirty pages are synced *before* each timed copy.
- Cold cache: sync, then posix_fadvise(DONTNEED) on the source before each sample (plus
  /proc/sys/vm/drop_caches outside --quick when it is writable: it is machine-wide).
- ``cp`` runs as a process; the median cost of spawning cp on an empty file is subtracted
  from its times so the comparison is of copying, not of exec().
- Sockets: the receiver is a forked process that drains as fast as the kernel allows
  (splice to /dev/null, or recv_into one buffer), so the sender is what is measured.
- "read+sendall" is the loop most code has: ``f.read(64 KiB)`` (shutil's buffer size) then
  ``sendall``; the tuned variant reads into one reused 1 MiB buffer.  Both are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from mmapkit import _platform
from mmapkit.transfer import SEND_METHODS, copy, send

from . import _harness

DROP_CACHES = "/proc/sys/vm/drop_caches"


def _make_source(path: str, size: int) -> None:
    block = os.urandom(8 << 20)
    with open(path, "wb") as f:
        left = size
        while left:
            left -= f.write(block[: min(len(block), left)])


def _evict(path: str, machine_wide: bool) -> None:
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        _platform.fadvise_dontneed(fd)
    finally:
        os.close(fd)
    if machine_wide:
        with contextlib.suppress(OSError), open(DROP_CACHES, "w") as f:
            f.write("1\n")


def _warm(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass


def _naive_mmap(src: str, dst: str) -> None:
    """The seed articles' copy: map both files and assign slices (user-space memcpy)."""
    size = os.path.getsize(src)
    with open(src, "rb") as fs, open(dst, "w+b") as fd:
        fd.truncate(size)
        if not size:
            return
        ms = mmap.mmap(fs.fileno(), size, prot=mmap.PROT_READ)
        md = mmap.mmap(fd.fileno(), size)
        vs, vd = memoryview(ms), memoryview(md)
        step = 8 << 20
        for off in range(0, size, step):
            vd[off:off + step] = vs[off:off + step]
        vs.release()
        vd.release()
        md.close()
        ms.close()


def _spawn_overhead(workdir: str) -> float:
    empty = os.path.join(workdir, "empty")
    open(empty, "wb").close()
    out = []
    for _ in range(7):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(empty + ".cp")
        t0 = time.perf_counter()
        subprocess.run(["cp", empty, empty + ".cp"], check=True)
        out.append(time.perf_counter() - t0)
    return sorted(out)[len(out) // 2]


def _ours(method: str) -> Callable[[str, str], None]:
    def run(src: str, dst: str) -> None:
        copy(src, dst, method=method)
    return run


def _shutil_copyfile(src: str, dst: str) -> None:
    shutil.copyfile(src, dst)


def _cp(src: str, dst: str) -> None:
    subprocess.run(["cp", src, dst], check=True)


def _copy_impls(report: _harness.Report, args: argparse.Namespace,
                workdir: str) -> dict[str, Callable[[str, str], None]]:
    impls: dict[str, Callable[[str, str], None]] = {
        "mmapkit": _ours("auto"),
    }
    for method in ("copy_file_range", "sendfile", "mmap", "readwrite"):
        impls[f"mmapkit[{method}]"] = _ours(method)
    probe_src, probe_dst = os.path.join(workdir, "p1"), os.path.join(workdir, "p2")
    with open(probe_src, "wb") as f:
        f.write(b"x")
    try:
        copy(probe_src, probe_dst, method="reflink")
        impls["mmapkit[reflink]"] = _ours("reflink")
    except OSError as exc:
        report.skip("mmapkit[reflink]", f"no reflink on this file system ({exc.strerror})")
    peers: dict[str, Callable[[str, str], None]] = {
        "shutil.copyfile": _shutil_copyfile,
        "mmap both + slices": _naive_mmap,
    }
    if shutil.which("cp"):
        peers["cp"] = _cp
    else:
        report.skip("cp", "no cp binary on PATH")
    impls.update({k: v for k, v in peers.items() if _harness.wanted(args, k)})
    return impls


def _bench_copy(report: _harness.Report, args: argparse.Namespace, workdir: str,
                src: str, size: int) -> None:
    impls = _copy_impls(report, args, workdir)
    overhead = _spawn_overhead(workdir) if "cp" in impls else 0.0
    machine_wide = not args.quick and os.access(DROP_CACHES, os.W_OK)
    if not hasattr(os, "posix_fadvise"):
        report.skip("cold cache", "no posix_fadvise on this system")
        temperatures = ["warm"]
    else:
        temperatures = ["warm", "cold"]
    label = f"{size >> 20} MiB"
    for temp in temperatures:
        if temp == "warm":
            _warm(src)
        samples: dict[str, list[float]] = {name: [] for name in impls}
        dst = os.path.join(workdir, "dst")
        names = list(impls)
        for round_ in range(args.repeat):
            # rotate the order each round: no implementation always runs first or last
            k = round_ % len(names)
            for name in names[k:] + names[:k]:
                fn = impls[name]
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dst)
                if temp == "cold":
                    _evict(src, machine_wide)
                else:
                    os.sync()  # the previous copy's dirty pages must not be written now
                t0 = time.perf_counter()
                fn(src, dst)
                seconds = time.perf_counter() - t0
                if name == "cp":
                    seconds = max(seconds - overhead, 1e-6)
                samples[name].append(size / seconds / 1e9)
        for name, values in samples.items():
            report.add(f"copy {label} {temp}", name, values, "GB/s")
    report.target(f"copy {label} warm", "cp", ">=", 0.95)
    if "cold" in temperatures:
        report.target(f"copy {label} cold", "cp", ">=", 0.95)


# --- file to socket --------------------------------------------------------------------


def _drain(sock: socket.socket) -> None:
    """Receiver body (in a forked child): swallow the stream as fast as possible."""
    if _platform.HAVE_SPLICE:
        null = os.open(os.devnull, os.O_WRONLY)
        with _platform.SplicePipe(1 << 20) as pipe:
            pipe.run(sock.fileno(), null, sys.maxsize)  # to the sender's end
        os.close(null)
        return
    buf = bytearray(1 << 20)
    while sock.recv_into(buf):
        pass


def _pair(family: str) -> tuple[socket.socket, socket.socket]:
    if family == "unix":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return a, b
    with socket.socket(socket.AF_INET) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


def _timed_send(family: str, fn: Callable[[socket.socket], None]) -> float:
    a, b = _pair(family)

    def receiver() -> None:
        a.close()
        b.sendall(b"R")  # started: the sender's clock may run now
        _drain(b)

    pid = _harness.fork_child(receiver)
    b.close()
    try:
        if a.recv(1) != b"R":
            raise RuntimeError("the receiving process did not start")
        t0 = time.perf_counter()
        fn(a)
        a.shutdown(socket.SHUT_WR)
        _harness.reap(pid)
        return time.perf_counter() - t0
    finally:
        a.close()


def _send_ours(src: str, method: str | None) -> Callable[[socket.socket], None]:
    def run(sock: socket.socket) -> None:
        send(sock, src, method=method)
    return run


def _read_sendall(src: str, piece: int) -> Callable[[socket.socket], None]:
    def run(sock: socket.socket) -> None:
        with open(src, "rb", buffering=0) as f:
            while chunk := f.read(piece):
                sock.sendall(chunk)
    return run


def _readinto_sendall(src: str) -> Callable[[socket.socket], None]:
    def run(sock: socket.socket) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        with open(src, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                sock.sendall(view[:n])
    return run


def _socket_sendfile(src: str) -> Callable[[socket.socket], None]:
    def run(sock: socket.socket) -> None:
        with open(src, "rb") as f:
            sock.sendfile(f)
    return run


def _bench_send(report: _harness.Report, args: argparse.Namespace, src: str,
                size: int) -> None:
    if not hasattr(os, "fork"):
        report.skip("send", "needs fork() for the receiving process")
        return
    label = f"{size >> 20} MiB"
    for family in ("unix", "tcp"):
        impls: dict[str, Callable[[socket.socket], None]] = {
            "mmapkit": _send_ours(src, None),
        }
        for method in SEND_METHODS:
            impls[f"mmapkit[{method}]"] = _send_ours(src, method)
        peers = {"read+sendall": _read_sendall(src, 64 << 10),
                 "readinto+sendall 1MiB": _readinto_sendall(src),
                 "socket.sendfile": _socket_sendfile(src)}
        impls.update({k: v for k, v in peers.items() if _harness.wanted(args, k)})
        samples: dict[str, list[float]] = {name: [] for name in impls}
        names = list(impls)
        for round_ in range(args.repeat):
            k = round_ % len(names)
            for name in names[k:] + names[:k]:
                samples[name].append(size / _timed_send(family, impls[name]) / 1e9)
        case = f"send {label} {family} socket"
        for name, values in samples.items():
            report.add(case, name, values, "GB/s")
        if family == "unix":
            report.target(case, "read+sendall", ">=", 2.5)


def run(report: _harness.Report, args: argparse.Namespace) -> None:
    size = (128 if args.quick else 512) << 20
    workdir = tempfile.mkdtemp(prefix="mmapkit-bench-transfer-", dir=args.dir)
    try:
        src = os.path.join(workdir, "src")
        _make_source(src, size)
        if "copy" in args.case:
            _bench_copy(report, args, workdir, src, size)
        if "send" in args.case:
            _bench_send(report, args, src, size)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _extend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--case", action="append", choices=("copy", "send"), default=None,
                   help="run only these cases (default: both)")
    p.add_argument("--dir", default=None,
                   help="directory for the test files (default: the system temp dir)")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--quick" in args and not any(a.startswith("--repeat") for a in args):
        # three rounds were too few on a shared 2-core machine: one stall moved a median
        # by 30 %; five still finish well inside a minute
        args += ["--repeat", "5"]

    def run_all(report: _harness.Report, args: argparse.Namespace) -> None:
        args.case = args.case or ["copy", "send"]
        run(report, args)

    return _harness.main_for("transfer", run_all, args, extend=_extend)


if __name__ == "__main__":
    sys.exit(main())
