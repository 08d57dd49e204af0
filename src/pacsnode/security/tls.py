"""PS3.15 B.9 (BCP 195, RFC 9325): TLS contexts for DICOM and HTTPS, peer certificate checks, refusals."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsnode.config.settings import NodeSettings, Settings
from pacsnode.security.events import AuditEvent, EventKind, Outcome, Participant

# PS3.15 B.9 / RFC 9325 4.2: the TLS 1.2 cipher suites BCP 195 recommends, ECDHE key exchange with
# an AEAD cipher (AES-GCM; ChaCha20-Poly1305, RFC 9325 4.2 note), in OpenSSL's names. TLS 1.3's
# own suites (RFC 8446) are all AEAD with ephemeral keys: OpenSSL's defaults are kept.
BCP195_TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

# PS3.15 A.5.3.11 / PS3.16 CID 401: the EventTypeCode of a TLS refusal.
NODE_AUTHENTICATION = ("110126", "DCM", "Node Authentication")


class TlsConfigError(Exception):
    """A certificate, key or CA file cannot be used; the message names the file and says why."""


def _bcp195(ctx: ssl.SSLContext) -> ssl.SSLContext:
    # PS3.15 B.9 / RFC 9325 3.1.1: TLS 1.2 and 1.3 only (no SSL, no TLS 1.0 or 1.1).
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # RFC 9325 4.2: only the recommended TLS 1.2 suites.
    ctx.set_ciphers(":".join(BCP195_TLS12_CIPHERS))
    # RFC 9325 3.3: no TLS-level compression (CRIME); 3.5: no renegotiation.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise TlsConfigError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise TlsConfigError(f"{path}: {what} file is a directory") from None
    except OSError as exc:
        raise TlsConfigError(f"{path}: {what} file cannot be read: {exc.strerror or exc}") from None


def _no_password() -> str:
    # Never let OpenSSL prompt on the terminal for a pass phrase.
    return ""


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    cert_text = _read(cert, "certificate")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise TlsConfigError(f"{cert}: no PEM certificate in it (a '-----BEGIN CERTIFICATE-----' block)")
    key_path = key if key is not None else cert
    key_text = _read(key, "private key") if key is not None else cert_text
    if "PRIVATE KEY-----" not in key_text:
        raise TlsConfigError(
            f"{key_path}: no PEM private key in it (a '-----BEGIN ... PRIVATE KEY-----' block)"
        )
    if "ENCRYPTED" in key_text:
        raise TlsConfigError(
            f"{key_path}: the private key is encrypted with a pass phrase; pacsnode needs it unencrypted "
            "(protect the file instead, e.g. chmod 600)"
        )
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(f"{key_path} is not the private key of the certificate in {cert}") from None
        raise TlsConfigError(f"{cert} / {key_path}: cannot be loaded: {exc.reason or exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    try:
        if ca.is_dir():
            ctx.load_verify_locations(capath=str(ca))  # a c_rehash'ed folder
            return
        text = _read(ca, "CA")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise TlsConfigError(f"{ca}: no PEM CA certificate in it (a '-----BEGIN CERTIFICATE-----' block)")
        ctx.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as exc:
        raise TlsConfigError(f"{ca}: CA certificates cannot be loaded: {exc.reason or exc}") from None


def server_context(
    cert: Path, key: Path | None, *, ca: Path | None = None, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A BCP 195 server context: our certificate and key; peers' certificates verified against ``ca``.

    With ``require_client_cert`` a peer without a certificate chaining to ``ca`` is refused in the
    handshake (mutual TLS); otherwise one is asked for, and checked when given, if ``ca`` is set.
    OpenSSL checks the chain and the validity dates (expiry).
    """
    ctx = _bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    _load_chain(ctx, cert, key)
    if ca is not None:
        _load_ca(ctx, ca)
    if require_client_cert:
        if ca is None:
            raise TlsConfigError("client certificates are required but no CA file is given to check them")
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_OPTIONAL if ca is not None else ssl.CERT_NONE
    return ctx


