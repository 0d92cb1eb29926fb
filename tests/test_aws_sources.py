"""Function sources: local paths, s3:// objects (moto server), git and GitHub links (local repositories)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from xflow.core.errors import XflowError
from xflow.core.model import Function
from xflow.sources.archive import safe_extract_zip
from xflow.sources.fetch import fetch_source
from xflow.sources.git import parse_git_source
from xflow.sources.resolve import check_handler

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

SUMMARY = 'def summarize(event, ctx):\n    return {"total": 1}\n'
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def fn(source: str, handler: str = "summarize", source_path: Path | None = None) -> Function:
    return Function(name="lambda_summarize", handler=handler, source=source, source_path=source_path)


def _git(*args: str, cwd: Path) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    """A bare repository tmp/gh/acme/flows.git whose main branch holds flows/word_count/summary.py."""
    work = tmp_path / "work"
    (work / "flows" / "word_count").mkdir(parents=True)
    (work / "flows" / "word_count" / "summary.py").write_text(SUMMARY)
    _git("init", "--quiet", "-b", "main", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "--quiet", "-m", "summary", cwd=work)
    sha = _git("rev-parse", "HEAD", cwd=work)
    bare = tmp_path / "gh" / "acme" / "flows.git"
    bare.parent.mkdir(parents=True)
    _git("clone", "--quiet", "--bare", str(work), str(bare), cwd=tmp_path)
    return bare, sha


@needs_git
def test_github_blob_link(repo, tmp_path, monkeypatch):
    bare, _ = repo
    monkeypatch.setenv("XFLOW_GITHUB_URL", (tmp_path / "gh").as_uri())
    source = "https://github.com/acme/flows/blob/main/flows/word_count/summary.py"
    path = fetch_source(fn(source), tmp_path / "dl")
    assert path.name == "summary.py" and path.read_text() == SUMMARY
    check_handler(fn(source), path)
    with pytest.raises(XflowError, match="defines no 'summarise'"):
        check_handler(fn(source, "summarise"), path)


@needs_git
def test_plain_git_url_with_commit_and_path(repo, tmp_path):
    bare, sha = repo
    folder = fetch_source(fn(f"git+{bare.as_uri()}@{sha}#path=flows/word_count", "summary.summarize"),
                          tmp_path / "dl")
    assert folder.is_dir() and (folder / "summary.py").read_text() == SUMMARY
    path = fetch_source(fn(f"{bare.as_uri()}/flows/word_count/summary.py?ref=main"), tmp_path / "dl1")
    assert path.name == "summary.py" and path.read_text() == SUMMARY
    with pytest.raises(XflowError, match="no 'flows/missing.py'"):
        fetch_source(fn(f"git+{bare.as_uri()}@main#path=flows/missing.py"), tmp_path / "dl2")
    with pytest.raises(XflowError, match="outside the repository"):
        fetch_source(fn(f"git+{bare.as_uri()}@main#path=../../etc/passwd"), tmp_path / "dl3")
    with pytest.raises(XflowError, match="git fetch failed"):
        fetch_source(fn(f"git+{bare.as_uri()}@no-such-branch#path=flows"), tmp_path / "dl4")


@needs_git
def test_seed_style_git_link_through_git_daemon(repo, tmp_path):
    bare, _ = repo
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={tmp_path / 'gh'}",
                               "--listen=127.0.0.1", f"--port={port}", str(tmp_path / "gh")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    pytest.skip("git daemon is not available here")
                time.sleep(0.1)
        source = f"git://127.0.0.1:{port}/acme/flows.git/blob/main/flows/word_count/summary.py"
        path = fetch_source(fn(source), tmp_path / "dl")
        assert path.read_text() == SUMMARY
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def test_link_forms_are_parsed():
    spec = parse_git_source("git://project/blob/master/flows/word_count/summary.py")
    assert (spec.repo, spec.ref, spec.path) == ("git://project", "master", "flows/word_count/summary.py")
    spec = parse_git_source("https://github.com/acme/flows/blob/v1.2/a/b.py")
    assert (spec.repo, spec.ref, spec.path) == ("https://github.com/acme/flows.git", "v1.2", "a/b.py")
    spec = parse_git_source("git+https://example.com/x/y.git@abc123#path=src")
    assert (spec.repo, spec.ref, spec.path) == ("https://example.com/x/y.git", "abc123", "src")
    spec = parse_git_source("https://git.example.com/team/flows.git/steps/a.py?ref=release%2F2")
    assert (spec.repo, spec.ref, spec.path) == ("https://git.example.com/team/flows.git", "release/2", "steps/a.py")
    with pytest.raises(XflowError, match="not a git link"):
        parse_git_source("git://project/tree-without-blob")
    with pytest.raises(XflowError, match="cannot fetch"):
        fetch_source(fn("ftp://host/x.py"), Path("/tmp"))


def _zip(members: dict[str, bytes], link: str | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return out.getvalue()


@pytest.mark.parametrize("members,link,message", [
    ({"../evil.py": b"x"}, None, "outside the folder"),
    ({"/abs/evil.py": b"x"}, None, "outside the folder"),
    ({"ok.py": b"x"}, "link.py", "symbolic link"),
])
def test_archives_cannot_escape(tmp_path, members, link, message):
    with pytest.raises(XflowError, match=message):
        safe_extract_zip(_zip(members, link), tmp_path / "out", "test archive")
    assert not (tmp_path / "evil.py").exists()


def test_local_source_missing(tmp_path):
    with pytest.raises(XflowError, match="does not exist"):
        fetch_source(fn("nope.py", source_path=tmp_path / "nope.py"), tmp_path / "dl")


@pytest.mark.aws
def test_s3_sources(aws_endpoint, tmp_path):  # noqa: F811
    import boto3

    from xflow.aws import AwsSession

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="flows")
    s3.put_object(Bucket="flows", Key="word_count/summary.py", Body=SUMMARY.encode())
    s3.put_object(Bucket="flows", Key="word_count/summary.py.zip", Body=_zip({"summary.py": SUMMARY.encode()}))
    s3.put_object(Bucket="flows", Key="word_count/evil.zip", Body=_zip({"../../evil.py": b"x"}))
    aws = AwsSession({})
    path = fetch_source(fn("s3://flows/word_count/summary.py"), tmp_path / "a", aws)
    assert path.read_text() == SUMMARY
    path = fetch_source(fn("s3://flows/word_count/summary.py.zip"), tmp_path / "b", aws)  # the seed's form
    assert path.name == "summary.py" and path.read_text() == SUMMARY
    check_handler(fn("s3://flows/word_count/summary.py.zip"), path)
    with pytest.raises(XflowError, match="outside the folder"):
        fetch_source(fn("s3://flows/word_count/evil.zip"), tmp_path / "c", aws)
    with pytest.raises(XflowError, match="s3://flows/word_count/missing.py.*cannot be fetched"):
        fetch_source(fn("s3://flows/word_count/missing.py"), tmp_path / "d", aws)


@pytest.mark.aws
@needs_git
def test_setup_dry_run_with_s3_and_github_sources(aws_endpoint, repo, tmp_path):  # noqa: F811
    import boto3

    boto3.client("s3").create_bucket(Bucket="dry-flows")
    boto3.client("s3").put_object(Bucket="dry-flows", Key="reader.py",
                                  Body=b"def read_file(event, ctx):\n    return {'contents': 'a b'}\n")
    (tmp_path / "wf.yaml").write_text(f"""
lambdas:
  - name: dry_reader
    source: s3://dry-flows/reader.py
    handler: read_file
    publishes: [Read]
  - name: dry_summary
    source: https://github.com/acme/flows/blob/main/flows/word_count/summary.py
    handler: summarize
    publishes: [Done]
subscriptions:
  - name: Start
    subscribers: [dry_reader]
  - name: Read
    subscribers: [dry_summary]
workflows:
  - id: dry_{os.getpid()}
""")
    env = dict(os.environ, XFLOW_GITHUB_URL=(tmp_path / "gh").as_uri())
    done = subprocess.run(["xflow", "setup", "wf.yaml", "--dry-run", "--output", "json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    changes = {c["resource"] for c in json.loads(done.stdout)["changes"]}
    assert {"function:dry_reader", "function:dry_summary"} <= changes
    assert boto3.client("lambda").list_functions()["Functions"] == [] or all(
        f["FunctionName"] not in ("dry_reader", "dry_summary") for f in boto3.client("lambda").list_functions()[
            "Functions"])
