"""The claim lease of multi-producer / multi-consumer channels (steps L1-L9 of the state
table in mmapkit/ipc/channel.py), one transition per test, with real unrelated
processes: an owner inside its claim (in a ``reserve()`` block, or held at a pause point),
a thief held after it wrote the lease word, owners killed with SIGKILL inside a claim.
Each test ends with check()."""

from __future__ import annotations

import fcntl
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import child_env
from test_channel_protocol import Pause, finish

from mmapkit.ipc import Channel
from mmapkit.ipc import _format as fmt
from mmapkit.ipc._slots import slot_word as _slot_word

# These tests SIGKILL children (or servers) whose pipes and sockets the test leaves to
# the garbage collector: the one place an unclosed-resource warning is expected.
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
    pytest.mark.skipif(not fmt.VERSION >= fmt.LEASE_VERSION, reason="no leases"),
]

P_LEASE = fmt.PRODUCER_LEASE // 4
C_LEASE = fmt.CONSUMER_LEASE // 4

# A producer that takes the lease, then sits inside a claim (a reserve() block) until told.
HOLDER = """
    import sys
    from mmapkit.ipc import Channel
    ch = Channel.open(sys.argv[1])
    ch.send(b"warm-up")  # takes the lease
    with ch.reserve(5) as buf:
        buf[:] = b"owner"
        print("in claim", flush=True)
        sys.stdin.readline()
    print("out", flush=True)
    sys.stdin.readline()
    ch.close()
"""


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            env=child_env(), text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def expect(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    got = proc.stdout.readline().strip()
    if got != line:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"child said {got!r}, not {line!r}: {err}")


