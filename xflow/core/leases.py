"""Leases: one fair-share coordinator that shares a consumer group's units (partitions, shards) among its members.

Every transport whose consumers share partitions through leases (the local SQLite log, Kinesis on DynamoDB,
Redis) implements only a :class:`LeaseStore`: six small operations on the backend, each atomic there. The
:class:`LeaseCoordinator` decides everything else, the same way for all of them:

- **who is alive**: a member heartbeats every third of the lease time and counts the live members;
- **how many to hold**: its fair share, ``ceil(units / live members)``, so every unit has a holder;
- **which to take**: free or expired leases (a dead member's, once they expire), tried from a place in the
  unit list that depends on the member (members joining together do not all race for the same units);
- **which to hand back**: those over the share, and only once *settled* (nothing handed out of them is still
  uncommitted: the member taking a unit over would deliver again what is being handled); until then they
  are *draining*, and the consumer reads nothing more from them;
- **when to renew**: every third of the lease time, from the polling thread and from a keeper thread (one per
  coordinator, like the Kinesis Client Library's lease renewer), so a member whose handlers run longer than
  a lease, and which neither polls nor commits meanwhile, keeps its leases. Taking, handing back and losing
  leases stay with the polling thread; the keeper only extends the leases held and the heartbeat. It ends
  with :meth:`LeaseCoordinator.close`, with the coordinator (it holds only a weak reference) and with the
  process: a dead member's leases expire.

A consumer calls :meth:`LeaseCoordinator.rebalance` on every poll (it does work only when due) and reads the
units in :attr:`~LeaseCoordinator.held` that are not :attr:`~LeaseCoordinator.draining`; the :class:`Changes`
it returns say which units to start reading (taken) and which to forget (lost or released).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

log = logging.getLogger("xflow")

U = TypeVar("U", bound=Hashable)


class LeaseStore(Protocol[U]):
    """Where one consumer group's leases and members live. Each method is one atomic operation on the backend
    (a transaction, a conditional write, a script); errors propagate (transient ones as ``BackendUnavailable``).

    Expiry times are the store's business (wall clock, the server's clock, a TTL): the coordinator passes a
    lease time ``ttl`` in seconds and never compares clocks across members."""

    def heartbeat(self, member: str, ttl: float) -> None:
        """Announce ``member`` alive for the next ``ttl`` seconds."""

    def live_members(self) -> int:
        """How many members of the group are alive now (their heartbeat has not expired)."""

    def acquire(self, unit: U, member: str, ttl: float) -> bool:
        """Take the lease on ``unit`` for ``ttl`` seconds if it is free, expired or already ``member``'s; whether it
        is ``member``'s now."""

    def renew(self, units: Sequence[U], member: str, ttl: float) -> set[U]:
        """Extend for ``ttl`` seconds the leases on ``units`` that ``member`` holds; the units among them that it
        still holds (the others were taken over)."""

    def release(self, units: Sequence[U], member: str) -> None:
        """Hand back the leases on ``units`` that ``member`` holds (others are left alone)."""

    def leave(self, member: str) -> None:
        """Remove ``member``'s heartbeat: it no longer counts among the live members."""


@dataclass(frozen=True)
class Changes(Generic[U]):
    """What a rebalance changed: units to start reading, and units to forget."""

    #: leases this member took (start reading from the unit's committed position)
    taken: tuple[U, ...] = ()
    #: leases found taken over or expired (another member reads the unit now)
    lost: tuple[U, ...] = ()
    #: leases this member handed back, settled
    released: tuple[U, ...] = ()

    @property
    def dropped(self) -> tuple[U, ...]:
        """Units no longer held, lost or released."""
        return self.lost + self.released

    def __bool__(self) -> bool:
        return bool(self.taken or self.lost or self.released)


def fair_share(units: int, members: int) -> int:
    """How many of ``units`` one of ``members`` live members holds: enough that every unit has a holder."""
    return math.ceil(units / max(members, 1))


