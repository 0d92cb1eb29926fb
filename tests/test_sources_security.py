"""Function sources as an attack surface: hostile git links, symbolic links out of a source, zip bombs.

Every hostile link is tried through the Python API (``fetch_git``) and the CLI (``xflow validate``
and ``xflow setup --dry-run``); a marker file that its payload would create must never appear.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import struct
import subprocess
import uuid
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xflow.core.errors import XflowError
from xflow.core.model import Function
from xflow.sources.archive import MAX_MEMBERS, safe_extract_zip
from xflow.sources.fetch import fetch_source
from xflow.sources.git import fetch_git, ref_problem
from xflow.sources.resolve import source_files

try:
    from aws_server import aws_endpoint  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.aws_server import aws_endpoint  # noqa: F401

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
HANDLER = "def handle(event, ctx):\n    return {'ok': True}\n"
LOCAL = ("--provider", "local", "--transport", "local", "--tracker", "sqlite")


def _git(*args: str, cwd: Path) -> str:
    environment = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
                       GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    return subprocess.run(["git", *args], cwd=cwd, env=environment, check=True, capture_output=True,
                          text=True).stdout.strip()


def _repository(tmp_path: Path, files: dict[str, str], links: dict[str, str] | None = None) -> tuple[Path, str]:
    """A bare repository ``tmp_path/repo.git`` (branch main, tag v1) holding ``files`` and symbolic ``links``."""
    work = tmp_path / "work"
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    for name, target in (links or {}).items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, work / name)
    _git("init", "--quiet", "-b", "main", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "--quiet", "-m", "code", cwd=work)
    _git("tag", "v1", cwd=work)
    sha = _git("rev-parse", "HEAD", cwd=work)
    bare = tmp_path / "repo.git"
    _git("clone", "--quiet", "--bare", str(work), str(bare), cwd=tmp_path)
    return bare, sha


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    return _repository(tmp_path, {"h.py": HANDLER, "flows/step.py": HANDLER})


def fn(source: str, handler: str = "handle", source_path: Path | None = None, name: str = "step") -> Function:
    return Function(name=name, handler=handler, source=source, source_path=source_path)


#: links whose repository, ref or path tries to make git run ``touch MARKER`` or do more than fetch;
#: {url} is a real repository's file:// URL, {marker} the file the payload would create
HOSTILE = {
    "option-in-ref": "git+{url}@--upload-pack=touch {marker};#path=h.py",
    "config-option-in-ref": "git+{url}@--config=core.fsmonitor=touch {marker}#path=h.py",
    "short-option-in-ref": "git+{url}@-ucore.sshCommand=touch {marker}#path=h.py",
    "option-in-query-ref": "{url}/h.py?ref=--upload-pack=touch%20{marker}",
    "ext-transport": "git+ext::sh -c touch% {marker}#path=h.py",
    "ext-transport-with-ref": "git+ext::sh -c touch% {marker}@main#path=h.py",
    "fd-transport": "git+fd::0#path=h.py",
    "dash-repository": "git+--upload-pack=touch {marker};@main#path=h.py",
    "ssh-host-dash": "git+ssh://-oProxyCommand=touch PWNED-proxy/repo.git@main#path=h.py",
    "ssh-user-dash": "git+ssh://-oProxyCommand=touch PWNED-user@localhost/repo.git@main#path=h.py",
    "scp-host-dash": "git+-oProxyCommand=touch PWNED-scp:repo.git@main#path=h.py",
    "github-ref-option": "https://github.com/acme/flows/blob/--upload-pack=touch PWNED-gh/h.py",
    "dotdot-ref": "{url}/h.py?ref=main..HEAD",
    "reflog-ref": "{url}/h.py?ref=main@{{1}}",
    "space-in-ref": "git+{url}@main --upload-pack=touch {marker}#path=h.py",
    "tilde-ref": "{url}/h.py?ref=main~1",
    "caret-ref": "{url}/h.py?ref=main^",
    "refspec-ref": "git+{url}@main:refs/heads/evil#path=h.py",
    "dotdot-path": "git+{url}@main#path=../../outside.py",
    "newline-in-url": "git+{url}\n--upload-pack=touch {marker}@main#path=h.py",
    "other-scheme": "git+ftp://example.com/repo.git@main#path=h.py",
}
#: what the refusal says, for each kind of check (so a test cannot pass on some other error)
REFUSALS = ("is refused:", "is not a branch, tag or commit name:", "points outside the repository")


def hostile(name: str, repo: Path, marker: Path) -> str:
    return HOSTILE[name].format(url=repo.as_uri(), marker=marker)


def named(link: str) -> str:
    """How an error names the source ``link`` (as XflowError masks what looks like a URL password)."""
    return XflowError(f"source {link!r}").message


def _no_marker(tmp_path: Path, marker: Path) -> None:
    assert not marker.exists()
    assert not list(tmp_path.rglob("PWNED*")), "a payload ran"


@needs_git
def test_hostile_links_never_run_anything_through_the_api(repo, tmp_path):
    bare, _ = repo
    marker = tmp_path / "PWNED"
    assert len(HOSTILE) >= 10
    for index, name in enumerate(HOSTILE):
        link = hostile(name, bare, marker)
        with pytest.raises(XflowError) as info:
            fetch_git(link, tmp_path / "api" / str(index))
        message = info.value.message
        assert message.startswith(named(link)) and any(r in message for r in REFUSALS), (name, message)
        assert "\n" not in message
    _no_marker(tmp_path, marker)


def _workflow_with(tmp_path: Path, links: list[str]) -> Path:
    """A workflow whose functions take their code from ``links`` (JSON strings are YAML scalars)."""
    lines = ["functions:"]
    for index, link in enumerate(links):
        lines += [f"  - name: f{index}", f"    source: {json.dumps(link)}", "    handler: handle"]
    lines += ["subscriptions:", "  - name: Start", f"    subscribers: [{', '.join(f'f{i}' for i in range(len(links)))}]"]
    path = tmp_path / "flow.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@needs_git
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_link_never_runs_anything_through_the_cli(name, repo, tmp_path, cli):
    bare, _ = repo
    marker = tmp_path / "PWNED"
    link = hostile(name, bare, marker)
    flow = _workflow_with(tmp_path, [link])
    for args in (("validate", flow), ("setup", flow, "--dry-run", *LOCAL)):
        done = cli(*args)
        assert "Traceback" not in done.stderr, done.stderr
        _no_marker(tmp_path, marker)
        assert done.returncode == 2, done.stdout + done.stderr
        # with or without a scheme, the link is refused as a link (never looked for as a missing local path)
        assert "does not exist" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        if args[0] == "validate":  # the file's problem list: FILE:LINE: path: the refusal
            assert len(lines) == 2 and lines[1].startswith(f"{flow}:3: functions.0.source: "), lines
            assert any(r in lines[1] for r in REFUSALS), lines[1]
        else:  # refused when setup reads the source: one line that names it and says why
            assert len(lines) == 1 and lines[0].startswith("error: "), lines
            assert named(link) in lines[0] and any(r in lines[0] for r in REFUSALS), lines[0]


@needs_git
def test_good_refs_still_fetch(repo, tmp_path, cli):
    bare, sha = repo
    url = bare.as_uri()
    for index, link in enumerate([f"git+{url}@main#path=h.py", f"git+{url}@v1#path=h.py", f"git+{url}@{sha}#path=h.py",
                                  f"git+{url}#path=h.py", f"{url}/h.py?ref=refs/tags/v1", f"{url}/flows?ref=main"]):
        path = fetch_source(fn(link), tmp_path / "dl" / str(index))
        assert path.read_text() == HANDLER, link
    flow = _workflow_with(tmp_path, [f"git+{url}@v1#path=h.py", f"{url}/flows/step.py?ref={sha}"])
    assert cli("validate", flow).returncode == 0
    done = cli("setup", flow, "--dry-run", *LOCAL)
    assert done.returncode == 0, done.stderr


@needs_git
def test_user_and_system_git_configuration_cannot_run_commands(repo, tmp_path, monkeypatch):
    """A ~/.gitconfig that rewrites file:// URLs to ext::, sets hooks and an fsmonitor is not read."""
    bare, _ = repo
    marker = tmp_path / "PWNED-config"
    home = tmp_path / "home"
    hooks = home / "hooks"
    hooks.mkdir(parents=True)
    script = f"#!/bin/sh\ntouch {marker}\n"
    for hook in ("post-checkout", "fsmonitor"):
        (hooks / hook).write_text(script)
        (hooks / hook).chmod(0o755)
    (home / ".gitconfig").write_text(
        f'[url "ext::sh -c touch% {marker}% >&2% #"]\n\tinsteadOf = file://\n'
        f"[core]\n\thooksPath = {hooks}\n\tfsmonitor = {hooks / 'fsmonitor'}\n[protocol]\n\tallow = always\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    # the configuration is live: a plain git clone with it runs the payload
    subprocess.run(["git", "clone", "--quiet", bare.as_uri(), str(tmp_path / "plain")], env=env, capture_output=True,
                   check=False)
    assert marker.exists()
    marker.unlink()
    for key in ("HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("GIT_ALLOW_PROTOCOL", "ext:file")  # a caller's permissive setting is overridden too
    path = fetch_git(f"git+{bare.as_uri()}@main#path=h.py", tmp_path / "fenced")
    assert path.read_text() == HANDLER
    assert not marker.exists()


ALPHABET = st.sampled_from(list("ab/.@{}~^:?*[\\ -\t\x7fé") + ["lock", ".lock", "..", "@{", "//"])


@needs_git
@settings(max_examples=150, deadline=None)
@given(st.lists(ALPHABET, min_size=1, max_size=6).map("".join))
def test_ref_rules_match_git_check_ref_format(ref):
    if ref.startswith("-"):
        assert ref_problem(ref) is not None  # git would read it as an option: always refused
        return
    done = subprocess.run(["git", "check-ref-format", "--allow-onelevel", ref], capture_output=True, check=False)
    assert (ref_problem(ref) is None) == (done.returncode == 0), (ref, ref_problem(ref), done.returncode)


# -- symbolic links ---------------------------------------------------------------------------


@pytest.fixture
def host_secret(tmp_path: Path) -> tuple[Path, bytes]:
    """A file outside every source, with contents that must never be shipped."""
    secret = f"HOST-SECRET-{uuid.uuid4().hex}".encode()
    path = tmp_path / "host" / "credentials"
    path.parent.mkdir()
    path.write_bytes(secret)
    return path, secret


@needs_git
def test_git_repository_with_a_link_to_a_host_file(tmp_path, host_secret):
    secret_path, _ = host_secret
    bare, _ = _repository(tmp_path, {"flows/h.py": HANDLER, "flows/ok.py": HANDLER},
                          {"flows/leak.txt": str(secret_path), "flows/alias.py": "ok.py"})
    with pytest.raises(XflowError, match=r"symbolic link 'leak.txt' points outside the source") as info:
        fetch_source(fn(f"git+{bare.as_uri()}@main#path=flows"), tmp_path / "a")
    assert f"source 'git+{bare.as_uri()}@main#path=flows'" in info.value.message
    with pytest.raises(XflowError, match=r"'flows/leak.txt' is a symbolic link that points outside the repository"):
        fetch_source(fn(f"git+{bare.as_uri()}@main#path=flows/leak.txt"), tmp_path / "b")
    # a link that stays inside the source is read as the file it points to
    path = fetch_source(fn(f"git+{bare.as_uri()}@main#path=flows/alias.py"), tmp_path / "c")
    assert path.read_text() == HANDLER and path.name == "ok.py"


def test_folder_source_with_links(tmp_path, host_secret):
    secret_path, _ = host_secret
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "handler.py").write_text(HANDLER)
    (src / "pkg" / "__init__.py").write_text("")
    os.symlink("../handler.py", src / "pkg" / "same.py")  # inside the root: accepted
    assert sorted(rel.as_posix() for rel, _ in source_files(src, "t")) == ["handler.py", "pkg/__init__.py", "pkg/same.py"]
    fetch_source(fn("src", source_path=src), tmp_path / "dl")
    cases = {
        "pkg/leak.py": (os.path.relpath(secret_path, src / "pkg"), "points outside the source"),
        "abs.txt": (str(secret_path), "points outside the source"),
        "loop.py": ("loop.py", "points at nothing or loops"),
        "gone.py": ("missing.py", "points at nothing"),
        "pkgdir": ("pkg", "points at a folder"),
        "up": ("..", "points outside the source"),
    }
    for name, (target, message) in cases.items():
        os.symlink(target, src / name)
        with pytest.raises(XflowError) as info:
            fetch_source(fn("src", source_path=src), tmp_path / "dl")
        assert f"symbolic link {name!r} {message}" in info.value.message, info.value.message
        assert info.value.message.startswith("function step: source 'src'")
        (src / name).unlink()
    os.mkfifo(src / "pipe")
    with pytest.raises(XflowError, match="'pipe' is not a regular file"):
        fetch_source(fn("src", source_path=src), tmp_path / "dl")


def _lambda_artifacts(tmp_path: Path, source: str, handler: str,
                      host_secret: bytes) -> tuple[Exception | None, list[bytes]]:
    """Run the Lambda provider's packaging on a one-function workflow; return its error and the zips it built."""
    from xflow.core.config import load_workflow
    from xflow.core.interfaces import PluginContext
    from xflow.providers.aws_lambda import LambdaProvider

    wid = f"sec{uuid.uuid4().hex[:6]}"
    flow = tmp_path / "flow.yaml"
    flow.write_text(f"workflow_id: {wid}\nfunctions:\n  - name: step\n    source: {json.dumps(source)}\n"
                    f"    handler: {handler}\nsubscriptions:\n  - name: Start\n    subscribers: [step]\n")
    workflow = load_workflow(flow)
    state = tmp_path / "state"
    provider = LambdaProvider(PluginContext(wid, {}, state, workflow))
    transport = SimpleNamespace(stream_name=lambda e: f"{wid}-{e}")
    tracker = SimpleNamespace(lambda_tracking_target=lambda: {"log_group": f"/xflow/{wid}", "retention_days": 7})
    error, zips = None, []
    try:
        zips = [spec.zip_bytes for spec in provider.desired_functions(workflow, transport, tracker)]
    except XflowError as exc:
        error = exc
    files = [p.read_bytes() for p in state.rglob("*") if p.is_file()] if state.exists() else []
    for data in files + zips:
        assert host_secret not in data
    for data in zips:
        for info in zipfile.ZipFile(io.BytesIO(data)).infolist():
            assert host_secret not in zipfile.ZipFile(io.BytesIO(data)).read(info)
            assert not stat.S_ISLNK(info.external_attr >> 16)
    return error, zips


def test_lambda_packaging_never_ships_a_host_file(tmp_path, host_secret):
    secret_path, secret = host_secret
    src = tmp_path / "src"
    src.mkdir()
    (src / "handler.py").write_text(HANDLER)
    os.symlink("handler.py", src / "alias.py")
    error, zips = _lambda_artifacts(tmp_path, "src", "handler.handle", secret)
    assert error is None
    (artifact,) = [z for z in zips if "function/handler.py" in zipfile.ZipFile(io.BytesIO(z)).namelist()]
    assert zipfile.ZipFile(io.BytesIO(artifact)).read("function/alias.py") == HANDLER.encode()  # a copy, not a link

    os.symlink(secret_path, src / "settings.txt")
    error, _ = _lambda_artifacts(tmp_path, "src", "handler.handle", secret)
    assert error is not None and "symbolic link 'settings.txt' points outside the source" in str(error)

    # the packaging walk checks by itself too (it does not rely on fetch_source having looked first)
    from xflow.providers.aws_lambda import _ZipBuilder

    with pytest.raises(XflowError, match="symbolic link 'settings.txt' points outside the source"):
        _ZipBuilder().add_tree(src, "function")


@needs_git
def test_lambda_packaging_of_a_git_source_with_a_host_link(tmp_path, host_secret):
    secret_path, secret = host_secret
    bare, _ = _repository(tmp_path, {"code/handler.py": HANDLER}, {"code/id_rsa": str(secret_path)})
    error, _ = _lambda_artifacts(tmp_path, f"git+{bare.as_uri()}@main#path=code", "handler.handle", secret)
    assert error is not None and "symbolic link 'id_rsa' points outside the source" in str(error)


@pytest.mark.aws
def test_lambda_setup_refuses_a_host_link_through_the_cli(aws_endpoint, tmp_path, host_secret, cli):  # noqa: F811
    secret_path, secret = host_secret
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "handler.py").write_text(HANDLER)
    os.symlink(secret_path, tmp_path / "src" / "notes.txt")
    flow = tmp_path / "flow.yaml"
    flow.write_text(f"workflow_id: sec{uuid.uuid4().hex[:6]}\nfunctions:\n  - name: step\n    source: src\n"
                    "    handler: handler.handle\nsubscriptions:\n  - name: Start\n    subscribers: [step]\n")
    done = cli("setup", flow, "--dry-run", "--provider", "lambda", "--transport", "kinesis", "--tracker", "cloudwatch")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "symbolic link 'notes.txt' points outside the source" in done.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink() and path != secret_path:
            assert secret not in path.read_bytes(), path


