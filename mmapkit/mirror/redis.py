"""Redis Streams as a mirror target (RedisStreamSink) and source (RedisStreamSource).

Format (one spelling, docs/formats.md ``## mirror``):

- Journal offset ``o`` is stream entry ID ``<o>-1``.  Redis refuses an explicit ID not
  greater than the stream's last one (and remembers the last ID even when the stream is
  trimmed to nothing), so a re-sent record is refused by the server itself, and
  ``XINFO STREAM`` last-generated-id says where to resume.  Sequence 1, never 0, so an
  ID that ``XADD *`` made (ms-0) is told apart from ours.
- Fields, in order: ``t`` (timestamp ms, decimal), ``v`` (value), ``k`` (key; absent when
  the record has none), then ``h:<name>`` per header (repeats kept, in order).
- ``<stream>:mmapkit`` (hash): ``format`` = ``1``, ``source`` = the source id (journal
  directory and mirror name).  A stream with entries and no such hash is foreign.
- ``<stream>:mmapkit:owner`` (string with a lease): the writer's token
  ``host|boot|pid|random``.  ``<stream>:mmapkit:marks`` (hash): resume marks of the log
  shipper (per log stream, the last shipped sequence), written with the entries.

Writer protocol (the sink side of the mirror loop in _core.py):

    ====  ===================================  =========  ===============================
    #     step                                 lock       another client may see
    ====  ===================================  =========  ===============================
    O1    SET owner token NX PX lease; taken   owner key  a second mirror: TargetOwned
          by a dead process of this host and              (unless the holder is dead
          boot: swap it (compare-and-set)                 here: it takes over the same
                                                          way)
    O2    read marker and XINFO last id;       owner      nothing changed yet
          no marker and no entry: write it
    O3    return next = last offset + 1        owner      --
    S1    one script: owner is still our       owner      the script is atomic: all of
          token (else: lost / owned), renew               the batch (and its marks) or
          the lease, XADD the first ID (a                 none of it; with AOF it is
          refused ID writes nothing), the                 logged as one MULTI/EXEC
          rest, then HSET the marks
    C1    delete owner if it is our token      --         the target is free
    K     kill at any step                     lease      the lease runs out (or a
                                                          process of this host sees the
                                                          PID is dead and takes over)
    ====  ===================================  =========  ===============================

A restart of Redis without persistence loses the stream and the lease together: the next
send finds no owner (SinkUnavailableError, "lease lost"), the mirror reopens, reads the
(lost) end and sends again from there.  Not for Redis Cluster (the keys are not tagged to
one slot).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import _platform
from ..errors import (
    ClosedError,
    MirrorError,
    MissingExtraError,
    SinkUnavailableError,
    TargetMismatchError,
    TargetOwnedError,
)
from ..journal import Record

__all__ = ["RedisConsumer", "RedisStreamSink", "RedisStreamSource", "SourceStatistics",
           "decode_entry", "encode_entry", "entry_id", "offset_of", "pack_send",
           "resp_command"]

FORMAT = b"1"
_LEASE_MS = 15_000


# --- codec: pure functions over bytes ------------------------------------------------


def entry_id(offset: int) -> bytes:
    """The stream entry ID of journal offset ``offset``."""
    return b"%d-1" % offset


def offset_of(entry: bytes | str, stream: str = "") -> int:
    """The journal offset of a stream entry ID written by a mirror (TargetMismatchError for
    an ID that no mirror wrote)."""
    raw = entry.encode() if isinstance(entry, str) else entry
    ms, sep, seq = raw.partition(b"-")
    if sep and seq == b"1" and ms.isdigit():
        return int(ms)
    raise TargetMismatchError(
        f"stream {stream!r} holds entry ID {raw.decode(errors='replace')!r}, which no "
        f"mmapkit mirror wrote (ours are <offset>-1): mirror to a new stream, or delete "
        f"this one if its entries are not needed")


def encode_entry(record: Record) -> list[bytes]:
    """The stream fields of ``record`` (flat name, value list, in the documented order)."""
    fields = [b"t", b"%d" % record.timestamp_ms, b"v", record.value]
    if record.key is not None:
        fields += (b"k", record.key)
    for name, value in record.headers:
        fields += (b"h:" + name.encode(), value)
    return fields


def resp_command(args: Sequence[bytes]) -> bytes:
    """The RESP bytes of one command (a list of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def pack_send(sha: bytes, keys: Sequence[bytes], head: Sequence[bytes],
              records: Sequence[Record]) -> bytes:
    """The EVALSHA command that sends ``records``: ``head`` arguments, then per record its
    entry ID, its field count and its fields (encode_entry).  Built here rather than by
    redis-py's generic packer, which costs more than everything else in a send."""
    parts: list[bytes] = []
    add = parts.append
    n = 0
    for rec in records:
        off, ts, key, value, headers = rec
        if key is None and not headers:  # the common case in one format operation
            eid = b"%d-1" % off
            t = b"%d" % ts
            add(b"$%d\r\n%s\r\n$1\r\n4\r\n$1\r\nt\r\n$%d\r\n%s\r\n$1\r\nv\r\n$%d\r\n"
                % (len(eid), eid, len(t), t, len(value)))
            add(value)
            add(b"\r\n")
            n += 6
        else:
            fields = encode_entry(rec)
            eid = b"%d-1" % off
            cnt = b"%d" % len(fields)
            add(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(eid), eid, len(cnt), cnt))
            for f in fields:
                add(b"$%d\r\n%s\r\n" % (len(f), f))
            n += 2 + len(fields)
    nkeys = b"%d" % len(keys)
    first = [b"EVALSHA", sha, nkeys, *keys, *head]
    prefix = resp_command(first)
    # resp_command counted only `first`: patch the total argument count
    total = len(first) + n
    prefix = b"*%d\r\n" % total + prefix[prefix.index(b"\r\n") + 2:]
    return prefix + b"".join(parts)


