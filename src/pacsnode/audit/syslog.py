"""RFC 5424 syslog of audit messages (IHE ITI-20, PS3.15 A.6) over UDP (RFC 5426), TCP or TLS (RFC 5425).

Blocking sockets: the audit trail's sender thread is the only user. A message is never cut:
one larger than a UDP datagram can carry is refused (`MessageTooLarge`) and stays in the
local trail only; over TCP and TLS every message goes whole, framed by its length.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
from datetime import UTC, datetime

from pacsnode.config.settings import AuditSettings

# RFC 5424 6.2.1: facility 10 (security/authorization, authpriv); severity 5 (notice) for an
# event that succeeded, 4 (warning) for one that failed.
FACILITY_AUTHPRIV = 10
SEVERITY_NOTICE = 5
SEVERITY_WARNING = 4
APP_NAME = "pacsnode"
# IHE ITI TF-2a 3.20.7.1: the MSGID of an audit message.
MSGID = "IHE+RFC-3881"
# RFC 5424 6.4: a MSG in UTF-8 starts with the byte order mark.
BOM = b"\xef\xbb\xbf"
# RFC 5426 3.2 / RFC 768: the most a UDP datagram over IPv4 carries (65535 - 8 - 20). Collectors
# often take less (rsyslog: maxMessageSize, 8 KiB by default), and truncate the rest.
UDP_MAX = 65_507


class MessageTooLarge(ValueError):
    """The message does not fit the transport (a UDP datagram); it is not sent, and not cut."""


def _header_field(value: str, limit: int) -> str:
    # RFC 5424 6: header fields are printable US-ASCII without spaces; "-" when empty.
    text = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return text or "-"


def syslog_message(
    xml: str,
    *,
    at: datetime,
    failure: bool,
    hostname: str | None = None,
    procid: str | None = None,
) -> bytes:
    """One RFC 5424 message: PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD, then BOM + XML."""
    severity = SEVERITY_WARNING if failure else SEVERITY_NOTICE
    stamp = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    header = " ".join(
        (
            f"<{FACILITY_AUTHPRIV * 8 + severity}>1",  # RFC 5424 6.2.1 PRI, 6.2.2 VERSION
            stamp.isoformat(timespec="microseconds"),  # RFC 5424 6.2.3: RFC 3339 with its offset
            _header_field(hostname if hostname is not None else socket.getfqdn(), 255),
            _header_field(APP_NAME, 48),
            _header_field(procid if procid is not None else str(os.getpid()), 128),
            _header_field(MSGID, 32),
            "-",  # RFC 5424 6.3: no STRUCTURED-DATA
        )
    )
    return header.encode("ascii") + b" " + BOM + xml.encode("utf-8")


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 4.3 / RFC 6587 3.4.1 octet counting: MSG-LEN SP SYSLOG-MSG."""
    return str(len(message)).encode("ascii") + b" " + message


def client_context(settings: AuditSettings) -> ssl.SSLContext:
    """The TLS context for the collector: [audit] syslog_ca, an optional client certificate, TLS 1.2+."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.syslog_ca) if settings.syslog_ca else None
    )
    # RFC 5425 5 / BCP 195: TLS 1.2 at least; the collector's certificate and name are checked.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.syslog_cert is not None:
        context.load_cert_chain(
            str(settings.syslog_cert), str(settings.syslog_key) if settings.syslog_key else None
        )
    return context


class SyslogSender:
    """Sends syslog messages to the [audit] collector over one connection, reopened when it breaks."""

    def __init__(self, settings: AuditSettings, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.transport = settings.syslog_transport
        self._context = client_context(settings) if self.transport == "tls" else None
        self._sock: socket.socket | None = None
        self._udp_address: tuple[str, int] | None = None

    def send(self, message: bytes) -> None:
        """Send one message; OSError when the collector cannot be reached (the caller retries)."""
        if self.transport == "udp":
            self._send_udp(message)
            return
        sock = self._connection()
        try:
            sock.sendall(octet_counted(message))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection (the next send opens a new one)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                if isinstance(sock, ssl.SSLSocket):
                    sock.settimeout(1.0)
                    sock.unwrap()
            except (OSError, ValueError):
                pass
            finally:
                sock.close()

    def _send_udp(self, message: bytes) -> None:
        # RFC 5426 3.1: one message per datagram, never split.
        if len(message) > UDP_MAX:
            raise MessageTooLarge(f"{len(message)} bytes: more than a UDP datagram carries ({UDP_MAX})")
        if self._sock is None:
            host, port = self.settings.syslog_host, self.settings.syslog_port
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            self._sock = socket.socket(family, kind, proto)
            self._udp_address = (str(address[0]), int(address[1]))
        assert self._udp_address is not None
        try:
            self._sock.sendto(message, self._udp_address)
        except OSError:
            self.close()
            raise

    def _connection(self) -> socket.socket:
        if self._sock is not None and self._peer_closed(self._sock):
            # The collector closed (or restarted): a message written now would be lost with
            # the old connection, so it goes on a new one.
            self.close()
        if self._sock is None:
            host, port = self.settings.syslog_host, self.settings.syslog_port
            sock = socket.create_connection((host, port), timeout=self.timeout)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if self._context is not None:
                    sock = self._context.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _peer_closed(self, sock: socket.socket) -> bool:
        # RFC 6587 / RFC 5425 carry nothing back to the sender: a readable socket means the
        # collector closed it (EOF, a reset or a TLS close_notify). TLS 1.3 session tickets
        # are read (and kept) here too.
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            sock.setblocking(False)
            try:
                data = sock.recv(4096)
            finally:
                sock.settimeout(self.timeout)
            return data == b""
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except (OSError, ValueError):
            return True
