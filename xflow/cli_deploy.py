"""The deployment commands of ``xflow``: ``--stage`` (shared by every command that touches a deployment),
``xflow package`` (build every artifact once, with a manifest), ``setup --from`` and ``xflow ci init``.

Only click is imported at start-up; packaging, the Lambda provider and the pipeline templates are imported inside
the commands.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from xflow.core.engine import Engine


def _remember_stage(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        from xflow.core.stages import check_stage

        source = "--stage" if ctx.get_parameter_source(param.name or "stage") != click.core.ParameterSource.ENVIRONMENT \
            else "XFLOW_STAGE"
        ctx.ensure_object(dict)["stage"] = check_stage(value, source)
    return value


def stage_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--stage NAME`` (or ``XFLOW_STAGE``): the deployment a command works on; kept in ``ctx.obj['stage']``."""
    return click.option("--stage", metavar="NAME", envvar="XFLOW_STAGE", expose_value=False, callback=_remember_stage,
                        help="The stage (dev, prod, ...): a deployment of its own, every name suffixed (default: the "
                             "file's stage:, else none).")(command)


def stage_of(ctx: click.Context) -> str | None:
    """The ``--stage`` given to the command (None: the file's ``stage:``, if any)."""
    return (ctx.obj or {}).get("stage")


def from_package_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``setup --from DIR``: deploy what ``xflow package`` built instead of building it again."""
    return click.option("--from", "package", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                        help="Deploy the artifacts 'xflow package' wrote to DIR (the same bytes on every stage).")(command)


def use_package(engine: Engine, package: Path | None) -> None:
    """Have ``engine``'s provider deploy the package in ``package`` (an XflowError when it cannot, or when the package
    was not built from this workflow file)."""
    if package is None:
        return
    from xflow.core.errors import XflowError

    provider: Any = engine.provider
    take = getattr(provider, "use_package", None)
    if take is None:
        raise XflowError(f"the {provider.name!r} provider deploys no packages: --from applies to --provider lambda")
    take(engine.workflow, package)


# -- package ----------------------------------------------------------------------------------
@click.command("package")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "output_dir", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="The folder to write the artifacts and their manifest to (created; files of an earlier package in "
                   "it are replaced).")
@click.option("--shared-layers", is_flag=True,
              help="Put requirements that several functions share into one Lambda layer zip (setup --from publishes "
                   "it once, as a version of a layer those functions name).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Human lines, or the manifest as JSON (--output names the folder here).")
def package_command(file: Path, output_dir: Path, shared_layers: bool, fmt: str) -> None:
    """Build every Lambda artifact of FILE into DIR with a manifest (function, sha256, size); touch no backend.

    The same sources and requirements give the same bytes, whatever the machine, folder, time or umask: build
    once, then deploy the same package to every stage with 'xflow setup FILE --from DIR --stage S'.
    """
    from xflow.core.config import load_workflow
    from xflow.providers.aws_lambda.artifacts import write_package

    workflow = load_workflow(file)
    manifest = write_package(workflow, output_dir, shared_layers=shared_layers)
    if fmt == "json":
        click.echo(json.dumps(manifest, indent=2))
        return
    for artifact in manifest["artifacts"]:
        name = artifact.get("function") or artifact.get("layer")
        click.echo(f"{artifact['kind']:<8} {name:<40} {artifact['size']:>10} bytes  sha256 {artifact['sha256']}")
    click.echo(f"{len(manifest['artifacts'])} artifact(s) and manifest.json in {output_dir}")


# -- ci init ----------------------------------------------------------------------------------
@click.group("ci")
def ci_group() -> None:
    """Continuous delivery: generate a pipeline that validates, tests, plans, packages and deploys."""


@ci_group.command("init")
@click.argument("platform", type=click.Choice(["github", "gitlab"]))
@click.option("--file", "workflow_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The workflow file the pipeline deploys (default: the only *.yaml/*.yml/*.cfg here that is one).")
@click.option("--stages", default="dev,prod", show_default=True, metavar="S1,S2,...",
              help="The stages, in promotion order: main deploys to the first, each tag (or approval) promotes.")
@click.option("--region", default="us-east-1", show_default=True, help="The AWS region deployed to.")
@click.option("--role", "role_variable", default="AWS_DEPLOY_ROLE_ARN", show_default=True, metavar="VARIABLE",
              help="The CI variable that holds the ARN of the role the pipeline assumes (by OIDC, no secret).")
@click.option("--python", "python_version", default="3.12", show_default=True, help="Python version the jobs use.")
@click.option("--test-command", default="python -m pytest -q", show_default=True,
              help="How the project's tests run.")
@click.option("--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it (default: .github/workflows/xflow.yml or .gitlab-ci.yml).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
def ci_init_command(platform: str, workflow_file: Path | None, stages: str, region: str, role_variable: str,
                    python_version: str, test_command: str, output: Path | None, force: bool) -> None:
    """Write a pipeline for PLATFORM (github or gitlab).

    Pull requests: install, xflow validate, the tests, and 'xflow setup --dry-run' per stage (the plans kept as
    artifacts). The main branch: xflow package once, deploy it to the first stage. A tag (GitHub: an approval through
    the environment's protection rules; GitLab: a manual job) promotes the same package to each next stage. AWS
    credentials come from the platform's OIDC token and a role, never from secrets written in the file.
    """
    from xflow.core.errors import XflowError
    from xflow.pipelines import PipelineSpec, default_output, find_workflow_file, render

    spec = PipelineSpec.make(find_workflow_file(workflow_file), stages, region=region, role_variable=role_variable,
                             python_version=python_version, test_command=test_command)
    target = output or default_output(platform)
    if target.exists() and not force:
        raise XflowError(f"{target} exists", "pass --force to replace it, or --output to write elsewhere")
    text = render(platform, spec)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise XflowError(f"cannot write the pipeline to {target}: {exc.strerror or exc}",
                         "choose a writable path with --output") from None
    click.echo(f"wrote {target}: {platform} pipeline for {spec.workflow_file}, stages {' -> '.join(spec.stages)}")
    click.echo(f"set the CI variable {role_variable} to the ARN of a role that trusts the {platform} OIDC provider")


COMMANDS = (package_command, ci_group)
