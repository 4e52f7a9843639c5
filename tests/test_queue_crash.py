"""mmapkit.Queue with producers and consumers SIGKILLed at random moments: the others carry
on, a message is delivered whole or not at all, nothing wedges, and the ring checks."""

from __future__ import annotations

import hashlib
import os
import queue
import random
import signal
import time

import pytest
from conftest import exit_code, fork_child

from mmapkit.ipc.queue import _GETS_Q, _PUTS_Q, Queue

END = "end"


def _message(tag: str, i: int) -> tuple[str, int, bytes, bytes]:
    """A message whose body says whether it arrived whole: varying length, and a digest."""
    body = (f"{tag}:{i}:".encode() * (1 + i % 37))[: 20 + (i * 7919) % 900]
    return tag, i, body, hashlib.blake2b(body, digest_size=8).digest()


def _whole(msg: object) -> bool:
    if not (isinstance(msg, tuple) and len(msg) == 4):
        return False
    tag, i, body, digest = msg
    return bool(_message(tag, i) == msg and hashlib.blake2b(
        body, digest_size=8).digest() == digest)


def _round(rng: random.Random) -> None:
    maxsize = rng.choice([0, 1, 4, 32])
    q = Queue(maxsize=maxsize, capacity=rng.choice([4096, 1 << 14]))
    report_r, report_w = os.pipe()
    n_survivor = 150

    def victim_producer() -> None:
        os.close(report_w)
        i = 0
        while True:
            q.put(_message("victim", i))
            i += 1

    def victim_consumer() -> None:
        os.close(report_r)
        while True:
            msg = q.get()
            if msg == END:
                os.write(report_w, b"end -1\n")
            elif not _whole(msg):
                os._exit(3)
            else:
                os.write(report_w, f"{msg[0]} {msg[1]}\n".encode())

    def survivor_producer() -> None:
        os.close(report_w)
        for i in range(n_survivor):
            q.put(_message("survivor", i), timeout=30)
        q.put(END, timeout=30)

    vp = fork_child(victim_producer)
    vc = fork_child(victim_consumer)
    sp = fork_child(survivor_producer)
    os.close(report_w)
    victims = [vp, vc]
    rng.shuffle(victims)
    for pid in victims:
        time.sleep(rng.uniform(0, 0.012))
        os.kill(pid, signal.SIGKILL)
    assert [exit_code(pid) for pid in victims] == [-signal.SIGKILL] * 2
    with os.fdopen(report_r) as f:  # what the victim consumer took (EOF: both are dead)
        taken = [(t, int(i)) for t, i in (line.split() for line in f.read().splitlines())]

    # The parent is the surviving consumer: it takes everything until the survivor has
    # exited (put() returned for all its messages, so they are in the ring or taken) and
    # the ring is empty.  The end marker may be the one message the victim consumer took
    # and died before reporting, so the survivor's exit, not the marker, ends the loop.
    got: list[tuple[str, int]] = []
    ends = 0
    sp_code: int | None = None
    deadline = time.monotonic() + 60
    while True:
        try:
            msg = q.get(timeout=0.02) if sp_code is None else q.get_nowait()
        except queue.Empty:
            if sp_code is not None:
                break
            pid, status = os.waitpid(sp, os.WNOHANG)
            if pid:  # then one more look: it may have put its last message just now
                sp_code = os.waitstatus_to_exitcode(status)
            assert time.monotonic() < deadline, "wedged: no progress for a minute"
            continue
        if msg == END:
            ends += 1
            continue
        assert _whole(msg), msg
        got.append((msg[0], msg[1]))
    assert sp_code == 0
    ends += taken.count(("end", -1))

    # Each producer's messages arrive in order; one message may reach two consumers (the
    # victim consumer killed after copying it, before releasing it), none is torn, and of
    # the survivor's messages at most that one is missing (taken, not yet reported).
    for tag in ("victim", "survivor"):
        mine = [i for t, i in got if t == tag]
        assert mine == sorted(mine)
    survivor = [i for t, i in got + taken if t == "survivor"]
    dupes = len(survivor) - len(set(survivor))
    missing = set(range(n_survivor)) - set(survivor)
    lost = len(missing) + (ends == 0)  # the end marker counts as one of its messages
    assert dupes + (ends > 1) <= 1 and lost <= 1, (dupes, ends, sorted(missing))
    victim_all = [i for t, i in got + taken if t == "victim"]
    assert len(victim_all) - len(set(victim_all)) <= 1

    # Nothing wedged, and the counts healed: the queue takes maxsize items again.  A
    # producer killed at P4 (PUTS counted, frame not published) after the survivor's last
    # put leaves a gap that only the next message consumed heals (queue.py's "Counting");
    # until then a non-empty queue counts one too many, so consume one message first.
    assert q.empty() and q.qsize() == 0
    q.put("heal")
    assert q.get(timeout=5) == "heal"
    assert q.qsize() == 0
    if maxsize:
        for i in range(maxsize):
            q.put_nowait(i)
        with pytest.raises(queue.Full):
            q.put_nowait("one too many")
        assert [q.get_nowait() for _ in range(maxsize)] == list(range(maxsize))
    q.put("after")
    assert q.get(timeout=5) == "after"
    q._shared.channel.check()
    q.close()


