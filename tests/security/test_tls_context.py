"""PS3.15 B.9 (BCP 195): the TLS contexts of pacsnode.security.tls, their file checks, peer names, refusals.

Handshakes here run in memory (ssl.MemoryBIO), no sockets: the node's server context against
clients that must be refused, and the reasons and Security Alerts made of the failures.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from pacsnode.config.settings import ConfigError, load_settings
from pacsnode.security.events import EventKind, Outcome
from pacsnode.security.tls import (
    BCP195_TLS12_CIPHERS,
    HandshakeFailure,
    TlsConfigError,
    certificate_names,
    certificate_subject,
    client_context,
    describe_handshake_error,
    dicom_client_context,
    dicom_server_context,
    https_context,
    peer_name_matches,
    security_alert,
    server_context,
)
from tlskit import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str | None = "localhost"
) -> tuple[BaseException | None, BaseException | None, ssl.SSLObject]:
    """Drive a handshake in memory; (server error, client error, server side SSLObject)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    errors: dict[str, BaseException | None] = {"c": None, "s": None}
    done = {"c": False, "s": False}
    for _ in range(10):
        for side, obj in (("c", c), ("s", s)):
            if done[side] or errors[side] is not None:
                continue
            try:
                obj.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                errors[side] = exc
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done["c"] and done["s"]:
            break
    if done["s"] and errors["c"] is None:
        # TLS 1.3: the client's certificate is judged after the client's side is done; a read shows it.
        try:
            c.read(1)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            errors["c"] = exc
    return errors["s"], errors["c"], s


