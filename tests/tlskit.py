"""Test PKI for the TLS tests (PS3.15 B.9): a CA, server and client certificates, made with `cryptography`.

``make_pki(folder)`` writes PEM files and returns a `Pki` with their paths:

* ``ca`` (``ca.pem``): the CA the node trusts; ``other_ca`` (``other-ca.pem``): one it does not;
* ``server_cert`` / ``server_key``: the node's (and the peers'), subjectAltName 127.0.0.1 and localhost;
* ``client_cert`` / ``client_key``: a valid client, CN ``TLSCLIENT`` (an AE title), SAN 127.0.0.1;
* ``expired_cert`` / ``expired_key``: signed by ``ca`` but expired yesterday;
* ``untrusted_cert`` / ``untrusted_key``: a client signed by ``other_ca``;
* ``named_cert`` / ``named_key``: signed by ``ca``, CN and SAN DNS ``MODALITY1`` only (no address).

RSA 2048 keys: every TLS stack here (OpenSSL via Python, DCMTK's BCP 195 profiles) takes them.
Also helpers that build Python `ssl` contexts from these files, for pynetdicom and raw clients.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """The paths of the test CA, certificates and keys."""

    folder: Path
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    expired_cert: Path
    expired_key: Path
    untrusted_cert: Path
    untrusted_key: Path
    named_cert: Path
    named_key: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pacsnode tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ca(cn: str, now: datetime.datetime) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey],
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    ca_cert, ca_key = issuer
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(
    folder: Path, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey | None
) -> tuple[Path, Path]:
    cert_path = folder / f"{stem}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = folder / f"{stem}-key.pem"
    if key is not None:
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
    return cert_path, key_path


def make_pki(folder: Path) -> Pki:
    """Write the test CA, certificates and keys into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    year = datetime.timedelta(days=365)
    ca = _ca("pacsnode test CA", now)
    other = _ca("some other CA", now)
    valid = {"not_before": now - datetime.timedelta(days=1), "not_after": now + year}
    server = _leaf("localhost", ca, dns=("localhost",), ips=("127.0.0.1",), **valid)
    client = _leaf("TLSCLIENT", ca, dns=("TLSCLIENT",), ips=("127.0.0.1",), **valid)
    expired = _leaf(
        "EXPIRED",
        ca,
        ips=("127.0.0.1",),
        not_before=now - 2 * year,
        not_after=now - datetime.timedelta(days=1),
    )
    untrusted = _leaf("UNTRUSTED", other, ips=("127.0.0.1",), **valid)
    named = _leaf("MODALITY1", ca, dns=("MODALITY1",), **valid)
    ca_path, _ = _write(folder, "ca", ca[0], None)
    other_path, _ = _write(folder, "other-ca", other[0], None)
    paths = {
        stem: _write(folder, stem, cert, key)
        for stem, (cert, key) in {
            "server": server,
            "client": client,
            "expired": expired,
            "untrusted": untrusted,
            "named": named,
        }.items()
    }
    return Pki(
        folder,
        ca_path,
        other_path,
        *paths["server"],
        *paths["client"],
        *paths["expired"],
        *paths["untrusted"],
        *paths["named"],
    )


def client_context(
    pki: Pki,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    maximum: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A plain Python TLS client context trusting the test CA (any version Python allows by default)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def server_context(pki: Pki, *, require_client_cert: bool = False) -> ssl.SSLContext:
    """A plain Python TLS server context with the test server certificate (for pynetdicom SCPs)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


class WaitingAuditSink:
    """A MemoryAuditSink that test threads can wait on (events come from the node's loop thread)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed = threading.Condition()

    def emit(self, event: Any) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def alerts(self) -> list[Any]:
        """The Security Alerts so far."""
        with self._changed:
            return self._alerts()

    def wait_alert(self, count: int, timeout: float = 10.0) -> Any:
        """Block until there are ``count`` Security Alerts; return the last one."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._alerts()) >= count, timeout):
                raise AssertionError(
                    f"{len(self._alerts())} Security Alert(s), expected {count}: {self.events}"
                )
            return self._alerts()[count - 1]

    def _alerts(self) -> list[Any]:
        from pacsnode.security.events import EventKind

        return [e for e in self.events if e.kind is EventKind.SECURITY_ALERT]


def tls_node_settings(
    data: Path,
    pki: Pki,
    *,
    node: dict[str, Any] | None = None,
    peers: dict[str, dict[str, Any]] | None = None,
    web: dict[str, Any] | None = None,
    **tables: Any,
) -> Any:
    """Node settings for the TLS tests: plain DICOM and TLS on free ports, the test PKI, SQLite."""
    from pacsnode.config.settings import load_settings

    overrides: dict[str, dict[str, Any]] = {
        "node": {
            "data": data,
            "dicom_port": 0,
            "http_port": 0,
            "tls_port": 0,
            "tls_cert": pki.server_cert,
            "tls_key": pki.server_key,
            "tls_ca": pki.ca,
            **(node or {}),
        },
        "network": {"shutdown_timeout": 2.0, "artim_timeout": 10.0},
        **tables,
    }
    if peers:
        overrides["peers"] = peers
    if web:
        overrides["web"] = web
    return load_settings(None, overrides, environ={})
