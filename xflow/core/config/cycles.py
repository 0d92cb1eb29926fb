"""Warnings for loops of events: an event whose subscribers, in the end, publish that event again."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from pathlib import Path

from xflow.core.config.problems import MAX_WARNINGS_SHOWN, one_line
from xflow.core.model import Function, Subscription

log = logging.getLogger("xflow")


def warn_cycles(file: Path, events: tuple[str, ...], subscriptions: list[Subscription],
                functions: Mapping[str, Function], hop_limit: int) -> None:
    """Warn once per loop of events (an event whose subscribers publish, in the end, that event again)."""
    subscribers: dict[str, list[str]] = {}
    for sub in subscriptions:
        subscribers.setdefault(sub.event, []).extend(s for s in sub.subscribers if s in functions)
    edges: dict[str, dict[str, str]] = {}  # event -> next event -> the function that publishes it
    for event in events:
        for name in subscribers.get(event, ()):
            for published in functions[name].publishes:
                edges.setdefault(event, {}).setdefault(published, name)
    loops = [c for c in _strongly_connected(events, edges) if len(c) > 1 or c[0] in edges.get(c[0], {})]
    for component in loops[:MAX_WARNINGS_SHOWN]:
        start = component[0]
        path = _path_back(start, edges, set(component))
        through = dict.fromkeys(edges[a][b] for a, b in itertools.pairwise(path))
        log.warning("%s: events form a cycle: %s (through %s); an execution can go round it until "
                    "general.hop_limit (%d) hops", one_line(str(file)), " -> ".join(path), ", ".join(through), hop_limit)
    if len(loops) > MAX_WARNINGS_SHOWN:
        log.warning("%s: ... and %d more cycles of events", one_line(str(file)), len(loops) - MAX_WARNINGS_SHOWN)


def _strongly_connected(nodes: tuple[str, ...], edges: Mapping[str, Mapping[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, without recursion; each in ``nodes`` order, in order of first node."""
    order = {node: position for position, node in enumerate(nodes)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(edges.get(root, {})))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in order:
                    continue
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(edges.get(successor, {}))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component, key=order.__getitem__))
    return sorted(found, key=lambda c: order[c[0]])


def _path_back(start: str, edges: Mapping[str, Mapping[str, str]], within: set[str]) -> list[str]:
    """The shortest path of events from ``start`` back to ``start`` inside one strongly connected component."""
    if start in edges.get(start, {}):
        return [start, start]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in edges.get(node, {}):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if successor in within and successor not in came_from:
                    came_from[successor] = node
                    following.append(successor)
        frontier = following
    return [start, start]  # pragma: no cover - a component with more than one event always leads back
