"""mmapkit.log vs logging.FileHandler, RotatingFileHandler, loguru and os.write.

Cases: records/s through the logging framework (same formatter everywhere), records/s
of the lean Writer vs one os.write per record, bytes on disk vs the plain text, and
records lost when the logging process is killed with SIGKILL right after its last call
returned.  Every timed run ends with the records handed to the OS (flush/close), so a
queue that is still full is not counted as done.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import _harness

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOGURU_FORMAT = "{time:YYYY-MM-DD HH:mm:ss,SSS} {level} {name}: {message}"
HANDLER_CASE = "logging handler"
WRITER_CASE = "write per record"
DISK_CASE = "bytes on disk"
LOST_CASE = "records lost after kill -9"
PLAIN = "plain text (FileHandler)"


def _emit_all(logger: logging.Logger, n: int) -> None:
    info = logger.info
    for i in range(n):
        info("user %d logged in from 10.0.%d.%d request=%08x status=ok", i, i % 256,
             i % 100, (i * 2654435761) & 0xFFFFFFFF)


def _logger(handler: logging.Handler) -> logging.Logger:
    lg = logging.getLogger("bench.app")
    lg.handlers[:] = [handler]
    lg.propagate = False
    lg.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FORMAT))
    return lg


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()
               and not p.name.endswith(".mbuf"))


def _handlers(tmp: Path) -> dict[str, Callable[[Path], logging.Handler]]:
    import mmapkit.log as mlog

    out: dict[str, Callable[[Path], logging.Handler]] = {
        _harness.OURS: lambda d: mlog.Handler(d, "app", flush_interval=1.0),
        "logging.FileHandler": lambda d: logging.FileHandler(d / "app.log"),
        "RotatingFileHandler": lambda d: logging.handlers.RotatingFileHandler(
            d / "app.log", maxBytes=64 << 20, backupCount=3),
    }
    try:
        import zstandard  # noqa: F401
    except ImportError:
        pass
    else:
        out[f"{_harness.OURS} (zstd)"] = lambda d: mlog.Handler(d, "app", flush_interval=1.0,
                                                                 compress="zstd")
    return out


def _run_handler(factory: Callable[[Path], logging.Handler], d: Path, n: int) -> None:
    h = factory(d)
    lg = _logger(h)
    _emit_all(lg, n)
    h.flush()
    lg.handlers[:] = []
    h.close()


def _loguru(enqueue: bool) -> Callable[[Path, int], None] | None:
    try:
        from loguru import logger
    except ImportError:
        return None

    def run(d: Path, n: int) -> None:
        logger.remove()
        sink = logger.add(d / "app.log", format=LOGURU_FORMAT, enqueue=enqueue)
        info = logger.info
        for i in range(n):
            info("user {} logged in from 10.0.{}.{} request={:08x} status=ok", i, i % 256,
                 i % 100, (i * 2654435761) & 0xFFFFFFFF)
        logger.remove(sink)  # waits for the queue (enqueue=True) and closes the file

    return run


def _fresh(tmp: Path, tag: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=tag, dir=tmp))
    return d


def _lost_after_kill(run: Callable[[Path, int], None], d: Path, n: int,
                     count: Callable[[Path], int]) -> int:
    """Log n records in a fork child that SIGKILLs itself when its last call returned."""

    def body() -> None:
        run(d, n)
        os.kill(os.getpid(), signal.SIGKILL)

    _harness.reap(_harness.fork_child(body), expect=-signal.SIGKILL)
    return n - count(d)


def _count_lines(d: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in d.rglob("*.log*") if p.is_file())


def _count_ours(d: Path) -> int:
    import mmapkit.log as mlog

    return sum(1 for _ in mlog.read(d, on_damage=lambda p, x: None))


def run(report: _harness.Report, args: argparse.Namespace) -> None:
    import mmapkit.log as mlog

    n = 20_000 if args.quick else 200_000
    tmp = Path(tempfile.mkdtemp(prefix="mmapkit-bench-log-"))
    try:
        # --- through the logging framework -------------------------------------------
        for impl, factory in _handlers(tmp).items():
            if not _harness.wanted(args, impl):
                continue
            dirs: list[Path] = []

            def once(factory: Callable[[Path], logging.Handler] = factory,
                     dirs: list[Path] = dirs) -> None:
                d = _fresh(tmp, "h")
                dirs.append(d)
                _run_handler(factory, d, n)

            report.add(HANDLER_CASE, impl, _harness.rate(once, n, args.repeat), "records/s")
            if impl.startswith(_harness.OURS):
                report.add(DISK_CASE, impl, [_size(dirs[-1])], "bytes", higher_is_better=False)
            elif impl == "logging.FileHandler":
                report.add(DISK_CASE, PLAIN, [_size(dirs[-1])], "bytes", higher_is_better=False)
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
        for enqueue in (False, True):
            impl = "loguru (enqueue=True)" if enqueue else "loguru (file)"
            fn = _loguru(enqueue)
            if fn is None:
                report.skip(impl, "loguru is not installed (pip install 'mmapkit[bench]')")
                continue
            if not _harness.wanted(args, impl):
                continue
            def loguru_once(fn: Callable[[Path, int], None] = fn) -> None:
                fn(_fresh(tmp, "l"), n)

            report.add(HANDLER_CASE, impl, _harness.rate(loguru_once, n, args.repeat),
                       "records/s")

        # --- the lean API vs one system call per record -------------------------------
        line = b"user 12345 logged in from 10.0.57.45 request=9e3779b1 status=ok " + b"x" * 36

        def ours_writer() -> None:
            with mlog.Writer(_fresh(tmp, "w"), "app", flush_interval=1.0) as w:
                write = w.write
                for _ in range(n):
                    write(line, 20)

        def os_write() -> None:
            fd = os.open(_fresh(tmp, "o") / "app.log",
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                write = os.write
                for _ in range(n):
                    write(fd, line + b"\n")
            finally:
                os.close(fd)

        report.add(WRITER_CASE, _harness.OURS, _harness.rate(ours_writer, n, args.repeat),
                   "records/s")
        report.add(WRITER_CASE, "os.write", _harness.rate(os_write, n, args.repeat),
                   "records/s")

        # --- records lost after kill -9 -------------------------------------------------
        kn = min(n, 20_000)
        for impl, factory in _handlers(tmp).items():
            if not _harness.wanted(args, impl):
                continue
            def unflushed(d: Path, k: int,
                          f: Callable[[Path], logging.Handler] = factory) -> None:
                _run_unflushed(f, d, k)

            lost = _lost_after_kill(unflushed, _fresh(tmp, "k"), kn,
                                    _count_ours if impl.startswith(_harness.OURS)
                                    else _count_lines)
            report.add(LOST_CASE, impl, [lost], "records", higher_is_better=False)
        for enqueue in (False, True):
            impl = "loguru (enqueue=True)" if enqueue else "loguru (file)"
            fn = _loguru_unflushed(enqueue)
            if fn is None or not _harness.wanted(args, impl):
                continue
            lost = _lost_after_kill(fn, _fresh(tmp, "k"), kn, _count_lines)
            report.add(LOST_CASE, impl, [lost], "records", higher_is_better=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.target(HANDLER_CASE, "logging.FileHandler", ">=", 1.5)
    report.target(WRITER_CASE, "os.write", ">=", 1.5)
    report.target(DISK_CASE, PLAIN, "<=", 0.25)


def _run_unflushed(factory: Callable[[Path], logging.Handler], d: Path, n: int) -> None:
    """Log and return without flush or close: what a crash right after the calls sees."""
    lg = _logger(factory(d))
    _emit_all(lg, n)


def _loguru_unflushed(enqueue: bool) -> Callable[[Path, int], None] | None:
    try:
        from loguru import logger
    except ImportError:
        return None

    def run(d: Path, n: int) -> None:
        logger.remove()
        logger.add(d / "app.log", format=LOGURU_FORMAT, enqueue=enqueue)
        for i in range(n):
            logger.info("user {} logged in", i)

    return run


def main(argv: list[str] | None = None) -> int:
    return _harness.main_for("log", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
