"""The ``redis`` transport: xflow events on Redis Streams, one consumer group per function.

Connection: option ``url`` (``redis://[:PASSWORD@]HOST:PORT/DB`` or ``rediss://`` for TLS),
also read from ``XFLOW_REDIS_URL``; default ``redis://localhost:6379/0``. Needs Redis ≥ 6.2.

What it supports: at-least-once delivery (entries are acknowledged with XACK only when the
worker commits them); order per ``execution_id`` with any number of workers per function;
a killed worker's deliveries redelivered to the others after ``claim_idle`` seconds;
dead letters kept in a stream; optional trimming of old entries (``maxlen``).

How it lays out a workflow ``W`` on the server (every key starts with ``xflow:{W}:``):

- ``xflow:{W}:streams`` — a hash, event name → number of partitions, written by setup;
- ``xflow:{W}:s:EVENT:P`` — one stream per event and partition ``P``; an entry holds
  ``k`` (the execution id) and ``v`` (the message); a record goes to partition
  ``crc32(execution_id) % partitions``, so one execution's events stay in order;
- ``xflow:{W}:g:GROUP:members`` — a sorted set of the group's live consumers, scored by when their
  heartbeat expires;
- ``xflow:{W}:g:GROUP:lease:EVENT:P`` — the consumer that reads that partition now. The core's lease
  coordinator has a consumer take at most its fair share of partitions, hand back the others once
  settled, and renew its leases every third of ``claim_idle`` (from a keeper thread too, while handlers
  run); the leases of a consumer that died expire after ``claim_idle`` seconds, and the next owner
  takes over the partition's pending entries with XAUTOCLAIM before reading new ones;
- ``xflow:{W}:dead`` — dead letters (group, event, partition, position, key, value, reason).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from xflow.core.deploy import dispatch
from xflow.core.errors import BackendUnavailable, XflowError
from xflow.core.interfaces import Consumer, Delivery, PluginContext, Record, Step, Transport
from xflow.core.leases import LeaseCoordinator, LeaseStore
from xflow.core.options import Option
from xflow.core.redact import redact, remember_in_text, userinfo_is_ambiguous

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_PARTITIONS = 4
DEFAULT_CLAIM_IDLE = 30.0
SETUP_GROUP = "xflow-setup"
DEAD_LETTER_MAXLEN = 100_000

_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"""
_LIVE_MEMBERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
_ACQUIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the environment
        raise XflowError("the redis transport needs the 'redis' package",
                         "pip install xflow-transport-redis (or: pip install redis)") from None
    return redis


