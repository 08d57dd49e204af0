"""pacsnode against pynetdicom 3.0.4, both directions: its apps and its AE API (user identity, role
selection, SOP class (common) extended negotiation, PS3.7 D.3.3)."""

from __future__ import annotations

import dataclasses
import sys

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import (
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.sop_class import CTImageStorage, EnhancedCTImageStorage, Verification

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.config.settings import Settings
from pacsnode.net.client import AssociationRejectedError, open_association, verification_context
from pacsnode.services.base import SOPClass
from pacsnode.services.catalog import default_registry
from pacsnode.ul.negotiation import ProposedContext, UserIdentityDecision
from pacsnode.ul.pdu import UserIdentityRQ, UserIdentityType
from peerkit import (
    PACSNODE,
    MemoryStorageSCP,
    free_port,
    need_testdata,
    pynetdicom_associate,
    rejection_of,
    run_tool,
    running,
    storage_registration,
    wait_for_port,
)

pytestmark = pytest.mark.interop

PYNETDICOM = [sys.executable, "-m", "pynetdicom"]
STORAGE_SERVICE_CLASS = "1.2.840.10008.4.2"


# ---------------------------------------------------------------- pynetdicom apps


def test_pynetdicom_echoscu_to_pacsnode(threaded_server):
    r = run_tool([*PYNETDICOM, "echoscu", "127.0.0.1", str(threaded_server.port), "-aec", "PACSNODE", "-v"])
    assert r.returncode == 0, r.stdout
    assert "Received Echo Response (Status: 0x0000 - Success)" in r.stdout
    threaded_server.wait_idle()
    assert threaded_server.stats() == (0, 0)


def test_pynetdicom_echoscu_repeat_and_abort(threaded_server):
    r = run_tool(
        [*PYNETDICOM, "echoscu", "127.0.0.1", str(threaded_server.port), "--repeat", "3", "--abort", "-v"]
    )
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("Received Echo Response (Status: 0x0000 - Success)") == 3
    threaded_server.wait_idle()


def test_pacsnode_echo_to_pynetdicom_echoscp():
    port = free_port()
    with running([*PYNETDICOM, "echoscp", str(port), "-ba", "127.0.0.1", "-v"]) as proc:
        wait_for_port(port, proc)
        r = run_tool([PACSNODE, "echo", "127.0.0.1", str(port), "--aec", "ECHOSCP", "-v", "--repeat", "3"])
        assert r.returncode == 0, r.stdout
        assert r.stdout.count("C-ECHO response: 0x0000 Success") == 3
        assert proc.poll() is None
        proc.terminate()
        log, _ = proc.communicate(timeout=10)
    assert log.count("Received Echo Request") == 3
    assert "Association Released" in log


# ---------------------------------------------------------------- pynetdicom AE (SCU) -> pacsnode


@pytest.fixture
def negotiating_server(make_threaded_server):
    """A node with a test CT storage service (requestor may be SCP) and user identity /
    extended negotiation hooks on its acceptor policy."""
    scp = MemoryStorageSCP()
    registry = default_registry(Settings())
    registry.register(
        storage_registration(
            scp,
            [SOPClass(CTImageStorage, "CT Image Storage"), SOPClass(EnhancedCTImageStorage, "Enhanced CT")],
            requestor_may_be_scp=True,
        )
    )
    srv = make_threaded_server(registry=registry)
    seen: dict[str, object] = {}

    def user_identity(rq: UserIdentityRQ, calling: str) -> UserIdentityDecision:
        seen["identity"] = (rq, calling)
        return UserIdentityDecision(rq.secondary_field == b"secret", b"")

    def extended(sop: str, info: bytes) -> bytes | None:
        seen.setdefault("extended", []).append((sop, info))  # type: ignore[union-attr]
        return info[:1] + b"\x00"

    # No connection exists yet, so swapping the policy cannot race an association.
    srv.server.policy = dataclasses.replace(
        srv.server.policy, user_identity=user_identity, extended_negotiation=extended
    )
    return srv, scp, seen


def _ext_neg(password: bytes) -> list[object]:
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CTImageStorage
    role.scu_role = True
    role.scp_role = True
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid = CTImageStorage
    ext.service_class_application_information = b"\x02\x00\x01\x00"
    common = SOPClassCommonExtendedNegotiation()
    common.sop_class_uid = EnhancedCTImageStorage
    common.service_class_uid = STORAGE_SERVICE_CLASS
    common.related_general_sop_class_identification = [CTImageStorage]
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.primary_field = b"alice"
    identity.secondary_field = password
    identity.positive_response_requested = True
    return [role, ext, common, identity]


def test_pynetdicom_ae_with_extended_negotiation(negotiating_server):
    srv, scp, seen = negotiating_server
    ae = AE(ae_title="PYNETSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(EnhancedCTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", srv.port, ae_title="PACSNODE", ext_neg=_ext_neg(b"secret"))
    try:
        assert assoc.is_established
        # What pynetdicom read from our A-ASSOCIATE-AC.
        assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
        ct = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage]
        assert len(ct) == 1
        assert ct[0].transfer_syntax[0] == ExplicitVRLittleEndian
        assert (ct[0].as_scu, ct[0].as_scp) == (True, True)  # both roles granted
        items = {type(i).__name__: i for i in assoc.acceptor.extended_negotiation}
        assert items["SOPClassExtendedNegotiation"].service_class_application_information == b"\x02\x00"
        assert items["UserIdentityNegotiation"].server_response == b""
        # DIMSE on it.
        assert assoc.send_c_echo().Status == 0x0000
        ds = pydicom.dcmread(need_testdata("modalities", "CT_small.dcm"))
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    srv.wait_idle()

    # What our server saw.
    rq, calling = seen["identity"]
    assert calling == "PYNETSCU"
    assert (rq.identity_type, rq.primary_field, rq.secondary_field) == (2, b"alice", b"secret")
    assert rq.positive_response_requested
    assert seen["extended"] == [(CTImageStorage, b"\x02\x00\x01\x00")]
    (got,) = scp.received
    n = got.association
    assert n.calling_ae_title == "PYNETSCU"
    assert n.user_identity is not None and n.user_identity.primary_field == b"alice"
    assert n.user_identity_response == b""
    assert n.extended_negotiation == {CTImageStorage: b"\x02\x00\x01\x00"}
    assert n.extended_negotiation_accepted == {CTImageStorage: b"\x02\x00"}
    common = n.common_extended_negotiation[EnhancedCTImageStorage]
    assert (common.service_class_uid, common.related_general_sop_classes) == (
        STORAGE_SERVICE_CLASS,
        (CTImageStorage,),
    )
    assert got.context.abstract_syntax == CTImageStorage
    assert (got.context.requestor_is_scu, got.context.requestor_is_scp) == (True, True)
    assert got.command.affected_sop_instance_uid == ds.SOPInstanceUID
    assert n.peer_implementation_version_name.startswith("PYNETDICOM")