def decode_entry(entry: bytes, fields: Sequence[bytes], stream: str = "") -> Record:
    """The Record a stream entry holds (TargetMismatchError when it is not ours)."""
    offset = offset_of(entry, stream)
    ts: int | None = None
    value: bytes | None = None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = []
    try:
        for i in range(0, len(fields) - 1, 2):
            name, v = fields[i], fields[i + 1]
            if name == b"t":
                ts = int(v)
            elif name == b"v":
                value = bytes(v)
            elif name == b"k":
                key = bytes(v)
            elif name[:2] == b"h:":
                headers.append((name[2:].decode(), bytes(v)))
    except (ValueError, UnicodeDecodeError):
        ts = None
    if ts is None or value is None or len(fields) % 2:
        raise TargetMismatchError(
            f"stream {stream!r} entry {entry.decode(errors='replace')} does not hold a "
            f"mirrored record (fields t and v are required): it was written by something "
            f"else; read it with redis-py instead")
    return Record(offset, ts, key, value, tuple(headers))


# --- connection and error translation ------------------------------------------------


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:
        raise MissingExtraError(
            "the Redis mirror needs redis-py: pip install 'mmapkit[redis]'") from None
    return redis


def _connect(url: str, timeout: float) -> Any:
    redis = _redis_module()
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    try:
        # no client-side retries: a command repeated behind our back could land twice;
        # the mirror reopens and reads the resume point from the server instead
        client = redis.Redis.from_url(url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout,
                                      retry=Retry(NoBackoff(), 0))
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {url!r}: {exc} (expected redis://host:port/db, "
                         f"rediss://... or unix:///path/to/socket)") from None
    # raw entry lists: redis-py's dict form would drop repeated header names
    for cmd in ("XREADGROUP", "XAUTOCLAIM", "XRANGE", "XREVRANGE"):
        client.set_response_callback(cmd, lambda r, **kw: r)
    return client