def tell(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


def test_a_lone_owner_claims_without_the_flock(tmp_path: Path) -> None:
    """L1-L3, L9: once a producer and a consumer hold their leases, claims take no flock:
    with both flocks held by an outsider they still send and receive, while a second
    producer (no lease) cannot get in."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=1 << 16, multi_producer=True, multi_consumer=True)
    ch.send(b"first")
    assert ch.recv() == b"first"
    pslot, cslot = ch._pslot, ch._cslot
    assert pslot is not None and cslot is not None
    assert ch._hdr32[P_LEASE] == ch._ptoken and ch._hdr32[C_LEASE] == ch._ctoken
    assert ch._ptoken & 0xFF == pslot + 1 and ch._ctoken & 0xFF == cslot + 1
    outsider = [os.open(path, os.O_RDONLY), os.open(str(path) + ".lock", os.O_RDONLY)]
    for fd in outsider:
        fcntl.flock(fd, fcntl.LOCK_EX)
    other = Channel.open(path)
    try:
        for i in range(100):
            ch.send(b"%d" % i, timeout=1)
            assert ch.recv(timeout=1) == b"%d" % i
        with pytest.raises(queue.Full):
            other.send(b"no lease, no flock", timeout=0.2)
        assert ch._hdr32[P_LEASE] == ch._ptoken  # the thief never got past L5
        busy = _slot_word(pslot, fmt.SLOT_PBUSY // 4)
        assert ch._hdr32[busy] == 0  # not busy between claims (L9)
    finally:
        for fd in outsider:
            os.close(fd)
    other.send(b"now")  # L5-L8: the flock is free, the idle owner is robbed
    assert ch._hdr32[P_LEASE] == other._ptoken
    ch.send(b"back")  # and the first owner steals it back
    assert ch._hdr32[P_LEASE] == ch._ptoken
    assert [ch.recv(), ch.recv()] == [b"now", b"back"]
    ch.check()
    other.close()
    ch.close()


def test_a_thief_waits_for_the_owner_inside_its_claim(tmp_path: Path) -> None:
    """L6 -> L7: the owner is past L3 (inside a reserve() block) when a thief writes the
    lease word; the thief waits at L7 until the owner leaves, then sends; both messages
    arrive whole, the owner's first."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=1 << 16, multi_producer=True)
    owner = spawn(HOLDER, str(path))
    expect(owner, "in claim")
    assert ch.recv() == b"warm-up"
    pause = Pause(tmp_path, "channel.lease:stolen")
    thief = pause.spawn("""
        import sys
        from mmapkit.ipc import Channel
        ch = Channel.open(sys.argv[1])
        ch.send(b"thief")
        print("sent", flush=True)
        ch.close()
    """, str(path))
    pause.wait(thief)  # the lease word names the thief now
    head = ch._hdr[8]
    pause.go()
    time.sleep(0.3)
    assert thief.poll() is None  # waiting at L7 for the owner's busy word
    assert ch._hdr[8] == head  # nothing published meanwhile
    tell(owner)  # the owner publishes and leaves its claim
    expect(owner, "out")
    assert finish(thief) == "sent\n"
    assert [ch.recv(timeout=5), ch.recv(timeout=5)] == [b"owner", b"thief"]
    tell(owner)
    finish(owner)
    ch.check()
    ch.close()


def test_a_thief_that_cannot_wait_gives_up_and_the_owner_carries_on(tmp_path: Path) -> None:
    """L7 with a deadline: the owner stays in its claim, the thief's send raises
    queue.Full; the lease word names the thief, so the owner's next claim steals it back."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=1 << 16, multi_producer=True)
    owner = spawn(HOLDER, str(path))
    expect(owner, "in claim")
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        ch.send(b"thief", timeout=0.3)
    assert time.monotonic() - t0 >= 0.25
    assert ch._hdr32[P_LEASE] == ch._ptoken
    tell(owner)
    expect(owner, "out")
    ch.send(b"after")
    assert [ch.recv(), ch.recv(), ch.recv()] == [b"warm-up", b"owner", b"after"]
    tell(owner)
    finish(owner)
    ch.check()
    ch.close()


def test_an_owner_killed_inside_its_claim_never_wedges_the_others(tmp_path: Path) -> None:
    """L3 then SIGKILL: the dead owner's busy word stays 1, its slot lock is free; the
    thief skips it at L7.  Its frame was never published."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=1 << 16, multi_producer=True, multi_consumer=True)
    owner = spawn(HOLDER, str(path))
    expect(owner, "in claim")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert ch.recv() == b"warm-up"
    ch.send(b"survivor", timeout=5)
    assert ch.recv(timeout=5) == b"survivor"
    with pytest.raises(queue.Empty):
        ch.recv_nowait()  # nothing of the killed owner's half-made message
    ch.check()
    ch.close()


def test_a_consumer_killed_inside_its_claim_leaves_the_message(tmp_path: Path) -> None:
    """R2 under a consumer lease, then SIGKILL: the next consumer steals the lease from
    the dead one and gets the message whole."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=1 << 16, multi_consumer=True)
    ch.send(b"one")
    ch.send(b"two")
    taker = spawn("""
        import sys
        from mmapkit.ipc import Channel
        ch = Channel.open(sys.argv[1])
        with ch.recv_view() as view:
            print(bytes(view).decode(), flush=True)
            sys.stdin.readline()
    """, str(path))
    expect(taker, "one")
    taker.send_signal(signal.SIGKILL)
    taker.wait()
    assert [ch.recv(timeout=5), ch.recv(timeout=5)] == [b"one", b"two"]
    ch.check()
    ch.close()


def test_a_thief_killed_after_taking_the_lease_word(tmp_path: Path) -> None:
    """L6 then SIGKILL: entrants at L3 see the thief's name and steal in turn (they wait
    for its flock meanwhile: a send with a deadline raises queue.Full); once the kernel
    frees the flock the lease word names a dead slot and the next thief takes it."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=1 << 16, multi_producer=True)
    ch.send(b"mine")
    pause = Pause(tmp_path, "channel.lease:stolen")
    thief = pause.spawn("""
        import sys
        from mmapkit.ipc import Channel
        Channel.open(sys.argv[1]).send(b"never")
    """, str(path))
    pause.wait(thief)
    assert ch._hdr32[P_LEASE] != ch._ptoken
    with pytest.raises(queue.Full):
        ch.send(b"blocked", timeout=0.2)  # L3 fails, L5 waits for the thief's flock
    thief.send_signal(signal.SIGKILL)
    thief.wait()
    ch.send(b"after", timeout=5)
    assert ch._hdr32[P_LEASE] == ch._ptoken
    assert [ch.recv(), ch.recv()] == [b"mine", b"after"]
    ch.check()
    ch.close()


