"""DICOM over TLS (PS3.15 B.9, BCP 195) with real peers, both directions, and the refusals it must make.

* Into the node's TLS port: DCMTK echoscu / storescu ``+tls`` (both BCP 195 profiles) and pynetdicom
  (``tls_args``); with ``tls_check_peer_name`` the certificate must name the calling AE title or host.
* Refused, each with a Security Alert (PS3.15 A.5.3.11, Node Authentication) in the node's audit sink,
  and the node serving the next good client: no client certificate, an expired or an untrusted one,
  TLS 1.0 and 1.1 (a Python client at OpenSSL security level 0 offers them), plain DICOM.
* Out of the node: `pacsnode echo|store --tls` to DCMTK storescp ``+tls`` and to a pynetdicom SCP with an
  ``ssl_context``; a C-MOVE to a ``[peers.X] tls = true`` destination (and one whose certificate the
  node does not trust: the move fails, audited).
* TLS only, on the DICOM port (``plain_dicom = false``, ``tls_port = dicom_port``), on asyncio's loop.

The index plays no part here: the nodes use SQLite only. Nothing sleeps: the tests wait on processes,
answers and on the audit sink's condition.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from pacsnode.net.client import AssociationAbortedError, TlsHandshakeError, open_association
from pacsnode.net.node import Node
from pacsnode.security.events import Outcome
from pacsnode.security.tls import client_context as pacsnode_client_context
from peerkit import (
    HOST,
    PACSNODE,
    WAIT,
    ServeProcess,
    ThreadedNode,
    free_port,
    free_port_all_interfaces,
    index_rows,
    make_instance,
    need_tool,
    pynetdicom_store,
    run_tool,
    running,
    start_threaded_node,
    wait_for_port,
)
from tlskit import Pki, WaitingAuditSink, client_context, make_pki, server_context, tls_node_settings

pytestmark = pytest.mark.interop

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NODE_AUTHENTICATION = ("110126", "DCM", "Node Authentication")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def untrusted_dest_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def dest_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def audit() -> WaitingAuditSink:
    return WaitingAuditSink()


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory,
    pki: Pki,
    audit: WaitingAuditSink,
    dest_port: int,
    untrusted_dest_port: int,
) -> Iterator[ThreadedNode]:
    """A node with plain DICOM and TLS (client certificates required), two TLS move destinations."""
    peers = {
        "TLSDEST": {"host": HOST, "port": dest_port, "tls": True},
        "BADDEST": {"host": HOST, "port": untrusted_dest_port, "tls": True},
    }
    settings = tls_node_settings(tmp_path_factory.mktemp("node"), pki, peers=peers)
    running_node = start_threaded_node(settings, audit=audit)
    yield running_node
    running_node.close()


def tls_port(node: ThreadedNode) -> int:
    port: int = node.node.tls.port
    return port


def dcmtk_tls(key: Path, cert: Path, pki: Pki, *profile: str) -> list[str]:
    """DCMTK's TLS options: our key and certificate, the CA to verify the peer with."""
    return ["+tls", str(key), str(cert), "-pw", "+cf", str(pki.ca), *profile]


def good_echo(node: ThreadedNode, pki: Pki) -> None:
    """A good TLS client still gets through (the node serves on after a refusal)."""
    echoscu = need_tool("echoscu")
    r = run_tool(
        [
            echoscu,
            "-aec",
            "PACSNODE",
            *dcmtk_tls(pki.client_key, pki.client_cert, pki),
            HOST,
            str(tls_port(node)),
        ]
    )
    assert r.returncode == 0, r.stdout


def stored_uids(node: ThreadedNode) -> set[str]:
    return {row["sop_instance_uid"] for row in index_rows(node.index)["instances"]}


