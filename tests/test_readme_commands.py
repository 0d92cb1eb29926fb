"""The README documents every command and every option the ``xflow`` command line has."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from xflow.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _commands(group: click.Group, prefix: str = "xflow") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        path = f"{prefix} {name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found += _commands(command, path)
    return found


COMMANDS = _commands(cli)


def test_the_command_line_has_the_commands_this_test_expects() -> None:
    names = {path for path, _ in COMMANDS}
    assert {"xflow setup", "xflow worker", "xflow serve", "xflow logs", "xflow status", "xflow ci init"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[path for path, _ in COMMANDS])
def test_the_readme_documents_the_command_and_each_of_its_options(path: str, command: click.Command) -> None:
    assert f"`{path}" in README, f"README.md has no row or example for `{path}`"
    missing = [option for parameter in command.params if isinstance(parameter, click.Option)
               for option in parameter.opts if option.startswith("--") and option != "--help" and option not in README]
    assert not missing, f"README.md does not mention {missing} of `{path}`"


def _tables(text: str) -> list[list[list[str]]]:
    """Every table of a Markdown text as rendered (a paragraph inside one ends it): rows of cell texts."""
    from markdown_it import MarkdownIt

    tables: list[list[list[str]]] = []
    row: list[str] | None = None
    for token in MarkdownIt("commonmark").enable("table").parse(text):
        if token.type == "table_open":
            tables.append([])
        elif token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(token.content)
        elif token.type == "tr_close" and row is not None:
            tables[-1].append(row)
            row = None
    return tables


def test_the_command_table_is_one_table_with_a_row_for_every_command() -> None:
    """A paragraph that sat inside the table once split it, and the rows after it (emulate's) rendered as text."""
    pytest.importorskip("markdown_it")
    [table] = [t for t in _tables(README) if t[0] == ["command", "what it does"]]
    rows = [cells[0] for cells in table[1:]]
    assert all(len(cells) == 2 and cells[1].strip() for cells in table), [cells for cells in table
                                                                          if len(cells) != 2 or not cells[1].strip()]
    context = click.Context(cli)
    missing = [name for name in cli.list_commands(context)
               if not any(cell.startswith(f"`xflow {name} ") or f"/ `xflow {name} " in cell for cell in rows)]
    assert not missing, f"the README's command table has no row for {missing}"
