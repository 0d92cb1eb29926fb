"""``xflow plugins new transport|provider|tracker NAME``: write a ready-to-install plugin distribution.

The skeleton is a complete distribution named ``xflow-KIND-NAME``: ``setup.cfg`` with the
entry point in group ``xflow``, a package with the plugin class whose abstract methods raise
``NotImplementedError`` (each naming what to implement), a test module wired to the
conformance kit (:mod:`xflow.testing`), and a README. Installed with ``pip install -e .``, its
tests run at once and fail exactly where behaviour is still to be written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

import click

from xflow.core.errors import XflowError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,39}")
GUIDE = "docs/plugins.md in the xflow repository"


@dataclass(frozen=True)
class Kind:
    """What differs between the three kinds of plugin in the skeleton."""

    kind: str
    base: str
    suffix: str
    hook: str
    contract: str
    factory: str
    flag: str


KINDS = {
    "transport": Kind("transport", "Transport", "Transport", "xflow_transports", "TransportContract",
                      "transport_factory", "--transport"),
    "provider": Kind("provider", "FunctionProvider", "Provider", "xflow_function_providers",
                     "FunctionProviderContract", "provider_factory", "--provider"),
    "tracker": Kind("tracker", "TrackerStore", "TrackerStore", "xflow_tracker_stores", "TrackerStoreContract",
                    "tracker_factory", "--tracker"),
}

_SETUP_CFG = """\
[metadata]
name = $dist
version = 0.1.0
description = $title for xflow: $flag $name
long_description = file: README.md
long_description_content_type = text/markdown
license = MIT
classifiers =
    Programming Language :: Python :: 3

[options]
packages = find:
python_requires = >=3.10
install_requires =
    xflow>=0.1

[options.packages.find]
include = $package*

[options.extras_require]
test =
    pytest>=7.4

[options.entry_points]
xflow =
    $name = $package
"""

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=64", "wheel"]
build-backend = "setuptools.build_meta"

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

_INIT = '''\
"""$dist: registers the ``$name`` $kind with xflow (entry point ``$name`` in group ``xflow``)."""

from __future__ import annotations

from xflow.core.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def $hook() -> list[type]:
    from $package.$kind import $cls

    return [$cls]
'''

_HEADER = '''\
"""The ``$name`` $kind for xflow.

TODO: say what it is built on, what it supports, and its connection option's format.
Options: ``url`` (also read from ``XFLOW_${env}_URL``).
"""

from __future__ import annotations

'''

_CLASS_HEAD = '''\
GUIDE = "see the plugin author's guide ($guide), section '$base'"


class $cls($base):
    """TODO: one paragraph: what this $kind does."""

    name = "$name"
    description = "TODO: one line shown by 'xflow plugins'"
    #: every option the plugin accepts, with its type and default; any other key is refused with this list
    options = (Option("url", str, None, "TODO: where the backend is (also XFLOW_${env}_URL)"),)
'''

_TRANSPORT = _HEADER + '''\
from collections.abc import Sequence

from xflow.core.errors import XflowError
from xflow.core.interfaces import Consumer, Delivery, PluginContext, Record, Step, Transport
from xflow.core.options import Option

''' + _CLASS_HEAD + '''\
    #: the largest message publish accepts, in bytes
    max_record_bytes = 1_000_000

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.url = self.context.option("url")  # converted to the declared type
        # connect lazily, on first use: constructing a plugin must not wait on the network

    def plan_setup(self, events: Sequence[str]) -> list[Step]:
        """One Step per stream to create (``stream:`` + self.stream_name(event)), none when all exist."""
        raise NotImplementedError(f"$cls.plan_setup: plan the streams to create and remove ({GUIDE})")

    def plan_teardown(self, events: Sequence[str]) -> list[Step]:
        """One ``delete`` Step per stream this workflow has on the backend."""
        raise NotImplementedError(f"$cls.plan_teardown: plan the streams to delete ({GUIDE})")

    def publish(self, event: str, records: Sequence[Record]) -> None:
        """Append the records to the event's stream, partitioned by ``record.key``."""
        for record in records:
            if len(record.value) > self.max_record_bytes:
                raise XflowError(f"$name transport: a record of {len(record.value)} bytes is over "
                                 f"{self.max_record_bytes}", "publish a reference to large data instead")
        raise NotImplementedError(f"$cls.publish: append records to the stream ({GUIDE})")

    def subscribe(self, group: str, events: Sequence[str]) -> Consumer:
        """A consumer in group ``group`` reading these events' streams."""
        return ${cls}Consumer(self, group, list(events))


