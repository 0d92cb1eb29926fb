"""Secrets never reach output, logs or the state folder: option values, URL passwords, DSNs, mistyped options."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xflow.cli import main
from xflow.core import redact
from xflow.core.errors import XflowError

WORKFLOW = """\
functions:
  - name: step
    handler: handle
    source: handler.py
subscriptions:
  - event: Started
    subscribers: [step]
"""

# passwords with the characters that break naive masking: '@', ':', '/', spaces, quotes, '%', '=', '&'
passwords = st.text(alphabet="abcXYZ0189@:/ %='\"&;#?!$", min_size=6, max_size=24).filter(
    lambda p: p.strip() == p and len(set(p)) >= 4)

REDIS_URLS = ["redis://:{pw}@127.0.0.1:1/0", "Redis://:{pw}@127.0.0.1:1/0", "redis:/:{pw}@127.0.0.1:1/0",
              "rediss://user:{pw}@127.0.0.1:1/0", "redis//:{pw}@h/0", "http://u:{pw}@h:1/0", "redis://:{pw}@[bad/0"]
POSTGRES_DSNS = ["postgresql://u:{pw}@127.0.0.1:1/db", "postgres://u:{pw}@[bad/db", "host=127.0.0.1 port=1 password={pw}",
                 "host=127.0.0.1 port=1 password='{pw}'", "postgresql://u:{pw}@127.0.0.1:1/db?sslmode=bogus",
                 "Postgresql:/u:{pw}@h/db"]


def _run(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in this process; return (exit status, everything it printed, at -vv)."""
    out, err = io.StringIO(), io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["-vv", *argv])
        except SystemExit as exc:
            status = int(exc.code or 0)
        except Exception as exc:  # a traceback would print the secret: report it as text for the assertion
            status, text = 99, f"{type(exc).__name__}: {exc}"
            err.write(text)
    logging.getLogger("xflow").handlers.clear()
    return status, out.getvalue() + err.getvalue()


def _state_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


def _project(folder: Path) -> Path:
    (folder / "handler.py").write_text("def handle(event, ctx):\n    pass\n")
    path = folder / "flow.yaml"
    path.write_text(WORKFLOW)
    return path


def _assert_hidden(password: str, argv: list[str], text: str, state: str) -> None:
    fragments = {password} | {password[i:i + 6] for i in range(0, max(1, len(password) - 5))}
    # a fragment that is an ordinary part of the command or of xflow's own words is no leak
    context = " ".join(a.replace(password, "") for a in argv)
    for fragment in fragments:
        if fragment in context or fragment.strip() != fragment or len(set(fragment)) < 3:
            continue
        assert fragment not in text, f"secret fragment {fragment!r} printed:\n{text}"
        assert fragment not in state, f"secret fragment {fragment!r} written under the state folder"


@pytest.mark.parametrize("template", REDIS_URLS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=passwords)
def test_redis_url_password_never_shown(template: str, password: str) -> None:
    pytest.importorskip("xflow_transport_redis")
    redact.forget_all()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        flow = _project(folder)
        url = template.format(pw=password)
        argv = ["--state-dir", str(folder / "state"), "publish", str(flow), "Started", "{}", "--transport", "redis",
                "--option", f"url={url}"]
        status, text = _run(argv)
        assert status in (1, 2), text
        assert "Traceback" not in text and status != 99, text
        _assert_hidden(password, argv, text, _state_text(folder / "state") if (folder / "state").exists() else "")


@pytest.mark.parametrize("template", POSTGRES_DSNS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=passwords)
def test_postgres_dsn_password_never_shown(template: str, password: str) -> None:
    pytest.importorskip("xflow_tracker_postgres")
    redact.forget_all()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        flow = _project(folder)
        dsn = template.format(pw=password)
        argv = ["--state-dir", str(folder / "state"), "setup", str(flow), "--transport", "local", "--provider", "local",
                "--tracker", "postgres", "--option", f"dsn={dsn}"]
        status, text = _run(argv)
        assert status in (1, 2), text
        assert "Traceback" not in text and status != 99, text
        _assert_hidden(password, argv, text, _state_text(folder / "state") if (folder / "state").exists() else "")


@settings(max_examples=60, deadline=None)
@given(password=passwords, name=st.sampled_from(["sasl_plain_password", "password", "api_key", "token", "url"]),
       separator=st.sampled_from([":", " ", "", "=="]))
