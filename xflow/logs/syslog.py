"""The ``syslog`` log destination: RFC 5424 messages over UDP, TCP or TLS, the record's fields as structured data.

One message per record::

    <14>1 2026-11-27T13:00:00.123Z host xflow 4242 line [xflow@32473 workflow="word_count" execution_id="112233"
    event="FileParsed" event_id="..." function="parser" attempt="1" kind="line" seq="0"] parsed 42 words

The severity comes from the record's level (DEBUG 7, INFO 6, WARNING 4, ERROR 3, CRITICAL 2), the facility from the
``facility`` option; MSGID is the record's kind (``line`` or ``outcome``). TCP and TLS frame messages by octet
counting (RFC 6587; ``framing: lf`` for receivers that want one message per line, newlines in it escaped as ``\\n``);
TLS is RFC 5425 (the server's certificate checked against ``ca_file`` or the system's authorities; ``cert_file`` and
``key_file`` for a client certificate). UDP sends one datagram per record, cut to ``max_message_bytes``.

Syslog has no acknowledgements: before each batch the connection is checked (a server that went away has closed it),
and a batch that cannot be written stays in the route's buffer; what a server took in but did not write before it
died cannot be known.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
from collections.abc import Sequence
from typing import ClassVar
from urllib.parse import urlsplit

from xflow.core.errors import XflowError
from xflow.core.interfaces import PluginContext
from xflow.core.options import Option
from xflow.logs.destination import LogDestination
from xflow.logs.records import LogRecord

FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
              "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
              "local7")
SEVERITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
#: the structured data's parameters, in order (``trace_id`` and ``status`` when set)
SD_FIELDS = ("workflow", "execution_id", "event", "event_id", "function", "attempt", "trace_id", "kind", "status", "seq")


def sd_escape(value: str) -> str:
    """A PARAM-VALUE: ``"``, ``\\`` and ``]`` escaped with a backslash (RFC 5424, 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_token(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters, ``-`` when empty."""
    kept = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return kept or "-"


def format_message(record: LogRecord, *, facility: int, hostname: str, app_name: str, procid: str,
                   sd_id: str) -> str:
    """The RFC 5424 message of a record (without framing)."""
    pri = facility * 8 + SEVERITY.get(record.level, 6)
    fields = record.as_dict()
    params = " ".join(f'{name}="{sd_escape(str(fields[name]))}"' for name in SD_FIELDS if fields.get(name) is not None)
    return (f"<{pri}>1 {record.iso_time()} {hostname} {app_name} {procid} {_header_token(record.kind, 32)} "
            f"[{sd_id} {params}] {record.message}")


