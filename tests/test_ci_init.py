"""xflow ci init github|gitlab: the generated pipelines pass real validators (actionlint, built by
.ci/install-actionlint.sh; GitLab's CI JSON schema, vendored in tests/fixtures/ci from the check-jsonschema
distribution, with the jsonschema package), hold no secret, plan every stage on pull requests, package once, and
promote the same package; the GitLab jobs' commands themselves run against a moto server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from aws_server import aws_endpoint  # noqa: F401
from xflow_cli_testing import CLI

SCHEMA = Path(__file__).parent / "fixtures" / "ci" / "gitlab-ci.schema.json"
FLOW = """
workflow_id: {wid}
lambdas:
  - name: step{wid}
    handler: step
    source: step.py
subscriptions:
  - event: Ping
    subscribers: [step{wid}]
"""


def repository(root: Path, wid: str = "shipped") -> Path:
    (root / "flows").mkdir(parents=True)
    (root / "flows" / "step.py").write_text("def step(event, ctx):\n    return None\n")
    (root / "flows" / "flow.yaml").write_text(FLOW.format(wid=wid))
    (root / "notes.yml").write_text("just: data\n")  # another YAML file, not a workflow
    return root / "flows" / "flow.yaml"


def actionlint() -> str:
    found = shutil.which("actionlint") or next(
        (str(p) for p in (Path.home() / "go" / "bin" / "actionlint",) if p.exists()), None)
    if found is None:
        pytest.skip("actionlint is not installed (.ci/install-actionlint.sh builds it with Go; Go is absent here)")
    return found


def gitlab_errors(document: object) -> list[str]:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]


def test_the_github_pipeline_passes_actionlint_and_deploys_by_oidc(cli: CLI, tmp_path: Path) -> None:
    repository(tmp_path)
    done = cli("ci", "init", "github", "--stages", "dev,staging,prod")
    assert done.returncode == 0, done.stderr
    path = tmp_path / ".github" / "workflows" / "xflow.yml"
    text = path.read_text()
    checked = subprocess.run([actionlint(), "-no-color", "-oneline", str(path)], capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "secrets." not in text and "aws_secret_access_key" not in text.lower()
    pipeline = yaml.safe_load(text)
    assert pipeline["permissions"] == {"contents": "read", "id-token": "write"}
    assert pipeline["env"]["XFLOW_FILE"] == "flows/flow.yaml"
    jobs = pipeline["jobs"]
    plan = "\n".join(step.get("run", "") for step in jobs["plan"]["steps"])
    for stage in ("dev", "staging", "prod"):
        assert f'xflow setup "$XFLOW_FILE" --dry-run --stage {stage} --output json > plan-{stage}.json' in plan
    assert jobs["plan"]["if"] == "github.event_name == 'pull_request'"
    credentials = [s for s in jobs["plan"]["steps"] if s.get("uses", "").startswith("aws-actions/configure-aws")]
    assert credentials[0]["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
    assert 'xflow package "$XFLOW_FILE" --output dist/xflow-package' in str(jobs["package"]["steps"])
    assert "refs/heads/main" in jobs["deploy-dev"]["if"] and jobs["deploy-dev"]["environment"] == "dev"
    assert "refs/tags/v" in jobs["deploy-staging"]["if"] and jobs["deploy-prod"]["needs"] == "deploy-staging"
    promote = "\n".join(step.get("run", "") for step in jobs["deploy-prod"]["steps"])
    assert "--from dist/xflow-package --stage staging --dry-run" in promote  # the bytes that run on the stage before
    assert 'xflow setup "$XFLOW_FILE" --from dist/xflow-package --stage prod' in promote


def test_actionlint_does_fail_a_broken_pipeline(cli: CLI, tmp_path: Path) -> None:
    repository(tmp_path)
    cli("ci", "init", "github")
    path = tmp_path / ".github" / "workflows" / "xflow.yml"
    path.write_text(path.read_text().replace("github.event_name ==", "github.event_nam ==", 1))
    checked = subprocess.run([actionlint(), "-no-color", "-oneline", str(path)], capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == 1 and "event_nam" in checked.stdout


def test_the_gitlab_pipeline_passes_the_gitlab_ci_schema(cli: CLI, tmp_path: Path) -> None:
    repository(tmp_path)
    done = cli("ci", "init", "gitlab", "--stages", "dev,prod", "--role", "DEPLOY_ROLE")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / ".gitlab-ci.yml").read_text()
    pipeline = yaml.safe_load(text)
    assert gitlab_errors(pipeline) == []
    assert "secret" not in text.lower().replace("no secret is written here", "")
    assert pipeline["plan"]["id_tokens"] == {"AWS_ID_TOKEN": {"aud": "sts.amazonaws.com"}}
    assert 'export AWS_ROLE_ARN="$DEPLOY_ROLE"' in pipeline["plan"]["before_script"][0]
    assert pipeline["plan"]["artifacts"]["paths"] == ["plan-*.json"]
    assert pipeline["deploy:dev"]["rules"][0]["if"].startswith("$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH")
    assert pipeline["deploy:prod"]["rules"] == [{"if": "$CI_COMMIT_TAG =~ /^v/", "when": "manual"}]
    assert pipeline["deploy:prod"]["environment"] == {"name": "prod"}


def test_the_schema_does_fail_a_broken_gitlab_pipeline(cli: CLI, tmp_path: Path) -> None:
    repository(tmp_path)
    cli("ci", "init", "gitlab")
    pipeline = yaml.safe_load((tmp_path / ".gitlab-ci.yml").read_text())
    pipeline["deploy:prod"]["when"] = "sometimes"
    pipeline["plan"]["artifacts"]["expire_in"] = ["not", "text"]
    assert len(gitlab_errors(pipeline)) >= 2


def test_ci_init_mistakes_are_one_line_errors(cli: CLI, tmp_path: Path) -> None:
    flow = repository(tmp_path)
    assert cli("ci", "init", "gitlab").returncode == 0
    again = cli("ci", "init", "gitlab")
    assert again.returncode == 2 and ".gitlab-ci.yml exists" in again.stderr
    assert cli("ci", "init", "gitlab", "--force").returncode == 0
    bad = cli("ci", "init", "github", "--stages", "dev,Prod")
    assert bad.returncode == 2 and "is not a valid stage name" in bad.stderr
    twice = cli("ci", "init", "github", "--stages", "dev,dev")
    assert twice.returncode == 2 and "twice" in twice.stderr
    shutil.copy(flow, tmp_path / "flows" / "other.yaml")
    ambiguous = cli("ci", "init", "github")
    assert ambiguous.returncode == 2 and "cannot tell which workflow file" in ambiguous.stderr
    assert cli("ci", "init", "github", "--file", "flows/flow.yaml").returncode == 0
    (tmp_path / "a-file").write_text("")
    for unwritable in ("a-file/pipeline.yml", "/proc/no-such-folder/pipeline.yml"):
        refused = cli("ci", "init", "github", "--file", "flows/flow.yaml", "--output", unwritable)
        assert refused.returncode == 2 and "cannot write the pipeline to" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.aws
def test_the_gitlab_jobs_commands_plan_package_deploy_and_promote(aws_endpoint, tmp_path: Path) -> None:  # noqa: F811
    """The jobs' scripts run as the pipeline would run them (with moto standing in for AWS): the plans, the package,
    the deploy to dev on main, then the promotion to prod that first checks the package is what runs on dev."""
    wid = f"ci{os.getpid()}{int(time.time() * 1000) % 100000}"
    repository(tmp_path, wid)
    CLI(tmp_path)("ci", "init", "gitlab", "--stages", "dev,prod")
    pipeline = yaml.safe_load((tmp_path / ".gitlab-ci.yml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("XFLOW_")}
    env.update({key: str(value) for key, value in pipeline["variables"].items()})

    def run(job: str) -> None:
        script = "set -e\n" + "\n".join(pipeline[job]["script"])
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{job}:\n{done.stdout}\n{done.stderr}"

    run("plan")
    for stage in ("dev", "prod"):
        plan = json.loads((tmp_path / f"plan-{stage}.json").read_text())
        assert plan["workflow_id"] == f"{wid}-{stage}" and plan["changes"]
    run("package")
    assert (tmp_path / "dist" / "xflow-package" / "manifest.json").is_file()
    run("deploy:dev")
    run("deploy:prod")  # its check passes: dev runs the package's code
    import boto3

    lam = boto3.client("lambda")
    shas = {lam.get_function(FunctionName=f"step{wid}-{stage}")["Configuration"]["CodeSha256"] for stage in ("dev", "prod")}
    assert len(shas) == 1
    # a package whose code differs from what runs on dev is not promoted
    (tmp_path / "flows" / "step.py").write_text("def step(event, ctx):\n    return {'changed': True}\n")
    run("package")
    script = "\n".join(pipeline["deploy:prod"]["script"])
    refused = subprocess.run(["bash", "-c", "set -e\n" + script], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0 and f"function-code:step{wid}-dev" in refused.stderr
    for stage in ("dev", "prod"):
        subprocess.run(["xflow", "teardown", "flows/flow.yaml", "--stage", stage], cwd=tmp_path, env=env,
                       capture_output=True, timeout=300, check=True)