def _translate(exc: BaseException, where: str) -> BaseException:
    """A redis-py error as ours: unreachable -> SinkUnavailableError (retry later),
    refused credentials -> MirrorError (retrying cannot help)."""
    redis = _redis_module()
    text = str(exc)
    if isinstance(exc, redis.AuthenticationError) or any(
            w in text for w in ("NOAUTH", "WRONGPASS", "invalid password", "NOPERM")):
        return MirrorError(f"Redis at {where} refused our credentials ({text}): put the "
                           f"password in the URL (redis://:PASSWORD@host:port/0 or "
                           f"redis://USER:PASSWORD@...)")
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
        return SinkUnavailableError(f"cannot reach Redis at {where} ({text or type(exc)}): "
                                    f"is the server running? The mirror retries on its own")
    if "NOGROUP" in text:
        return MirrorError(f"{where}: the consumer group or the stream is gone (deleted, or "
                           f"Redis restarted without persistence): make the consumer again; "
                           f"it starts at its reset point")
    if "WRONGTYPE" in text:
        return TargetMismatchError(f"{where}: a key the mirror uses holds another type of "
                                   f"value ({text}): pick another stream name")
    if isinstance(exc, redis.ResponseError) and ("LOADING" in text or "BUSY" in text
                                                 or "MASTERDOWN" in text):
        return SinkUnavailableError(f"Redis at {where} is not serving yet ({text})")
    return MirrorError(f"Redis at {where} answered an error: {text}")


def _where(url: str) -> str:
    """The URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"


def _entries(reply: Any) -> list[Any]:
    """The entries of a one-stream XREAD(GROUP) reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values())) or [])
    return list(reply[0][1] or [])


def _boot_id() -> str:
    """The boot id as Linux spells it (the owner token's field), "-" when unknown."""
    raw = _platform.boot_id()
    return str(uuid.UUID(bytes=raw)) if any(raw) else "-"


# Compare-and-set for the owner key: take it over from ARGV[1] (a dead holder) or drop ours.
_CAS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""

# S1: KEYS stream, owner, marks; ARGV token, lease, maxlen ('' = none), #marks,
# marks pairs..., then per entry: id, #fields, fields...
_SEND = """
local owner = redis.call('GET', KEYS[2])
if owner ~= ARGV[1] then
  if owner then return redis.error_reply('MMAPKIT_OWNED ' .. owner) end
  return redis.error_reply('MMAPKIT_LOST')
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local nmarks = tonumber(ARGV[4])
local i = 5 + 2 * nmarks
local n = 0
while i <= #ARGV do
  local nf = tonumber(ARGV[i + 1])
  local args = {'XADD', KEYS[1]}
  if ARGV[3] ~= '' then
    args[3] = 'MAXLEN'; args[4] = '~'; args[5] = ARGV[3]
  end
  args[#args + 1] = ARGV[i]
  for j = 1, nf do args[#args + 1] = ARGV[i + 1 + j] end
  if n == 0 then
    local ok = redis.pcall(unpack(args))
    if type(ok) == 'table' and ok.err then
      return redis.error_reply('MMAPKIT_REFUSED ' .. ok.err)
    end
  else
    redis.call(unpack(args))
  end
  n = n + 1
  i = i + 2 + nf
end
for m = 0, nmarks - 1 do
  redis.call('HSET', KEYS[3], ARGV[5 + 2 * m], ARGV[6 + 2 * m])
end
return n
"""


_SEND_SHA = hashlib.sha1(_SEND.encode()).hexdigest().encode()


def _call(client: Any, data: bytes) -> Any:
    """Send packed command bytes on a pooled connection and read the reply."""
    pool = client.connection_pool
    try:
        conn = pool.get_connection()
    except TypeError:  # redis-py < 5.3 wants a command name
        conn = pool.get_connection("EVALSHA")
    try:
        conn.send_packed_command([data])
        return conn.read_response()
    except _redis_module().ResponseError:
        raise  # a whole reply was read: the connection is in step
    except BaseException:
        conn.disconnect()  # a reply may be half read: never reuse this connection
        raise
    finally:
        pool.release(conn)


# --- the sink ---------------------------------------------------------------------------


