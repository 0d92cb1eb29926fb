"""The lease coordinator (xflow/core/leases.py) on an in-memory store with a fake clock, and the local transport's
SQLite store: fair share as members join and leave, take-over after expiry, hand back only once settled, the keeper."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from xflow.core.interfaces import PluginContext, Record
from xflow.core.leases import LeaseCoordinator, fair_share
from xflow.transports.local import LocalTransport, SqliteLeaseStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryStore:
    """Leases and heartbeats in dicts, expiring on a shared fake clock; counts the calls it gets."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.leases: dict[str, tuple[str, float]] = {}
        self.beats: dict[str, float] = {}
        self.released: list[tuple[str, str]] = []
        self.calls = 0
        self.lock = threading.Lock()

    def owner(self, unit: str) -> str | None:
        held = self.leases.get(unit)
        return held[0] if held and held[1] > self.clock() else None

    def heartbeat(self, member: str, ttl: float) -> None:
        with self.lock:
            self.calls += 1
            self.beats[member] = self.clock() + ttl

    def live_members(self) -> int:
        with self.lock:
            self.calls += 1
            return sum(1 for expires in self.beats.values() if expires > self.clock())

    def acquire(self, unit: str, member: str, ttl: float) -> bool:
        with self.lock:
            self.calls += 1
            if self.owner(unit) in (None, member):
                self.leases[unit] = (member, self.clock() + ttl)
                return True
            return False

    def renew(self, units: Sequence[str], member: str, ttl: float) -> set[str]:
        with self.lock:
            self.calls += 1
            kept = set()
            for unit in units:
                if unit in self.leases and self.leases[unit][0] == member:
                    self.leases[unit] = (member, self.clock() + ttl)
                    kept.add(unit)
            return kept

    def release(self, units: Sequence[str], member: str) -> None:
        with self.lock:
            self.calls += 1
            for unit in units:
                if unit in self.leases and self.leases[unit][0] == member:
                    del self.leases[unit]
                    self.released.append((unit, member))

    def leave(self, member: str) -> None:
        with self.lock:
            self.calls += 1
            self.beats.pop(member, None)


UNITS = [f"u{i}" for i in range(6)]
TTL = 3.0


def coordinator(store: MemoryStore, clock: Clock, member: str) -> LeaseCoordinator[str]:
    return LeaseCoordinator(store, member, TTL, keeper=False, clock=clock)


def settle(members: dict[str, LeaseCoordinator[str]], clock: Clock, rounds: int = 6,
           busy: dict[str, set[str]] | None = None) -> None:
    """Let every member rebalance once per check interval, ``rounds`` times (``busy``: units with records in hand)."""
    for _ in range(rounds):
        for name, lease in members.items():
            lease.rebalance(UNITS, (busy or {}).get(name, set()).__contains__)
        clock.now += TTL / 3


def test_fair_share_covers_every_unit():
    assert [fair_share(6, n) for n in (0, 1, 2, 3, 4, 6, 7)] == [6, 6, 3, 2, 2, 1, 1]


def test_a_lone_member_takes_every_unit_and_a_second_gets_half_once_the_first_hands_back():
    clock = Clock()
    store = MemoryStore(clock)
    first = coordinator(store, clock, "a")
    changes = first.rebalance(UNITS)
    assert sorted(changes.taken) == UNITS and first.held == set(UNITS)
    second = coordinator(store, clock, "b")
    assert not second.rebalance(UNITS).taken  # everything is held: it only announced itself
    members = {"a": first, "b": second}
    settle(members, clock)
    assert len(first.held) == len(second.held) == 3
    assert first.held | second.held == set(UNITS)
    assert {store.owner(u) for u in UNITS} == {"a", "b"}


def test_a_member_that_leaves_hands_back_at_once_and_one_that_dies_is_taken_over_after_the_lease():
    clock = Clock()
    store = MemoryStore(clock)
    members = {name: coordinator(store, clock, name) for name in "abc"}
    settle(members, clock)
    assert sorted(len(m.held) for m in members.values()) == [2, 2, 2]
    members.pop("c").close()  # leaves: released, heartbeat gone
    assert all(store.owner(u) != "c" for u in UNITS)
    settle(members, clock, rounds=2)
    assert sorted(len(m.held) for m in members.values()) == [3, 3]
    dead = members.pop("b")  # stops renewing: its leases and heartbeat expire after TTL
    clock.now += TTL / 2
    members["a"].rebalance(UNITS)
    assert members["a"].held & dead.held == set(), "took a lease before it expired"
    settle(members, clock, rounds=4)
    assert members["a"].held == set(UNITS)