def test_pynetdicom_ae_with_refused_identity(negotiating_server):
    srv, _scp, _seen = negotiating_server
    ae = AE(ae_title="PYNETSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    # The answer as pynetdicom decoded it (pynetdicom_associate says why not assoc.is_rejected).
    result, source, reason = rejection_of(
        *pynetdicom_associate(ae, "127.0.0.1", srv.port, ext_neg=_ext_neg(b"wrong"))
    )
    assert result == 1  # rejected-permanent
    # We answer source 1 (service-user), reason 1; pynetdicom documents source 2 (ACSE
    # provider) for a refused identity. Either is read as "no reason given" here.
    assert (source, reason) in {(1, 1), (2, 1)}
    srv.wait_idle()


def test_pynetdicom_ae_role_not_offered_is_not_granted(make_threaded_server):
    # The default node does not let the requestor be SCP for Verification: role selection
    # asking for SCP only is refused for that context (PS3.7 D.3.3.4).
    srv = make_threaded_server()
    ae = AE()
    ae.add_requested_context(Verification)
    ae.add_requested_context(Verification, ImplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 10
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = Verification
    role.scu_role = True
    role.scp_role = True
    assoc = ae.associate("127.0.0.1", srv.port, ext_neg=[role])
    try:
        assert assoc.is_established
        for cx in assoc.accepted_contexts:
            assert (cx.as_scu, cx.as_scp) == (True, False)
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    srv.wait_idle()


# ---------------------------------------------------------------- our client -> pynetdicom AE (SCP)


@pytest.fixture
def pynetdicom_scp():
    seen: dict[str, object] = {"echoes": 0}

    def on_user_id(event):
        seen["identity"] = (event.user_id_type, event.primary_field, event.secondary_field)
        return True, b"token-for-" + event.primary_field

    def on_sop_extended(event):
        seen["extended"] = dict(event.app_info)
        return {uid: info[::-1] for uid, info in event.app_info.items()}

    def on_echo(event):
        seen["echoes"] = int(seen["echoes"]) + 1  # type: ignore[call-overload]
        seen["requestor"] = (event.assoc.requestor.ae_title, event.assoc.requestor.implementation_class_uid)
        return 0x0000

    ae = AE(ae_title="PYNETSCP")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian, scu_role=True, scp_role=True)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    handlers = [
        (evt.EVT_USER_ID, on_user_id),
        (evt.EVT_SOP_EXTENDED, on_sop_extended),
        (evt.EVT_C_ECHO, on_echo),
    ]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()


async def test_our_client_to_pynetdicom_scp(pynetdicom_scp):
    port, seen = pynetdicom_scp
    assoc = await open_association(
        "127.0.0.1",
        port,
        called_ae_title="PYNETSCP",
        calling_ae_title="OURSCU",
        contexts=[
            verification_context(),
            ProposedContext(CTImageStorage, (ExplicitVRLittleEndian,), scu_role=True, scp_role=True),
        ],
        user_identity=UserIdentityRQ(UserIdentityType.JWT, True, b"bob"),
        extended_negotiation={CTImageStorage: b"\x01\x02\x03"},
        acse_timeout=10,
        dimse_timeout=10,
    )
    try:
        n = assoc.negotiated
        assert n.peer_implementation_version_name.startswith("PYNETDICOM")
        assert n.user_identity_response == b"token-for-bob"
        assert n.extended_negotiation_accepted == {CTImageStorage: b"\x03\x02\x01"}
        ct = n.context_for(CTImageStorage)
        assert ct is not None and (ct.requestor_is_scu, ct.requestor_is_scp) == (True, True)
        for _ in range(5):
            assert (await assoc.echo()).ok
    finally:
        await assoc.release()
    assert assoc.protocol.released.exception() is None
    assert seen["echoes"] == 5
    assert seen["identity"] == (5, b"bob", b"")
    assert seen["extended"] == {CTImageStorage: b"\x01\x02\x03"}
    assert seen["requestor"] == ("OURSCU", IMPLEMENTATION_CLASS_UID)


async def test_our_client_rejected_by_pynetdicom_scp():
    ae = AE(ae_title="PYNETSCP")
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    ae.acse_timeout = ae.network_timeout = 10
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        with pytest.raises(AssociationRejectedError) as info:
            await open_association("127.0.0.1", server.server_address[1], called_ae_title="WRONG")
        rj = info.value.reject
        assert (rj.result, rj.source, rj.reason) == (1, 1, 7)
    finally:
        server.shutdown()
