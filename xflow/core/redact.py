"""Keeps secrets out of every message: masks known secret values, URL passwords and ``password=`` pairs.

Secret option values are registered when options are resolved (:func:`xflow.core.options.resolve_options`: options
declared secret, and for plugins that declare no types those whose names say so, :func:`is_secret_name`); every
:class:`~xflow.core.errors.XflowError` message and every log record printed by the CLI passes
through :func:`redact`. Masking is by value, so a secret is hidden wherever it ends up: inside a
URL of any scheme (``Redis://``, a typo such as ``redis:/``), a libpq DSN, a quoted repr, or an
exception text from a client library.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

MASK = "***"

#: option names whose values are secret (matched as words inside the name, case-insensitively)
SECRET_NAME_PARTS = ("password", "passwd", "pwd", "secret", "token", "credential", "sasl_plain", "api_key",
                     "apikey", "private_key", "access_key", "auth", "dsn_password", "passphrase", "session_key")

#: shortest value masked by value: shorter ones would mask ordinary words in messages
MIN_SECRET_LENGTH = 3

# scheme://userinfo@ (any scheme, one to three slashes, a password that may contain '@', ':' or spaces
# as long as it does not cross a line); the last '@' before the host ends the userinfo
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*:/{1,3})(?P<userinfo>[^\s/@'\"]*:[^\n/]*?)@"
                           r"(?=[A-Za-z0-9._~%\-\[\]:]+(?:$|[\s/?#'\"),;]))")
# password=VALUE or password: VALUE in libpq strings, query strings and key/value text; quoted values too
_KEY_VALUE = re.compile(r"(?i)(?P<key>\b(?:password|passwd|pwd|secret|token|api_key|apikey|sasl_plain_password)"
                        r"\s*[=:]\s*)(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,)]+)")

_WHOLE_URL = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.\-]*:/{0,3}(?P<rest>.*)$", re.DOTALL)

_lock = threading.Lock()
_known: set[str] = set()


def is_secret_name(name: str) -> bool:
    """Whether an option named ``name`` holds a secret (``password``, ``api_key``, ``sasl_plain_password``...)."""
    lowered = name.lower().replace("-", "_")
    return any(part in lowered for part in SECRET_NAME_PARTS)


def url_password(text: str) -> str | None:
    """The password in ``scheme://user:password@host`` (also for malformed or odd schemes), or None."""
    match = _URL_USERINFO.search(text)
    if not match:
        return None
    _, _, password = match.group("userinfo").partition(":")
    return password or None


def remember(value: Any) -> None:
    """Mask ``value`` (and its URL-quoted and unquoted forms) in every later message."""
    if value is None:
        return
    text = str(value)
    forms = {text, quote(text, safe=""), unquote(text), repr(text)[1:-1]}
    with _lock:
        _known.update(f for f in forms if len(f) >= MIN_SECRET_LENGTH)


def userinfo_is_ambiguous(url: str) -> bool:
    """True when a URL parser would not read the userinfo that ends at the URL's last '@' (unencoded '#', '/', '?', '@').

    Such a URL sends pieces of the password where the host or path should be, and client libraries then
    quote those pieces in their errors: refuse it before connecting.
    """
    whole = _WHOLE_URL.match(url)
    if not whole or "@" not in whole.group("rest"):
        return False
    intended = whole.group("rest").rpartition("@")[0]
    if "@" in intended:  # parsers differ: some split at the first '@' (libpq), some at the last
        return True
    try:
        parsed = urlsplit(url.strip())
    except ValueError:
        return True
    netloc_userinfo = parsed.netloc.rpartition("@")[0] if "@" in parsed.netloc else None
    return netloc_userinfo != intended


def remember_options(options: Mapping[str, Any]) -> None:
    """Register the secret parts of plugin options: values of secret-named keys, and passwords inside URLs/DSNs."""
    for key, value in options.items():
        if is_secret_name(str(key)):
            remember(value)
        if isinstance(value, str):
            remember_in_text(value)


def remember_in_text(text: str) -> None:
    """Register the passwords found inside ``text`` (a whole URL's userinfo, URLs in it, ``password=`` pairs)."""
    whole = _WHOLE_URL.match(text)
    if whole:  # the value is one URL: its userinfo ends at the last '@', whatever the password holds
        userinfo = whole.group("rest").rpartition("@")[0]
        if ":" in userinfo:
            remember(userinfo.partition(":")[2])
    password = url_password(text)
    if password:
        remember(password)
    for match in _KEY_VALUE.finditer(text):
        value = match.group("value")
        if value[:1] in "'\"":
            value = value[1:-1]
        remember(value)


def forget_all() -> None:
    """Drop every registered value (tests)."""
    with _lock:
        _known.clear()


def redact(text: str) -> str:
    """``text`` with every registered secret, URL password and ``password=`` value replaced by ``***``."""
    if not text:
        return text
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    return _KEY_VALUE.sub(lambda m: m.group("key") + MASK, text)


def redact_all(lines: Iterable[str]) -> list[str]:
    return [redact(line) for line in lines]


def _mask_userinfo(match: re.Match[str]) -> str:
    user, _, _ = match.group("userinfo").partition(":")
    return f"{match.group('scheme')}{user}:{MASK}@"


class RedactingFormatter(logging.Formatter):
    """A logging formatter whose output (message, traceback and all) has its secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
