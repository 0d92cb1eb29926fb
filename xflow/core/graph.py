"""Renders a workflow as a graph: Mermaid flowchart or Graphviz dot."""

from __future__ import annotations

from xflow.core.model import Workflow


def _edges(workflow: Workflow) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    subscribed = [(event, fn) for event in workflow.flow for fn in workflow.subscribers(event)]
    published = [(fn.name, event) for fn in workflow.functions.values() for event in fn.publishes]
    return subscribed, published


def to_mermaid(workflow: Workflow) -> str:
    """Events are rounded nodes, functions are boxes; arrows show subscriptions and publishes."""
    lines = ["flowchart LR", f"  %% workflow {workflow.id}"]
    lines += [f"  ev_{event}([{event}])" for event in workflow.flow]
    lines += [f"  fn_{_safe(name)}[{name}]" for name in workflow.functions]
    subscribed, published = _edges(workflow)
    lines += [f"  ev_{event} --> fn_{_safe(fn)}" for event, fn in subscribed]
    lines += [f"  fn_{_safe(fn)} -.-> ev_{event}" for fn, event in published]
    return "\n".join(lines)


def to_dot(workflow: Workflow) -> str:
    lines = [f'digraph "{workflow.id}" {{', "  rankdir=LR;"]
    lines += [f'  "{event}" [shape=ellipse];' for event in workflow.flow]
    lines += [f'  "{name}" [shape=box];' for name in workflow.functions]
    subscribed, published = _edges(workflow)
    lines += [f'  "{event}" -> "{fn}";' for event, fn in subscribed]
    lines += [f'  "{fn}" -> "{event}" [style=dashed];' for fn, event in published]
    return "\n".join(lines + ["}"])


def _safe(name: str) -> str:
    return name.replace("-", "_")
