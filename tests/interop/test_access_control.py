"""DIMSE access control against DCMTK and pynetdicom peers (PS3.15 B.1, PS3.8 Table 9-21, PS3.7 C.5.3,
PS3.7 D.3.3.7): unknown and misplaced AEs, the called AE title, services per AE, TLS, user identity."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from authkit import TestIssuer, quick_hash
from pacsnode.security.access import LOGIN, NODE_AUTHENTICATION, USE_OF_RESTRICTED_FUNCTION
from pacsnode.security.events import EventKind, MemoryAuditSink, Outcome
from peerkit import (
    HOST,
    WAIT,
    dcmtk_find,
    free_port,
    make_instance,
    need_tool,
    pynetdicom_associate,
    rejection_of,
    run_tool,
    start_threaded_node,
    storage_settings,
)

pytestmark = pytest.mark.interop

VERIFICATION = "1.2.840.10008.1.1"
REJECTED_3 = ("Rejected Permanent, Source: Service User", "Reason: Calling AE Title Not Recognized")
REJECTED_7 = ("Rejected Permanent, Source: Service User", "Reason: Called AE Title Not Recognized")


@dataclass
class Gate:
    node: Any
    audit: MemoryAuditSink
    study: str
    move_port: int

    @property
    def port(self) -> int:
        return int(self.node.port)

    def alerts(self, since: int, code: tuple[str, str, str]) -> list[Any]:
        return [
            e
            for e in self.audit.events[since:]
            if e.kind is EventKind.SECURITY_ALERT and e.type_codes == (code,)
        ]


@pytest.fixture(scope="module")
def gate(module_index_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    """A node that refuses unknown AEs (on loopback: accept_unknown_peers = false), with known peers."""
    need_tool("echoscu")
    move_port = free_port()
    everything = ["echo", "store", "find", "move", "get", "worklist", "mpps", "commit"]
    peers: dict[str, Any] = {
        "ECHOONLY": {"host": HOST, "allow": ["echo"]},
        "NOSTORE": {"host": HOST, "allow": [s for s in everything if s != "store"]},
        "FULL": {"host": "localhost", "port": move_port},  # a host name, resolved at start-up
        "FARAWAY": {"host": "127.0.0.2"},
        "WARD": {"host": "10.0.0.0/8"},
        "SECURE": {"host": HOST, "tls": True},
    }
    sink = MemoryAuditSink()
    settings = storage_settings(
        tmp_path_factory.mktemp("gate"),
        module_index_url,
        node={"accept_unknown_peers": False},
        peers=peers,
    )
    node = start_threaded_node(settings, audit=sink)
    try:
        # One study in the archive, stored by a peer that may store (with DCMTK).
        ds = make_instance(patient_id="GATE1")
        path = tmp_path_factory.mktemp("files") / "gate.dcm"
        ds.save_as(path, enforce_file_format=True)
        r = run_tool(["storescu", "-aet", "FULL", "-aec", "PACSNODE", HOST, str(node.port), str(path)])
        assert r.returncode == 0, r.stdout
        yield Gate(node, sink, str(ds.StudyInstanceUID), move_port)
    finally:
        node.close()


def echoscu(
    port: int, calling: str, called: str = "PACSNODE", *extra: str
) -> subprocess.CompletedProcess[str]:
    return run_tool(["echoscu", "-v", "-aet", calling, "-aec", called, *extra, HOST, str(port)])


# ---------------------------------------------------------------- association level


def test_unknown_calling_ae_is_rejected_reason_3(gate):
    mark = len(gate.audit.events)
    r = echoscu(gate.port, "NOBODY")
    assert r.returncode != 0
    assert "Association Rejected" in r.stdout and all(text in r.stdout for text in REJECTED_3), r.stdout
    gate.node.wait_idle()
    alerts = gate.alerts(mark, NODE_AUTHENTICATION)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.outcome is Outcome.MINOR_FAILURE and "NOBODY" in alert.outcome_description
    requestor = next(p for p in alert.participants if p.requestor)
    assert requestor.user_id == "NOBODY" and requestor.network_access_point == HOST


def test_known_ae_from_the_wrong_address_is_rejected(gate):
    mark = len(gate.audit.events)
    for calling in ("FARAWAY", "WARD"):  # 127.0.0.2, and the network 10.0.0.0/8; we come from 127.0.0.1
        r = echoscu(gate.port, calling)
        assert r.returncode != 0 and all(text in r.stdout for text in REJECTED_3), r.stdout
    gate.node.wait_idle()
    descriptions = [a.outcome_description for a in gate.alerts(mark, NODE_AUTHENTICATION)]
    assert len(descriptions) == 2
    assert "127.0.0.2" in descriptions[0] and "10.0.0.0/8" in descriptions[1]


def test_wrong_called_ae_is_rejected_reason_7(gate):
    r = echoscu(gate.port, "ECHOONLY", "ANY-SCP")
    assert r.returncode != 0 and all(text in r.stdout for text in REJECTED_7), r.stdout


def test_known_aes_are_accepted(gate):
    for calling in ("ECHOONLY", "NOSTORE", "FULL"):
        r = echoscu(gate.port, calling)
        assert r.returncode == 0, r.stdout
        assert "Received Echo Response (Success)" in r.stdout


def test_tls_peer_over_plain_tcp_is_rejected(gate):
    r = echoscu(gate.port, "SECURE")
    assert r.returncode != 0 and all(text in r.stdout for text in REJECTED_3), r.stdout


# ---------------------------------------------------------------- services


def test_store_refused_when_not_allowed(gate, tmp_path):
    ds = make_instance(patient_id="REFUSED1")
    path = tmp_path / "refused.dcm"
    ds.save_as(path, enforce_file_format=True)
    mark = len(gate.audit.events)
    for calling in ("ECHOONLY", "NOSTORE"):
        r = run_tool(["storescu", "-v", "-aet", calling, "-aec", "PACSNODE", HOST, str(gate.port), str(path)])
        assert "Association Accepted" in r.stdout
        assert "Received Store Response (Unknown Status: 0x124)" in r.stdout, r.stdout  # DCMTK 3.6.7's words
        assert "Releasing Association" in r.stdout  # the association went on to a normal release
    gate.node.wait_idle()
    alerts = gate.alerts(mark, USE_OF_RESTRICTED_FUNCTION)
    assert len(alerts) == 2 and "may not use store" in alerts[0].outcome_description
    assert alerts[0].objects[0].object_id == str(ds.SOPClassUID)
    assert gate.node.index.instance(str(ds.SOPInstanceUID)) is None  # nothing was stored


def test_refused_store_then_allowed_echo_on_the_same_association(gate):
    """pynetdicom: 0124H with an Error Comment, and the association goes on."""
    ae = AE(ae_title="ECHOONLY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    ds = make_instance()
    ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, gate.port, ae_title="PACSNODE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(ds)
        assert rsp.Status == 0x0124
        assert "may not use store" in str(rsp.ErrorComment)
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_find_refused_and_allowed(gate):
    keys = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID=GATE1"]
    refused = dcmtk_find(HOST, gate.port, keys, args=["-aet", "ECHOONLY"])
    assert "Unknown Status: 0x124" in refused.output, refused.output
    assert not refused.responses
    allowed = dcmtk_find(HOST, gate.port, keys, args=["-aet", "NOSTORE"])
    assert allowed.status == "Success", allowed.output
    assert [str(r.StudyInstanceUID) for r in allowed.responses] == [gate.study]


def test_worklist_refused(gate):
    refused = dcmtk_find(HOST, gate.port, ["PatientID"], model="-W", args=["-aet", "ECHOONLY"])
    assert "Unknown Status: 0x124" in refused.output, refused.output
    allowed = dcmtk_find(HOST, gate.port, ["PatientID"], model="-W", args=["-aet", "NOSTORE"])
    assert "0x124" not in allowed.output


def test_move_refused_and_allowed(gate, tmp_path):
    need_tool("movescu")
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={gate.study}"]
    r = run_tool(
        [
            "movescu",
            "-v",
            "-S",
            "-aet",
            "ECHOONLY",
            "-aec",
            "PACSNODE",
            "-aem",
            "FULL",
            *keys,
            HOST,
            str(gate.port),
        ]
    )
    assert "Move Response" in r.stdout and "Unknown Status: 0x124" in r.stdout, r.stdout
    # FULL may move (to itself: movescu listens on FULL's [peers] port).
    out = tmp_path / "moved"
    out.mkdir()
    argv = [
        "movescu",
        "-v",
        "-S",
        "-aet",
        "FULL",
        "-aec",
        "PACSNODE",
        "-aem",
        "FULL",
        "--port",
        str(gate.move_port),
    ]
    argv += ["-od", str(out), *keys, HOST, str(gate.port)]
    r = run_tool(argv)
    assert r.returncode == 0, r.stdout
    assert "Received Final Move Response (Success)" in r.stdout, r.stdout
    assert len(list(out.iterdir())) == 1


def test_get_refused_and_allowed(gate, tmp_path):
    need_tool("getscu")
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={gate.study}"]
    r = run_tool(
        [
            "getscu",
            "-v",
            "-S",
            "-aet",
            "ECHOONLY",
            "-aec",
            "PACSNODE",
            "-od",
            str(tmp_path),
            *keys,
            HOST,
            str(gate.port),
        ]
    )
    assert "Unknown Status: 0x124" in r.stdout, r.stdout
    assert not list(tmp_path.iterdir())
    r = run_tool(
        [
            "getscu",
            "-v",
            "-S",
            "-aet",
            "NOSTORE",
            "-aec",
            "PACSNODE",
            "-od",
            str(tmp_path),
            *keys,
            HOST,
            str(gate.port),
        ]
    )
    assert r.returncode == 0, r.stdout
    assert len(list(tmp_path.iterdir())) == 1  # its C-STORE sub-operations are ours: not refused


def test_echo_refused_when_not_allowed(tmp_path, index_url):
    need_tool("echoscu")
    settings = storage_settings(
        tmp_path / "data", index_url, peers={"STOREONLY": {"host": HOST, "allow": ["store"]}}
    )
    node = start_threaded_node(settings)
    try:
        r = echoscu(node.port, "STOREONLY")
        assert "Unknown Status: 0x124" in r.stdout or "0x0124" in r.stdout, r.stdout
        # On loopback an unknown AE is accepted (the default there), with every service.
        assert echoscu(node.port, "SOMEONE").returncode == 0
    finally:
        node.close()


# ---------------------------------------------------------------- TLS


def test_tls_peer_is_accepted_over_tls_only(tmp_path):
    from tlskit import make_pki, tls_node_settings

    need_tool("echoscu")
    pki = make_pki(tmp_path / "pki")
    settings = tls_node_settings(
        tmp_path / "data",
        pki,
        node={"accept_unknown_peers": False},
        peers={"SECURE": {"host": HOST, "tls": True}},
    )
    node = start_threaded_node(settings)
    try:
        plain = echoscu(node.port, "SECURE")
        assert plain.returncode != 0 and all(text in plain.stdout for text in REJECTED_3), plain.stdout
        tls = ["+tls", str(pki.client_key), str(pki.client_cert), "-pw", "+cf", str(pki.ca)]
        over_tls = echoscu(node.node.tls.port, "SECURE", "PACSNODE", *tls)
        assert over_tls.returncode == 0, over_tls.stdout
        assert "Received Echo Response (Success)" in over_tls.stdout
        # And the other rules hold on the TLS port too.
        stranger = echoscu(node.node.tls.port, "STRANGER", "PACSNODE", *tls)
        assert all(text in stranger.stdout for text in REJECTED_3), stranger.stdout
    finally:
        node.close()


# ---------------------------------------------------------------- User Identity (PS3.7 D.3.3.7)


@dataclass
class IdentityNode:
    node: Any
    audit: MemoryAuditSink
    issuer: TestIssuer

    @property
    def port(self) -> int:
        return int(self.node.port)


def identity_node(folder: Path, mode: str, issuer: TestIssuer) -> IdentityNode:
    jwks = issuer.write_jwks(folder / "jwks.json")
    auth = {
        "dimse_user_identity": mode,
        "users": {"tech1": {"password_hash": quick_hash("s3cret"), "roles": ["write"]}},
        "oidc_issuer": issuer.issuer,
        "oidc_audience": issuer.audience,
        "oidc_jwks": str(jwks),
    }
    sink = MemoryAuditSink()
    node = start_threaded_node(storage_settings(folder / "data", "", auth=auth), audit=sink)
    return IdentityNode(node, sink, issuer)


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def required(tmp_path_factory, issuer) -> Iterator[IdentityNode]:
    node = identity_node(tmp_path_factory.mktemp("required"), "required", issuer)
    try:
        yield node
    finally:
        node.node.close()


@pytest.fixture(scope="module")
def optional(tmp_path_factory, issuer) -> Iterator[IdentityNode]:
    node = identity_node(tmp_path_factory.mktemp("optional"), "optional", issuer)
    try:
        yield node
    finally:
        node.node.close()


def associate(
    port: int, identity: tuple[int, bytes, bytes] | None, *, respond: bool = True
) -> tuple[Any, list[Any]]:
    ae = AE(ae_title="PYUSER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    ae.add_requested_context(VERIFICATION)
    ext = []
    if identity is not None:
        item = UserIdentityNegotiation()
        item.user_identity_type = identity[0]
        item.primary_field = identity[1]
        if identity[0] == 2:
            item.secondary_field = identity[2]
        item.positive_response_requested = respond
        ext.append(item)
    return pynetdicom_associate(ae, HOST, port, ae_title="PACSNODE", ext_neg=ext)


def assert_rejected_no_reason(answer: tuple[Any, list[Any]]) -> None:
    # Rejected-permanent, DICOM UL service-user, no-reason-given.
    assert rejection_of(*answer) == (1, 1, 1)


def assert_accepted(answer: tuple[Any, list[Any]], *, response: bool) -> None:
    assoc = answer[0]
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        answered = assoc.acceptor.user_identity
        if response:
            assert answered is not None and answered.server_response == b""
        else:
            assert answered is None
    finally:
        assoc.release()


def test_required_password(required):
    mark = len(required.audit.events)
    assert_accepted(associate(required.port, (2, b"tech1", b"s3cret")), response=True)
    assert_accepted(associate(required.port, (2, b"tech1", b"s3cret"), respond=False), response=False)
    assert_rejected_no_reason(associate(required.port, (2, b"tech1", b"wrong")))
    assert_rejected_no_reason(associate(required.port, (2, b"nobody", b"s3cret")))
    assert_rejected_no_reason(associate(required.port, None))
    assert_rejected_no_reason(associate(required.port, (1, b"tech1", b"")))  # a name proves nothing
    required.node.wait_idle()
    logins = [e for e in required.audit.events[mark:] if e.kind is EventKind.USER_AUTHENTICATION]
    assert [e.outcome for e in logins] == [Outcome.SUCCESS] * 2 + [Outcome.MINOR_FAILURE] * 3
    assert all(e.type_codes == (LOGIN,) for e in logins)
    ok = next(p for p in logins[0].participants if p.requestor)
    assert (
        ok.user_id == "tech1"
        and ok.alternative_user_id == "AETITLES=PYUSER"
        and ok.network_access_point == HOST
    )


def test_required_jwt(required):
    issuer = required.issuer
    assert_accepted(associate(required.port, (5, issuer.token().encode(), b"")), response=True)
    assert_rejected_no_reason(associate(required.port, (5, issuer.token(expires_in=-3600).encode(), b"")))
    assert_rejected_no_reason(associate(required.port, (5, issuer.token(audience="else").encode(), b"")))
    assert_rejected_no_reason(associate(required.port, (5, TestIssuer().token().encode(), b"")))  # other key
    assert_rejected_no_reason(associate(required.port, (5, b"not-a-jwt", b"")))


def test_optional_identity(optional):
    assert_accepted(associate(optional.port, None), response=False)
    assert_accepted(associate(optional.port, (2, b"tech1", b"s3cret")), response=True)
    assert_accepted(associate(optional.port, (1, b"tech1", b"")), response=True)
    assert_rejected_no_reason(associate(optional.port, (2, b"tech1", b"wrong")))  # sent: must be right
    assert_rejected_no_reason(associate(optional.port, (1, b"mallory", b"")))
    assert_accepted(associate(optional.port, (5, optional.issuer.token().encode(), b"")), response=True)
    assert_rejected_no_reason(
        associate(optional.port, (5, optional.issuer.token(expires_in=-60).encode(), b""))
    )


def test_dcmtk_user_identity(required, tmp_path):
    need_tool("storescu")
    ds = make_instance(patient_id="IDENT1")
    path = tmp_path / "ident.dcm"
    ds.save_as(path, enforce_file_format=True)
    base = ["storescu", "-v", "-aec", "PACSNODE"]
    target = [HOST, str(required.port), str(path)]
    good = run_tool([*base, "--user", "tech1", "--password", "s3cret", "--pos-response", *target])
    assert good.returncode == 0, good.stdout
    assert "Received Store Response (Success)" in good.stdout
    bad = run_tool([*base, "--user", "tech1", "--password", "nope", *target])
    assert bad.returncode != 0 and "Association Rejected" in bad.stdout
    assert "Reason: No Reason" in bad.stdout, bad.stdout
    none = run_tool([*base, *target])
    assert none.returncode != 0 and "Association Rejected" in none.stdout
    token = tmp_path / "token.jwt"
    token.write_text(required.issuer.token())
    jwt = run_tool([*base, "--jwt", str(token), "--pos-response", *target])
    assert jwt.returncode == 0, jwt.stdout


def test_off_ignores_identities(tmp_path):
    """The default: an identity is neither checked nor answered (as before access control)."""
    node = start_threaded_node(storage_settings(tmp_path / "data", ""))
    try:
        assert_accepted(associate(node.port, (2, b"anyone", b"anything")), response=False)
    finally:
        node.close()