def test_units_over_the_share_are_handed_back_only_once_settled_and_read_from_no_more():
    clock = Clock()
    store = MemoryStore(clock)
    first = coordinator(store, clock, "a")
    first.rebalance(UNITS)
    second = coordinator(store, clock, "b")
    second.rebalance(UNITS)
    busy = set(UNITS)  # the first member is handling records of every unit
    clock.now += TTL / 3
    for _ in range(5):
        changes = first.rebalance(UNITS, busy.__contains__)
        assert not changes.released
        second.rebalance(UNITS)
        clock.now += TTL / 3
    assert first.held == set(UNITS) and len(first.draining) == 3 and not second.held
    assert store.released == []
    busy -= set(first.draining)  # what was handed out of them is committed
    changes = first.rebalance(UNITS, busy.__contains__)
    assert all(store.owner(u) is None for u in changes.released)
    assert len(changes.released) == 3 and not first.draining
    second.rebalance(UNITS, force=True)
    assert len(second.held) == 3 and not second.held & first.held


@settings(max_examples=60, deadline=None)
@given(joining=st.integers(1, 5), busy=st.sets(st.sampled_from(UNITS)))
def test_whatever_joins_a_busy_member_keeps_exactly_its_busy_units_until_they_settle(joining, busy):
    clock = Clock()
    store = MemoryStore(clock)
    first = coordinator(store, clock, "first")
    first.rebalance(UNITS)
    members = {"first": first, **{f"m{i}": coordinator(store, clock, f"m{i}") for i in range(joining)}}
    settle(members, clock, busy={"first": busy})  # "first" has records of ``busy`` in hand all along
    share = fair_share(len(UNITS), len(members))
    assert busy <= first.held and not {u for u, m in store.released if m == "first"} & busy
    assert len(first.held) == max(share, len(busy))
    assert first.draining <= busy and len(first.draining) == max(0, len(busy) - share)
    settle(members, clock)  # committed: now it hands back down to its share
    assert len(first.held) <= share and not first.draining
    assert all(store.owner(u) in members for u in UNITS)


def test_a_lost_lease_is_reported_once_and_renewal_keeps_leases_past_their_time():
    clock = Clock()
    store = MemoryStore(clock)
    first = coordinator(store, clock, "a")
    first.rebalance(UNITS)
    for _ in range(9):  # three lease times, kept alive only (no rebalance: handlers are running)
        clock.now += TTL / 3
        first.keep_alive()
    assert all(store.owner(u) == "a" for u in UNITS)
    store.leases["u0"] = ("intruder", clock.now + 100)  # taken over behind its back
    clock.now += TTL / 3
    first.keep_alive()
    assert first.rebalance(UNITS).lost == ("u0",)
    assert not first.rebalance(UNITS).lost


def test_keep_alive_and_rebalance_do_nothing_until_due():
    clock = Clock()
    store = MemoryStore(clock)
    lease = coordinator(store, clock, "a")
    lease.rebalance(UNITS)
    calls = store.calls
    for _ in range(50):
        lease.keep_alive()
        lease.rebalance(UNITS)
    assert store.calls == calls
    clock.now += TTL / 3
    lease.keep_alive()
    assert store.calls == calls + 2  # one heartbeat, one renewal of every lease held


def test_a_failing_rebalance_reports_what_it_took_at_the_next_one():
    clock = Clock()
    store = MemoryStore(clock)
    lease = coordinator(store, clock, "a")
    real = store.acquire
    taken: list[str] = []

    def acquire(unit: str, member: str, ttl: float) -> bool:
        if len(taken) == 2:
            raise ConnectionError("backend gone")
        taken.append(unit)
        return real(unit, member, ttl)

    store.acquire = acquire  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        lease.rebalance(UNITS)
    store.acquire = real  # type: ignore[method-assign]
    clock.now += TTL / 3
    changes = lease.rebalance(UNITS)
    assert sorted(changes.taken) == UNITS  # the two taken before the failure come too


