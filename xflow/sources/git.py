"""Function code from git: ``git://HOST/REPO/blob/REF/PATH``, GitHub ``https://github.com/O/R/blob/REF/PATH``
(or ``/tree/``), and any git URL with a path: ``git+URL@REF#path=PATH`` (``@REF`` optional), or a
URL whose repository ends in ``.git`` followed by the path, ``https://host/team/repo.git/PATH?ref=REF``
(``file://`` and ``ssh://`` too; without ``ref`` the default branch).

The repository is fetched shallowly at ``REF`` with the ``git`` command (no prompts, bounded
time); when ``REF`` is a commit id, the checked-out commit is verified against it. ``PATH`` must
stay inside the checkout. ``XFLOW_GITHUB_URL`` replaces ``https://github.com`` (mirrors, tests).

A link is data from a workflow file, so :func:`parse_git_source` (used by validation as well as by
:func:`fetch_git`) checks it before git ever sees it, and git runs fenced:

- the repository is an ``https``, ``http``, ``ssh``, ``git`` or ``file`` URL, an absolute local
  path, or ``user@host:path``; nothing that starts with ``-``, no ``ext::``/``fd::`` (or any
  ``TRANSPORT::``) helper, no control characters, no ssh user or host that starts with ``-``;
- ``REF`` is a name that ``git check-ref-format --allow-onelevel`` accepts (so no ``..``, ``@{``,
  spaces, ``~``, ``^``, ``:``, ``?``, ``*``, ``[``, ``\\``, control characters) and that does not
  start with ``-``; a commit id (hex) is such a name;
- URLs and refs are given to git after ``--``, never through a configuration file;
- git runs with only those five protocols allowed, hooks and fsmonitor off, no init templates, no
  system or user configuration (``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``), so no
  filter, credential helper or alias from them runs. Settings for these fetches (an ssh command,
  a credential helper) can still be given through ``GIT_SSH_COMMAND`` or ``GIT_CONFIG_COUNT`` /
  ``GIT_CONFIG_KEY_n`` / ``GIT_CONFIG_VALUE_n`` in the environment of the xflow command; other
  ``GIT_*`` variables of that environment (``GIT_DIR``, ``GIT_CONFIG_PARAMETERS``, ...) are dropped.

A ``PATH`` that goes through a symbolic link leaving the checkout is refused here; links inside the
folder or file that is returned are checked by :func:`xflow.sources.fetch.fetch_source` (see there).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xflow.core.errors import XflowError

GIT_TIMEOUT = 120
_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
#: the transports a source may use; everything else (ext::, fd::, remote helpers) is refused
ALLOWED_PROTOCOLS = ("https", "http", "ssh", "git", "file")
#: options given to every git command (they override any configuration file)
_FENCE = [
    "-c", "protocol.allow=never",
    *[arg for name in ALLOWED_PROTOCOLS for arg in ("-c", f"protocol.{name}.allow=always")],
    "-c", f"core.hooksPath={os.devnull}",
    "-c", "core.fsmonitor=false",
    "-c", "init.templateDir=",
    "-c", "advice.detachedHead=false",
]
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


#: git variables of the caller's environment that are passed on; the others (GIT_DIR, GIT_EXEC_PATH,
#: GIT_CONFIG_PARAMETERS, GIT_TEMPLATE_DIR, ...) could point git elsewhere and are dropped
_KEPT_GIT_VARIABLES = frozenset({"GIT_SSH_COMMAND", "GIT_SSH", "GIT_SSH_VARIANT", "GIT_CONFIG_COUNT",
                                 "GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "GIT_SSL_NO_VERIFY", "GIT_HTTP_USER_AGENT",
                                 "GIT_TRACE", "GIT_CURL_VERBOSE"})


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
    """Split a git/GitHub link into repository URL, ref and path; an XflowError if it is not one, or if its
    repository, ref or path could make git do more than fetch (see the module docstring)."""
    spec = _split(source)
    problem = repository_problem(spec.repo)
    if problem:
        raise XflowError(f"source {source!r}: repository {spec.repo!r} is refused: {problem}",
                         "use an https://, ssh://, git:// or file:// URL")
    if spec.ref is not None:
        problem = ref_problem(spec.ref)
        if problem:
            raise XflowError(f"source {source!r}: ref {spec.ref!r} is not a branch, tag or commit name: {problem}",
                             "name a branch, a tag or a commit id (see git check-ref-format)")
    if any(ord(char) < 0x20 for char in spec.path) or ".." in PurePosixPath(spec.path.replace("\\", "/")).parts:
        raise XflowError(f"source {source!r}: path {spec.path!r} points outside the repository")
    return spec


def _split(source: str) -> GitSource:
    """The repository URL, ref and path of a git/GitHub link, unchecked."""
    if source.startswith("git+"):
        url, _, fragment = source[4:].partition("#")
        params = urllib.parse.parse_qs(fragment)
        path = (params.get("path") or [""])[0]
        if not path:
            raise XflowError(f"source {source!r}: a git+URL source needs '#path=FILE_OR_FOLDER'")
        # ``@REF`` follows the repository's path: an '@' in ``user@host`` is not a ref
        if "://" in url:
            scheme, _, rest = url.partition("://")
            authority, slash, repo_path = rest.partition("/")
            head, tail = f"{scheme}://{authority}{slash}", repo_path
        else:
            colon, slash_at = url.find(":"), url.find("/")
            cut = colon + 1 if colon > 0 and (slash_at < 0 or colon < slash_at) else 0
            head, tail = url[:cut], url[cut:]
        ref = None
        if "@" in tail:
            tail, _, ref = tail.rpartition("@")
        return GitSource(head + tail, ref or None, path)
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


def ref_problem(ref: str) -> str | None:
    """Why ``ref`` is not a name ``git check-ref-format --allow-onelevel`` accepts (or starts with '-'); None if fine."""
    if not ref:
        return "it is empty"
    if ref.startswith("-"):
        return "it starts with '-'"
    if ref == "@":
        return "it is '@'"
    for char in ref:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return "it holds a control character"
        if char in " ~^:?*[\\":
            return f"it holds {char!r}"
    if ".." in ref:
        return "it holds '..'"
    if "@{" in ref:
        return "it holds '@{'"
    if ref.endswith((".", "/")):
        return f"it ends with {ref[-1]!r}"
    for component in ref.split("/"):
        if not component:
            return "it has an empty part ('//' or a leading '/')"
        if component.startswith("."):
            return "a part starts with '.'"
        if component.endswith(".lock"):
            return "a part ends with '.lock'"
    return None


def repository_problem(url: str) -> str | None:
    """Why ``url`` is not a repository xflow lets git fetch from; None if fine."""
    if not url:
        return "it is empty"
    if url.startswith("-"):
        return "it starts with '-'"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        return "it holds a control character"
    if "::" in url:
        return "it names a git transport helper ('TRANSPORT::'), which is refused"
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme:
        name = scheme.group(1).lower()
        if name not in ALLOWED_PROTOCOLS:
            return f"scheme {name!r} is not one of {', '.join(ALLOWED_PROTOCOLS)}"
        parts = urllib.parse.urlsplit(url)
        try:
            host, user = parts.hostname or "", parts.username or ""
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            return "its host or port cannot be read"
        if parts.netloc.startswith("-") or host.startswith("-") or user.startswith("-"):
            return "its user or host starts with '-'"
        if name != "file" and not host:
            return "it names no host"
        if name == "file" and parts.netloc:
            return "a file:// URL names a folder on this machine (file:///PATH)"
        return None
    if url.startswith("/"):
        return None
    scp = re.match(r"^(?:([^@/:]+)@)?([^@/:]+):(.*)$", url)
    if scp:
        user, host, path = scp.groups()
        if (user is not None and not _HOST.match(user)) or not _HOST.match(host):
            return "its user or host is not a plain name"
        if not path or path.startswith("-"):
            return "its path is empty or starts with '-'"
        return None
    return "it is not a URL (https://, ssh://, git://, file://), an absolute path or USER@HOST:PATH"


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _KEPT_GIT_VARIABLES
           or k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", SSH_ASKPASS="true", GIT_CONFIG_NOSYSTEM="1",
               GIT_CONFIG_GLOBAL=os.devnull, GIT_ALLOW_PROTOCOL=":".join(ALLOWED_PROTOCOLS),
               GIT_PROTOCOL_FROM_USER="0")
    return env



def _git(args: list[str], cwd: Path, source: str) -> str:
    try:
        done = subprocess.run(["git", *_FENCE, *args], cwd=cwd, env=_environment(), capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise XflowError(f"source {source!r}: the git command is not installed") from None
    except subprocess.TimeoutExpired:
        raise XflowError(f"source {source!r}: git {args[0]} took more than {GIT_TIMEOUT}s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise XflowError(f"source {source!r}: git {args[0]} failed: {lines[-1] if lines else done.returncode}")
    return done.stdout.strip()


def fetch_git(source: str, workdir: Path) -> Path:
    """Fetch the repository of ``source`` into ``workdir`` and return the file or folder it names."""
    spec = parse_git_source(source)
    checkout = workdir / "checkout"
    if checkout.exists():
        shutil.rmtree(checkout)
    checkout.mkdir(parents=True)
    ref = spec.ref or "HEAD"
    _git(["init", "--quiet", "--template="], checkout, source)
    _git(["fetch", "--quiet", "--depth", "1", "--no-tags", "--no-recurse-submodules", "--", spec.repo, ref],
         checkout, source)
    _git(["checkout", "--quiet", "--detach", "FETCH_HEAD", "--"], checkout, source)
    head = _git(["rev-parse", "--verify", "HEAD^{commit}"], checkout, source)
    if spec.ref and _SHA.match(spec.ref) and not head.lower().startswith(spec.ref.lower()):
        raise XflowError(f"source {source!r}: fetched commit {head} is not {spec.ref}")
    shutil.rmtree(checkout / ".git", ignore_errors=True)
    root = checkout.resolve()
    current = checkout
    for part in PurePosixPath(spec.path.strip("/")).parts:
        current = current / part
        if current.is_symlink():
            real = Path(os.path.realpath(current))
            if real != root and root not in real.parents:
                raise XflowError(f"source {source!r}: {current.relative_to(checkout).as_posix()!r} is a symbolic "
                                 f"link that points outside the repository ({os.readlink(current)!r})")
    target = (checkout / spec.path.strip("/")).resolve()
    if target != root and root not in target.parents:
        raise XflowError(f"source {source!r}: path {spec.path!r} points outside the repository")
    if not target.exists():
        raise XflowError(f"source {source!r}: no {spec.path!r} in {spec.repo} at {ref}")
    return target