def test_mistyped_option_never_echoes_its_value(password: str, name: str, separator: str) -> None:
    redact.forget_all()
    assume("=" not in password or separator == "==")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        flow = _project(folder)
        argv = ["--state-dir", str(folder / "state"), "publish", str(flow), "Started", "{}",
                "--option", f"{name}{separator}{password}"]
        status, text = _run(argv)
        assert status == 2, text
        _assert_hidden(password, argv, text, _state_text(folder / "state") if (folder / "state").exists() else "")


# passwords a URL parser reads one way: no '/', '#' or '?', and no separator after an '@' in them
plain_url_passwords = st.text(alphabet="abcXYZ0189@: %='\"&;!$", min_size=6, max_size=24).filter(
    lambda p: p.strip() == p and len(set(p)) >= 4 and not set(p.partition("@")[2]) & set(" '\",;"))


@settings(max_examples=300, deadline=None)
@given(password=plain_url_passwords, scheme=st.sampled_from(["redis", "Redis", "postgresql", "https", "amqp", "x+y"]),
       slashes=st.sampled_from(["//", "/"]), user=st.sampled_from(["", "u", "admin"]))
def test_error_messages_mask_url_passwords(password: str, scheme: str, slashes: str, user: str) -> None:
    """An XflowError mentioning a URL with userinfo masks the password even when it was never registered.

    (Registered secrets are masked by value wherever they appear; this covers URLs built elsewhere, as long as
    the text can be read one way: no '/', '#' or '?' in the password, and after an '@' in it no separator.)
    """
    redact.forget_all()
    url = f"{scheme}:{slashes}{user}:{password}@db.example:5432/x"
    error = XflowError(f"cannot reach {url!r} while connecting", f"check {url}")
    for fragment in {password} | {password[i:i + 6] for i in range(0, max(1, len(password) - 5))}:
        if len(set(fragment)) >= 3 and fragment.strip() == fragment and fragment not in "db.example:5432/x":
            assert fragment not in str(error), str(error)


def test_registered_secret_masked_in_log_lines() -> None:
    redact.forget_all()
    redact.remember_options({"api_key": "k3y-Very-Secret", "url": "redis://:pw-in-url@h/0", "partitions": "2"})
    formatter = redact.RedactingFormatter("%(message)s")
    record = logging.LogRecord("xflow", logging.WARNING, __file__, 1, "using %s and %s", ("k3y-Very-Secret", "pw-in-url"),
                               None)
    assert formatter.format(record) == "using *** and ***"
    assert redact.is_secret_name("api_key") and redact.is_secret_name("sasl_plain_password")
    assert not redact.is_secret_name("partitions")


def test_declared_secret_options_are_masked_whatever_their_names() -> None:
    """The declared flag decides for typed options; the word list only for names a plugin declares no type for."""
    from xflow.core.options import Option, resolve_options

    redact.forget_all()
    declared = {"signing_seed": Option("signing_seed", str, None, "the seed", secret=True),
                "auth_mode": Option("auth_mode", str, None, "how to authenticate"),
                "partitions": Option("partitions", int, 4, "partitions")}
    resolved = resolve_options("transport 'vault'", declared, {"signing_seed": ("Seed-Value-991", "--option"),
                                                               "auth_mode": ("plain-mode", "--option"),
                                                               "partitions": ("3", "--option"),
                                                               "legacy_token": ("tok-77-abc", "--option")},
                               unknown="keep")
    assert resolved == {"signing_seed": "Seed-Value-991", "auth_mode": "plain-mode", "partitions": 3,
                        "legacy_token": "tok-77-abc"}
    assert redact.redact("seed Seed-Value-991, mode plain-mode, token tok-77-abc") == "seed ***, mode plain-mode, token ***"
    # the word list alone would have got the first two wrong
    assert not redact.is_secret_name("signing_seed") and redact.is_secret_name("auth_mode")


@settings(max_examples=100, deadline=None)
@given(password=passwords)
def test_a_declared_secret_is_masked_in_every_later_message(password: str) -> None:
    from xflow.core.options import Option, resolve_options

    redact.forget_all()
    resolve_options("tracker 'vault'", {"signing_seed": Option("signing_seed", str, None, "", secret=True)},
                    {"signing_seed": (password, "--option")})
    error = XflowError(f"cannot sign with {password} now", f"check {password!r}")
    _assert_hidden(password, [], str(error), "")