class SyslogDestination(LogDestination):
    name: ClassVar[str] = "syslog"
    description: ClassVar[str] = "RFC 5424 syslog over UDP, TCP or TLS (rsyslog, syslog-ng, log servers)"
    options: ClassVar[tuple[Option, ...]] = (
        Option("address", str, "udp://127.0.0.1:514", "udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT"),
        Option("facility", "choice", "user", "the syslog facility", choices=FACILITIES),
        Option("app_name", str, "xflow", "the APP-NAME field"),
        Option("hostname", str, None, "the HOSTNAME field (default: this machine's name)"),
        Option("sd_id", str, "xflow@32473", "the structured data's SD-ID (NAME@ENTERPRISE-NUMBER)"),
        Option("framing", "choice", "octet-counting", "TCP/TLS framing", choices=("octet-counting", "lf")),
        Option("timeout", "duration", 5.0, "connect and write timeout", minimum=0.1),
        Option("max_message_bytes", int, 8192, "UDP: longer messages are cut", minimum=480),
        Option("ca_file", str, None, "TLS: the authorities that sign the server's certificate"),
        Option("cert_file", str, None, "TLS: a client certificate (PEM)"),
        Option("key_file", str, None, "TLS: the client certificate's key (PEM)"),
        Option("verify", bool, True, "TLS: check the server's certificate and name"),
    )
    batch_size: ClassVar[int] = 200
    linger: ClassVar[float] = 0.05

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        option = self.context.option
        address = option("address")
        try:
            parts = urlsplit(address if "://" in address else f"udp://{address}")
        except ValueError as exc:  # an unclosed IPv6 bracket
            raise XflowError(f"log destination 'syslog': address {address!r} is not an address ({exc})") from None
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise XflowError(f"log destination 'syslog': address {address!r} is not udp://HOST:PORT, tcp://HOST:PORT "
                             "or tls://HOST:PORT")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise XflowError(f"log destination 'syslog': address {address!r} has no valid port") from None
        if any(c.isspace() or not c.isprintable() for c in parts.hostname):
            raise XflowError(f"log destination 'syslog': address {address!r} has a host name with spaces or control "
                             "characters")
        self.protocol, self.host, self.port = parts.scheme, parts.hostname, port
        self.timeout = option("timeout")
        self.framing = option("framing")
        self.max_bytes = option("max_message_bytes")
        sd_id = option("sd_id")
        if not sd_id or any(c in sd_id for c in ' ="]') or len(sd_id) > 32:
            raise XflowError(f"log destination 'syslog': sd_id {sd_id!r} is not an SD-ID (at most 32 printable "
                             "characters, no space, '=', ']' or '\"')")
        self._format = {"facility": FACILITIES.index(option("facility")),
                        "hostname": _header_token(option("hostname") or socket.gethostname(), 255),
                        "app_name": _header_token(option("app_name"), 48), "procid": str(os.getpid()), "sd_id": sd_id}
        self._tls = self._tls_context() if self.protocol == "tls" else None
        self._sock: socket.socket | None = None

    def _tls_context(self) -> ssl.SSLContext:
        """The TLS settings; a file option naming a file that is missing, unreadable or not PEM is an XflowError that
        names the option and the file (checked here, before anything runs, not at the first send)."""
        option = self.context.option
        ca_file, cert_file, key_file = option("ca_file"), option("cert_file"), option("key_file")
        if key_file and not cert_file:
            raise XflowError(f"log destination 'syslog': key_file {key_file!r} is given without cert_file",
                             "give the client certificate with cert_file, or leave key_file out")
        for name, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
            if path:
                _check_readable(name, path)
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise XflowError(f"log destination 'syslog': ca_file {ca_file!r} holds no usable PEM certificate "
                             f"({_reason(exc)})", "ca_file names a PEM file of the authorities that sign the "
                             "server's certificate") from None
        if not option("verify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if cert_file:
            try:
                context.load_cert_chain(cert_file, key_file)
            except (OSError, ValueError) as exc:
                given = f"cert_file {cert_file!r}" + (f" with key_file {key_file!r}" if key_file else "")
                raise XflowError(f"log destination 'syslog': {given} is not a PEM client certificate and its key "
                                 f"({_reason(exc)})", "cert_file and key_file name PEM files (the key may be in "
                                 "cert_file when key_file is left out)") from None
        return context

    # -- sending ---------------------------------------------------------------------------------------------------
    def message(self, record: LogRecord) -> bytes:
        return format_message(record, **self._format).encode("utf-8", "backslashreplace")

    def send(self, records: Sequence[LogRecord]) -> None:
        if self.protocol == "udp":
            self._send_udp(records)
            return
        payload = b"".join(self._frame(self.message(record)) for record in records)
        sock = self._connected()
        try:
            sock.settimeout(max(0.05, self.time_left(self.timeout)))  # ends by a closing route's deadline
            sock.sendall(payload)
        except OSError:
            self._disconnect()
            raise

    def _frame(self, message: bytes) -> bytes:
        if self.framing == "lf":
            return message.replace(b"\n", b"\\n") + b"\n"
        return b"%d %s" % (len(message), message)

    def _send_udp(self, records: Sequence[LogRecord]) -> None:
        if self._sock is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
        for record in records:
            data = self.message(record)
            if len(data) > self.max_bytes:
                data = data[:self.max_bytes].decode("utf-8", "ignore").encode("utf-8")
            self._sock.sendto(data, (self.host, self.port))

    def _connected(self) -> socket.socket:
        """The open connection, made again when the server closed it (it went away since the last batch)."""
        if self._sock is not None and _peer_closed(self._sock, self.timeout):
            self._disconnect()
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=max(0.05, self.time_left(self.timeout)))
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_hostname=self.host)
                except BaseException:
                    sock.close()
                    raise
            self._sock = sock
        return self._sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def close(self) -> None:
        self._disconnect()


def _peer_closed(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closed the connection: it never sends anything, so a readable socket is at its end (or,
    with TLS, holds a session ticket, which reading consumes)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    try:
        sock.setblocking(False)
        try:
            data = sock.recv(4096)
        finally:
            sock.settimeout(timeout)
    except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return not data


def _check_readable(option: str, path: str) -> None:
    """An XflowError naming ``option`` and ``path`` unless ``path`` is a file this process can read."""
    try:
        with open(path, "rb"):
            pass
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise XflowError(f"log destination 'syslog': {option} {path!r} cannot be read ({_reason(exc)})",
                         f"{option} names a PEM file") from None


def _reason(exc: BaseException) -> str:
    """An OS or TLS error's reason, without the path (the message names it)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
