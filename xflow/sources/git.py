"""Function code from git: ``git://HOST/REPO/blob/REF/PATH``, GitHub ``https://github.com/O/R/blob/REF/PATH``
(or ``/tree/``), and any git URL with a path: ``git+URL@REF#path=PATH`` (``@REF`` optional), or a
URL whose repository ends in ``.git`` followed by the path, ``https://host/team/repo.git/PATH?ref=REF``
(``file://`` and ``ssh://`` too; without ``ref`` the default branch).

The repository is cloned shallowly at ``REF`` with the ``git`` command (no prompts, bounded
time); when ``REF`` is a commit id, the checked-out commit is verified against it. ``PATH`` must
stay inside the checkout. ``XFLOW_GITHUB_URL`` replaces ``https://github.com`` (mirrors, tests).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from xflow.core.errors import XflowError

GIT_TIMEOUT = 120
_SHA = re.compile(r"^[0-9a-fA-F]{7,40}$")


@dataclass(frozen=True)
class GitSource:
    repo: str
    ref: str | None
    path: str


_DOT_GIT = re.compile(r"^((?:https?|ssh|file|git)://.+?\.git)/([^?#]+)(?:\?ref=([^#]+))?$")


def is_git_source(source: str) -> bool:
    return (source.startswith(("git://", "git+")) or bool(re.match(r"^https?://(www\.)?github\.com/", source))
            or bool(_DOT_GIT.match(source)))


def parse_git_source(source: str) -> GitSource:
    """Split a git/GitHub link into repository URL, ref and path; an XflowError if it is not one."""
    if source.startswith("git+"):
        url, _, fragment = source[4:].partition("#")
        params = urllib.parse.parse_qs(fragment)
        path = (params.get("path") or [""])[0]
        if not path:
            raise XflowError(f"source {source!r}: a git+URL source needs '#path=FILE_OR_FOLDER'")
        ref = None
        parsed = urllib.parse.urlsplit(url)
        if "@" in parsed.path:
            repo_path, _, ref = parsed.path.rpartition("@")
            url = urllib.parse.urlunsplit(parsed._replace(path=repo_path))
        return GitSource(url, ref or None, path)
    match = re.match(r"^https?://(?:www\.)?github\.com/([^/]+)/([^/]+)/(?:blob|tree|raw)/([^/]+)/(.+)$", source)
    if match:
        owner, repo, ref, path = match.groups()
        base = os.environ.get("XFLOW_GITHUB_URL", "https://github.com").rstrip("/")
        repo = repo.removesuffix(".git")
        return GitSource(f"{base}/{owner}/{repo}.git", ref, path)
    dot_git = _DOT_GIT.match(source)
    if dot_git and "/blob/" not in source:
        repo, path, ref = dot_git.groups()
        return GitSource(repo, urllib.parse.unquote(ref) if ref else None, urllib.parse.unquote(path))
    if source.startswith("git://") and "/blob/" in source:
        repo, _, rest = source.partition("/blob/")
        ref, _, path = rest.partition("/")
        if ref and path:
            return GitSource(repo, ref, path)
    raise XflowError(
        f"source {source!r} is not a git link I can read",
        "use git://HOST/REPO/blob/REF/PATH, https://github.com/OWNER/REPO/blob/REF/PATH, "
        "https://HOST/REPO.git/PATH?ref=REF or git+URL@REF#path=PATH",
    )


def _git(args: list[str], cwd: Path, source: str) -> str:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true")
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, check=False)
    except FileNotFoundError:
        raise XflowError(f"source {source!r}: the git command is not installed") from None
    except subprocess.TimeoutExpired:
        raise XflowError(f"source {source!r}: git {args[0]} took more than {GIT_TIMEOUT}s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise XflowError(f"source {source!r}: git {args[0]} failed: {lines[-1] if lines else done.returncode}")
    return done.stdout.strip()


def fetch_git(source: str, workdir: Path) -> Path:
    """Clone the repository of ``source`` into ``workdir`` and return the file or folder it names."""
    spec = parse_git_source(source)
    checkout = workdir / "checkout"
    if checkout.exists():
        shutil.rmtree(checkout)
    checkout.mkdir(parents=True)
    _git(["init", "--quiet"], checkout, source)
    _git(["remote", "add", "origin", spec.repo], checkout, source)
    ref = spec.ref or "HEAD"
    _git(["fetch", "--quiet", "--depth", "1", "origin", ref], checkout, source)
    _git(["checkout", "--quiet", "FETCH_HEAD"], checkout, source)
    head = _git(["rev-parse", "HEAD"], checkout, source)
    if spec.ref and _SHA.match(spec.ref) and not head.lower().startswith(spec.ref.lower()):
        raise XflowError(f"source {source!r}: fetched commit {head} is not {spec.ref}")
    shutil.rmtree(checkout / ".git", ignore_errors=True)
    root = checkout.resolve()
    target = (checkout / spec.path.strip("/")).resolve()
    if target != root and root not in target.parents:
        raise XflowError(f"source {source!r}: path {spec.path!r} points outside the repository")
    if not target.exists():
        raise XflowError(f"source {source!r}: no {spec.path!r} in {spec.repo} at {ref}")
    return target