class ${cls}Consumer(Consumer):
    """One member of a consumer group."""

    def __init__(self, transport: $cls, group: str, events: list[str]) -> None:
        self.transport = transport
        self.group = group
        self.events = events

    def poll(self, max_records: int, timeout: float) -> list[Delivery]:
        raise NotImplementedError(f"${cls}Consumer.poll: return up to max_records deliveries ({GUIDE})")

    def commit(self, deliveries: Sequence[Delivery]) -> None:
        raise NotImplementedError(f"${cls}Consumer.commit: acknowledge these deliveries ({GUIDE})")

    def close(self) -> None:
        """Leave the group so that uncommitted deliveries go to other consumers."""
'''

_PROVIDER = _HEADER + '''\
from typing import TYPE_CHECKING

from xflow.core.interfaces import FunctionProvider, PluginContext, Step, TrackerStore, Transport
from xflow.core.options import Option

if TYPE_CHECKING:
    from xflow.core.model import Workflow

''' + _CLASS_HEAD + '''\
    #: True only if handlers run in xflow's own worker processes
    runs_locally = False

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.url = self.context.option("url")  # converted to the declared type
        # connect lazily, on first use: constructing a plugin must not wait on the network

    def plan_setup(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        """Steps that deploy each function and subscribe it to its events; none when all is in place."""
        raise NotImplementedError(f"$cls.plan_setup: plan the functions to deploy ({GUIDE})")

    def plan_teardown(self, workflow: Workflow, transport: Transport, tracker: TrackerStore) -> list[Step]:
        """Steps that remove everything plan_setup created."""
        raise NotImplementedError(f"$cls.plan_teardown: plan what to remove ({GUIDE})")
'''

_TRACKER = _HEADER + '''\
from typing import TYPE_CHECKING

from xflow.core.interfaces import (
    DeliveryRecord,
    EventRecord,
    ExecutionHistory,
    PluginContext,
    Step,
    TrackerStore,
)
from xflow.core.options import Option

if TYPE_CHECKING:
    from xflow.core.model import Workflow

''' + _CLASS_HEAD + '''\

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.url = self.context.option("url")  # converted to the declared type
        # connect lazily, on first use: constructing a plugin must not wait on the network

    def plan_setup(self, workflow: Workflow) -> list[Step]:
        """Steps that create the store for this workflow; none when it exists."""
        raise NotImplementedError(f"$cls.plan_setup: plan the store to create ({GUIDE})")

    def plan_teardown(self, workflow: Workflow) -> list[Step]:
        """Steps that remove this workflow's store."""
        raise NotImplementedError(f"$cls.plan_teardown: plan what to remove ({GUIDE})")

    def record_event(self, record: EventRecord) -> None:
        """Store an event; a second record with the same event_id is ignored."""
        raise NotImplementedError(f"$cls.record_event: store the event once per event_id ({GUIDE})")

    def record_delivery(self, record: DeliveryRecord) -> None:
        """Store one delivery attempt's outcome."""
        raise NotImplementedError(f"$cls.record_delivery: store the attempt ({GUIDE})")

    def history(self, execution_id: str) -> ExecutionHistory:
        """All records of one execution, oldest first; empty lists when unknown."""
        raise NotImplementedError(f"$cls.history: read the execution's records ({GUIDE})")
'''

_TEST_HEAD = '''\
"""Tests of the $name $kind: the xflow conformance kit, plus your own.

Run ``pytest`` after ``pip install -e ".[test]"``. Every failure names behaviour still to write.
"""

from __future__ import annotations

import pytest
from xflow.core.interfaces import PluginContext
from xflow.core.plugins import PluginRegistry
from xflow.testing import $contract
from $package.$kind import $cls


def test_is_installed_and_found_by_name():
    info = PluginRegistry().get("$kind", "$name")
    assert info.cls is $cls
    assert info.distribution == "$dist"


@pytest.fixture
def options():
    """The options the tests build the $kind with. TODO: start (or point at) a real server here."""
    return {}


class Test$cls($contract):
    @pytest.fixture
'''

_TEST_FACTORY = {
    "transport": '''\
    def transport_factory(self, options, tmp_path):
        return lambda workflow_id: $cls(PluginContext(workflow_id, options, tmp_path))
''',
    "provider": '''\
    def provider_factory(self, options, tmp_path, workflow):
        return lambda workflow_id: $cls(PluginContext(workflow_id, options, tmp_path, workflow))
''',
    "tracker": '''\
    def tracker_factory(self, options, tmp_path):
        return lambda workflow_id: $cls(PluginContext(workflow_id, options, tmp_path))
''',
}

_README = """\
# $dist

The `$name` $kind for [xflow](https://pypi.org/project/xflow/): `xflow run FILE $flag $name`.

TODO: what it is built on, what it supports, and what it cannot do.

## Install

```
pip install $dist
xflow plugins            # lists: $kind  $name  $dist
```

## Options

| option | environment variable | meaning |
| --- | --- | --- |
| `url` | `XFLOW_${env}_URL` | TODO |

Give them in the workflow file (`$kind: {name: $name, options: {url: ...}}`), as `--option url=...`, or
through the environment variable.

## Develop

```
pip install -e ".[test]"
pytest                   # the xflow conformance kit: each failure is behaviour still to write
```

The skeleton's methods raise `NotImplementedError` naming what to implement; the plugin
author's guide ($guide) explains each method and the checks of the kit.

## Publish

Keep the distribution name `$dist` so that users find it, then
`python -m build && twine upload dist/*`.
"""


def class_name(name: str, kind: Kind) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", name) if part) + kind.suffix


def skeleton_files(kind_name: str, name: str) -> dict[str, str]:
    """The skeleton's files, path (relative to the distribution folder) → text."""
    if kind_name not in KINDS:
        raise XflowError(f"unknown plugin kind {kind_name!r}; choose one of: {', '.join(KINDS)}")
    if not NAME_PATTERN.fullmatch(name):
        raise XflowError(f"plugin name {name!r} is not valid",
                         "use 1-40 lowercase letters, digits, '-' or '_', starting with a letter")
    kind = KINDS[kind_name]
    package = f"xflow_{kind.kind}_{name.replace('-', '_')}"
    values = {
        "name": name, "kind": kind.kind, "dist": f"xflow-{kind.kind}-{name}", "package": package,
        "cls": class_name(name, kind), "base": kind.base, "hook": kind.hook, "contract": kind.contract,
        "flag": kind.flag, "env": name.upper().replace("-", "_"), "guide": GUIDE,
        "title": {"transport": "A transport", "provider": "A function provider", "tracker": "A tracker store"}[
            kind.kind],
    }
    source = {"transport": _TRANSPORT, "provider": _PROVIDER, "tracker": _TRACKER}[kind.kind]

    def fill(text: str) -> str:
        return Template(text).substitute(values)

    return {
        "setup.cfg": fill(_SETUP_CFG),
        "pyproject.toml": _PYPROJECT,
        "README.md": fill(_README),
        f"{package}/__init__.py": fill(_INIT),
        f"{package}/{kind.kind}.py": fill(source),
        f"tests/test_{package}.py": fill(_TEST_HEAD + _TEST_FACTORY[kind.kind]),
    }


def write_skeleton(kind_name: str, name: str, directory: Path) -> Path:
    """Write the distribution ``xflow-KIND-NAME`` into ``directory``; return its folder."""
    files = skeleton_files(kind_name, name)
    target = Path(directory) / f"xflow-{kind_name}-{name}"
    if target.exists() and any(target.iterdir()):
        raise XflowError(f"{target} already exists and is not empty", "choose another --directory or NAME")
    for relative, text in files.items():
        path = target / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise XflowError(f"cannot write {path}: {exc.strerror}", "choose a writable --directory") from None
    return target


@click.command("new")
@click.argument("kind", type=click.Choice(sorted(KINDS)))
@click.argument("name")
@click.option("--directory", "-d", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder in which to create the distribution's folder.")
def new_plugin_command(kind: str, name: str, directory: Path) -> None:
    """Write a plugin distribution skeleton xflow-KIND-NAME, with tests wired to the conformance kit."""
    target = write_skeleton(kind, name, directory)
    click.echo(f"created {target} (distribution xflow-{kind}-{name}, entry point {name!r} in group 'xflow')")
    click.echo("next:")
    click.echo(f"  cd {target}")
    click.echo('  pip install -e ".[test]"')
    click.echo("  pytest        # each failure is behaviour still to write")
    click.echo(f"  xflow plugins # lists the {kind} {name!r}")
