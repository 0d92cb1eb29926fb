"""Generated CI/CD pipelines (``xflow ci init github|gitlab``): validate, test and plan on pull requests; package once
and deploy to the first stage on the main branch; promote the same package to each next stage on a tag.

Both pipelines:

- on a pull (merge) request: install, ``xflow validate``, the project's tests, and ``xflow setup --dry-run --stage S``
  for every stage, each plan kept as a build artifact (``plan-S.json``);
- on the main branch: ``xflow package`` once (kept as an artifact), then ``xflow setup --from dist/xflow-package``
  to the first stage;
- on a tag (``v*``): ``xflow package`` again (reproducible: the same sources give the same bytes), a check that those
  bytes are what runs on the previous stage (a dry run of the package against it must plan no code change), then
  the deploy to the next stage, behind an approval: GitHub's environment protection rules (each job names its stage
  as its ``environment``), GitLab's manual jobs.

AWS credentials come from the platform's OpenID Connect token and a role that trusts it: GitHub's
``aws-actions/configure-aws-credentials`` with ``role-to-assume``, GitLab's ``id_tokens`` handed to boto3 as a web
identity (``AWS_ROLE_ARN``, ``AWS_WEB_IDENTITY_TOKEN_FILE``). The role's ARN is a CI variable (not a secret); no
credential is written in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xflow.core.errors import XflowError

PACKAGE_DIR = "dist/xflow-package"
CHECKOUT = "actions/checkout@v4"
SETUP_PYTHON = "actions/setup-python@v5"
AWS_CREDENTIALS = "aws-actions/configure-aws-credentials@v4"
UPLOAD = "actions/upload-artifact@v4"
DOWNLOAD = "actions/download-artifact@v4"
#: what a promotion checks: the package's code is what runs on the previous stage (the dry run plans no code change)
SAME_CODE_CHECK = ("python -c \"import json, sys; plan = json.load(open(sys.argv[1])); "
                   "changed = [c['resource'] for c in plan['changes'] if c['resource'].startswith('function-code:')]; "
                   "sys.exit('not the code that runs on the previous stage: ' + ', '.join(changed) if changed else 0)\"")


@dataclass(frozen=True)
class PipelineSpec:
    """What a generated pipeline deploys, and how."""

    workflow_file: str
    stages: tuple[str, ...]
    region: str
    role_variable: str
    python_version: str
    test_command: str

    @classmethod
    def make(cls, workflow_file: Path, stages: str, *, region: str, role_variable: str, python_version: str,
             test_command: str) -> PipelineSpec:
        from xflow.core.stages import check_stage

        names = tuple(s.strip() for s in stages.split(",") if s.strip())
        if not names:
            raise XflowError("--stages names no stage", "for example --stages dev,prod")
        for name in names:
            check_stage(name, "--stages")
        if len(set(names)) != len(names):
            raise XflowError(f"--stages names a stage twice: {stages}")
        if not role_variable.replace("_", "").isalnum() or not role_variable[:1].isalpha():
            raise XflowError(f"--role {role_variable!r} is not a CI variable name (letters, digits and _)")
        return cls(workflow_file.as_posix(), names, region, role_variable, python_version, test_command)


def find_workflow_file(given: Path | None) -> Path:
    """The workflow file a pipeline deploys: ``given`` (checked), else the only workflow file in this folder and the
    folders below it (two levels), as a path relative to this folder."""
    from xflow.core.config import load_workflow

    here = Path.cwd()
    if given is not None:
        load_workflow(given)  # a file that does not validate is reported now, not in CI
        path = given.resolve()
        try:
            return path.relative_to(here)
        except ValueError:
            raise XflowError(f"{given} is not inside this folder ({here})",
                             "run 'xflow ci init' from the repository's root") from None
    found = []
    for pattern in ("*.yaml", "*.yml", "*.cfg", "*/*.yaml", "*/*.yml", "*/*.cfg", "*/*/*.yaml", "*/*/*.yml"):
        for path in sorted(here.glob(pattern)):
            rel = path.relative_to(here)
            if any(part.startswith(".") for part in rel.parts) or rel.name == ".gitlab-ci.yml":
                continue
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if ("lambdas:" in text or "functions:" in text) and "subscriptions:" in text:
                found.append(rel)
    if len(found) != 1:
        listed = ", ".join(str(p) for p in found[:5]) or "none"
        raise XflowError(f"cannot tell which workflow file to deploy ({len(found)} found: {listed})",
                         "name it: xflow ci init PLATFORM --file path/to/flow.yaml")
    return found[0]


def default_output(platform: str) -> Path:
    return Path(".github/workflows/xflow.yml") if platform == "github" else Path(".gitlab-ci.yml")


class _Literal(str):
    """A string written as a YAML block (``|``): shell scripts stay readable."""


def _dump(data: Any) -> str:
    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # every step written out (no &anchors)
            return True

    Dumper.add_representer(_Literal, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value,
                                                                                     style="|"))
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, width=120, default_flow_style=False)


def _install() -> _Literal:
    return _Literal('python -m pip install --upgrade pip\n'
                    'python -m pip install "xflow[aws]"\n'
                    'if [ -f requirements.txt ]; then python -m pip install -r requirements.txt; fi\n')


def render(platform: str, spec: PipelineSpec) -> str:
    header = (f"# Generated by 'xflow ci init {platform}': validate, test and plan pull requests; package once on main "
              f"and deploy to {spec.stages[0]}; a tag promotes the same package through "
              f"{' -> '.join(spec.stages[1:]) or 'no further stage'}.\n"
              f"# AWS access: the CI variable {spec.role_variable} holds the ARN of a role that trusts this platform's "
              "OIDC provider; no secret is written here.\n")
    body = github(spec) if platform == "github" else gitlab(spec)
    return header + _dump(body)


# -- GitHub Actions -------------------------------------------------------------------------------
def github(spec: PipelineSpec) -> dict[str, Any]:
    role = "${{ vars." + spec.role_variable + " }}"
    python: list[dict[str, Any]] = [{"uses": CHECKOUT}, {"uses": SETUP_PYTHON, "with": {"python-version": spec.python_version}},
              {"name": "Install", "run": _install()}]
    credentials = {"name": "AWS credentials (OIDC)", "uses": AWS_CREDENTIALS,
                   "with": {"role-to-assume": role, "aws-region": "${{ env.AWS_REGION }}"}}
    jobs: dict[str, Any] = {
        "test": {"name": "validate and test", "runs-on": "ubuntu-latest", "steps": [
            *python,
            {"name": "Validate", "run": 'xflow validate "$XFLOW_FILE"'},
            {"name": "Test", "run": spec.test_command}]},
        "plan": {"name": "plan every stage", "if": "github.event_name == 'pull_request'", "needs": "test",
                 "runs-on": "ubuntu-latest", "steps": [
                     *python, credentials,
                     {"name": "Plan", "run": _Literal("".join(
                         f'xflow setup "$XFLOW_FILE" --dry-run --stage {stage} --output json > plan-{stage}.json\n'
                         for stage in spec.stages))},
                     {"uses": UPLOAD, "with": {"name": "plans", "path": "plan-*.json"}}]},
        "package": {"name": "package", "if": "github.event_name == 'push'", "needs": "test",
                    "runs-on": "ubuntu-latest", "steps": [
                        *python,
                        {"name": "Package", "run": f'xflow package "$XFLOW_FILE" --output {PACKAGE_DIR}'},
                        {"uses": UPLOAD, "with": {"name": "xflow-package", "path": PACKAGE_DIR}}]},
    }
    previous = None
    for index, stage in enumerate(spec.stages):
        steps: list[dict[str, Any]] = [
            *python, {"uses": DOWNLOAD, "with": {"name": "xflow-package", "path": PACKAGE_DIR}}, credentials]
        if previous is not None:
            steps.append({"name": f"Same code as {previous}", "run": _Literal(
                f'xflow setup "$XFLOW_FILE" --from {PACKAGE_DIR} --stage {previous} --dry-run --output json '
                f"> promote-check.json\n{SAME_CODE_CHECK} promote-check.json\n")})
        steps.append({"name": f"Deploy to {stage}",
                      "run": f'xflow setup "$XFLOW_FILE" --from {PACKAGE_DIR} --stage {stage}'})
        condition = ("github.event_name == 'push' && github.ref == 'refs/heads/main'" if index == 0 else
                     "github.event_name == 'push' && startsWith(github.ref, 'refs/tags/v')")
        needs = "package" if index <= 1 else f"deploy-{spec.stages[index - 1]}"
        jobs[f"deploy-{stage}"] = {"name": f"deploy to {stage}", "if": condition, "needs": needs,
                                   "runs-on": "ubuntu-latest",
                                   "environment": stage,  # approvals: the environment's protection rules
                                   "concurrency": {"group": f"xflow-{stage}", "cancel-in-progress": False},
                                   "steps": steps}
        previous = stage
    return {"name": "xflow", "on": {"pull_request": None, "push": {"branches": ["main"], "tags": ["v*"]}},
            "permissions": {"contents": "read", "id-token": "write"},
            "env": {"XFLOW_FILE": spec.workflow_file, "AWS_REGION": spec.region}, "jobs": jobs}


# -- GitLab CI ------------------------------------------------------------------------------------
def gitlab(spec: PipelineSpec) -> dict[str, Any]:
    merge_request = {"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}
    main = {"if": '$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH && $CI_PIPELINE_SOURCE == "push"'}
    tag = {"if": "$CI_COMMIT_TAG =~ /^v/"}
    aws = {"id_tokens": {"AWS_ID_TOKEN": {"aud": "sts.amazonaws.com"}},
           "before_script": [_Literal(
               _install() + f'export AWS_ROLE_ARN="${spec.role_variable}"\n'
               'export AWS_WEB_IDENTITY_TOKEN_FILE="$(mktemp)"\n'
               'printf "%s" "$AWS_ID_TOKEN" > "$AWS_WEB_IDENTITY_TOKEN_FILE"\n')]}
    pipeline: dict[str, Any] = {
        "stages": ["test", "plan", "package", "deploy"],
        "default": {"image": f"python:{spec.python_version}"},
        "variables": {"XFLOW_FILE": spec.workflow_file, "AWS_REGION": spec.region,
                      "AWS_DEFAULT_REGION": spec.region},
        "workflow": {"rules": [merge_request, {**main}, {**tag}]},
        "test": {"stage": "test", "rules": [merge_request, main, tag],
                 "before_script": [_install()],
                 "script": ['xflow validate "$XFLOW_FILE"', spec.test_command]},
        "plan": {"stage": "plan", "rules": [merge_request], **aws,
                 "script": [f'xflow setup "$XFLOW_FILE" --dry-run --stage {stage} --output json > plan-{stage}.json'
                            for stage in spec.stages],
                 "artifacts": {"paths": ["plan-*.json"], "expire_in": "30 days"}},
        "package": {"stage": "package", "rules": [main, tag], "before_script": [_install()],
                    "script": [f'xflow package "$XFLOW_FILE" --output {PACKAGE_DIR}'],
                    "artifacts": {"paths": [PACKAGE_DIR], "expire_in": "90 days"}},
    }
    previous = None
    for index, stage in enumerate(spec.stages):
        script = []
        if previous is not None:
            script += [f'xflow setup "$XFLOW_FILE" --from {PACKAGE_DIR} --stage {previous} --dry-run --output json '
                       "> promote-check.json", f"{SAME_CODE_CHECK} promote-check.json"]
        script.append(f'xflow setup "$XFLOW_FILE" --from {PACKAGE_DIR} --stage {stage}')
        rules = [main] if index == 0 else [{**tag, "when": "manual"}]
        needs = ["package"] if index <= 1 else ["package", f"deploy:{spec.stages[index - 1]}"]
        pipeline[f"deploy:{stage}"] = {"stage": "deploy", "rules": rules, "needs": needs, **aws,
                                       "environment": {"name": stage}, "resource_group": f"xflow-{stage}",
                                       "script": script}
        previous = stage
    return pipeline