def test_killed_producers_and_consumers_never_wedge_nor_tear() -> None:
    rng = random.Random(int(os.environ.get("MMAPKIT_SEED", "0")) or None)
    for _ in range(50):
        _round(rng)


@pytest.mark.slow
def test_killed_producers_and_consumers_soak() -> None:
    rng = random.Random()
    for _ in range(1000):
        _round(rng)


def test_producer_killed_between_count_and_publish_leaves_a_gap_that_heals() -> None:
    """Step P4 of the protocol: PUTS counts a message that is never published."""
    q = Queue(maxsize=1, capacity=4096)
    shared = q._shared

    def die_mid_put() -> None:
        with shared.channel.reserve(40):
            shared.q[_PUTS_Q] += 1  # what put() does before the publish...
            os.kill(os.getpid(), signal.SIGKILL)  # ...and no further

    assert exit_code(fork_child(die_mid_put)) == -signal.SIGKILL
    assert q.qsize() == 0 and q.empty() and not q.full()  # an empty ring counts 0
    q.put_nowait("real")  # the gap does not make the queue look full
    assert q.full()
    with pytest.raises(queue.Full):
        q.put_nowait("one too many")
    assert q.get_nowait() == "real"  # its sequence number jumps GETS past the gap
    assert q.qsize() == 0
    q.put_nowait("again")
    assert q.qsize() == 1 and q.get_nowait() == "again"
    shared.channel.check()


def test_consumer_killed_after_counting_before_release_leaves_the_message() -> None:
    """Step G2: the message stays for the next consumer, which stores the same GETS."""
    q = Queue(maxsize=2, capacity=4096)
    q.put("first")
    q.put("second")
    shared = q._shared

    def die_mid_get() -> None:
        with shared.channel.recv_view() as view:
            seq = int.from_bytes(view[:8], "little")
            shared.q[_GETS_Q] = seq + 1  # GETS, as get() stores it before the release
            os.kill(os.getpid(), signal.SIGKILL)

    assert exit_code(fork_child(die_mid_get)) == -signal.SIGKILL
    assert q.get_nowait() == "first"
    assert q.qsize() == 1
    q.put_nowait("third")
    assert q.full()
    assert [q.get_nowait(), q.get_nowait()] == ["second", "third"]
    assert q.qsize() == 0 and q.empty()
    shared.channel.check()


def test_a_gap_before_the_wrap_around_does_not_make_an_empty_queue_full() -> None:
    """A gap (P4), then a put() whose frame needs a PAD to the ring's end: the ring holds
    that PAD and nothing else, which counts as empty, so the put goes in at once."""
    q = Queue(maxsize=1, capacity=4096)
    shared = q._shared
    hdr = shared.channel._hdr
    while not 64 <= 4096 - hdr[8] % 4096 < 600:  # bring head (and tail) near the end
        q.put(b"x" * 100)
        q.get()

    def die_mid_put() -> None:
        with shared.channel.reserve(40):
            shared.q[_PUTS_Q] += 1
            os.kill(os.getpid(), signal.SIGKILL)

    assert exit_code(fork_child(die_mid_put)) == -signal.SIGKILL
    q.put_nowait(b"y" * 1000)  # cannot fit before the end: PAD, then the frame
    # qsize() counts from the oldest message's number (past the PAD): the gap below it
    # does not count, nor does it make the queue full for P3 (GETS is below the gap)
    assert q.qsize() == 1 and q.full()
    assert q.get_nowait() == b"y" * 1000
    assert q.qsize() == 0 and q.empty()
    shared.channel.check()


def test_a_gap_above_the_oldest_message_counts_until_the_ones_below_it_are_taken() -> None:
    """Counting without GETS (a queue without maxsize: get() does not store it): qsize()
    is PUTS less the oldest queued message's number, so a gap left at P4 above it counts
    one too many until the messages queued before the gap are consumed, then none."""
    q = Queue(capacity=1 << 16)
    shared = q._shared
    for i in range(3):
        q.put(i)
    assert q.get() == 0  # the general path (it takes the lease) stores GETS = 1...
    assert q.get() == 1  # ...the one-call get() leaves it alone without a maxsize
    assert shared.q[_GETS_Q] == 1 and q.qsize() == 1

    def die_mid_put() -> None:
        with shared.channel.reserve(40):
            shared.q[_PUTS_Q] += 1  # P4's count, then killed before the publish
            os.kill(os.getpid(), signal.SIGKILL)

    assert exit_code(fork_child(die_mid_put)) == -signal.SIGKILL
    q.put(3)
    assert q.qsize() == 3  # 2, the gap, 3
    assert q.get() == 2
    assert q.qsize() == 1  # the gap is below the oldest message now: healed
    assert q.get() == 3 and q.qsize() == 0 and q.empty()
    shared.channel.check()