def test_a_dead_thiefs_slot_taken_again_does_not_inherit_its_lease(tmp_path: Path) -> None:
    """L6, SIGKILL, then A4-A5: the thief died naming its slot in the lease word while the
    owner was inside its claim.  A new producer that gets that very slot has a new lease
    name (the slot's attach generation), so it steals (and waits at L7) instead of
    entering beside the owner."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=1 << 16, multi_producer=True, multi_consumer=True)
    owner = spawn(HOLDER, str(path))
    expect(owner, "in claim")
    assert ch.recv() == b"warm-up"  # ch is a consumer: its slot is taken
    pause = Pause(tmp_path, "channel.lease:stolen")
    thief = pause.spawn("""
        import sys
        from mmapkit.ipc import Channel
        Channel.open(sys.argv[1]).send(b"never")
    """, str(path))
    pause.wait(thief)
    dead_name = ch._hdr32[P_LEASE]
    thief.send_signal(signal.SIGKILL)
    thief.wait()
    fillers: list[Channel] = []  # every other slot to a live consumer: the thief's is the one left
    while len(fillers) < fmt.SLOT_COUNT - 3:
        h = Channel.open(path)
        with pytest.raises(queue.Empty):
            h.recv_nowait()
        fillers.append(h)
    new = Channel.open(path)
    try:
        with pytest.raises(queue.Full):
            new.send(b"new", timeout=0.3)  # waits at L7 for the owner
        assert new._pslot == (dead_name & 0xFF) - 1  # the dead thief's slot...
        assert new._ptoken != dead_name  # ...under a new name
        tell(owner)
        expect(owner, "out")
        new.send(b"new", timeout=5)
        assert [ch.recv(), ch.recv()] == [b"owner", b"new"]
        tell(owner)
        finish(owner)
        ch.check()
    finally:
        for h in fillers:
            h.close()
        new.close()
        ch.close()


def test_a_version_1_file_claims_by_flock(tmp_path: Path) -> None:
    """A file made by an older mmapkit (version 1, no lease words): its processes flock
    every claim, so ours do too; a held flock keeps our producer out."""
    path = tmp_path / "ch"
    cap = 1 << 12
    _file_of_version(path, cap, fmt.FLAG_MULTI_PRODUCER, 1)
    ch = Channel.open(path)
    assert ch._header.version == 1 and not ch._please
    ch.send(b"a")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(queue.Full):
            ch.send(b"b", timeout=0.2)
    finally:
        os.close(fd)
    ch.send(b"b")
    assert [ch.recv(), ch.recv()] == [b"a", b"b"]
    assert ch._hdr32[P_LEASE] == 0  # nothing written where version 2 keeps its lease
    ch.check()
    ch.close()


def _file_of_version(path: Path, cap: int, flags: int, version: int) -> None:
    """A channel file of an earlier format version, written the way its mmapkit did."""
    header = (fmt.encode_header_v1(cap, flags) if version == 1
              else fmt.encode_header(cap, flags, version))
    with open(path, "wb") as f:
        f.write(header.ljust(fmt.HEADER_SIZE + cap, b"\0"))


def _no_busy_word_left(ch: Channel, path: Path) -> None:
    """After an interrupted send of b"b" (b"a" sent before): the busy word is down, so
    another producer steals the lease at once, and only b"a" and its b"c" arrive."""
    assert ch._hdr32[ch._pbusy] == 0
    other = Channel.open(path)
    other.send(b"c", timeout=1)  # steals at once: nobody is busy
    assert [ch.recv(), ch.recv()] == [b"a", b"c"]
    ch.check()
    other.close()
    ch.close()


def test_an_interrupt_while_entering_leaves_no_busy_word(tmp_path: Path) -> None:
    """L1-L3 interrupted (KeyboardInterrupt at the barrier of a version 2 file): the busy
    word goes back to 0, so a thief is not held up by a participant that is not inside a
    claim."""

    class Interrupting:
        def acquire(self) -> None:
            raise KeyboardInterrupt

        def release(self) -> None:  # pragma: no cover - never reached
            pass

    path = tmp_path / "ch"
    _file_of_version(path, 1 << 16, fmt.FLAG_MULTI_PRODUCER, fmt.LEASE_VERSION)
    ch = Channel.open(path)
    assert ch._header.version == 2 and ch._please and ch._fenced
    ch.send(b"a")
    real, ch._fence = ch._fence, Interrupting()  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        ch.send(b"b")
    ch._fence = real
    _no_busy_word_left(ch, path)


def test_an_interrupt_inside_the_claim_leaves_no_busy_word(tmp_path: Path) -> None:
    """Version 3 (no barrier on entry): KeyboardInterrupt past L3, while the frame is
    written, lowers the busy word and publishes nothing; a thief gets in at once."""

    class Interrupting(dict):  # type: ignore[type-arg]
        def __getitem__(self, key: object) -> None:  # the framer's lookup
            raise KeyboardInterrupt

    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=1 << 16, multi_producer=True)
    assert ch._header.version == 3 and ch._please and not ch._fenced
    ch.send(b"a")
    real, ch._framers = ch._framers, Interrupting()
    with pytest.raises(KeyboardInterrupt):
        ch.send(b"b")
    ch._framers = real
    assert ch._send_free == [True]  # our process's turn to send is given back too
    _no_busy_word_left(ch, path)


def test_a_thief_yields_for_the_flock_then_waits_in_it(tmp_path: Path) -> None:
    """L5: a thief first tries the thieves' flock without blocking, a yield apart, then
    waits in flock(); either way it gets past L5 only once the flock is free, and a thief
    with a deadline gives up at the deadline, not after its tries."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=1 << 16, multi_producer=True, multi_consumer=True)
    ch.send(b"owner")  # the lease is ours
    outsider = os.open(path, os.O_RDONLY)
    fcntl.flock(outsider, fcntl.LOCK_EX)  # the producers' flock: a thief in L5-L8
    other = Channel.open(path)
    thief = spawn("""
        import sys
        from mmapkit.ipc import Channel
        ch = Channel.open(sys.argv[1])
        print("sending", flush=True)
        ch.send(b"thief")  # no deadline: yields, then sleeps in flock()
        print("sent", flush=True)
        sys.stdin.readline()
        ch.close()
    """, str(path))
    try:
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            other.send_nowait(b"no wait")  # the deadline is now: no round of tries
        assert time.monotonic() - t0 < 0.5
        expect(thief, "sending")
        time.sleep(0.3)  # long past its tries without blocking
        assert thief.poll() is None
        assert ch._hdr32[P_LEASE] == ch._ptoken  # nobody got past L5
        assert ch.recv() == b"owner"
        with pytest.raises(queue.Empty):
            ch.recv(timeout=0.1)
    finally:
        os.close(outsider)
    expect(thief, "sent")  # the flock freed: L5-L8, its message published
    assert ch.recv(timeout=5) == b"thief"
    assert ch._hdr32[P_LEASE] != ch._ptoken
    tell(thief)
    assert thief.wait(timeout=30) == 0
    ch.send(b"back")  # steals the lease back from the closed thief's slot
    assert ch.recv() == b"back"
    ch.check()
    other.close()
    ch.close()