def test_the_keeper_thread_renews_while_nothing_polls_and_stops_with_close():
    store = MemoryStore(Clock())
    store.clock = time.monotonic  # type: ignore[assignment]
    lease = LeaseCoordinator(store, "a", 1.0, name="kept")
    lease.rebalance(UNITS)
    time.sleep(3.2)  # more than three lease times
    assert all(store.owner(u) == "a" for u in UNITS)
    lease.close()
    assert not any(t.name == "xflow-lease-keeper-kept" for t in threading.enumerate())
    assert all(store.owner(u) is None for u in UNITS) and "a" not in store.beats


def test_the_keeper_ends_when_its_coordinator_is_dropped():
    store = MemoryStore(Clock())
    store.clock = time.monotonic  # type: ignore[assignment]
    lease = LeaseCoordinator(store, "a", 0.3, name="dropped")
    lease.rebalance(UNITS)
    del lease  # a consumer abandoned without close: its leases must expire as a dead process's do
    deadline = time.monotonic() + 5
    while any(t.name == "xflow-lease-keeper-dropped" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the keeper outlived its coordinator"
        time.sleep(0.05)
    time.sleep(0.35)
    assert all(store.owner(u) is None for u in UNITS)


class Group(RuleBasedStateMachine):
    """Members join, leave, die, get busy and settle, time passes: a unit never has two live holders, nothing busy is
    handed back, and once quiet every unit is held by one live member, none over its fair share."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.members: dict[str, LeaseCoordinator[str]] = {}
        self.dead: set[str] = set()
        self.busy: dict[str, set[str]] = {}
        self.count = 0

    @precondition(lambda self: len(self.members) < 5)
    @rule()
    def join(self) -> None:
        self.count += 1
        name = f"m{self.count}"
        self.members[name] = coordinator(self.store, self.clock, name)
        self.busy[name] = set()

    @precondition(lambda self: bool(self.members))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.members)))
        self.members.pop(name).close()

    @precondition(lambda self: bool(self.members))
    @rule(data=st.data())
    def die(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.members)))
        self.members.pop(name)
        self.dead.add(name)

    @precondition(lambda self: bool(self.members))
    @rule(data=st.data())
    def handle(self, data: st.DataObject) -> None:
        """A member hands out records of some units it holds (busy until settled)."""
        name = data.draw(st.sampled_from(sorted(self.members)))
        held = sorted(self.members[name].held - self.members[name].draining)
        if held:
            self.busy[name] |= data.draw(st.sets(st.sampled_from(held), min_size=1))

    @precondition(lambda self: bool(self.members))
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.members)))
        self.busy[name].clear()

    @rule(data=st.data(), seconds=st.sampled_from([0.0, 0.1, TTL / 3]))
    def tick(self, data: st.DataObject, seconds: float) -> None:
        """Time passes a little, and every live member polls (rebalances) in some order."""
        self.clock.now += seconds
        for name in data.draw(st.permutations(sorted(self.members))):
            changes = self.members[name].rebalance(UNITS, self.busy[name].__contains__)
            member = self.members[name]
            assert not set(changes.released) & self.busy[name], "handed back a unit with records still handled"
            assert len(member.held - member.draining) <= fair_share(len(UNITS), member.members), "over its share"
            assert member.draining <= self.busy[name] & member.held
            self.busy[name] -= set(changes.dropped)

    @rule(seconds=st.sampled_from([TTL / 2, TTL, 2 * TTL]))
    def wait(self, seconds: float) -> None:
        """Nobody polls for a while; members running handlers keep their leases alive (the keeper's work)."""
        for _ in range(6):
            for name, member in self.members.items():
                if self.busy[name]:
                    member.keep_alive()
            self.clock.now += seconds / 6

    @invariant()
    def one_live_holder_per_unit(self) -> None:
        for unit in UNITS:
            holders = [n for n, m in self.members.items() if unit in m.held and self.store.owner(unit) == n]
            assert len(holders) <= 1, (unit, holders)
            if self.store.owner(unit) in self.members:
                # a live member's lease is known to it (it never holds what it does not know of)
                assert unit in self.members[str(self.store.owner(unit))].held

    def teardown(self) -> None:
        if not self.members:
            return
        for busy in self.busy.values():
            busy.clear()  # everything handed out gets committed
        self.clock.now += TTL * 2  # the dead members' leases and heartbeats expire
        for _ in range(8):
            for name, member in self.members.items():
                member.rebalance(UNITS, self.busy[name].__contains__)
            self.clock.now += TTL / 3
        share = fair_share(len(UNITS), len(self.members))
        owners = [self.store.owner(u) for u in UNITS]
        assert all(owner in self.members for owner in owners), owners
        for name, member in self.members.items():
            assert len(member.held) <= share, (name, member.held, share)
            assert member.held == {u for u in UNITS if self.store.owner(u) == name}


TestGroup = Group.TestCase
TestGroup.settings = settings(max_examples=200, stateful_step_count=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])


# -- the SQLite store of the local transport ----------------------------------------------------------------------------
@pytest.fixture
def sqlite_store(tmp_path):
    transport = LocalTransport(PluginContext("leases", {"partitions": 2}, tmp_path))
    for step in transport.plan_setup(["E"]):
        transport.execute(step)
    yield SqliteLeaseStore(transport.file, transport.db, "group")
    transport.close()


def test_sqlite_store_takes_free_expired_or_own_leases_only(sqlite_store):
    unit = ("leases-E", 0)
    assert sqlite_store.acquire(unit, "a", 60)
    assert sqlite_store.acquire(unit, "a", 60)  # its own: renewed
    assert not sqlite_store.acquire(unit, "b", 60)
    assert sqlite_store.renew([unit, ("leases-E", 1)], "a", 0.2) == {unit}
    assert sqlite_store.renew([unit], "b", 60) == set()
    time.sleep(0.3)
    assert sqlite_store.acquire(unit, "b", 60)  # expired: taken over
    assert sqlite_store.renew([unit], "a", 60) == set()  # and the former holder learns it lost it
    sqlite_store.release([unit], "a")  # not its own: left alone
    assert not sqlite_store.acquire(unit, "a", 60)
    sqlite_store.release([unit], "b")
    assert sqlite_store.acquire(unit, "a", 60)


def test_sqlite_store_counts_live_members(sqlite_store):
    sqlite_store.heartbeat("a", 60)
    sqlite_store.heartbeat("b", 0.2)
    assert sqlite_store.live_members() == 2
    time.sleep(0.3)
    assert sqlite_store.live_members() == 1
    sqlite_store.leave("a")
    assert sqlite_store.live_members() == 0


def test_local_consumers_split_partitions_and_a_closed_ones_go_to_the_other_at_once(tmp_path):
    transport = LocalTransport(PluginContext("split", {"partitions": 4, "lease_seconds": 60}, tmp_path))
    for step in transport.plan_setup(["E"]):
        transport.execute(step)
    first = transport.subscribe("group", ["E"])
    second = transport.subscribe("group", ["E"])
    try:
        first.poll(10, 0)
        assert len(first.leases.held) == 4
        second.poll(10, 0)  # joins: nothing free yet
        first.rebalance(force=True)  # counts two members: hands back two
        second.rebalance(force=True)
        assert len(first.leases.held) == len(second.leases.held) == 2
        assert not first.leases.held & second.leases.held
        records = [Record(f"x{i}", f"{i}".encode()) for i in range(40)]
        transport.publish("E", records)
        got = first.poll(100, 0) + second.poll(100, 0)
        assert sorted(d.value for d in got) == sorted(r.value for r in records)
        first.commit(got)  # only its own partitions are committed by it
        second.commit(got)
        first.close()  # leaves: its partitions go to the second at its next look, not a lease later
        second.rebalance(force=True)
        assert len(second.leases.held) == 4
        transport.publish("E", records[:4])
        assert sorted(d.value for d in second.poll(100, 0)) == sorted(r.value for r in records[:4])
    finally:
        first.close()
        second.close()
        transport.close()
