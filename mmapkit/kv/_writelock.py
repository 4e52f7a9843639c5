"""The KV's writer lock in multiprocess mode: a flock on the store file, turns arranged
through words in the mapped header, and the lock kept between writes.

The flock is the lock: the kernel drops a killed holder's at once, so nothing here can
wedge the others.  The header words (wanted, hand-overs, waiter ready: codec.OFF_LOCK_*)
only arrange who goes next and carry wake-ups (steps L1-L4 in ``_wait_for_lock``); the
hold (steps H1-H5 in store.py's protocol table) keeps the flock between writes until the
handle is idle or someone asks.  A process that ignores the words loses nothing: it waits
a little longer.  ``WriterLock`` is a mixin of ``KV`` (store.py), which owns the
attributes it uses.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref

from .. import _platform
from .._testhooks import PAUSES, pause
from ..errors import LockTimeout
from ..lock import FileLock
from ..region import Region
from ..wait import Waiter
from ._files import fd_path
from .codec import (
    LOCK_CLAIMED,
    LOCK_READY,
    OFF_LOCK_READY,
    OFF_LOCK_SEQ,
    OFF_LOCK_WANT,
    OFF_WAITERS,
)

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "WriterLock",
]

_LOCK_SLICE = 0.01  # a lock waiter looks again at least this often (a killed holder wakes
# nobody; the kernel only drops its flock)
_LOCK_EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB
_LOCK_UN = fcntl.LOCK_UN
_flock = fcntl.flock
_sched_yield = os.sched_yield
_LOCK_SPINS = 20
# _waitw[1], [2], [3]
assert OFF_LOCK_WANT == OFF_WAITERS + 4 and OFF_LOCK_SEQ == OFF_WAITERS + 8
assert OFF_LOCK_READY == OFF_WAITERS + 12
_QUANTUM = 0.002  # a writer keeps taking the lock this long while others wait, then hands
# it over: long runs by one process, not a hand-over (and a replay) per write
_READY_SPIN = 0.002  # a woken waiter tries this long for the holder to let go


class WriterLock:
    """Taking, holding, handing over and releasing the writer lock (mixin of KV, and of
    the journal's writer lock: journal.py).

    The class attributes say where the words live in ``_region``: a user with another
    layout overrides them (``_waitw`` is a u32 view whose [1], [2], [3] are the wanted,
    hand-over and ready words at those offsets)."""

    _WANT_AT = OFF_LOCK_WANT
    _SEQ_AT = OFF_LOCK_SEQ
    _KIND = "KV"

    if TYPE_CHECKING:  # KV's slots (KV, not this mixin, owns them) and the KV method used
        __slots__ = ("_depth", "_fd", "_forked", "_handed", "_held", "_hold", "_hold_evt",
                     "_lock_timeout", "_lock_waiter", "_mode", "_path", "_pos", "_readonly",
                     "_region", "_tlock", "_turn_at", "_waitw", "_want_waiter")
        _fd: int
        _path: str
        _readonly: bool
        _forked: bool
        _held: bool
        _hold: float
        _hold_evt: threading.Event | None
        _depth: int
        _pos: int
        _region: Region | None
        _waitw: memoryview
        _lock_waiter: Waiter | None
        _want_waiter: Waiter | None
        _lock_timeout: float
        _handed: bool
        _turn_at: float
        _mode: FileLock | None
        _tlock: threading.RLock

        def _refresh_inline(self) -> None: ...
        def _follow_committed(self) -> None: ...
    else:
        __slots__ = ()

    def _prepare_waits(self) -> None:
        """Make the hand-over's futex calls ready at open: the first one in a process
        imports ctypes and sets up the syscall (5-10 ms, measured), which the first
        hand-over would otherwise pay holding the lock while others wait (traced: a
        4 ms stall in every 4-process run).  Writable multiprocess handles only."""
        if _platform.HAVE_FUTEX:
            self._seq_waiter()

    def _seq_waiter(self) -> Waiter:
        """The futex on the hand-over count (made once per mapping: a growth drops it)."""
        waiter = self._lock_waiter
        if waiter is None:
            assert self._region is not None
            waiter = self._lock_waiter = Waiter(self._region, self._SEQ_AT)
        return waiter

    def _take_own_lock(self, *, follow: bool = False) -> None:
        """_acquire_flock(), first making the lock ours if we are a fork child; nothing
        when this handle holds it already (H2)."""
        if self._held:
            return
        if self._forked:
            self._own_after_fork()
        self._acquire_flock(follow=follow)

    def _own_after_fork(self) -> None:
        """A fork child shares the parent's open file descriptions, and so its flocks:
        give this process descriptors (and locks) of its own for the same files."""
        self._forked = False
        self._refresh_inline()
        flags = (os.O_RDONLY if self._readonly else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(fd_path(self._fd), flags)  # a new open file description, same file
        try:
            os.dup2(fd, self._fd, inheritable=False)
        finally:
            os.close(fd)
        if self._mode is not None:
            mode = FileLock(self._path + ".lock")
            try:
                mode.acquire(shared=True, timeout=self._lock_timeout)
            except BaseException:
                mode.close()
                raise
            self._mode = mode  # (the inherited one is the parent's; we never unlock it)

    def _acquire_flock(self, *, follow: bool = False) -> None:
        """``follow``: the handle's index is current up to its commit word (a write path,
        not a load): it may replay what others commit while it waits
        (``_follow_committed``, L3)."""
        if self._hold_evt is None and self._hold and not self._readonly:
            # H1's releaser thread, started before the flock is taken: a thread start
            # (0.3-2 ms on 2 busy cores) is not spent holding what others wait for
            self._start_releaser()
        # A bare flock on our own descriptor: threads are already excluded by _tlock, so
        # FileLock's per-thread bookkeeping would only add cost to every write.
        try:
            _flock(self._fd, _LOCK_EX_NB)
        except BlockingIOError:
            self._wait_for_lock(follow=follow)
        else:
            if self._waitw[3] == LOCK_READY:
                self._maybe_yield(follow=follow)
        self._held = True
        if self._hold and not self._readonly:
            self._begin_hold()

    def _begin_hold(self) -> None:
        """H1: this handle may keep the lock between writes; make sure its releaser thread
        watches the hold (parked between holds)."""
        evt = self._hold_evt
        assert evt is not None  # (started before the flock: _acquire_flock)
        if not evt.is_set():
            evt.set()

    def _start_releaser(self) -> None:
        """Start the handle's releaser thread, parked (once: _hold_evt None).  Done before
        the first flock is taken (starting a thread takes a few hundred microseconds,
        which would otherwise be spent holding the lock others wait for)."""
        evt = self._hold_evt = threading.Event()
        # A handle dropped unclosed lets its thread go; one still open at interpreter
        # exit lets go of its hold and wakes a waiter (else the waiters sleep out their
        # slices: the kernel drops the flock at exit but wakes nobody).
        weakref.finalize(self, _at_exit, weakref.ref(self), evt)
        name = f"mmapkit {self._KIND} lock releaser ({os.path.basename(self._path)})"
        threading.Thread(target=_releaser, args=(weakref.ref(self), evt), daemon=True,
                         name=name).start()

    def _end_hold(self) -> None:
        """A write (or a lock()/batch() block) ended, holding the lock: keep it (H1) unless
        holding is off; once someone waits and our run has lasted its quantum, wake the
        sleepers and write on (H3); let go when the woken one is ready (H3b), and wake
        again if none became ready within a quantum."""
        words = self._waitw
        if not self._hold:
            self._release_flock()
            return
        if words[3] == LOCK_READY:
            if self._owes_turn():
                self._release_flock()  # H3b: it spins on the flock: it goes next
            return
        if (words[1] or words[3]) and time.monotonic() >= self._turn_at:
            self._hand_over(now=True)  # H3: wake them, keep the lock until one is ready

    # ``_turn_at``: when the waiters are woken (again): our run's start + its quantum, or
    # after a hand-over whose woken waiter is not ready yet, + a slice (its catch-up may
    # take milliseconds; waking another before would only repeat it).  ``_handed``: we
    # woke one since our run began.  The KV's hot paths call _end_hold only when holding
    # is off, the ready word is READY, or someone waits and _turn_at has passed: while
    # others sleep for the lock, most writes' ends then make no call at all (callgrind:
    # 19.2k -> 17.1k instructions an increment).

    def _owes_turn(self) -> bool:
        """A READY waiter gets the lock from us: we woke it, or our quantum is over."""
        return self._handed or time.monotonic() >= self._turn_at

    def _watch_hold(self) -> bool:
        """The releaser thread's watch over one hold (H4): give the lock back once the
        handle has written nothing for ``lock_hold`` seconds, or someone waits for it while
        no write is in progress.  Returns False once the handle is closed."""
        last = -1
        wait: Callable[[int, float | None], bool] | None = None
        at = 0
        while True:
            with self._tlock:
                evt = self._hold_evt
                if self._region is None or evt is None:
                    return False
                if not self._held:
                    evt.clear()  # parked until the next hold (set under this same lock)
                    return True
                words = self._waitw
                asked = words[1] or words[3]
                left = self._turn_at - time.monotonic()
                ready = words[3] == LOCK_READY and self._owes_turn()
                if not self._depth and (self._pos == last or ready or (asked and left <= 0)):
                    # Idle, a waiter we woke is ready, or asked once the quantum has
                    # passed: a run still writing does the same at its writes' ends
                    # (H3, H3b); one that has ended -- its process finishing -- would
                    # leave the waiters asleep until their slices end.
                    self._release_flock(now=True)
                    evt.clear()
                    return True
                last = self._pos
                hold = max(min(self._hold, left), 0.0005) if asked else self._hold
                if _platform.HAVE_FUTEX and at != self._region.address + self._WANT_AT:
                    # A raw futex on the word's address, no view of the mapping: close()
                    # never waits for this thread, and a growth only moves the address.
                    at = self._region.address + self._WANT_AT
                    wait = _platform.futex_waiter(at)
            # Outside the lock: the holder writes on; a waiter's wake (L2) cuts this short.
            if asked or wait is None:
                time.sleep(hold)
            else:
                try:
                    wait(0, hold)
                except OSError:
                    time.sleep(hold)  # unmapped meanwhile (closed, or grown): look again

    def _maybe_yield(self, *, follow: bool = False) -> None:
        """We took the lock while a woken waiter is ready and trying (L3): if our run
        has lasted its quantum (or we woke it), let go and queue behind it (a running
        writer retakes the lock within microseconds, so without this the waiter would
        never get in).  ``follow``: as _acquire_flock's -- when our turn comes, replay
        the others' writes before saying we are ready (without it the whole catch-up,
        a milliseconds-long replay of three runs, fell under the lock: traced)."""
        if self._readonly or self._waitw[3] != LOCK_READY or not self._owes_turn():
            return
        # Cleared first: a live waiter spins on the flock, not on the word, and a stale
        # "ready" (its waiter killed while trying) would make every holder let go to
        # nobody; the sleepers' slices find the lock free if nobody takes it.
        self._waitw[3] = 0
        _flock(self._fd, _LOCK_UN)
        self._wait_for_lock(spin=False, follow=follow, first_try=False)

    def _wait_for_lock(self, *, spin: bool = True, follow: bool = False,
                       first_try: bool = True) -> None:
        """Take the writer lock, sleeping until its holder hands it over.

        The flock stays the lock (the kernel drops a killed holder's flock at once); the
        header words only arrange who goes next and carry wake-ups:

        ===  ===========================================  ===============================
        L1   try a few times (a write holds the lock for  nobody is woken for a spinner
             microseconds), unless the ready word is
             set (a woken waiter's turn)
        L2   read the hand-over count, set "wanted",      a holder releasing after our
             try; sleep while the count is unchanged,     try sees "wanted" (both are
             at most _LOCK_SLICE; the slice ended with    system calls: not reordered)
             the count unchanged, or the ready word
             set (another waiter has the next turn):
             L2 again
        L3   woken (the count moved): ready word =        the other woken waiters see it
             CLAIMED; yield the core once; replay what    and sleep again; the holder
             is committed (R2, lock-free; write paths     writes on meanwhile (the replay
             only); ready word = READY; try for up to     runs beside it, not after it
             _READY_SPIN, yielding the core between       under the lock); READY: it lets
             tries; not got: clear the word, L2           go at its next write's end (H3b)
        L2b  a slice ended with a claimed turn (ready     the claimer takes the lock when
             word set, the count unchanged): no try;      ready; a claim seen at two
             sleep again                                  slice ends with no hand-over
                                                          between is a dead claimer's:
                                                          try, and clear it if we got in
        L4   got it: clear the ready word, start our run  (quantum counts from here)
        L5   the file was replaced (the KV's compaction,  nobody writes it any more: its
             C4): take its flock, yielding then sleeping  lock is taken only to look and
             between tries; the caller moves over (W1)    let go
        ===  ===========================================  ===============================

        The holder wakes the sleepers once per quantum and keeps the lock (H3), not once
        per release: a woken sleeper needs a millisecond or more to run here, and a holder
        that waited for it would leave the lock idle meanwhile; it goes on writing until
        one is ready, then lets go (H3b), and wakes another after a slice if none became
        ready (a claim whose process died is cleared then).  It clears "wanted", moves
        the count, wakes one sleeper and sets "wanted" again if the wake-up found one, so
        the next hand-over wakes the next sleeper, and a waiter that read the new count
        before sleeping keeps the "wanted" it set.  A holder that takes the lock again
        while a waiter is READY (its retake beat the waiter's next try) lets go at once,
        and sleeps (and on a write path replays, as L3) before trying (_maybe_yield).

        The yields are for two cores shared by more writers: a woken process often
        runs on its waker's core, and replaying or spinning there kept the holder off
        its core for milliseconds (traced) while the other core idled.
        """
        fd = self._fd
        words = self._waitw
        for _ in range(_LOCK_SPINS if spin else 0):
            if words[3]:
                break  # a woken waiter has the next turn: do not take it from under it
            try:
                _flock(fd, _LOCK_EX_NB)
                self._start_run()
                return
            except BlockingIOError:
                pass
        deadline = time.monotonic() + self._lock_timeout
        delay = 0.0001
        futex = _platform.HAVE_FUTEX and not self._readonly  # (a read-only map: no want)
        claimed = 0  # slices that ended finding a claim and no hand-over since (L2b)
        while True:
            if self._retired():
                # L5: the file was compacted away: nobody writes it any more, its lock is
                # taken only to look and let go; take it and let the caller move over
                self._take_retired(deadline)
                break
            seq = words[2]
            if futex:
                words[1] = 1
                self._ask_holder()
            if first_try and (not futex or not words[3] or claimed >= 2):
                # (L2b: a woken waiter has claimed the next turn: leave the lock to it --
                # taken here, the whole catch-up of a sleeper fell under it: 4 ms,
                # traced -- unless its claim outlived two slices with no hand-over
                # between: its process died claiming)
                try:
                    _flock(fd, _LOCK_EX_NB)
                    if claimed >= 2:
                        words[3] = 0
                    break
                except BlockingIOError:
                    pass
            first_try = True  # (a yielding holder sleeps first: retaking the lock it
            # just let go beat the ready waiter's next try every time)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out()
            if not futex:  # no futex (or read-only): poll, backing off
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.002)
                continue
            self._seq_waiter().wait(seq, min(remaining, _LOCK_SLICE))
            if words[2] == seq or words[3]:
                claimed = claimed + 1 if words[3] and words[2] == seq else 0
                # The slice ended and nobody handed over (try once more above: a killed
                # holder wakes nobody), or another woken waiter has the next turn: sleep
                # again, "wanted" set again above.  Replaying and spinning here would
                # take a core from the holder for nothing (2 cores, 4 writers).
                continue
            words[3] = LOCK_CLAIMED  # L3: the next turn is ours; the other woken ones sleep
            # Woken, we often run on the waker's core, the holder off it: let it back on
            # (an idle core, if any, takes us meanwhile) rather than replay beside it on
            # the same core for milliseconds.
            _sched_yield()
            if follow:
                # L3: read the others' writes now, before saying we are ready, so the
                # catch-up under the lock (W2) finds little left.  Twice: the holder
                # wrote on during the first (a replay runs several times faster than
                # the writes it replays, so the second is short).
                self._follow_committed()
                self._follow_committed()
                words = self._waitw  # (rebound if the file grew meanwhile)
            words[3] = LOCK_READY  # L3: trying; the holder lets go at its next write's end
            until = time.monotonic() + _READY_SPIN
            got = False
            while True:
                try:
                    _flock(fd, _LOCK_EX_NB)
                    got = True
                    break
                except BlockingIOError:
                    if time.monotonic() > until:
                        break
                    # A woken process often runs on its waker's core: spinning there
                    # would keep the holder, who must reach a write's end to let go,
                    # off its core for the whole spin (traced: 2-3 ms).
                    _sched_yield()
            if got:
                words[3] = 0
                break
            # Back to sleep: not trying any more, so a holder need not let go for us (a
            # stale "ready" made holders release to nobody; the holder wakes the
            # sleepers again, and "wanted" is set again above).
            words[3] = 0
        self._start_run()

    def _timed_out(self) -> LockTimeout:
        return LockTimeout(
            f"could not take the write lock of {self._path} within {self._lock_timeout} s: "
            f"another process holds it (kv.lock() or a long batch); retry, or find it with "
            f"`fuser {self._path}`")

    def _retired(self) -> bool:
        """The file this lock guards has been replaced (the KV's compaction); the lock's
        words are then nobody's turns any more."""
        return False

    def _take_retired(self, deadline: float) -> None:
        """L5: take a retired file's flock: its holders only look and let go (one by one:
        yield, then sleep, between tries)."""
        delay = 0.0
        while True:
            try:
                _flock(self._fd, _LOCK_EX_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise self._timed_out() from None
                if delay:
                    time.sleep(delay)
                else:
                    _sched_yield()
                delay = min(delay * 2 or 0.00005, 0.002)

    def _retire_lock(self) -> None:
        """C4: the file was replaced (compacted) while we hold its lock: let go and wake
        every sleeper on it at once -- each sees the file retired (L5), takes its lock
        only to look, and moves to the new file.  (A hand-over wakes one, and the next
        only after a quantum: the others slept out their slices, 10 ms, traced.)"""
        self._held = False
        words = self._waitw
        _flock(self._fd, _LOCK_UN)
        words[1] = words[3] = 0
        words[2] = (words[2] + 1) & 0xFFFFFFFF
        if _platform.HAVE_FUTEX:
            self._seq_waiter().wake()

    def _start_run(self) -> None:
        """L4: the lock is ours after a wait; our quantum counts from now."""
        self._handed = False
        self._turn_at = time.monotonic() + _QUANTUM

    def _ask_holder(self) -> None:
        """L2: wake the holder's releaser thread, asleep on the "wanted" word (an idle
        holder then lets go at once instead of after its idle interval)."""
        if self._want_waiter is None:
            assert self._region is not None
            self._want_waiter = Waiter(self._region, self._WANT_AT)
        self._want_waiter.wake(1)

    def _release_flock(self, *, now: bool = False) -> None:
        """Unlock; wake the sleeping waiters once our run has lasted its quantum, or
        ``now`` (the handle is idle or closing: no run of ours to go on with)."""
        self._held = False
        _flock(self._fd, _LOCK_UN)
        if self._waitw[3]:
            # A woken waiter is on its way (READY: it spins on the flock; CLAIMED: it
            # replays, then tries): it takes the lock, nobody needs waking.  (Clearing
            # its claim to wake another, as a hand-over that keeps the lock does after a
            # slice, made two processes replay at once for one turn, on two cores
            # shared with the next holder: traced.)  A claimer killed meanwhile costs
            # the sleepers a slice: they find the lock free when they next look.
            return
        if self._waitw[1] and not self._readonly:
            # (A read-only follower that took the lock to re-verify writes nothing: the
            # waiters see the lock free at their next look, within _LOCK_SLICE.)
            self._hand_over(now=now)

    def _let_go(self) -> None:
        """H6: the handle closes (or the interpreter exits) holding the lock: unlock and
        wake a waiter at once, before the descriptor goes."""
        if self._held and self._fd >= 0 and self._region is not None:
            self._release_flock(now=True)

    def _hand_over(self, *, now: bool = False) -> None:
        """Someone sleeps for the lock: once our turn's time has come (or ``now``),
        wake the first sleeper (one: woken all at once, on 2 cores they took the
        holder's core from it).  "wanted" is set again when the wake-up found someone,
        so the next hand-over wakes the next sleeper."""
        t = time.monotonic()
        if not now and t < self._turn_at:
            return
        self._handed = True
        self._turn_at = t + _LOCK_SLICE
        words = self._waitw
        if words[3] == LOCK_CLAIMED:
            words[3] = 0  # a claim that never became ready (slow, or its process died)
        # "wanted" is cleared before the count moves, not after the wake-up: a waiter
        # that reads the new count sets "wanted" after our clear, so it stays set and
        # the next hand-over wakes it.  (Cleared after a wake that found nobody, it
        # erased the "wanted" of a waiter that read the new count meanwhile: that one
        # slept out its slice, 10 ms, while the holder wrote on.)
        words[1] = 0
        words[2] = (words[2] + 1) & 0xFFFFFFFF
        if PAUSES:
            pause("kv.handover.counted")
        if not _platform.HAVE_FUTEX:
            return
        if self._seq_waiter().wake(1):
            words[1] = 1  # others may sleep on: the next hand-over wakes the next one


def _at_exit(ref: weakref.ref[WriterLock], evt: threading.Event) -> None:
    """A holding handle's finalizer: dropped (``ref`` dead), its releaser thread ends; at
    interpreter exit (still alive), it also lets go of its hold (H6)."""
    evt.set()
    lock = ref()
    if lock is None or not lock._tlock.acquire(timeout=0.1):
        return  # (a thread inside a write at exit: the kernel drops the flock anyway)
    try:
        lock._let_go()
    except (OSError, ValueError):
        pass  # closed or unmapped meanwhile
    finally:
        lock._tlock.release()


def _releaser(ref: weakref.ref[WriterLock], evt: threading.Event) -> None:
    """A multiprocess handle's releaser thread: parked until the handle holds the writer
    lock between writes, then watching that hold (KV._watch_hold, step H4)."""
    while True:
        evt.wait()
        kv = ref()
        if kv is None or not kv._watch_hold():
            return
        del kv  # (no reference while parked: the handle may be dropped)
