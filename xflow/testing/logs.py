"""The LogDestination contract of the conformance kit: what log routes rely on from a log destination.

A destination's test module subclasses :class:`LogDestinationContract` and provides two fixtures: the destination
under test (pointed at a receiver the test runs) and what that receiver got, as dicts with the record's fields::

    class TestMyDestination(LogDestinationContract):
        @pytest.fixture
        def destination_factory(self, server, tmp_path):
            return lambda workflow_id: MyDestination(PluginContext(workflow_id, {"url": server.url}, tmp_path))

        @pytest.fixture
        def received(self, server):
            return lambda: [json.loads(body) for body in server.bodies]

Values may come back as text (syslog's structured data holds strings): fields are compared as text, ``time`` to the
millisecond.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from xflow.core.options import Option, declared_options
from xflow.logs.destination import LogDestination
from xflow.logs.records import FIELDS, LogRecord
from xflow.logs.router import Route
from xflow.testing.kit import new_workflow_id

LogDestinationFactory = Callable[[str], LogDestination]
Received = Callable[[], list[dict[str, Any]]]


def kit_records(workflow_id: str, execution_id: str, count: int, message: str = "line {n}") -> list[LogRecord]:
    """``count`` records of one execution: lines, then an outcome; the second carries a trace id."""
    now = time.time()
    found = []
    for n in range(count):
        last = n == count - 1
        found.append(LogRecord(
            round(now + n / 1000, 3), ("DEBUG", "INFO", "WARNING", "ERROR")[n % 4] if not last else "INFO", workflow_id,
            execution_id, "Uploaded", f"ev-{execution_id}", "reader", 1 + n % 2, message.format(n=n),
            "4bf92f3577b34da6a3ce929d0e0e4736" if n == 1 else None, "outcome" if last else "line",
            "succeeded" if last else None, n))
    return found


class LogDestinationContract:
    """What log routes rely on from a LogDestination. Subclass it; define ``destination_factory`` and ``received``."""

    #: how long, in seconds, the receiver may take to show what was sent
    receive_timeout: float = 10.0

    @pytest.fixture
    def destination_factory(self) -> LogDestinationFactory:
        """Override: return a callable ``workflow_id -> LogDestination`` sending to the test's receiver."""
        pytest.fail("define a 'destination_factory' fixture: a callable workflow_id -> LogDestination")

    @pytest.fixture
    def received(self) -> Received:
        """Override: return a callable giving the records the receiver got so far, as dicts, in arrival order."""
        pytest.fail("define a 'received' fixture: a callable returning the records received, as dicts")

    @pytest.fixture
    def workflow_id(self) -> str:
        return new_workflow_id("logkit")

    @pytest.fixture
    def destination(self, destination_factory: LogDestinationFactory, workflow_id: str) -> Iterator[LogDestination]:
        made = destination_factory(workflow_id)
        yield made
        with contextlib.suppress(Exception):
            made.close()

    def wait_for(self, received: Received, execution_id: str, count: int) -> list[dict[str, Any]]:
        """The received records of ``execution_id``, once there are ``count`` (or the timeout passed)."""
        deadline = time.monotonic() + self.receive_timeout
        while True:
            mine = [r for r in received() if str(r.get("execution_id")) == execution_id]
            if len(mine) >= count or time.monotonic() >= deadline:
                return mine
            time.sleep(0.1)

    @staticmethod
    def assert_same(got: dict[str, Any], sent: LogRecord) -> None:
        expected = sent.as_dict()
        assert abs(float(got["time"]) - sent.time) < 0.0015, (got["time"], sent.time)
        for name in FIELDS:
            if name == "time":
                continue
            if expected.get(name) is None:
                assert got.get(name) in (None, ""), f"{name}: {got.get(name)!r} where none was sent"
            else:
                assert str(got.get(name)) == str(expected[name]), f"{name}: {got.get(name)!r} != {expected[name]!r}"

    # -- the contract ----------------------------------------------------------------------------------------------
    def test_declares_a_name_and_typed_options(self, destination: LogDestination) -> None:
        cls = type(destination)
        assert isinstance(cls.name, str) and cls.name, "a destination needs a name (what routes say)"
        assert (cls.description or "").strip(), "a destination needs a one-line description"
        declared = declared_options(cls)
        assert all(isinstance(option, Option) for option in declared.values())
        assert destination.batch_size >= 1

    def test_a_batch_arrives_with_every_field(self, destination: LogDestination, received: Received,
                                              workflow_id: str) -> None:
        execution = new_workflow_id("x")
        sent = kit_records(workflow_id, execution, 4)
        destination.send(sent)
        got = self.wait_for(received, execution, len(sent))
        assert len(got) == len(sent), f"received {len(got)} of {len(sent)} records"
        for record, item in zip(sorted(got, key=lambda r: int(r["seq"])), sent, strict=True):
            self.assert_same(record, item)

    def test_order_within_a_batch_is_kept(self, destination: LogDestination, received: Received,
                                          workflow_id: str) -> None:
        execution = new_workflow_id("x")
        sent = kit_records(workflow_id, execution, min(50, destination.batch_size))
        destination.send(sent)
        got = self.wait_for(received, execution, len(sent))
        assert [int(r["seq"]) for r in got] == [r.seq for r in sent]

    def test_text_survives_as_written(self, destination: LogDestination, received: Received, workflow_id: str) -> None:
        execution = new_workflow_id("x")
        text = 'héllo ✓ "quoted" [brackets] back\\slash {n}'
        sent = kit_records(workflow_id, execution, 2, text)
        destination.send(sent)
        got = self.wait_for(received, execution, 2)
        assert sorted(str(r["message"]) for r in got) == sorted(r.message for r in sent)

    def test_records_sent_through_a_route_all_arrive(self, destination: LogDestination, received: Received,
                                                     workflow_id: str) -> None:
        execution = new_workflow_id("x")
        sent = kit_records(workflow_id, execution, 3 * destination.batch_size + 7)
        route = Route("kit", destination, capacity=len(sent))
        try:
            for start in range(0, len(sent), 10):
                route.offer(sent[start:start + 10])
            assert route.flush(self.receive_timeout), f"the route still holds records: {route.stats()}"
        finally:
            route.close(1.0)
        got = self.wait_for(received, execution, len(sent))
        assert sorted(int(r["seq"]) for r in got) == [r.seq for r in sent]
        assert route.stats().dropped == 0