class RedisStreamSink:
    """Mirror target: the Redis stream ``stream`` at ``url`` (redis://, rediss://, unix://).

    ``maxlen`` trims the stream to about that many entries (``MAXLEN ~``; trimming never
    lowers the last ID, so resuming stays exact).  ``lease_ms``: how long writership
    outlives a mirror that stopped renewing it (a killed one); ``timeout``: socket timeout
    in seconds.
    """

    def __init__(self, url: str, stream: str, maxlen: int | None = None, *,
                 lease_ms: int = _LEASE_MS, timeout: float = 5.0) -> None:
        if not isinstance(stream, str) or not stream:
            raise ValueError("RedisStreamSink needs a non-empty stream name")
        if maxlen is not None and (isinstance(maxlen, bool) or maxlen <= 0):
            raise ValueError(f"maxlen must be a positive number of entries, got {maxlen!r}")
        if lease_ms < 100:
            raise ValueError(f"lease_ms must be >= 100, got {lease_ms}")
        _redis_module()  # MissingExtraError now, not at the first send
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.lease_ms = lease_ms
        self.timeout = timeout
        self.target = f"{_where(url)}#{stream}"
        self._marker = f"{stream}:mmapkit"
        self._owner = f"{stream}:mmapkit:owner"
        self._marks = f"{stream}:mmapkit:marks"
        self._client: Any = None
        self._token: str | None = None
        self._my_tokens: list[str] = []  # leases this sink asked for, newest last
        self._cas: Any = None

    # O1-O3
    def open(self, source_id: str) -> int:
        self.close()
        where = self.target
        redis = _redis_module()
        try:
            client = _connect(self.url, self.timeout)
            self._client = client
            self._cas = client.register_script(_CAS)
            token = (f"{socket.gethostname()}|{_boot_id()}|{os.getpid()}|"
                     f"{secrets.token_hex(6)}")
            # remembered before the SET: a SET whose reply was lost (timeout) may still
            # have landed, and the next open must know that lease as ours
            self._my_tokens = [*self._my_tokens[-15:], token]
            if not client.set(self._owner, token, nx=True, px=self.lease_ms):
                self._take_over(client, token)
            self._token = token
            return self._resume_point(client, source_id)
        except redis.RedisError as exc:
            self.close()
            raise _translate(exc, where) from None
        except BaseException:
            self.close()
            raise

    def _take_over(self, client: Any, token: str) -> None:
        held = client.get(self._owner)
        if held is None:  # expired between our SET and GET: try once more
            if client.set(self._owner, token, nx=True, px=self.lease_ms):
                return
            held = client.get(self._owner) or b"?"
        text = held.decode(errors="replace")
        parts = text.split("|")
        if text in self._my_tokens[:-1] and self._cas(
                keys=[self._owner], args=[held, token, self.lease_ms]):
            return  # our own lease from before a reconnect (Redis kept it: AOF, or a
            # SET whose reply we never got)
        if (len(parts) == 4 and parts[0] == socket.gethostname() and parts[1] == _boot_id()
                and parts[2].isdigit() and int(parts[2]) != os.getpid()
                and not _platform.pid_alive(int(parts[2]))
                and self._cas(keys=[self._owner], args=[held, token, self.lease_ms])):
            return  # its holder died on this machine: nobody else can be writing
        ttl = client.pttl(self._owner)
        raise TargetOwnedError(
            f"stream {self.stream!r} at {_where(self.url)} is being mirrored by another "
            f"writer ({text}, lease {max(ttl, 0)} ms left): stop that mirror, or wait "
            f"for its lease to run out if it was killed on another machine")

    def _resume_point(self, client: Any, source_id: str) -> int:
        marker = client.hgetall(self._marker)
        redis = _redis_module()
        try:
            info = client.xinfo_stream(self.stream)
        except redis.ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            info = None
        last = b"0-0" if info is None else info["last-generated-id"]
        last = last if isinstance(last, bytes) else str(last).encode()
        if not marker:
            if info is not None and (info["length"] or last != b"0-0"):
                raise TargetMismatchError(
                    f"stream {self.stream!r} at {_where(self.url)} already holds entries "
                    f"that no mmapkit mirror wrote (last ID {last.decode()}): mirror to a "
                    f"new stream name, or delete this one if it is not needed")
            client.hset(self._marker, mapping={"format": FORMAT, "source": source_id})
            marker = {b"format": FORMAT, b"source": source_id.encode()}
        if marker.get(b"format") != FORMAT:
            raise TargetMismatchError(
                f"stream {self.stream!r}: its marker has format "
                f"{marker.get(b'format')!r}, this mmapkit writes {FORMAT!r}: upgrade "
                f"mmapkit, or mirror to a new stream")
        src = marker.get(b"source", b"").decode(errors="replace")
        if src != source_id:
            raise TargetMismatchError(
                f"stream {self.stream!r} at {_where(self.url)} mirrors {src!r}, not "
                f"{source_id!r}: two sources must not share a stream (pick another stream "
                f"name, or the same mirror name as before)")
        if last == b"0-0":
            return 0
        return offset_of(last, self.stream) + 1

    def marks(self) -> dict[str, int]:
        """The log shipper's resume marks stored in the target (empty when none)."""
        client = self._require_open()
        try:
            raw = client.hgetall(self._marks)
        except _redis_module().RedisError as exc:
            raise _translate(exc, self.target) from None
        try:
            return {k.decode(): int(v) for k, v in raw.items()}
        except ValueError:
            raise TargetMismatchError(
                f"{self._marks!r} holds values that are not sequence numbers: it was not "
                f"written by mmapkit; delete it or ship to a new stream") from None

    def _require_open(self) -> Any:
        if self._client is None or self._token is None:
            raise ClosedError("the sink is not open: call open() first (the mirror does)")
        return self._client

    # S1
    def send(self, records: Sequence[Record], *,
             marks: Mapping[str, int] | None = None) -> None:
        """Deliver ``records`` (``send([])`` renews the lease); ``marks`` are stored with
        them in the same atomic step (the log shipper's resume points)."""
        client = self._require_open()
        assert self._token is not None
        head = [self._token.encode(), b"%d" % self.lease_ms,
                b"" if self.maxlen is None else b"%d" % self.maxlen,
                b"%d" % (len(marks) if marks else 0)]
        if marks:
            for k, v in marks.items():
                head += (k.encode(), b"%d" % v)
        keys = [self.stream.encode(), self._owner.encode(), self._marks.encode()]
        data = pack_send(_SEND_SHA, keys, head, records)
        redis = _redis_module()
        try:
            try:
                _call(client, data)
            except redis.exceptions.NoScriptError:  # nothing ran: load it, send again
                client.script_load(_SEND)
                _call(client, data)
        except redis.ResponseError as exc:
            text = str(exc)
            if "MMAPKIT_LOST" in text:
                raise SinkUnavailableError(
                    f"the lease on {self.target} was lost (Redis restarted or we stalled "
                    f"past {self.lease_ms} ms): reopen to take it again and resume") from None
            if "MMAPKIT_OWNED" in text:
                raise TargetOwnedError(
                    f"{self.target} was taken over by another writer "
                    f"({text.split('MMAPKIT_OWNED', 1)[1].strip()}) after our lease ran out:"
                    f" this mirror stops so that records are not written twice") from None
            if "MMAPKIT_REFUSED" in text:
                first = records[0].offset if records else -1
                why = text.split("MMAPKIT_REFUSED", 1)[1].strip()
                raise TargetMismatchError(
                    f"{self.target} refused offset {first} ({why}): something else wrote "
                    f"to the stream while we held it; check who writes there") from None
            raise _translate(exc, self.target) from None
        except redis.RedisError as exc:
            raise _translate(exc, self.target) from None

    # C1
    def close(self) -> None:
        client, token = self._client, self._token
        self._client = self._token = None
        if client is None:
            return
        try:
            if token is not None:
                self._cas(keys=[self._owner], args=[token, b"", 0])
        except Exception:
            pass
        with contextlib.suppress(Exception):
            client.close()

    def __repr__(self) -> str:
        return f"RedisStreamSink({self.target!r})"


