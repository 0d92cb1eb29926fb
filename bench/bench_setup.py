"""Benchmark of planning and setup on the embedded backend as the workflow grows.

    python bench/bench_setup.py [--sizes 250,500,1000] [--rounds 1] [--flow]

Generates workflows of N chained functions (function i subscribes to event i and publishes event
i+1), then times the ``xflow`` command in a subprocess, as a user runs it, with
``--transport local --provider local --tracker sqlite``:

- ``validate``: loading the file alone (the floor every command pays);
- ``setup --dry-run`` on a fresh state folder (plans every stream, the tracker and the handlers);
- ``setup`` (plans and creates everything);
- ``setup`` again (plans, finds nothing to change);
- ``teardown``.

``--flow`` adds a ``workflows: [{flow: [...]}]`` section naming every event. Planning should grow
linearly: doubling N should roughly double each time. Not a test: read the ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EMBEDDED = ("--transport", "local", "--provider", "local", "--tracker", "sqlite")
HANDLERS = "def step(event, ctx):\n    return {'n': event.get('n', 0) + 1}\n\n\ndef last(event, ctx):\n    return None\n"


def chain(n: int, with_flow: bool) -> str:
    """A workflow file of ``n`` chained functions over ``n + 1`` events."""
    lines = [f"workflow_id: chain_{n}", "functions:"]
    for i in range(n):
        handler = "last" if i == n - 1 else "step"
        lines += [f"  - name: f{i}", "    source: steps.py", f"    handler: {handler}"]
        if i < n - 1:
            lines.append(f"    publishes: [E{i + 1}]")
    lines.append("subscriptions:")
    for i in range(n):
        lines += [f"  - event: E{i}", f"    subscribers: [f{i}]"]
    if with_flow:
        lines += ["workflows:", f"  - id: chain_{n}", "    flow: [" + ", ".join(f"E{i}" for i in range(n)) + "]"]
    return "\n".join(lines) + "\n"


def timed(folder: Path, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XFLOW_")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "xflow.cli", *args], cwd=folder, env=env, capture_output=True,
                          text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"xflow {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return elapsed


def measure(n: int, with_flow: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="xflow-bench-setup-") as tmp:
        folder = Path(tmp)
        (folder / "steps.py").write_text(HANDLERS)
        (folder / "chain.yaml").write_text(chain(n, with_flow))
        return {
            "validate": timed(folder, "validate", "chain.yaml"),
            "dry-run": timed(folder, "setup", "chain.yaml", *EMBEDDED, "--dry-run", "-o", "json"),
            "setup": timed(folder, "setup", "chain.yaml", *EMBEDDED, "-o", "json"),
            "setup again": timed(folder, "setup", "chain.yaml", *EMBEDDED, "-o", "json"),
            "teardown": timed(folder, "teardown", "chain.yaml", "-o", "json"),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="250,500,1000", help="comma-separated function counts")
    parser.add_argument("--rounds", type=int, default=1, help="runs per size; the best is shown")
    parser.add_argument("--flow", action="store_true", help="add a workflows: flow: list naming every event")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    columns = ("validate", "dry-run", "setup", "setup again", "teardown")
    print(f"{'functions':>9}  " + "  ".join(f"{c:>11}" for c in columns) + "   (seconds, wall, best of "
          f"{args.rounds}{', with flow:' if args.flow else ''})")
    previous: dict[str, float] | None = None
    for n in sizes:
        runs = [measure(n, args.flow) for _ in range(max(1, args.rounds))]
        best = {c: min(r[c] for r in runs) for c in columns}
        print(f"{n:>9}  " + "  ".join(f"{best[c]:>11.2f}" for c in columns))
        if previous is not None:
            print(f"{'ratio':>9}  " + "  ".join(f"{best[c] / previous[c]:>10.1f}x" for c in columns))
        previous = best


if __name__ == "__main__":
    main()