class LeaseCoordinator(Generic[U]):
    """Holds a fair share of a group's units for ``member`` in ``store``, leases lasting ``ttl`` seconds.

    ``check_seconds`` is how often the live members are counted and free leases tried (default: a third of
    ``ttl``, as renewals). ``keeper`` starts the keeper thread at the first rebalance; ``clock`` is monotonic
    seconds (tests pass their own). Thread-safe: the store is used by one thread at a time.
    """

    def __init__(self, store: LeaseStore[U], member: str, ttl: float, *, check_seconds: float | None = None,
                 keeper: bool = True, clock: Callable[[], float] = time.monotonic, name: str = "") -> None:
        self.store, self.member, self.ttl = store, member, ttl
        self.renew_seconds = ttl / 3
        self.check_seconds = min(check_seconds, self.renew_seconds) if check_seconds else self.renew_seconds
        self.clock = clock
        self.name = name or member
        self._lock = threading.RLock()
        self._held: set[U] = set()
        self._draining: frozenset[U] = frozenset()
        self._members = 1
        self._next_renewal = 0.0
        self._next_check = 0.0
        self._offset = zlib.crc32(member.encode("utf-8"))
        #: changes made (by the keeper too) and not reported yet: a rebalance that failed half way reports them next
        self._taken: list[U] = []
        self._lost: list[U] = []
        self._released: list[U] = []
        self._use_keeper = keeper
        self._keeper: threading.Thread | None = None
        self._stop = threading.Event()
        self.closed = False

    # -- what is held --------------------------------------------------------------------------
    @property
    def held(self) -> frozenset[U]:
        """The units whose lease this member holds (draining ones included)."""
        with self._lock:
            return frozenset(self._held)

    @property
    def draining(self) -> frozenset[U]:
        """Held units over the fair share, to hand back once settled: nothing more is read from them."""
        return self._draining

    @property
    def members(self) -> int:
        """Live members at the last count (at least 1: this one)."""
        return self._members

    def order(self, units: Sequence[U]) -> list[U]:
        """``units`` in this member's order of preference: from a place that depends on the member, round."""
        if not units:
            return []
        start = self._offset % len(units)
        return list(units[start:]) + list(units[:start])

    # -- the polling thread's work -------------------------------------------------------------
    def rebalance(self, units: Sequence[U], busy: Callable[[U], bool] | None = None,
                  force: bool = False) -> Changes[U]:
        """Heartbeat, renew, count the members, hand back settled units over the fair share of ``units`` and take
        free ones up to it, each when due (all of it now with ``force``). ``busy(unit)`` says whether deliveries
        handed out of ``unit`` are still uncommitted (then it is kept, draining, until they are)."""
        is_busy = busy or (lambda unit: False)
        with self._lock:
            if self.closed:
                return Changes()
            self._start_keeper()
            now = self.clock()
            check = force or now >= self._next_check
            if force or now >= self._next_renewal:
                self._renew(now)
            elif check:
                self.store.heartbeat(self.member, self.ttl)
            if check:
                self._members = max(1, int(self.store.live_members()))
                self._next_check = now + self.check_seconds
            share = fair_share(len(units), self._members)
            self._hand_back(units, share, is_busy)
            if check and len(self._held) < share:
                self._take(units, share)
            return self._report()

    def _renew(self, now: float) -> None:
        self.store.heartbeat(self.member, self.ttl)
        if self._held:
            mine = sorted(self._held, key=repr)
            kept = self.store.renew(mine, self.member, self.ttl)
            gone = [unit for unit in mine if unit not in kept]
            if gone:
                log.info("%s: lost the lease on %s", self.name, ", ".join(map(str, gone)))
                self._held.difference_update(gone)
                self._lost.extend(gone)
        self._next_renewal = now + self.renew_seconds

    def _hand_back(self, units: Sequence[U], share: int, busy: Callable[[U], bool]) -> None:
        wanted = set(units)
        keep = [unit for unit in self.order(units) if unit in self._held]
        over = [unit for unit in self._held if unit not in wanted]  # no longer to be read (gone, or finished)
        if len(keep) > share:
            keep.sort(key=lambda unit: not busy(unit))  # the busy ones are kept first: they cannot go yet
            over += keep[share:]
        settled = [unit for unit in over if not busy(unit)]
        if settled:
            self.store.release(settled, self.member)
            self._held.difference_update(settled)
            self._released.extend(settled)
        self._draining = frozenset(unit for unit in over if unit not in settled)

    def _take(self, units: Sequence[U], share: int) -> None:
        for unit in self.order(units):
            if len(self._held) >= share:
                return
            if unit not in self._held and self.store.acquire(unit, self.member, self.ttl):
                self._held.add(unit)
                self._taken.append(unit)

    def _report(self) -> Changes[U]:
        taken = tuple(u for u in self._taken if u in self._held)
        lost = tuple(u for u in self._lost if u not in self._held)
        released = tuple(u for u in self._released if u not in self._held)
        self._taken, self._lost, self._released = [], [], []
        return Changes(taken, lost, released)

    # -- what a consumer found out or decided by itself ----------------------------------------
    def drop(self, unit: U) -> None:
        """Forget ``unit`` without asking the store: the backend found its lease taken over (a fenced commit
        failed), or handed it back itself (Kinesis records a finished shard and frees its lease in one write)."""
        with self._lock:
            self._held.discard(unit)
            self._draining = self._draining - {unit}

    def release(self, units: Sequence[U]) -> None:
        """Hand back ``units`` now (say, a unit that cannot be read at the moment: it is tried again later)."""
        with self._lock:
            mine = [unit for unit in units if unit in self._held]
            if mine:
                self.store.release(mine, self.member)
                self._held.difference_update(mine)
                self._draining = self._draining - set(mine)

    # -- the keeper's work ---------------------------------------------------------------------
    def keep_alive(self) -> None:
        """Renew the leases held and the heartbeat if a third of the lease time passed since the last renewal
        (cheap otherwise). The keeper thread calls it; so may a runner, between polls (``Consumer.keep_alive``).
        A lease found lost is reported by the next :meth:`rebalance`."""
        with self._lock:
            if self.closed:
                return
            now = self.clock()
            if now >= self._next_renewal:
                self._renew(now)

    def _start_keeper(self) -> None:
        if self._use_keeper and self._keeper is None and not self.closed:
            self._keeper = threading.Thread(target=_keep, args=(weakref.ref(self), self._stop, self.renew_seconds),
                                            name=f"xflow-lease-keeper-{self.name}", daemon=True)
            self._keeper.start()

    def close(self) -> None:
        """Stop the keeper, hand back every lease held and leave the group (errors propagate: the leases and the
        heartbeat then expire by themselves)."""
        self._stop.set()
        keeper = self._keeper
        if keeper is not None and keeper.is_alive() and keeper is not threading.current_thread():
            keeper.join(timeout=5.0)
        with self._lock:
            if self.closed:
                return
            self.closed = True
            mine, self._held, self._draining = sorted(self._held, key=repr), set(), frozenset()
            try:
                if mine:
                    self.store.release(mine, self.member)
            finally:
                self.store.leave(self.member)


def _keep(coordinator: weakref.ref[LeaseCoordinator[U]], stop: threading.Event, interval: float) -> None:
    """The keeper thread's loop: ends when told to, or when the coordinator is gone."""
    while not stop.wait(max(0.05, interval / 2)):
        found = coordinator()
        if found is None:
            return
        try:
            found.keep_alive()
        except Exception as exc:  # never let the keeper die of a failure: the polling thread renews too, and reports
            log.debug("lease keeper of %s: %s", found.name, exc)
        del found
