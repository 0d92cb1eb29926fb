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
