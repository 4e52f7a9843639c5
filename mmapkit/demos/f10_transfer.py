"""copy() picks the fastest kernel path and says why; send() streams to another process;
a source truncated mid-copy gives BrokenError, not SIGBUS."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from .. import _platform
from ..transfer import copy, send

TITLE = "zero-copy transfer: copy() chooses its method, send() to another process"

_RECEIVER = """
import hashlib, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
h, n = hashlib.sha256(), 0
while part := s.recv(1 << 20):
    h.update(part)
    n += len(part)
print(n, h.hexdigest(), flush=True)
"""

_COPIER = """
import sys, time
from mmapkit import transfer
from mmapkit.errors import BrokenError
transfer.CHUNK = 1 << 20
def progress(done, total):
    if done == 1 << 20:
        print("copying", flush=True)
    time.sleep(0.01)
try:
    transfer.copy(sys.argv[1], sys.argv[2], method="mmap", progress=progress)
except BrokenError as exc:
    print("BrokenError:", exc, flush=True)
    sys.exit(0)
sys.exit(3)
"""


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(workdir: Path, say: Callable[[str], None]) -> None:
    src = workdir / "data.bin"
    size = 48 << 20
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        f.truncate(size)  # a sparse file: 16 MiB of data, a 16 MiB hole, 16 MiB of data
        for i in list(range(16)) + list(range(32, 48)):
            f.seek(i << 20)
            f.write(block)

    res = copy(src, workdir / "copy.bin")
    for method, why in res.skipped:
        say(f"tried {method}: refused by the kernel ({why})")
    say(f"copy() used {res.method}: {res.bytes:,} bytes in {res.seconds * 1000:.1f} ms "
        f"({res.rate / 1e9:.2f} GB/s), {res.holes:,} bytes left as holes")
    if (workdir / "copy.bin").read_bytes() != src.read_bytes():
        raise RuntimeError("the copy differs from the source")
    if _platform.HAVE_SEEK_DATA and res.holes == 0:
        raise RuntimeError("the hole in the source was not kept")
    used = os.stat(workdir / "copy.bin").st_blocks * 512
    say(f"identical bytes; the copy occupies {used >> 20} MiB on disk for a {size >> 20} MiB "
        "file (the hole stayed a hole)")

    address = str(workdir / "sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(address)
        listener.listen(1)
        receiver = _child(_RECEIVER, address)
        listener.settimeout(30)
        conn, _ = listener.accept()
    with conn:
        sent = send(conn, src)
        conn.shutdown(socket.SHUT_WR)
        out, err = receiver.communicate(timeout=30)
    got, digest = out.split()
    how = "splice through a pipe" if _platform.HAVE_SPLICE else "sendfile"
    say(f"send() moved {sent:,} bytes by {how} to process {receiver.pid} over a Unix socket")
    if int(got) != size or digest != hashlib.sha256(src.read_bytes()).hexdigest():
        raise RuntimeError(f"the receiver got something else: {out} {err}")
    say("the receiving process checked the SHA-256: same file")

    copier = _child(_COPIER, str(src), str(workdir / "copy2.bin"))
    assert copier.stdout is not None
    if copier.stdout.readline().strip() != "copying":
        raise RuntimeError(f"the copying child did not start: {copier.communicate()}")
    os.truncate(src, 4096)
    say(f"this process truncated the source to 4 KiB while child {copier.pid} was copying "
        "it with method='mmap'")
    out, err = copier.communicate(timeout=30)
    if copier.returncode < 0:
        raise RuntimeError(f"the child died by {signal.Signals(-copier.returncode).name}")
    if copier.returncode != 0 or "BrokenError" not in out:
        raise RuntimeError(f"the child did not report the truncation: {out} {err}")
    say(f"the child survived and raised {out.strip()[:90]}...")
    if (workdir / "copy2.bin").exists():
        raise RuntimeError("a half copy was left under the final name")
    say("and no half-written copy2.bin exists")
