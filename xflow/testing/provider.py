"""The FunctionProvider contract of the conformance kit: plans, and the delivery rules of a local runner."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from xflow.core.interfaces import (
    FunctionProvider,
    Record,
    Runner,
    TrackerStore,
    Transport,
)
from xflow.core.model import Workflow
from xflow.core.options import Option, declared_options
from xflow.testing.kit import apply_steps, check_plan, kit_workflow, new_workflow_id

ProviderFactory = Callable[[str], FunctionProvider]


class FunctionProviderContract:
    """What the engine relies on from a FunctionProvider's plans, and from its runner if it has one.

    Define ``provider_factory``; ``provider_transport`` and ``provider_tracker`` default to
    the built-in ``local`` transport and ``sqlite`` tracker and may be overridden.

    A provider whose ``runner()`` returns a :class:`~xflow.core.interfaces.Runner` (it runs functions on this
    machine) is checked against the delivery rules: every step handled once and recorded, a duplicate record
    skipped, an undecodable record set aside while the others go on, a failing handler retried and then recorded
    failed without holding up other executions, and ``stop`` honoured. ``runner_timeout`` bounds each wait.
    """

    runner_timeout: float = 60.0

    @pytest.fixture
    def provider_factory(self) -> ProviderFactory:
        """Override: return a callable ``workflow_id -> FunctionProvider`` for the backend under test."""
        pytest.fail("define a 'provider_factory' fixture: a callable workflow_id -> FunctionProvider")

    @pytest.fixture
    def workflow(self, tmp_path: Path) -> Workflow:
        return kit_workflow(new_workflow_id(), tmp_path / "kit-workflow")

    @pytest.fixture
    def provider_transport(self, workflow: Workflow, tmp_path: Path) -> Iterator[Transport]:
        transport = _builtin("transport", "local", workflow, tmp_path)
        assert isinstance(transport, Transport)
        apply_steps(transport.plan_setup(workflow.events), transport)
        yield transport
        with contextlib.suppress(Exception):
            apply_steps(transport.plan_teardown(workflow.events), transport)
        transport.close()

    @pytest.fixture
    def provider_tracker(self, workflow: Workflow, tmp_path: Path) -> Iterator[TrackerStore]:
        tracker = _builtin("tracker", "sqlite", workflow, tmp_path)
        assert isinstance(tracker, TrackerStore)
        apply_steps(tracker.plan_setup(workflow), tracker)
        yield tracker
        with contextlib.suppress(Exception):
            apply_steps(tracker.plan_teardown(workflow), tracker)
        tracker.close()

    @pytest.fixture
    def provider(self, provider_factory: ProviderFactory, workflow: Workflow, provider_transport: Transport,
                 provider_tracker: TrackerStore) -> Iterator[FunctionProvider]:
        provider = provider_factory(workflow.id)
        yield provider
        with contextlib.suppress(Exception):
            apply_steps(provider.plan_teardown(workflow, provider_transport, provider_tracker), provider)
        provider.close()

    def test_declares_name_options_and_where_it_runs(self, provider: FunctionProvider) -> None:
        cls = type(provider)
        assert isinstance(cls.name, str) and cls.name
        assert isinstance(cls.runs_locally, bool)
        assert callable(getattr(provider, "runner", None)), "a provider has runner() (the default returns None)"
        assert all(isinstance(option, Option) for option in declared_options(cls).values())

    # -- the runner (providers that run functions on this machine) ---------------------------------
    def _runner(self, provider: FunctionProvider, workflow: Workflow, transport: Transport,
                tracker: TrackerStore) -> Runner:
        apply_steps(provider.plan_setup(workflow, transport, tracker), provider)
        runner = provider.runner(workflow, transport, tracker)
        if runner is None:
            pytest.skip(f"the {type(provider).name!r} provider runs no functions on this machine (runner() is None)")
        assert isinstance(runner, Runner), f"runner() must return a Runner or None, got {type(runner).__name__}"
        return runner

    def _publish(self, workflow: Workflow, transport: Transport, tracker: TrackerStore, execution_id: str,
                 data: dict[str, Any], event_id: str | None = None) -> str:
        from xflow.core.publishing import OutgoingEvent, publish_events

        event_id = event_id or uuid.uuid4().hex
        publish_events(workflow, transport, tracker, [OutgoingEvent(
            "Uploaded", dict(data, execution_id=execution_id), execution_id, event_id, f"xflow/{workflow.id}")])
        return event_id

    def _run_until(self, runner: Runner, done: Callable[[], bool]) -> float:
        """Run ``runner`` in a thread until ``done()``; stop it and return how long the stop took."""
        stop = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            try:
                runner.run(stop)
            except BaseException as exc:  # handed to the test
                errors.append(exc)

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        deadline = time.monotonic() + self.runner_timeout
        try:
            while not done():
                assert not errors, f"the runner stopped: {errors[0]!r}"
                assert thread.is_alive(), "the runner returned before it was asked to stop"
                assert time.monotonic() < deadline, f"not done within {self.runner_timeout:g} s"
                time.sleep(0.1)
        finally:
            runner.grace_seconds = 5.0
            asked = time.monotonic()
            stop.set()
            thread.join(self.runner_timeout)
        took = time.monotonic() - asked
        assert not thread.is_alive(), "the runner did not stop"
        assert not errors, f"the runner failed: {errors[0]!r}"
        return took

    @staticmethod
    def _counted(tracker: TrackerStore, execution_id: str) -> bool:
        return any(e.event == "Counted" for e in tracker.history(execution_id).events)

    def test_runner_handles_each_step_once_and_records_it(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        runner = self._runner(provider, workflow, provider_transport, provider_tracker)
        executions = [f"kit-run-{i}" for i in range(6)]
        for execution in executions:
            self._publish(workflow, provider_transport, provider_tracker, execution, {"text": f"a b {execution}"})
        took = self._run_until(runner, lambda: all(self._counted(provider_tracker, e) for e in executions))
        assert took < 10 + runner.poll_interval, f"stopping an idle runner took {took:.1f} s"
        for execution in executions:
            history = provider_tracker.history(execution)
            done = [(d.function, d.attempt, d.status) for d in history.deliveries]
            assert sorted(done) == [("counter", 1, "succeeded"), ("reader", 1, "succeeded")], done
            counted = [e for e in history.events if e.event == "Counted"]
            assert len(counted) == 1 and counted[0].data is not None and counted[0].data["words"] == 3
        assert runner.handled == 2 * len(executions)

    def test_runner_skips_an_event_delivered_twice(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        runner = self._runner(provider, workflow, provider_transport, provider_tracker)
        event_id = self._publish(workflow, provider_transport, provider_tracker, "kit-twice", {"text": "one"})
        self._publish(workflow, provider_transport, provider_tracker, "kit-twice", {"text": "one"}, event_id)
        self._publish(workflow, provider_transport, provider_tracker, "kit-after", {"text": "two"})
        self._run_until(runner, lambda: self._counted(provider_tracker, "kit-twice")
                        and self._counted(provider_tracker, "kit-after"))
        deliveries = provider_tracker.history("kit-twice").deliveries
        assert [d.function for d in deliveries if d.event_id == event_id] == ["reader"], deliveries

    def test_runner_sets_aside_what_it_cannot_decode_and_goes_on(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        runner = self._runner(provider, workflow, provider_transport, provider_tracker)
        provider_transport.publish("Uploaded", [Record("kit-junk", b"\xff not an event"),
                                                Record("kit-junk", b'{"no": "execution id"}')])
        self._publish(workflow, provider_transport, provider_tracker, "kit-junk", {"text": "fine"})
        self._run_until(runner, lambda: self._counted(provider_tracker, "kit-junk"))

    def test_runner_retries_a_failure_then_records_it_while_other_executions_go_on(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        runner = self._runner(provider, workflow, provider_transport, provider_tracker)
        # the reader passes a number on as the text: the counter fails on it, every attempt
        self._publish(workflow, provider_transport, provider_tracker, "kit-bad", {"text": 5})
        good = [f"kit-good-{i}" for i in range(3)]
        for execution in good:
            self._publish(workflow, provider_transport, provider_tracker, execution, {"text": "x y"})

        def settled() -> bool:
            failed = [d for d in provider_tracker.history("kit-bad").deliveries if d.status == "failed"]
            return bool(failed) and all(self._counted(provider_tracker, e) for e in good)

        self._run_until(runner, settled)
        counter = [d for d in provider_tracker.history("kit-bad").deliveries if d.function == "counter"]
        attempts = workflow.functions["counter"].retries + 1
        assert [d.attempt for d in counter] == list(range(1, attempts + 1)), counter
        assert [d.status for d in counter] == ["retrying"] * (attempts - 1) + ["failed"], counter
        assert all(d.error and "AttributeError" in d.error for d in counter), counter

    def test_runner_stops_within_its_poll_interval_when_idle(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        runner = self._runner(provider, workflow, provider_transport, provider_tracker)
        started = time.monotonic()
        took = self._run_until(runner, lambda: time.monotonic() - started > 1.0)
        assert took < 5.0 + runner.poll_interval, f"an idle runner took {took:.1f} s to stop"

    def test_setup_plans_then_is_idempotent(self, provider: FunctionProvider, workflow: Workflow,
                                            provider_transport: Transport, provider_tracker: TrackerStore) -> None:
        plan = provider.plan_setup(workflow, provider_transport, provider_tracker)
        check_plan(plan, {"create", "update", "delete"})
        assert provider.plan_setup(workflow, provider_transport, provider_tracker) == plan, \
            "planning (a dry run) must change nothing"
        apply_steps(plan, provider)
        assert provider.plan_setup(workflow, provider_transport, provider_tracker) == []

    def test_teardown_then_setup_plans_the_same_again(
        self, provider: FunctionProvider, workflow: Workflow, provider_transport: Transport,
        provider_tracker: TrackerStore
    ) -> None:
        first = provider.plan_setup(workflow, provider_transport, provider_tracker)
        apply_steps(first, provider)
        teardown = provider.plan_teardown(workflow, provider_transport, provider_tracker)
        check_plan(teardown, {"delete"})
        assert bool(teardown) == bool(first), "teardown removes what setup created"
        apply_steps(teardown, provider)
        assert provider.plan_teardown(workflow, provider_transport, provider_tracker) == []
        again = provider.plan_setup(workflow, provider_transport, provider_tracker)
        assert [s.as_change() for s in again] == [s.as_change() for s in first]


def _builtin(kind: str, name: str, workflow: Workflow, state_dir: Path) -> object:
    from xflow.core.interfaces import PluginContext
    from xflow.core.plugins import PluginRegistry

    info = PluginRegistry().get(kind, name)
    assert info.cls is not None
    return info.cls(PluginContext(workflow.id, {}, state_dir, workflow))