# -- archives ---------------------------------------------------------------------------------


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _declare_size(data: bytes, name: str, size: int) -> bytes:
    """``data`` with the uncompressed size of member ``name`` rewritten to ``size`` in both of its headers."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    info = archive.getinfo(name)
    patched = bytearray(data)
    assert patched[info.header_offset:info.header_offset + 4] == b"PK\x03\x04"
    struct.pack_into("<I", patched, info.header_offset + 22, size)
    end = patched.rindex(b"PK\x05\x06")
    directory = struct.unpack_from("<I", patched, end + 16)[0]
    position = directory
    while patched[position:position + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", patched, position + 28)
        if patched[position + 46:position + 46 + name_len].decode() == name:
            struct.pack_into("<I", patched, position + 24, size)
        position += 46 + name_len + extra_len + comment_len
    assert zipfile.ZipFile(io.BytesIO(bytes(patched))).getinfo(name).file_size == size
    return bytes(patched)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 300 MB member of zeros, deflated to a few hundred kB, built a megabyte at a time."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("bomb.bin", "w") as member:
        chunk = bytes(1 << 20)
        for _ in range(300):
            member.write(chunk)
    assert len(out.getvalue()) < 2 * 2**20
    return out.getvalue()


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_zip_bomb_is_refused_by_its_declared_size(tmp_path, bomb):
    with pytest.raises(XflowError, match=r"unpacks to more than 250 MB.*'bomb.bin' alone 314572800"):
        safe_extract_zip(bomb, tmp_path / "out", "test archive")
    assert _files(tmp_path / "out") == []


def test_a_member_bigger_than_its_header_says_is_stopped(tmp_path, bomb):
    lying = _declare_size(bomb, "bomb.bin", 1000)
    with pytest.raises(XflowError, match=r"'bomb.bin' holds more than the 1000 bytes its header declares"):
        safe_extract_zip(lying, tmp_path / "out", "test archive")
    assert _files(tmp_path / "out") == []
    # stored (uncompressed) data lies the same way
    stored = _declare_size(_zip({"a.py": b"x" * 5000}, zipfile.ZIP_STORED), "a.py", 10)
    with pytest.raises(XflowError, match=r"'a.py' holds more than the 10 bytes"):
        safe_extract_zip(stored, tmp_path / "out2", "test archive")
    # and a header that promises more than there is is a damaged member, not a short file
    short = _declare_size(_zip({"b.py": b"y" * 100}), "b.py", 200)
    with pytest.raises(XflowError, match=r"'b.py' is damaged \(100 of 200 bytes"):
        safe_extract_zip(short, tmp_path / "out3", "test archive")
    assert _files(tmp_path / "out3") == []


def test_limits_are_parameters_and_honest_archives_pass(tmp_path):
    data = _zip({"a.py": b"a" * 600, "pkg/b.py": b"b" * 600})
    with pytest.raises(XflowError, match="unpacks to more than"):
        safe_extract_zip(data, tmp_path / "small", "t", max_bytes=1000)
    with pytest.raises(XflowError, match="2 members in the archive, more than 1"):
        safe_extract_zip(data, tmp_path / "few", "t", max_members=1)
    safe_extract_zip(data, tmp_path / "ok", "t", max_bytes=1200, max_members=2)
    assert (tmp_path / "ok" / "pkg" / "b.py").read_bytes() == b"b" * 600


def test_too_many_entries(tmp_path):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for index in range(MAX_MEMBERS + 1):
            archive.writestr(f"m{index}.py", b"")
    with pytest.raises(XflowError, match=f"{MAX_MEMBERS + 1} members in the archive, more than {MAX_MEMBERS}"):
        safe_extract_zip(out.getvalue(), tmp_path / "out", "test archive")
    assert _files(tmp_path / "out") == []


def test_zip_with_a_symlink_member(tmp_path, host_secret):
    secret_path, _ = host_secret
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("handler.py", HANDLER)
        info = zipfile.ZipInfo("config/settings.py")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, str(secret_path))
    with pytest.raises(XflowError, match=r"archive member 'config/settings.py' is a symbolic link"):
        safe_extract_zip(out.getvalue(), tmp_path / "out", "test archive")
    assert _files(tmp_path / "out") == []


def test_zip_with_a_method_or_encryption_it_does_not_accept(tmp_path):
    data = _zip({"a.py": b"x" * 100}, zipfile.ZIP_BZIP2)
    with pytest.raises(XflowError, match=r"'a.py' uses compression method 12"):
        safe_extract_zip(data, tmp_path / "out", "t")
    encrypted = bytearray(_zip({"a.py": b"x"}))
    info = zipfile.ZipFile(io.BytesIO(bytes(encrypted))).getinfo("a.py")
    struct.pack_into("<H", encrypted, info.header_offset + 6, 1)
    end = encrypted.rindex(b"PK\x05\x06")
    struct.pack_into("<H", encrypted, struct.unpack_from("<I", encrypted, end + 16)[0] + 8, 1)
    with pytest.raises(XflowError, match=r"'a.py' is encrypted"):
        safe_extract_zip(bytes(encrypted), tmp_path / "out", "t")
