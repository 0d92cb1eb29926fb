"""Renders a workflow as an SVG drawing on the server (no JavaScript library): events and functions in layers.

Events are pills, functions boxes; a solid arrow is a subscription (event -> function), a dashed one a publish
(function -> event). Every node and edge carries ``data-event`` / ``data-function`` attributes and the classes
``node event``, ``node function``, ``edge sub`` and ``edge pub``, so the web view colours them by an execution's
state without any layout of its own. Layers: the longest path from the first events, cycles broken where a
depth-first walk in flow order meets them again (those edges are drawn as ``edge back``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from xflow.core.model import Workflow

NODE_HEIGHT = 28
LAYER_GAP = 30
NODE_GAP = 18
MARGIN = 12
CHAR_WIDTH = 7.4  # an estimate for 13px sans-serif: the browser measures nothing for us
MIN_WIDTH = 80

Node = tuple[str, str]  # ("event" | "function", name)


@dataclass
class _Box:
    x: float
    y: float
    width: float


def render_svg(workflow: Workflow) -> str:
    """The workflow's graph as a standalone SVG document (UTF-8 text)."""
    nodes, edges = _graph(workflow)
    back = _back_edges(nodes, edges)
    layers = _layers(nodes, edges, back)
    boxes = _place(layers)
    width = max((b.x + b.width for b in boxes.values()), default=0) + MARGIN + (60 if back else 0)
    height = max((b.y + NODE_HEIGHT for b in boxes.values()), default=0) + MARGIN
    marker = "xf-arrow-" + hashlib.sha1(workflow.id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="workflow-graph" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label={quoteattr("workflow " + workflow.id)}>',
           f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrow-head"/></marker></defs>']
    for source, target in edges:
        kind = "sub" if source[0] == "event" else "pub"
        event, function = (source[1], target[1]) if kind == "sub" else (target[1], source[1])
        classes = f"edge {kind}" + (" back" if (source, target) in back else "")
        out.append(f'<path class="{classes}" data-event={quoteattr(event)} data-function={quoteattr(function)} '
                   f'd="{_curve(boxes[source], boxes[target])}" marker-end="url(#{marker})"/>')
    for node in nodes:
        kind, name = node
        box = boxes[node]
        radius = NODE_HEIGHT / 2 if kind == "event" else 4
        tip = name if kind == "event" else f"{name}: {workflow.functions[name].description}".rstrip(": ")
        out.append(f'<g class="node {kind}" data-{kind}={quoteattr(name)}><title>{escape(tip)}</title>'
                   f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.width:.1f}" height="{NODE_HEIGHT}" '
                   f'rx="{radius:.0f}"/><text x="{box.x + box.width / 2:.1f}" y="{box.y + NODE_HEIGHT / 2:.1f}" '
                   f'text-anchor="middle" dominant-baseline="central">{escape(name)}</text></g>')
    out.append("</svg>")
    return "\n".join(out)


def _graph(workflow: Workflow) -> tuple[list[Node], list[tuple[Node, Node]]]:
    nodes: list[Node] = [("event", e) for e in workflow.flow] + [("function", f) for f in workflow.functions]
    edges = [(("event", e), ("function", f)) for e in workflow.flow for f in workflow.subscribers(e)]
    edges += [(("function", f.name), ("event", e)) for f in workflow.functions.values() for e in f.publishes
              if e in workflow.flow]
    return nodes, edges


def _back_edges(nodes: list[Node], edges: list[tuple[Node, Node]]) -> set[tuple[Node, Node]]:
    """Edges that close a cycle, found by an iterative depth-first walk in flow order (no recursion limit)."""
    following: dict[Node, list[Node]] = {node: [] for node in nodes}
    for source, target in edges:
        following[source].append(target)
    state: dict[Node, int] = {}  # 1: on the walk's path, 2: done
    back: set[tuple[Node, Node]] = set()
    for root in nodes:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(following[root]))]
        while stack:
            node, rest = stack[-1]
            found: Node | None = next(rest, None)
            if found is None:
                state[node] = 2
                stack.pop()
            elif state.get(found) == 1:
                back.add((node, found))
            elif found not in state:
                state[found] = 1
                stack.append((found, iter(following[found])))
    return back


def _layers(nodes: list[Node], edges: list[tuple[Node, Node]], back: set[tuple[Node, Node]]) -> list[list[Node]]:
    """Longest-path layers over the edges that are not back edges (Kahn's order), then one barycentre sweep."""
    forward = [edge for edge in edges if edge not in back]
    before: dict[Node, list[Node]] = {node: [] for node in nodes}
    after: dict[Node, list[Node]] = {node: [] for node in nodes}
    for source, target in forward:
        before[target].append(source)
        after[source].append(target)
    waiting = {node: len(before[node]) for node in nodes}
    ready = [node for node in nodes if waiting[node] == 0]
    layer: dict[Node, int] = {}
    while ready:
        node = ready.pop(0)
        layer[node] = max((layer[p] + 1 for p in before[node]), default=0)
        for target in after[node]:
            waiting[target] -= 1
            if waiting[target] == 0:
                ready.append(target)
    layers: list[list[Node]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for node in nodes:  # first-mention order within a layer
        layers[layer[node]].append(node)
    for index in range(1, len(layers)):
        position = {node: i for i, node in enumerate(layers[index - 1])}
        order = {node: i for i, node in enumerate(layers[index])}

        def centre(node: Node, position: dict[Node, int] = position, order: dict[Node, int] = order) -> float:
            placed = [position[p] for p in before[node] if p in position]
            return sum(placed) / len(placed) if placed else float(order[node])

        layers[index].sort(key=centre)
    return layers


def _place(layers: list[list[Node]]) -> dict[Node, _Box]:
    widths = {node: max(MIN_WIDTH, len(node[1]) * CHAR_WIDTH + 24) for layer in layers for node in layer}
    spans = [sum(widths[n] for n in layer) + NODE_GAP * (len(layer) - 1) for layer in layers]
    full = max(spans, default=0)
    boxes: dict[Node, _Box] = {}
    for index, layer in enumerate(layers):
        x = MARGIN + (full - spans[index]) / 2
        y = MARGIN + index * (NODE_HEIGHT + LAYER_GAP)
        for node in layer:
            boxes[node] = _Box(x, y, widths[node])
            x += widths[node] + NODE_GAP
    return boxes


def _curve(source: _Box, target: _Box) -> str:
    x1, y1 = source.x + source.width / 2, source.y + NODE_HEIGHT
    x2, y2 = target.x + target.width / 2, target.y
    if y2 <= y1:  # an edge back up (a cycle): leave from the side and come round
        x1, y1 = source.x + source.width, source.y + NODE_HEIGHT / 2
        x2, y2 = target.x + target.width, target.y + NODE_HEIGHT / 2
        bend = max(source.width, target.width) / 2 + 30
        return f"M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 + bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
    middle = (y1 + y2) / 2
    return f"M{x1:.1f},{y1:.1f} C{x1:.1f},{middle:.1f} {x2:.1f},{middle:.1f} {x2:.1f},{y2:.1f}"