# --- the source: the Journal consumer API over a consumer group --------------------------


@dataclass(frozen=True)
class SourceStatistics:
    """What a RedisConsumer has done."""

    delivered: int   # records returned by poll()
    redelivered: int  # of those, taken over from a dead consumer (XAUTOCLAIM) or own pending
    acked: int
    pending: int     # returned by poll() and not yet committed


class RedisStreamSource:
    """The far side of a Redis mirror: ``consumer(group, name)`` reads the stream with the
    Journal's consumer API (poll, commit after processing, position, committed, lag)."""

    def __init__(self, url: str, stream: str, *, timeout: float = 5.0) -> None:
        if not isinstance(stream, str) or not stream:
            raise ValueError("RedisStreamSource needs a non-empty stream name")
        _redis_module()
        self.url = url
        self.stream = stream
        self.timeout = timeout

    def consumer(self, group: str, name: str, *, reset: str = "earliest",
                 claim_idle_ms: int = 30_000) -> RedisConsumer:
        """Consumer ``name`` of ``group`` (created at ``reset``: "earliest" or "latest"
        when new).  Records another consumer of the group received and did not commit
        for ``claim_idle_ms`` are taken over and delivered again (at-least-once)."""
        return RedisConsumer(self, group, name, reset=reset, claim_idle_ms=claim_idle_ms)

    def __repr__(self) -> str:
        return f"RedisStreamSource({_where(self.url)!r}, {self.stream!r})"