def write_instance(folder: Path, **attributes: Any) -> tuple[Path, Any]:
    ds = make_instance(**attributes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds


# ---------------------------------------------------------------- into the node


@pytest.mark.parametrize("profile", ["+py", "+px"], ids=["bcp195-nd", "bcp195"])
def test_dcmtk_echoscu_and_storescu_over_tls(
    node: ThreadedNode, pki: Pki, tmp_path: Path, profile: str
) -> None:
    tls = dcmtk_tls(pki.client_key, pki.client_cert, pki, profile)
    r = run_tool([need_tool("echoscu"), "-v", "-aec", "PACSNODE", *tls, HOST, str(tls_port(node))])
    assert r.returncode == 0, r.stdout
    assert "Received Echo Response (Success)" in r.stdout, r.stdout
    path, ds = write_instance(tmp_path)
    r = run_tool(
        [need_tool("storescu"), "-v", "-aec", "PACSNODE", *tls, HOST, str(tls_port(node)), str(path)]
    )
    assert r.returncode == 0, r.stdout
    assert "Received Store Response (Success)" in r.stdout, r.stdout
    assert ds.SOPInstanceUID in stored_uids(node)


@pytest.mark.parametrize(
    "maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
def test_pynetdicom_scu_over_tls(node: ThreadedNode, pki: Pki, maximum: ssl.TLSVersion) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1")
    ctx = client_context(pki, pki.client_cert, pki.client_key, maximum=maximum)
    assoc = ae.associate(HOST, tls_port(node), ae_title="PACSNODE", tls_args=(ctx, "localhost"))
    assert assoc.is_established
    try:
        version = assoc.dul.socket.socket.version()
        assert version == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[maximum]
        assert assoc.send_c_echo().Status == 0
        ds = make_instance()
        assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    assert ds.SOPInstanceUID in stored_uids(node)


def test_pacsnode_echo_and_find_into_its_own_tls_port(node: ThreadedNode, pki: Pki) -> None:
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    r = run_tool([PACSNODE, "echo", "-v", "-aec", "PACSNODE", *tls, HOST, str(tls_port(node))])
    assert r.returncode == 0, r.stdout
    r = run_tool([PACSNODE, "find", "-aec", "PACSNODE", *tls, "--json", HOST, str(tls_port(node))])
    assert r.returncode == 0, r.stdout


# ---------------------------------------------------------------- refusals


def _pynetdicom_echo(port: int, ctx: ssl.SSLContext, calling: str = "PYNETDICOM") -> bool:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, port, ae_title="PACSNODE", tls_args=(ctx, "localhost"))
    if not assoc.is_established:
        return False
    try:
        return bool(assoc.send_c_echo().Status == 0)
    finally:
        assoc.release()


def _old_tls(pki: Pki, port: int, version: ssl.TLSVersion) -> str:
    """A Python client that offers only TLS 1.0 or 1.1; returns how it failed."""
    import warnings

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(pki.client_cert, pki.client_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS < 1.2 only at level 0
    with socket.create_connection((HOST, port), timeout=WAIT) as sock:
        try:
            with ctx.wrap_socket(sock, server_hostname="localhost"):
                return "handshake succeeded"
        except (ssl.SSLError, ConnectionResetError) as exc:
            return repr(exc)


REFUSALS = {
    "no-client-cert": ("no client certificate (mutual TLS requires one)", Outcome.SERIOUS_FAILURE),
    "expired-cert": ("certificate verify failed: certificate has expired", Outcome.SERIOUS_FAILURE),
    "untrusted-cert": ("not issued by a trusted CA", Outcome.SERIOUS_FAILURE),
    "tls1.1": ("older than 1.2", Outcome.MINOR_FAILURE),
    "tls1.0": ("older than 1.2", Outcome.MINOR_FAILURE),
    "plain-dicom": ("plain DICOM", Outcome.MINOR_FAILURE),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_is_audited_and_the_node_serves_on(
    node: ThreadedNode, pki: Pki, audit: WaitingAuditSink, case: str
) -> None:
    port = tls_port(node)
    before = len(audit.alerts())
    if case == "no-client-cert":
        assert not _pynetdicom_echo(port, client_context(pki))
    elif case == "expired-cert":
        r = run_tool(
            [
                need_tool("echoscu"),
                "-aec",
                "PACSNODE",
                *dcmtk_tls(pki.expired_key, pki.expired_cert, pki),
                HOST,
                str(port),
            ]
        )
        assert r.returncode != 0, r.stdout
    elif case == "untrusted-cert":
        assert not _pynetdicom_echo(port, client_context(pki, pki.untrusted_cert, pki.untrusted_key))
    elif case in ("tls1.1", "tls1.0"):
        version = ssl.TLSVersion.TLSv1_1 if case == "tls1.1" else ssl.TLSVersion.TLSv1
        assert _old_tls(pki, port, version) != "handshake succeeded"
    else:
        # A plain A-ASSOCIATE-RQ (pacsnode echo without --tls) to the TLS port.
        r = run_tool([PACSNODE, "echo", "-aec", "PACSNODE", HOST, str(port)])
        assert r.returncode == 1, r.stdout
    alert = audit.wait_alert(before + 1)
    reason, outcome = REFUSALS[case]
    assert alert.action == "E" and alert.outcome is outcome
    assert alert.type_codes == (NODE_AUTHENTICATION,)
    assert alert.outcome_description.startswith("TLS handshake failed: ")
    assert reason in alert.outcome_description, alert.outcome_description
    peer, us = alert.participants
    assert peer.requestor and peer.network_access_point == HOST and peer.user_id == HOST
    assert (us.user_id, us.role) == ("PACSNODE", "Application")
    good_echo(node, pki)
    assert len(audit.alerts()) == before + 1  # the good client raised no alert


def test_pacsnode_client_errors_say_why(node: ThreadedNode, pki: Pki) -> None:
    port = str(tls_port(node))
    # The node requires a client certificate: TLS 1.3 tells the client after its handshake.
    r = run_tool([PACSNODE, "echo", "-aec", "PACSNODE", "--tls-ca", str(pki.ca), HOST, port])
    assert r.returncode == 1
    assert "TLS" in r.stdout and "certificate" in r.stdout, r.stdout
    # We do not trust the node's certificate.
    r = run_tool([PACSNODE, "echo", "--tls-ca", str(pki.other_ca), HOST, port])
    assert r.returncode == 1
    assert "TLS handshake with" in r.stdout and "certificate verify failed" in r.stdout, r.stdout
    # The node's certificate names 127.0.0.1 and localhost, not the name we expect.
    ctx = pacsnode_client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    with pytest.raises(TlsHandshakeError, match=r"Hostname mismatch.*pacs\.example\.org"):
        asyncio.run(open_association(HOST, int(port), ssl=ctx, server_hostname="pacs.example.org"))
    # TLS to the plain port: the node answers the ClientHello as a DICOM peer would, not with TLS.
    r = run_tool([PACSNODE, "echo", "--tls-ca", str(pki.ca), HOST, str(node.port)])
    assert r.returncode == 1
    assert "TLS handshake with" in r.stdout and "not TLS" in r.stdout, r.stdout
    # Unusable files are named.
    r = run_tool(
        [PACSNODE, "echo", "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.server_key), HOST, port]
    )
    assert r.returncode == 1
    assert "is not the private key of the certificate" in r.stdout, r.stdout


def test_pacsnode_commit_and_mpps_over_tls(node: ThreadedNode, pki: Pki, tmp_path: Path) -> None:
    import json

    from pydicom.dataset import Dataset

    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    port = str(tls_port(node))
    path, _ = write_instance(tmp_path / "in")
    r = run_tool([PACSNODE, "store", "-aec", "PACSNODE", *tls, HOST, port, str(path)])
    assert r.returncode == 0, r.stdout
    # Storage Commitment: the report comes on the same (TLS) association.
    r = run_tool([PACSNODE, "commit", "-aec", "PACSNODE", *tls, HOST, port, str(path)])
    assert r.returncode == 0, r.stdout
    assert "1 committed, 0 failed" in r.stdout, r.stdout
    # MPPS N-CREATE.
    step = Dataset()
    step.ScheduledStepAttributesSequence = [Dataset()]
    step.PatientID = "P1"
    step.PerformedProcedureStepID = "PPS1"
    step.PerformedStationAETitle = "TLSCLIENT"
    step.PerformedProcedureStepStatus = "IN PROGRESS"
    step.PerformedProcedureStepStartDate = "20261126"
    step.PerformedProcedureStepStartTime = "101500"
    step.Modality = "CT"
    attributes = tmp_path / "create.json"
    attributes.write_text(json.dumps(step.to_json_dict()))
    r = run_tool([PACSNODE, "mpps", "create", HOST, port, str(attributes), "-aec", "PACSNODE", *tls])
    assert r.returncode == 0, r.stdout


# ---------------------------------------------------------------- peer name check


def test_peer_name_check(tmp_path: Path, pki: Pki) -> None:
    sink = WaitingAuditSink()
    settings = tls_node_settings(tmp_path / "node", pki, node={"tls_check_peer_name": True})
    checked = start_threaded_node(settings, audit=sink)
    try:
        port = tls_port(checked)
        named = client_context(pki, pki.named_cert, pki.named_key)  # CN and SAN MODALITY1, no address
        assert _pynetdicom_echo(port, named, calling="MODALITY1")
        assert not _pynetdicom_echo(port, named, calling="OTHER")
        alert = sink.wait_alert(1)
        assert alert.outcome is Outcome.SERIOUS_FAILURE
        assert alert.participants[0].user_id == "CN=MODALITY1, O=pacsnode tests"
        assert "TLS peer name check failed" in alert.outcome_description
        assert "OTHER" in alert.outcome_description
        # A certificate naming the peer's address passes under any calling AE title.
        assert _pynetdicom_echo(port, client_context(pki, pki.client_cert, pki.client_key), calling="ANYONE")
        assert len(sink.alerts()) == 1
    finally:
        checked.close()


# ---------------------------------------------------------------- out of the node


def test_pacsnode_echo_and_store_to_dcmtk_storescp_over_tls(tmp_path: Path, pki: Pki) -> None:
    need_tool("storescp")
    port = free_port_all_interfaces()
    recv = tmp_path / "recv"
    recv.mkdir()
    args = ["storescp", "-aet", "STORESCP", "+tls", str(pki.server_key), str(pki.server_cert), "-pw"]
    args += ["+cf", str(pki.ca), "-od", str(recv), str(port)]
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    path, ds = write_instance(tmp_path / "send")
    with running(args) as proc:
        wait_for_port(port, proc)  # (its TCP probe is a failed handshake to storescp: it goes on)
        r = run_tool([PACSNODE, "echo", "-aec", "STORESCP", *tls, HOST, str(port)])
        assert r.returncode == 0, r.stdout
        r = run_tool([PACSNODE, "store", "-aec", "STORESCP", *tls, HOST, str(port), str(path)])
        assert r.returncode == 0, r.stdout
        # storescp requires a client certificate (its -rc default): without one we are refused.
        r = run_tool([PACSNODE, "echo", "-aec", "STORESCP", "--tls-ca", str(pki.ca), HOST, str(port)])
        assert r.returncode == 1
        assert "certificate" in r.stdout, r.stdout
    received = list(recv.iterdir())
    assert len(received) == 1
    assert dcmread(received[0]).SOPInstanceUID == ds.SOPInstanceUID


class PynetdicomTlsSCP:
    """A pynetdicom Storage/Verification SCP with an ssl_context; records what it received."""

    def __init__(self, port: int, ctx: ssl.SSLContext, ae_title: str = "PYNSCP") -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list[Any] = []
        self.tls_versions: list[str] = []
        self.got = threading.Event()

        def on_store(event: Any) -> int:
            self.tls_versions.append(event.assoc.dul.socket.socket.version())
            self.received.append(event.dataset)
            self.got.set()
            return 0

        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(VERIFICATION)
        self.server = ae.start_server(
            (HOST, port), block=False, ssl_context=ctx, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )

    def close(self) -> None:
        self.server.shutdown()


def test_pacsnode_to_pynetdicom_scp_over_tls(tmp_path: Path, pki: Pki) -> None:
    port = free_port()
    scp = PynetdicomTlsSCP(port, server_context(pki, require_client_cert=True))
    try:
        tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        r = run_tool([PACSNODE, "echo", "-aec", "PYNSCP", *tls, HOST, str(port)])
        assert r.returncode == 0, r.stdout
        path, ds = write_instance(tmp_path)
        r = run_tool([PACSNODE, "store", "-aec", "PYNSCP", *tls, "localhost", str(port), str(path)])
        assert r.returncode == 0, r.stdout
        assert [d.SOPInstanceUID for d in scp.received] == [ds.SOPInstanceUID]
        assert scp.tls_versions == ["TLSv1.3"]
    finally:
        scp.close()


def test_c_move_to_a_tls_destination(
    node: ThreadedNode, pki: Pki, audit: WaitingAuditSink, dest_port: int
) -> None:
    ds = make_instance()
    assert [s.ok for s in pynetdicom_store(HOST, node.port, [ds])] == [True]  # plain, to the plain port
    # The destination requires a client certificate: the node presents its own ([node] tls_cert).
    scp = PynetdicomTlsSCP(dest_port, server_context(pki, require_client_cert=True), ae_title="TLSDEST")
    try:
        r = run_tool(
            [
                need_tool("movescu"), "-v", "-aet", "MOVESCU", "-aec", "PACSNODE", "-aem", "TLSDEST", "-S",
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                HOST, str(node.port),
            ]
        )  # fmt: skip
        assert r.returncode == 0, r.stdout
        assert "Received Final Move Response (Success)" in r.stdout, r.stdout
        assert scp.got.wait(WAIT)
        assert [d.SOPInstanceUID for d in scp.received] == [ds.SOPInstanceUID]
        assert scp.tls_versions == ["TLSv1.3"]
    finally:
        scp.close()


def test_c_move_to_an_untrusted_tls_destination_fails(
    node: ThreadedNode, pki: Pki, audit: WaitingAuditSink, untrusted_dest_port: int
) -> None:
    ds = make_instance()
    assert [s.ok for s in pynetdicom_store(HOST, node.port, [ds])] == [True]
    # BADDEST shows a certificate from a CA the node does not trust.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.untrusted_cert, pki.untrusted_key)
    scp = PynetdicomTlsSCP(untrusted_dest_port, ctx, ae_title="BADDEST")
    before = len(audit.alerts())
    try:
        r = run_tool(
            [
                need_tool("movescu"), "-v", "-aet", "MOVESCU", "-aec", "PACSNODE", "-aem", "BADDEST", "-S",
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                HOST, str(node.port),
            ]
        )  # fmt: skip
        assert "Received Final Move Response" in r.stdout, r.stdout
        assert "Success" not in r.stdout.split("Received Final Move Response", 1)[1].splitlines()[0]
        assert scp.received == []
    finally:
        scp.close()
    alert = audit.wait_alert(before + 1)
    assert alert.outcome is Outcome.SERIOUS_FAILURE
    assert "not issued by a trusted CA" in alert.outcome_description
    assert alert.participants[0].user_id == "BADDEST"


# ---------------------------------------------------------------- TLS only, on the DICOM port


async def test_tls_only_on_the_dicom_port(tmp_path: Path, pki: Pki) -> None:
    """plain_dicom = false and tls_port = dicom_port: one port, TLS only (asyncio's own loop here)."""
    port = free_port()
    sink = WaitingAuditSink()
    settings = tls_node_settings(
        tmp_path / "node", pki, node={"dicom_port": port, "tls_port": port, "plain_dicom": False}
    )
    only_tls = Node(settings, audit=sink)
    await only_tls.start()
    try:
        assert only_tls.tls is not None and only_tls.tls.port == port
        ctx = pacsnode_client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
        assoc = await open_association(HOST, port, called_ae_title="PACSNODE", ssl=ctx)
        assert (await assoc.echo()).ok
        assert assoc.protocol.transport is not None
        assert assoc.protocol.transport.get_extra_info("ssl_object") is not None
        # The acceptor can tell that its transport is TLS (access control relies on it).
        (acceptor,) = only_tls.server.connections
        assert acceptor.transport is not None
        tls_object = acceptor.transport.get_extra_info("ssl_object")
        assert tls_object is not None and tls_object.version() == "TLSv1.3"
        assert acceptor.transport.get_extra_info("peercert")["subject"][-1] == (("commonName", "TLSCLIENT"),)
        await assoc.release()
        with pytest.raises(AssociationAbortedError):
            await open_association(HOST, port, called_ae_title="PACSNODE", acse_timeout=WAIT)
        alert = await asyncio.to_thread(sink.wait_alert, 1)  # (blocks a thread, not the node's loop)
        assert "plain DICOM" in alert.outcome_description
    finally:
        await only_tls.close()
    assert only_tls.server.active == 0 and not only_tls.server.connections


# ---------------------------------------------------------------- `pacsnode serve`


def _config(path: Path, pki: Pki, key: Path) -> Path:
    path.write_text(
        f'[node]\ntls_port = 0\ntls_cert = "{pki.server_cert}"\ntls_key = "{key}"\ntls_ca = "{pki.ca}"\n'
    )
    return path


def test_serve_listens_for_tls_and_says_where(tmp_path: Path, pki: Pki) -> None:
    serve = ServeProcess(tmp_path / "data", config=_config(tmp_path / "pacsnode.toml", pki, pki.server_key))
    try:
        serve.wait_ready()
        serve.wait_dicomweb()  # logged after both DICOM listeners
        found = [
            m
            for line in serve.lines
            if (m := re.search(r"listening for DICOM over TLS on [0-9.]+:(\d+)", line))
        ]
        assert found, serve.output
        assert "client certificates required" in serve.output
        tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        r = run_tool([PACSNODE, "echo", *tls, HOST, found[0][1]])
        assert r.returncode == 0, r.stdout
    finally:
        assert serve.stop() == 0, serve.output


def test_serve_names_an_unusable_tls_file(tmp_path: Path, pki: Pki) -> None:
    config = _config(tmp_path / "pacsnode.toml", pki, pki.client_key)  # the key of another certificate
    r = run_tool([PACSNODE, "serve", "--data", str(tmp_path / "data"), "--config", str(config)])
    assert r.returncode == 1
    assert "TLS:" in r.stdout and "client-key.pem is not the private key of the certificate in" in r.stdout, (
        r.stdout
    )
    config = _config(tmp_path / "pacsnode.toml", pki, tmp_path / "missing-key.pem")
    r = run_tool([PACSNODE, "serve", "--data", str(tmp_path / "data"), "--config", str(config)])
    assert r.returncode == 1
    assert "missing-key.pem: private key file not found" in r.stdout, r.stdout