def _safe_url(url: str) -> str:
    """The URL without its password (whatever characters it holds), for messages."""
    remember_in_text(url)
    return redact(url)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisTransport(Transport):
    """Redis Streams: one stream per event (split in partitions), consumer groups per function."""

    name = "redis"
    description = "Redis Streams with consumer groups (url=redis://HOST:PORT/DB)"
    options = (
        Option("url", str, DEFAULT_URL, "redis://[:PASSWORD@]HOST:PORT/DB of the server (its password is masked)"),
        Option("partitions", int, DEFAULT_PARTITIONS, "sub-streams per event; one execution's events stay in one, in "
               "order; read when setup creates a stream", minimum=1),
        Option("maxlen", int, None, "keep about this many entries per sub-stream, trimming the oldest (default: keep "
               "all)", minimum=1),
        Option("claim_idle", "duration", DEFAULT_CLAIM_IDLE, "seconds after which a silent consumer's partitions and "
               "unacknowledged deliveries go to the group's other consumers", minimum=0.2),
    )
    max_record_bytes = 1_000_000

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.url = self.context.option("url")  # also XFLOW_REDIS_URL, as every option has its variable
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            start = self.url.split(":", 1)[0].split("@", 1)[0][:12]  # never more: the rest may hold a password
            raise XflowError(f"redis transport: option url (starting {start!r}) is not a redis:// URL",
                             "use --option url=redis://HOST:PORT/DB")
        if userinfo_is_ambiguous(self.url):
            raise XflowError("redis transport: the password in option url holds characters that end the password "
                             "early ('@', '#', '/' or '?'), so part of it would be read as the host",
                             "percent-encode them: '@' as %40, '#' as %23, '/' as %2F, '?' as %3F") from None
        try:  # parse the URL and build (without connecting) a connection from it, as the client will
            urlsplit(self.url).port  # noqa: B018 - raises ValueError on a port that is not a number
            _import_redis().ConnectionPool.from_url(self.url).make_connection()
        except (ValueError, TypeError):
            raise XflowError(f"redis transport: option url={_safe_url(self.url)!r} is not a valid URL",
                             "use redis://[:PASSWORD@]HOST:PORT/DB, with special characters in the password "
                             "percent-encoded") from None
        self.partitions = self.context.option("partitions")
        self.maxlen = self.context.option("maxlen")
        self.claim_idle = self.context.option("claim_idle")
        self.prefix = f"xflow:{{{self.workflow_id}}}:"
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}
        self._partition_counts: dict[str, int] = {}

    # -- options and connection ----------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._redis is None:
            redis = _import_redis()
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._redis = redis.Redis.from_url(
                self.url, socket_connect_timeout=3, socket_timeout=15, retry=Retry(NoBackoff(), 1),
                health_check_interval=30,
            )
        return self._redis

    def script(self, name: str, source: str) -> Any:
        if name not in self._scripts:
            self._scripts[name] = self.client.register_script(source)
        return self._scripts[name]

    @contextlib.contextmanager
    def talking(self, doing: str) -> Iterator[None]:
        """Turn an unreachable server into one clear BackendUnavailable (exit 1: workers wait it out), and a refused
        password or permission into an XflowError (exit 2: the user's to fix)."""
        redis = _import_redis()
        try:
            yield
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
            raise XflowError(f"redis transport: the server at {_safe_url(self.url)} refused the credentials while "
                             f"{doing}: {exc}", "check the user and password in option url (or XFLOW_REDIS_URL)") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise BackendUnavailable(f"redis transport: cannot reach {_safe_url(self.url)} while {doing}: {exc}",
                                     "start redis-server, or pass --option url=redis://HOST:PORT/DB "
                                     "(or set XFLOW_REDIS_URL)") from None
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):  # a group, or a stream read with BLOCK, deleted
                raise
            raise XflowError(f"redis transport: a stream or consumer group of workflow {self.workflow_id} is gone from "
                             f"the server at {_safe_url(self.url)} (while {doing}): it lost its data (a restart "
                             "without persistence?) or the keys were deleted",
                             "run xflow setup again; keep the server's data across restarts (appendonly yes) so "
                             "that unread events are not lost") from None
        except redis.exceptions.InvalidResponse:
            raise XflowError(f"redis transport: the server at {_safe_url(self.url)} does not speak the Redis "
                             f"protocol (while {doing})", "check the host and port of option url") from None

    def close(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(Exception):
                self._redis.close()
            self._redis = None

    # -- key names -----------------------------------------------------------------------------

    @property
    def registry_key(self) -> str:
        return self.prefix + "streams"

    def partition_key(self, event: str, partition: int) -> str:
        return f"{self.prefix}s:{event}:{partition}"

    def group_key(self, group: str, suffix: str) -> str:
        return f"{self.prefix}g:{group}:{suffix}"

    @property
    def dead_letter_key(self) -> str:
        return self.prefix + "dead"

    # -- setup / teardown ----------------------------------------------------------------------

    def _existing(self) -> dict[str, int]:
        with self.talking("reading which streams exist"):
            raw = self.client.hgetall(self.registry_key)
        return {_text(k): int(v) for k, v in raw.items()}

    def plan_setup(self, events: Sequence[str]) -> list[Step]:
        existing = self._existing()
        steps: list[Step] = []
        for event in events:
            resource = f"stream:{self.stream_name(event)}"
            have = existing.get(event)
            if have is None:
                steps.append(Step("create", resource, detail=f"{self.partitions} partitions", call="redis:CreatePartitions",
                                  params={"event": event, "first": 0, "count": self.partitions}))
            elif have < self.partitions:
                steps.append(Step("update", resource, detail=f"partitions {have} -> {self.partitions}",
                                  call="redis:CreatePartitions",
                                  params={"event": event, "first": have, "count": self.partitions}))
            elif have > self.partitions:
                raise XflowError(
                    f"redis transport: stream {self.stream_name(event)} has {have} partitions; "
                    f"partitions={self.partitions} would drop some",
                    "keep partitions at least as large, or run xflow teardown first")
        for event in existing:
            if event not in events:
                steps.append(Step("delete", f"stream:{self.stream_name(event)}", call="redis:DeleteStream",
                                  params={"event": event}))
        return steps

    def execute(self, step: Step) -> None:
        dispatch(step, {"redis:CreatePartitions": self._create, "redis:DeleteStream": self._delete,
                        "redis:DeleteConsumerState": self._delete_keys})

    def _create(self, event: str, first: int, count: int) -> None:
        with self.talking(f"creating stream {self.stream_name(event)}"):
            pipe = self.client.pipeline(transaction=True)
            for p in range(first, count):
                # a stream key exists only with an entry or a group: make one, then drop the group
                pipe.xgroup_create(self.partition_key(event, p), SETUP_GROUP, id="$", mkstream=True)
                pipe.xgroup_destroy(self.partition_key(event, p), SETUP_GROUP)
            pipe.hset(self.registry_key, event, count)
            pipe.execute()
        self._partition_counts.pop(event, None)

    def _delete(self, event: str) -> None:
        with self.talking(f"deleting stream {self.stream_name(event)}"):
            count = int(self.client.hget(self.registry_key, event) or 0)
            keys = [self.partition_key(event, p) for p in range(count)]
            keys += list(self.client.scan_iter(match=_glob_escape(self.prefix) + "g:*:lease:" + _glob_escape(event)
                                               + ":*", count=500))
            pipe = self.client.pipeline(transaction=True)
            if keys:
                pipe.delete(*keys)
            pipe.hdel(self.registry_key, event)
            pipe.execute()
        self._partition_counts.pop(event, None)

    def _other_keys(self) -> list[bytes]:
        """Consumer-group state and dead letters: every key of the workflow but its streams."""
        with self.talking("listing the workflow's keys"):
            found = self.client.scan_iter(match=_glob_escape(self.prefix) + "*", count=500)
            return [k for k in found if not _text(k).startswith((self.prefix + "s:", self.registry_key))]

    def _delete_keys(self) -> None:
        keys = self._other_keys()
        if keys:
            with self.talking("deleting consumer state"):
                self.client.delete(*keys)

    def plan_teardown(self, events: Sequence[str]) -> list[Step]:
        steps = [Step("delete", f"stream:{self.stream_name(event)}", call="redis:DeleteStream", params={"event": event})
                 for event in self._existing()]
        if self._other_keys():
            steps.append(Step("delete", f"consumer-state:{self.workflow_id}", detail="consumer groups, leases and dead "
                              "letters", call="redis:DeleteConsumerState"))
        return steps

    # -- publish -------------------------------------------------------------------------------

    def partition_count(self, event: str) -> int:
        count = self._partition_counts.get(event)
        if count is None:
            with self.talking(f"looking up stream {self.stream_name(event)}"):
                raw = self.client.hget(self.registry_key, event)
            if raw is None:
                raise XflowError(f"redis transport: stream {self.stream_name(event)} does not exist on "
                                 f"{_safe_url(self.url)}", "run xflow setup first")
            count = self._partition_counts[event] = int(raw)
        return count

    def partition_of(self, key: str, count: int) -> int:
        return zlib.crc32(key.encode("utf-8")) % count

    def publish(self, event: str, records: Sequence[Record]) -> None:
        for record in records:
            if len(record.value) > self.max_record_bytes:
                raise XflowError(
                    f"redis transport: a {event} record of execution {record.key!r} is {len(record.value)} bytes; "
                    f"at most {self.max_record_bytes} are accepted",
                    "keep large data elsewhere (a file or object store) and publish a reference to it")
        if not records:
            return
        count = self.partition_count(event)
        with self.talking(f"publishing to {self.stream_name(event)}"):
            pipe = self.client.pipeline(transaction=True)
            for record in records:
                key = self.partition_key(event, self.partition_of(record.key, count))
                pipe.xadd(key, {"k": record.key.encode("utf-8"), "v": record.value}, maxlen=self.maxlen,
                          approximate=True, nomkstream=True)
            results = pipe.execute()
        if any(r is None for r in results):
            self._partition_counts.pop(event, None)
            raise XflowError(f"redis transport: stream {self.stream_name(event)} was removed while publishing; "
                             f"{sum(r is None for r in results)} of {len(results)} records were not stored",
                             "run xflow setup again, then publish again")

    # -- subscribe -----------------------------------------------------------------------------

    def subscribe(self, group: str, events: Sequence[str]) -> Consumer:
        return RedisConsumer(self, group, list(events))

    def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        fields = {
            "group": group, "event": delivery.event, "partition": delivery.partition,
            "position": delivery.position, "key": (delivery.key or "").encode("utf-8"),
            "value": delivery.value, "reason": reason.encode("utf-8"), "at": f"{time.time():.3f}",
        }
        with self.talking("storing a dead letter"):
            self.client.xadd(self.dead_letter_key, fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)

    def dead_letters(self) -> list[dict[str, str | bytes]]:
        """The stored dead letters, oldest first (values stay bytes, the rest is text)."""
        with self.talking("reading dead letters"):
            entries = self.client.xrange(self.dead_letter_key)
        return [{_text(k): (v if _text(k) == "value" else _text(v)) for k, v in fields.items()}
                for _id, fields in entries]


Part = tuple[str, int]


class RedisLeaseStore(LeaseStore[Part]):
    """The redis transport's lease store: a key per partition lease (``SET NX PX``, renewed and released by
    scripts that check the holder) and a sorted set of members scored by when their heartbeat expires, both on
    the server's clock."""

    def __init__(self, transport: RedisTransport, group: str) -> None:
        self.transport, self.group = transport, group
        self.members_key = transport.group_key(group, "members")

    def lease_key(self, part: Part) -> str:
        return self.transport.group_key(self.group, f"lease:{part[0]}:{part[1]}")

    def heartbeat(self, member: str, ttl: float) -> None:
        self.transport.script("heartbeat", _HEARTBEAT)(keys=[self.members_key], args=[member, _ms(ttl)])

    def live_members(self) -> int:
        return int(self.transport.script("live", _LIVE_MEMBERS)(keys=[self.members_key]))

    def acquire(self, unit: Part, member: str, ttl: float) -> bool:
        return bool(self.transport.script("acquire", _ACQUIRE)(keys=[self.lease_key(unit)], args=[member, _ms(ttl)]))

    def renew(self, units: Sequence[Part], member: str, ttl: float) -> set[Part]:
        kept = self._each("renew", _RENEW, units, member, _ms(ttl))
        return {unit for unit, mine in zip(units, kept, strict=True) if mine}

    def release(self, units: Sequence[Part], member: str) -> None:
        self._each("release", _RELEASE, units, member)

    def leave(self, member: str) -> None:
        self.transport.client.zrem(self.members_key, member)

    def _each(self, name: str, source: str, units: Sequence[Part], *args: object) -> list[Any]:
        """Run a lease script on each of ``units`` in one round trip."""
        if not units:
            return []
        script = self.transport.script(name, source)
        pipe = self.transport.client.pipeline(transaction=False)
        for unit in units:
            script(keys=[self.lease_key(unit)], args=list(args), client=pipe)
        return list(pipe.execute())


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisConsumer(Consumer):
    """One member of a consumer group: leases a fair share of the partitions (through the
    :class:`~xflow.core.leases.LeaseCoordinator`) and reads them in order."""

    def __init__(self, transport: RedisTransport, group: str, events: list[str]) -> None:
        self.transport = transport
        self.group = group
        self.events = events
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.parts: list[Part] = [(e, p) for e in events for p in range(transport.partition_count(e))]
        self.leases = LeaseCoordinator(RedisLeaseStore(transport, group), self.id, transport.claim_idle,
                                       check_seconds=min(1.0, transport.claim_idle / 3), name=group)
        #: partitions just taken over: XAUTOCLAIM cursor of their pending entries still to redeliver
        self.recovering: dict[Part, str] = {}
        #: ids handed out (or buffered) and not yet committed, per partition, in order
        self.outstanding: dict[Part, list[str]] = {}
        self.buffer: deque[Delivery] = deque()
        self.closed = False
        with transport.talking(f"creating consumer group {group}"):
            for event, p in self.parts:
                try:
                    transport.client.xgroup_create(transport.partition_key(event, p), group, id="0")
                except _import_redis().exceptions.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    # -- partition leases ----------------------------------------------------------------------

    @property
    def owned(self) -> set[Part]:
        """The partitions this consumer holds the lease of."""
        return set(self.leases.held)

    def rebalance(self, force: bool = False) -> None:
        """Let the coordinator renew, hand back and take leases when due (now with ``force``); a partition taken
        starts with redelivering its pending entries."""
        changes = self.leases.rebalance(self.parts, lambda part: bool(self.outstanding.get(part)), force=force)
        for part in changes.dropped:
            self.recovering.pop(part, None)
        for part in changes.taken:
            self.recovering[part] = "0-0"

    # -- reading -------------------------------------------------------------------------------

    def _deliver(self, part: Part, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            if not fields:  # an entry trimmed away while pending
                continue
            position = _text(entry_id)
            key = fields.get(b"k")
            self.buffer.append(Delivery(event=part[0], partition=str(part[1]), position=position,
                                        key=None if key is None else key.decode("utf-8"), value=fields.get(b"v", b"")))
            self.outstanding.setdefault(part, []).append(position)

    def _recover(self, max_records: int) -> None:
        t = self.transport
        draining = self.leases.draining
        for part in sorted(self.recovering):
            if part in draining:
                continue
            cursor = self.recovering[part]
            reply = t.client.xautoclaim(t.partition_key(*part), self.group, self.id, min_idle_time=0,
                                        start_id=cursor, count=max_records)
            next_cursor, entries = _text(reply[0]), reply[1]
            known = set(self.outstanding.get(part, []))
            self._deliver(part, [e for e in entries if _text(e[0]) not in known])
            if next_cursor == "0-0":
                del self.recovering[part]
            else:
                self.recovering[part] = next_cursor
            if len(self.buffer) >= max_records:
                return

    def _read_new(self, max_records: int, block_seconds: float) -> None:
        t = self.transport
        draining = self.leases.draining
        readable = sorted(p for p in self.leases.held if p not in self.recovering and p not in draining)
        if not readable:
            if block_seconds > 0:
                time.sleep(min(block_seconds, 0.2))
            return
        streams = {t.partition_key(*part): ">" for part in readable}
        by_key = {t.partition_key(*part): part for part in readable}
        block = int(block_seconds * 1000)
        reply = t.client.xreadgroup(self.group, self.id, streams, count=max_records,
                                    block=block if block > 0 else None)
        for stream_key, entries in reply or []:
            self._deliver(by_key[_text(stream_key)], entries)

    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self.transport.talking(f"reading for group {self.group}"):
            while True:
                if not self.buffer:
                    self.rebalance()
                    self._recover(max_records)
                if not self.buffer:
                    left = deadline - time.monotonic()
                    self._read_new(max_records, max(0.0, min(left, self.transport.claim_idle / 3, 1.0)))
                if self.buffer:
                    return [self.buffer.popleft() for _ in range(min(max_records, len(self.buffer)))]
                if time.monotonic() >= deadline:
                    return []

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        upto: dict[Part, tuple[int, int]] = {}
        extra: dict[Part, set[str]] = {}
        for d in deliveries:
            part = (d.event, int(d.partition))
            position = _id_tuple(d.position)
            if part not in upto or position > upto[part]:
                upto[part] = position
            extra.setdefault(part, set()).add(d.position)
        t = self.transport
        with t.talking(f"acknowledging for group {self.group}"):
            pipe = t.client.pipeline(transaction=False)
            for part, last in upto.items():
                pending = self.outstanding.get(part, [])
                done = [i for i in pending if _id_tuple(i) <= last]
                self.outstanding[part] = [i for i in pending if _id_tuple(i) > last]
                pipe.xack(t.partition_key(*part), self.group, *sorted(set(done) | extra[part], key=_id_tuple))
            pipe.execute()
            self.leases.keep_alive()

    def keep_alive(self) -> None:
        """Renew the leases held while handlers run (the coordinator's keeper thread does it too)."""
        with self.transport.talking(f"renewing the leases of group {self.group}"):
            self.leases.keep_alive()

    def close(self) -> None:
        """Leave the group: leases are released so others take over the pending entries at once."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception), self.transport.talking(f"leaving group {self.group}"):
            self.leases.close()
        self.buffer.clear()