# A child whose kernel refuses membarrier (a seccomp filter answering EPERM, as a
# container's may): it must not enter a version 3 lease (the thieves' barrier would not
# reach it), so it refuses to attach there, and what it creates is version 2.
NO_MEMBARRIER = """
    import ctypes, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    insns = [(0x20, 0, 0, 0),            # A = seccomp_data.nr
             (0x15, 0, 1, 324),          # membarrier (x86-64)?
             (0x06, 0, 0, 0x00050001),   # return ERRNO(EPERM)
             (0x06, 0, 0, 0x7FFF0000)]   # return ALLOW
    raw = b"".join(struct.pack("<HBBI", *i) for i in insns)
    buf = ctypes.create_string_buffer(raw, len(raw))
    prog = struct.pack("<HxxxxxxQ", len(insns), ctypes.addressof(buf))
    pbuf = ctypes.create_string_buffer(prog, len(prog))
    ul = ctypes.c_ulong
    assert libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, ul(2), ul(ctypes.addressof(pbuf)), ul(0), ul(0)) == 0, \
        ctypes.get_errno()  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    from mmapkit.errors import UnsupportedPlatformError
    from mmapkit.ipc import Channel
    ch = Channel.open(sys.argv[1])
    try:
        ch.send(b"refused")
    except UnsupportedPlatformError as exc:
        print("refused:", exc, flush=True)
    older = Channel.create(sys.argv[2], multi_producer=True, multi_consumer=True)
    older.send(b"v2")
    print("created version", older._header.version, older.recv().decode(), flush=True)
    older.check()
    older.close()
    ch.close()
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the filter names x86-64's number")
def test_a_process_without_membarrier_stays_out_of_a_version_3_lease(tmp_path: Path) -> None:
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=1 << 16, multi_producer=True)
    assert ch._header.version == fmt.FENCELESS_VERSION
    ch.send(b"ours")
    child = spawn(NO_MEMBARRIER, str(path), str(tmp_path / "older"))
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("refused:") and "membarrier" in lines[0]
    assert lines[1] == "created version 2 v2"
    assert ch._hdr32[P_LEASE] == ch._ptoken  # the refused child never took the lease
    ch.send(b"still ours")
    assert [ch.recv(), ch.recv()] == [b"ours", b"still ours"]
    ch.check()
    ch.close()


def test_a_steal_that_gives_up_still_clears_the_copies_of_the_positions(
        tmp_path: Path) -> None:
    """M3 of _claims.py: a steal that gives up at its deadline (L7: an owner stays in its
    claim) has already named us in the lease word, so our next entry passes L3; the copy
    of head our one-call path kept from before the thief came must not be used then."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=1 << 16, multi_producer=True)
    ch.send(b"a")  # the first send steals the lease (the general path)
    ch.send(b"b")  # a one-call send: keeps its copy of head
    assert ch._head_mine == ch._hdr[fmt.HEAD_Q]
    other = Channel.open(path)
    other.send(b"c")  # steals the lease and moves head past our copy
    other._hdr32[other._pbusy] = 1  # as if inside its claim: our steal waits for it
    with pytest.raises(queue.Full):
        ch.send(b"d", timeout=0.05)
    assert ch._hdr32[fmt.PRODUCER_LEASE // 4] == ch._ptoken  # L6 ran: the lease is ours
    assert ch._head_mine == -1  # ...and the copy is gone
    other._hdr32[other._pbusy] = 0
    ch.send(b"e")  # passes L3 at once, reading head
    assert ch._head_mine == ch._hdr[fmt.HEAD_Q]
    reader = Channel.open(path)
    assert [reader.recv(timeout=5) for _ in range(4)] == [b"a", b"b", b"c", b"e"]
    reader.check()
    for c in (reader, other, ch):
        c.close()