def client_context(
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    verify: bool = True,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A BCP 195 client context: the server verified against ``ca`` (else the system's CAs).

    ``cert`` (and ``key``, unless in the same file) are presented when the server asks (mutual
    TLS). ``check_hostname``: the server certificate must name the host called (subjectAltName).
    ``verify=False`` accepts any server certificate: for tests against a throw-away peer only.
    """
    ctx = _bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if key is not None and cert is None:
        raise TlsConfigError(f"{key}: a private key without its certificate")
    if cert is not None:
        _load_chain(ctx, cert, key)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if ca is not None:
        _load_ca(ctx, ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def dicom_server_context(node: NodeSettings) -> ssl.SSLContext:
    """The context of the node's DICOM TLS listener (``[node] tls_cert, tls_key, tls_ca, ...``)."""
    if node.tls_cert is None:
        raise TlsConfigError("[node] tls_cert is not set")
    return server_context(
        node.tls_cert, node.tls_key, ca=node.tls_ca, require_client_cert=node.tls_require_client_cert
    )


def dicom_client_context(node: NodeSettings) -> ssl.SSLContext:
    """The context of the node's associations to ``[peers.X] tls = true`` peers.

    Their certificate must chain to ``[node] tls_ca`` (else to the system's CAs); with
    ``tls_check_peer_name`` it must also name the host called. We present our own certificate.
    """
    return client_context(
        ca=node.tls_ca,
        cert=node.tls_cert,
        key=node.tls_key,
        check_hostname=node.tls_check_peer_name,
    )


def https_context(settings: Settings) -> ssl.SSLContext:
    """The context of the HTTPS listener (``[web] tls``): the node's certificate and key.

    Client certificates are asked for only with ``[web] tls_require_client_cert`` (browsers would
    otherwise prompt for one); HTTP users authenticate with ``[auth]`` instead.
    """
    node = settings.node
    if node.tls_cert is None:
        raise TlsConfigError("[web] tls needs [node] tls_cert and tls_key")
    required = settings.web.tls_require_client_cert
    return server_context(
        node.tls_cert, node.tls_key, ca=node.tls_ca if required else None, require_client_cert=required
    )


# ---------------------------------------------------------------- peer certificates


def certificate_subject(cert: Mapping[str, Any] | None) -> str:
    """The subject of a certificate as ``ssl.getpeercert()`` gives it, e.g. ``CN=MODALITY1, O=Clinic``."""
    if not cert:
        return ""
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C"}
    parts = [f"{short.get(k, k)}={v}" for rdn in reversed(cert.get("subject", ())) for k, v in rdn]
    return ", ".join(parts)


def certificate_names(cert: Mapping[str, Any] | None) -> list[str]:
    """The names a certificate gives its holder: subjectAltName DNS and IP entries, then the CN."""
    if not cert:
        return []
    names = [v for kind, v in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
    names += [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return names


def _same_name(pattern: str, name: str) -> bool:
    pattern, name = pattern.strip().rstrip("."), name.strip().rstrip(".")
    try:
        return ipaddress.ip_address(pattern) == ipaddress.ip_address(name)
    except ValueError:
        pass
    if pattern.casefold() == name.casefold():
        return True
    # RFC 6125 6.4.3: a wildcard as the whole left-most label of a host name.
    if pattern.startswith("*.") and "." in name:
        return name.split(".", 1)[1].casefold() == pattern[2:].casefold()
    return False


def peer_name_matches(cert: Mapping[str, Any] | None, names: Iterable[str]) -> bool:
    """True when the certificate's subjectAltName (DNS, IP) or CN equals one of ``names``.

    ``names`` are what the peer is known as: its calling AE title, its address, the host of its
    ``[peers.X]`` table. Host names compare without case; an address as an address (IPv6 forms).
    """
    wanted = [n for n in names if n]
    return any(_same_name(pattern, name) for pattern in certificate_names(cert) for name in wanted)


# ---------------------------------------------------------------- refusals


@dataclass(frozen=True, slots=True)
class HandshakeFailure:
    """Why a TLS handshake failed, in words, and how it is audited."""

    reason: str
    certificate: bool  # the peer's (or our) certificate was refused: a node authentication failure
    quiet: bool = False  # the peer went away before saying anything (a port probe): no Security Alert


_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": ("no client certificate (mutual TLS requires one)", True),
    "UNSUPPORTED_PROTOCOL": (
        "the peer offers only TLS versions older than 1.2 (BCP 195 needs 1.2 or 1.3)",
        False,
    ),
    "WRONG_VERSION_NUMBER": ("not TLS: the other side speaks plain DICOM (or another protocol)", False),
    "HTTP_REQUEST": ("not TLS: the other side speaks plain HTTP", False),
    "NO_SHARED_CIPHER": ("no BCP 195 cipher suite in common with the peer", False),
    "NO_SUITABLE_SIGNATURE_ALGORITHM": ("no signature algorithm in common with the peer", False),
    "TLSV1_ALERT_PROTOCOL_VERSION": ("the peer refused TLS 1.2 and 1.3", False),
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": ("the peer requires a client certificate and we sent none", True),
}


def describe_handshake_error(exc: BaseException, timeout: float | None = None) -> HandshakeFailure:
    """A TLS handshake (or the first read after it) failed with ``exc``: why, in words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = exc.verify_message or "verification failed"
        # X509_V_ERR 2, 20: unable to get the (local) issuer certificate; 18, 19: self-signed.
        if exc.verify_code in (2, 18, 19, 20):
            text += " (not issued by a trusted CA)"
        return HandshakeFailure(f"certificate verify failed: {text}", True)
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _REASONS:
            text, cert = _REASONS[reason]
            return HandshakeFailure(text, cert)
        if "ALERT" in reason:
            # The peer sent a TLS alert: it refused us (our certificate, say).
            alert = reason.split("ALERT_", 1)[-1].replace("_", " ").lower()
            cert = "CERTIFICATE" in reason or "UNKNOWN_CA" in reason or "DECRYPT" in reason
            return HandshakeFailure(f"the peer refused the handshake (TLS alert: {alert})", cert)
        if isinstance(exc, ssl.SSLEOFError):
            return HandshakeFailure("connection closed during the TLS handshake", False)
        return HandshakeFailure(f"TLS error: {reason.replace('_', ' ').lower() or exc}", False)
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        within = f" within {timeout:g} s" if timeout is not None else ""
        return HandshakeFailure(f"no TLS handshake{within}", False)
    if isinstance(exc, ConnectionResetError | EOFError | BrokenPipeError):
        return HandshakeFailure("connection closed during the TLS handshake", False, quiet=True)
    return HandshakeFailure(f"{type(exc).__name__}: {exc}", False)


def security_alert(
    failure: HandshakeFailure | str,
    *,
    peer_host: str,
    peer_id: str = "",
    our_ae_title: str,
    serious: bool | None = None,
) -> AuditEvent:
    """PS3.15 A.5.3.11 Security Alert for a refused TLS peer (EventTypeCode Node Authentication).

    ``failure``: a failed handshake, or the text of another refusal (a peer name check, say).
    ``peer_id`` is the certificate subject when known, else the peer's address is its user ID.
    A refused certificate is a serious failure, any other refusal a minor one (unless ``serious``).
    """
    if isinstance(failure, HandshakeFailure):
        description = f"TLS handshake failed: {failure.reason}"
        serious = failure.certificate if serious is None else serious
    else:
        description = failure
    return AuditEvent(
        kind=EventKind.SECURITY_ALERT,
        action="E",
        outcome=Outcome.SERIOUS_FAILURE if serious else Outcome.MINOR_FAILURE,
        outcome_description=description,
        type_codes=(NODE_AUTHENTICATION,),
        participants=(
            Participant(user_id=peer_id or peer_host, requestor=True, network_access_point=peer_host),
            Participant(
                user_id=our_ae_title, role="Application", alternative_user_id=f"AETITLES={our_ae_title}"
            ),
        ),
    )