def _old_tls_client(pki: Pki, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(pki.client_cert, pki.client_key)
    with pytest.warns(DeprecationWarning):
        ctx.minimum_version = version
        ctx.maximum_version = version
    # OpenSSL 3 only offers TLS 1.0 / 1.1 at security level 0.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


# ---------------------------------------------------------------- the BCP 195 profile


def test_server_context_is_bcp195(pki: Pki) -> None:
    ctx = server_context(pki.server_cert, pki.server_key, ca=pki.ca)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version is ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == set(BCP195_TLS12_CIPHERS)
    # RFC 9325 4.2: every TLS 1.2 suite has ephemeral (EC)DH key exchange and an AEAD cipher.
    assert all(c["kea"] == "kx-ecdhe" and c["aead"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2")


def test_client_context_is_bcp195(pki: Pki) -> None:
    ctx = client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version is ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.options & ssl.OP_NO_COMPRESSION
    unverified = client_context(verify=False)
    assert unverified.verify_mode is ssl.CERT_NONE and not unverified.check_hostname


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_mutual_handshake_in_both_versions(pki: Pki, maximum: ssl.TLSVersion) -> None:
    server = server_context(pki.server_cert, pki.server_key, ca=pki.ca)
    client = client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    client.maximum_version = maximum
    server_error, client_error, obj = _handshake(server, client)
    assert server_error is None and client_error is None
    assert obj.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[maximum]
    if maximum is ssl.TLSVersion.TLSv1_2:
        cipher = obj.cipher()
        assert cipher is not None and cipher[0] in BCP195_TLS12_CIPHERS
    assert certificate_subject(obj.getpeercert()) == "CN=TLSCLIENT, O=pacsnode tests"


def test_node_contexts_from_settings(pki: Pki, tmp_path: Path) -> None:
    settings = load_settings(
        None,
        {
            "node": {
                "data": tmp_path,
                "tls_port": 0,
                "tls_cert": pki.server_cert,
                "tls_key": pki.server_key,
                "tls_ca": pki.ca,
                "tls_require_client_cert": False,
                "tls_check_peer_name": True,
            },
            "web": {"tls": True},
        },
        environ={},
    )
    assert dicom_server_context(settings.node).verify_mode is ssl.CERT_OPTIONAL
    client = dicom_client_context(settings.node)
    assert client.check_hostname and client.verify_mode is ssl.CERT_REQUIRED
    # HTTPS asks for no client certificate unless [web] tls_require_client_cert.
    assert https_context(settings).verify_mode is ssl.CERT_NONE


# ---------------------------------------------------------------- refusals (in memory)


def test_refusals_and_their_reasons(pki: Pki) -> None:
    server = server_context(pki.server_cert, pki.server_key, ca=pki.ca)
    cases = {
        "no client certificate": (client_context(ca=pki.ca), "no client certificate", True),
        "expired": (
            client_context(ca=pki.ca, cert=pki.expired_cert, key=pki.expired_key),
            "certificate verify failed: certificate has expired",
            True,
        ),
        "untrusted": (
            client_context(ca=pki.ca, cert=pki.untrusted_cert, key=pki.untrusted_key),
            "not issued by a trusted CA",
            True,
        ),
        "TLS 1.1": (_old_tls_client(pki, ssl.TLSVersion.TLSv1_1), "older than 1.2", False),
        "TLS 1.0": (_old_tls_client(pki, ssl.TLSVersion.TLSv1), "older than 1.2", False),
    }
    for name, (client, reason, certificate) in cases.items():
        server_error, _, _ = _handshake(server, client)
        assert server_error is not None, name
        failure = describe_handshake_error(server_error)
        assert reason in failure.reason, (name, failure)
        assert failure.certificate is certificate, name
        assert not failure.quiet


def test_plain_dicom_bytes_are_not_tls(pki: Pki) -> None:
    server = server_context(pki.server_cert, pki.server_key, ca=pki.ca)
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = server.wrap_bio(s_in, s_out, server_side=True)
    # An A-ASSOCIATE-RQ PDU header (PS3.8 9.3.2): type 01H, then its length.
    s_in.write(bytes.fromhex("01000000004400010000") + b"PACSNODE".ljust(16) + b"\0" * 48)
    with pytest.raises(ssl.SSLError) as caught:
        obj.do_handshake()
    assert "plain DICOM" in describe_handshake_error(caught.value).reason


def test_client_refuses_an_untrusted_or_misnamed_server(pki: Pki) -> None:
    server = server_context(pki.server_cert, pki.server_key, require_client_cert=False)
    _, client_error, _ = _handshake(server, client_context(ca=pki.other_ca))
    assert client_error is not None
    assert "not issued by a trusted CA" in describe_handshake_error(client_error).reason
    _, client_error, _ = _handshake(server, client_context(ca=pki.ca), hostname="pacs.example.org")
    assert client_error is not None
    assert "Hostname mismatch" in describe_handshake_error(client_error).reason
    # No host name check (the node's default for [peers] without tls_check_peer_name): accepted.
    _, client_error, _ = _handshake(
        server, client_context(ca=pki.ca, check_hostname=False), "pacs.example.org"
    )
    assert client_error is None


def test_other_failures_described() -> None:
    assert (
        describe_handshake_error(ConnectionAbortedError("too long"), 5.0).reason
        == "no TLS handshake within 5 s"
    )
    quiet = describe_handshake_error(ConnectionResetError())
    assert quiet.quiet and not quiet.certificate


# ---------------------------------------------------------------- Security Alert


def test_security_alert_event() -> None:
    failure = HandshakeFailure("certificate verify failed: certificate has expired", True)
    event = security_alert(failure, peer_host="10.1.2.3", our_ae_title="PACSNODE")
    assert event.kind is EventKind.SECURITY_ALERT and event.action == "E"
    assert event.outcome is Outcome.SERIOUS_FAILURE
    assert event.type_codes == (("110126", "DCM", "Node Authentication"),)
    assert (
        event.outcome_description
        == "TLS handshake failed: certificate verify failed: certificate has expired"
    )
    peer, us = event.participants
    assert (peer.user_id, peer.network_access_point, peer.requestor) == ("10.1.2.3", "10.1.2.3", True)
    assert (us.user_id, us.role, us.requestor) == ("PACSNODE", "Application", False)
    minor = security_alert(
        HandshakeFailure("not TLS", False), peer_host="::1", peer_id="CN=X", our_ae_title="N"
    )
    assert minor.outcome is Outcome.MINOR_FAILURE and minor.participants[0].user_id == "CN=X"


# ---------------------------------------------------------------- peer names


def test_peer_names(pki: Pki) -> None:
    server = server_context(pki.server_cert, pki.server_key, ca=pki.ca)
    _, _, obj = _handshake(server, client_context(ca=pki.ca, cert=pki.named_cert, key=pki.named_key))
    cert = obj.getpeercert()
    assert certificate_names(cert) == ["MODALITY1", "MODALITY1"]
    assert peer_name_matches(cert, ["MODALITY1", "10.0.0.1"])
    assert peer_name_matches(cert, ["modality1"])  # host names compare without case
    assert not peer_name_matches(cert, ["OTHER", "127.0.0.1"])
    assert not peer_name_matches(None, ["MODALITY1"])
    ip_cert = {"subject": ((("commonName", "x"),),), "subjectAltName": (("IP Address", "0:0:0:0:0:0:0:1"),)}
    assert peer_name_matches(ip_cert, ["::1"])
    wildcard = {"subjectAltName": (("DNS", "*.example.org"),)}
    assert peer_name_matches(wildcard, ["ct1.example.org"])
    assert not peer_name_matches(wildcard, ["a.b.example.org", "example.org"])


# ---------------------------------------------------------------- files: clear errors at start-up


def test_file_errors_name_the_file(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(TlsConfigError, match=r"nope\.pem: certificate file not found"):
        server_context(missing, pki.server_key, ca=pki.ca)
    with pytest.raises(TlsConfigError, match=r"nope\.pem: private key file not found"):
        server_context(pki.server_cert, missing, ca=pki.ca)
    with pytest.raises(TlsConfigError, match=r"nope\.pem: CA file not found"):
        server_context(pki.server_cert, pki.server_key, ca=missing)
    with pytest.raises(
        TlsConfigError, match=r"client-key\.pem is not the private key of the certificate in .*server\.pem"
    ):
        server_context(pki.server_cert, pki.client_key, ca=pki.ca)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    with pytest.raises(TlsConfigError, match=r"garbage\.pem: no PEM certificate"):
        server_context(garbage, pki.server_key, ca=pki.ca)
    with pytest.raises(TlsConfigError, match=r"garbage\.pem: no PEM private key"):
        server_context(pki.server_cert, garbage, ca=pki.ca)
    with pytest.raises(TlsConfigError, match=r"garbage\.pem: no PEM CA certificate"):
        server_context(pki.server_cert, pki.server_key, ca=garbage)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
    with pytest.raises(TlsConfigError, match=r"encrypted-key\.pem: the private key is encrypted"):
        server_context(pki.server_cert, encrypted, ca=pki.ca)
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsConfigError, match=r"broken\.pem"):
        server_context(broken, pki.server_key, ca=pki.ca)
    with pytest.raises(TlsConfigError, match="no CA file"):
        server_context(pki.server_cert, pki.server_key, require_client_cert=True)


def test_settings_rules(pki: Pki, tmp_path: Path) -> None:
    def load(node: dict[str, object], web: dict[str, object] | None = None) -> object:
        tables: dict[str, dict[str, object]] = {"node": {"data": tmp_path, **node}}
        if web is not None:
            tables["web"] = web
        return load_settings(None, tables, environ={})

    files = {"tls_cert": pki.server_cert, "tls_key": pki.server_key, "tls_ca": pki.ca}
    with pytest.raises(ConfigError, match="plain_dicom = false needs tls_port"):
        load({"plain_dicom": False})
    with pytest.raises(ConfigError, match="set plain_dicom = false to serve only TLS"):
        load({"dicom_port": 11112, "tls_port": 11112, **files})
    # "The same port": only TLS on the DICOM port.
    load({"dicom_port": 11112, "tls_port": 11112, "plain_dicom": False, **files})
    with pytest.raises(ConfigError, match=r"\[web\] tls needs \[node\] tls_cert and tls_key"):
        load({}, {"tls": True})
    with pytest.raises(ConfigError, match=r"\[web\] tls_require_client_cert needs \[node\] tls_ca"):
        load(
            {"tls_cert": pki.server_cert, "tls_key": pki.server_key},
            {"tls": True, "tls_require_client_cert": True},
        )


# ---------------------------------------------------------------- the conformance statement (PS3.2 Security)


def test_conformance_statement_describes_tls() -> None:
    from pacsnode.config.settings import NodeSettings, PeerSettings, Settings
    from pacsnode.services.catalog import default_registry
    from pacsnode.services.conformance import render_conformance

    node = NodeSettings(
        tls_port=2762,
        plain_dicom=True,
        tls_cert=Path("node.pem"),
        tls_key=Path("node-key.pem"),
        tls_ca=Path("ca.pem"),
        tls_check_peer_name=True,
    )
    peers = {"ARCHIVE2": PeerSettings(host="10.0.0.2", port=2762, tls=True)}
    settings = Settings(node=node, peers=peers)
    text = render_conformance(default_registry(settings), settings)
    profiles = text.split("Security Profiles", 2)[-1]
    assert "BCP 195 TLS Secure Transport Connection Profile (PS3.15 B.9) on port 2762" in profiles
    assert "TLS 1.2 and 1.3 only" in profiles and "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" in profiles
    assert "Port 11112 accepts unencrypted TCP connections as well" in profiles
    assert "mutual authentication" in profiles
    assert "calling AE title or its host" in profiles
    assert "Security Alert" in profiles
    assert "ARCHIVE2" in profiles
