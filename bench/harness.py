"""Shared harness of the benchmarks: kinds of run interleaved round by round, and the 3-step chain run by ``Engine.work``.

``interleaved`` runs every kind once a round, for a number of rounds, so that each kind sees the same (noisy) machine;
the benchmarks then keep the best of each. The rest serves the benchmarks that measure what a feature costs on the
embedded backend's dispatch (bench_logs.py, bench_metrics.py, bench_tracing.py): ``run_chain`` runs the chain of
bench_local.py over a number of executions and returns the deliveries and their span as the tracker recorded them,
``chain_arguments`` adds their common options, and ``best_rates`` prints each run and keeps the best rate of each mode.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import tempfile
import textwrap
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench_local import CHAIN, STEPS, _Count, _tracker_span, rate

from xflow import Engine

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


def interleaved(kinds: Sequence[K], rounds: int, run: Callable[[K], R], swap: bool = False) -> dict[K, list[R]]:
    """Every kind's results, one a round: each round runs every kind once, in the order given (reversed every other
    round with ``swap``, so that no kind always goes first)."""
    results: dict[K, list[R]] = {kind: [] for kind in kinds}
    for round_ in range(rounds):
        for kind in (kinds if not swap or round_ % 2 == 0 else list(reversed(kinds))):
            results[kind].append(run(kind))
    return results


def run_chain(folder: Path, executions: int, isolation: str, steps: str = STEPS, extra_yaml: str = "",
              during: Callable[[Engine], AbstractContextManager[object]] | None = None) -> tuple[int, float]:
    """The chain (with ``steps`` as its handlers' source and ``extra_yaml`` after the workflow file) over ``executions``
    executions, published before ``Engine.work`` runs until the last step has published each; ``during(engine)`` is
    entered around the work. Returns (deliveries, the seconds from the first one's start to the last one's end)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "steps.py").write_text(steps)
    (folder / "chain.yaml").write_text(textwrap.dedent(CHAIN) + extra_yaml)
    engine = Engine(folder / "chain.yaml", state_dir=folder / "state", options={"provider": {"isolation": isolation}})
    try:
        engine.setup()
        ids = [engine.publish("A", {"n": 0}) for _ in range(executions)]
        with during(engine) if during is not None else contextlib.nullcontext():
            done = _Count(folder, "bench_chain", "events", "event = 'D'")
            try:
                engine.work(until=lambda: done() >= executions)
            finally:
                done.close()
    finally:
        engine.close()
    handled, span = _tracker_span(folder, "bench_chain", set(ids))
    assert handled == 3 * executions, (handled, 3 * executions)
    return handled, span


def chain_arguments(doc: str, each: str = "each") -> argparse.ArgumentParser:
    """A parser with the options of a chain benchmark (``--executions``, ``--repeat``, ``--isolation``); the caller adds
    its own and then ``--quick`` with ``parse_chain_arguments``. ``doc`` is the module's docstring (its first paragraph
    describes the parser)."""
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help=f"runs of {each}, alternating; the best is kept")
    parser.add_argument("--isolation", choices=("thread", "process"), default="thread")
    return parser


def parse_chain_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments, ``--quick`` applied (a tenth of the executions, at least 50, two runs of each); xflow's own logs
    are quieted to errors so that they do not fall into the runs."""
    parser.add_argument("--quick", action="store_true", help="a tenth of the executions, two runs of each")
    args = parser.parse_args(argv)
    if args.quick:
        args.executions, args.repeat = max(50, args.executions // 10), 2
    logging.getLogger("xflow").setLevel(logging.ERROR)
    return args


@dataclass(frozen=True)
class Run:
    """One run of the chain: its deliveries, their span in seconds, and a note printed after its rate."""

    handled: int
    span: float
    note: str = ""


def best_rates(modes: Mapping[K, str], repeat: int, prefix: str, run: Callable[[Path, K], Run]) -> dict[K, float]:
    """The best deliveries/s of each mode (its label the value in ``modes``) over ``repeat`` rounds, each running every
    mode once in a fresh folder of a temporary directory; every run is printed as it ends."""
    runs = itertools.count()

    def one(mode: K) -> float:
        index = next(runs)
        done = run(Path(tmp) / str(index), mode)
        speed = rate(done.handled, done.span)
        print(f"round {index // len(modes) + 1} {modes[mode]}: {done.handled} deliveries in {done.span:.2f} s = "
              f"{speed:,.0f}/s{done.note}")
        return speed

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        return {mode: max(speeds) for mode, speeds in interleaved(list(modes), repeat, one).items()}