class RedisConsumer:
    """One consumer of a group: delivered first its own pending records (those it received
    before a restart and never committed), then records taken over from consumers idle
    longer than ``claim_idle_ms``, then new records."""

    def __init__(self, source: RedisStreamSource, group: str, name: str, *,
                 reset: str, claim_idle_ms: int) -> None:
        if not group or not name:
            raise ValueError("a Redis consumer needs a non-empty group and name")
        if reset not in ("earliest", "latest"):
            raise ValueError(f"reset must be 'earliest' or 'latest', got {reset!r}")
        if claim_idle_ms <= 0:
            raise ValueError(f"claim_idle_ms must be positive, got {claim_idle_ms}")
        self.group = group
        self.name = name
        self.claim_idle_ms = claim_idle_ms
        self._stream = source.stream
        self._slice = max(0.05, min(1.0, source.timeout / 2))
        self._where = f"{_where(source.url)}#{source.stream}"
        self._closed = False
        redis = _redis_module()
        self._client = _connect(source.url, source.timeout)
        self._unacked: list[tuple[int, bytes]] = []  # (offset, entry id), delivery order
        self._own_cursor: bytes | None = b"0"  # own pending list first; None when done
        self._claim_cursor = b"0-0"
        self._next_claim = 0.0
        self._position = 0
        self._delivered = self._redelivered = self._acked = 0
        try:
            self._client.xgroup_create(self._stream, group,
                                       id="0" if reset == "earliest" else "$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                self._client.close()
                raise _translate(exc, self._where) from None
        except redis.RedisError as exc:
            self._client.close()
            raise _translate(exc, self._where) from None
        self._position = self._group_next()

    def _check(self) -> Any:
        if self._closed:
            raise ClosedError("this Redis consumer is closed")
        return self._client

    def _group_info(self) -> dict[Any, Any]:
        for g in self._client.xinfo_groups(self._stream):
            if g["name"] in (self.group, self.group.encode()):
                return dict(g)
        raise MirrorError(f"consumer group {self.group!r} of {self._where} is gone "
                          f"(deleted by someone): create a new consumer")

    def _group_next(self) -> int:
        last = self._group_info()["last-delivered-id"]
        last = last if isinstance(last, bytes) else str(last).encode()
        return 0 if last == b"0-0" else offset_of(last, self._stream) + 1

    def _take(self, entries: Sequence[Any], redelivered: bool) -> list[Record]:
        out = []
        held = {e for _, e in self._unacked} if redelivered else ()
        for entry in entries:
            eid, fields = entry[0], entry[1]
            if fields is None:  # deleted (trimmed) while pending: nothing to deliver
                self._client.xack(self._stream, self.group, eid)
                continue
            if eid in held:  # claimed back from ourselves: already given to the caller
                continue
            rec = decode_entry(eid, fields, self._stream)
            self._unacked.append((rec.offset, eid))
            out.append(rec)
        self._delivered += len(out)
        if redelivered:
            self._redelivered += len(out)
        return out

    def poll(self, max_records: int = 500, timeout: float | None = 1.0) -> list[Record]:
        """Up to ``max_records`` records, waiting up to ``timeout`` seconds for the first
        (None: forever)."""
        client = self._check()
        if max_records <= 0:
            raise ValueError(f"max_records must be positive, got {max_records}")
        redis = _redis_module()
        try:
            if self._own_cursor is not None:
                reply = client.execute_command(
                    "XREADGROUP", "GROUP", self.group, self.name, "COUNT", max_records,
                    "STREAMS", self._stream, self._own_cursor)
                entries = _entries(reply)
                if entries:
                    self._own_cursor = entries[-1][0]
                    return self._take(entries, True)
                self._own_cursor = None
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                now = time.monotonic()
                if now >= self._next_claim:
                    reply = client.execute_command(
                        "XAUTOCLAIM", self._stream, self.group, self.name,
                        self.claim_idle_ms, self._claim_cursor, "COUNT", max_records)
                    self._claim_cursor = reply[0]
                    got = self._take(reply[1], True)
                    if self._claim_cursor == b"0-0":  # a full sweep: look again later
                        self._next_claim = now + self.claim_idle_ms / 4000
                    if got:
                        return got
                # block in slices shorter than the socket timeout; between slices, look
                # for a dead consumer's records that became claimable
                left = None if deadline is None else deadline - time.monotonic()
                block = self._slice if left is None else min(left, self._slice)
                args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.name,
                                   "COUNT", max_records]
                if block > 0:
                    args += ["BLOCK", max(1, int(block * 1000))]
                args += ["STREAMS", self._stream, ">"]
                recs = self._take(_entries(client.execute_command(*args)), False)
                if recs:
                    self._position = max(self._position, recs[-1].offset + 1)
                    return recs
                if deadline is not None and time.monotonic() >= deadline:
                    return []
        except redis.RedisError as exc:
            raise _translate(exc, self._where) from None

    def commit(self, offset: int | None = None) -> None:
        """Acknowledge every record poll() returned below ``offset`` (default: all of
        them): the group will not deliver them again."""
        client = self._check()
        if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool)
                                   or offset < 0):
            raise ValueError(f"commit() takes an offset >= 0, got {offset!r}")
        done = [e for o, e in self._unacked if offset is None or o < offset]
        if not done:
            return
        try:
            client.xack(self._stream, self.group, *done)
        except _redis_module().RedisError as exc:
            raise _translate(exc, self._where) from None
        self._unacked = [(o, e) for o, e in self._unacked if not (offset is None or o < offset)]
        self._acked += len(done)

    @property
    def position(self) -> int:
        """The offset after the newest record this consumer took from the stream."""
        return self._position

    @property
    def committed(self) -> int | None:
        """The group's low-water mark: every record below it is acknowledged by the group
        (the oldest pending one, else the next undelivered); None before any delivery."""
        client = self._check()
        try:
            summary = client.xpending(self._stream, self.group)
            if summary["pending"]:
                low = summary["min"]
                return offset_of(low if isinstance(low, bytes) else str(low).encode(),
                                 self._stream)
            nxt = self._group_next()
        except _redis_module().RedisError as exc:
            raise _translate(exc, self._where) from None
        return nxt or None

    @property
    def lag(self) -> int:
        """Records in the stream the group has not been given yet."""
        client = self._check()
        try:
            info = client.xinfo_stream(self._stream)
            nxt = self._group_next()
        except _redis_module().RedisError as exc:
            raise _translate(exc, self._where) from None
        last = info["last-generated-id"]
        last = last if isinstance(last, bytes) else str(last).encode()
        end = 0 if last == b"0-0" else offset_of(last, self._stream) + 1
        return max(0, end - nxt)

    def statistics(self) -> SourceStatistics:
        return SourceStatistics(self._delivered, self._redelivered, self._acked,
                                len(self._unacked))

    def close(self) -> None:
        """Close the connection; records polled and not committed are delivered again
        (to this name when it returns, or to another consumer after ``claim_idle_ms``)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._client.close()

    def __enter__(self) -> RedisConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
