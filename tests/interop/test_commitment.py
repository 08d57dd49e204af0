"""Storage Commitment Push Model SCP (PS3.4 Annex J) with pynetdicom as the requester: the report on
the same association and on a new one (role selection), instances missing, stored under another
class or altered on disk, and the N-ACTIONs the SCP refuses."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from peerkit import HOST, WAIT, free_port, gate_commitment_reports, make_instance, pynetdicom_store

pynetdicom = pytest.importorskip("pynetdicom")
pytestmark = pytest.mark.interop

COMMITMENT = "1.2.840.10008.1.20.1"
WELL_KNOWN = "1.2.840.10008.1.20.1.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


class Reports:
    """N-EVENT-REPORTs pynetdicom received, and an event per report."""

    def __init__(self) -> None:
        self.items: list[tuple[int, Dataset, str]] = []
        self.arrived = threading.Event()

    def handler(self, label: str) -> Any:
        def on_report(event: Any) -> tuple[int, None]:
            self.items.append((int(event.request.EventTypeID), event.event_information, label))
            self.arrived.set()
            return 0x0000, None

        return on_report

    def wait(self) -> tuple[int, Dataset, str]:
        assert self.arrived.wait(WAIT), "no N-EVENT-REPORT arrived"
        return self.items[0]


def _request(instances: list[tuple[str, str]], transaction: str | None = None) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction or generate_uid()
    ds.ReferencedSOPSequence = []
    for sop_class, sop_instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        ds.ReferencedSOPSequence.append(item)
    return ds


def _stored(node: Any, count: int = 3) -> list[tuple[str, str]]:
    """Store ``count`` new CT instances in the node; their (class, instance) pairs."""
    study = generate_uid()
    datasets = [make_instance(study=study) for _ in range(count)]
    statuses = pynetdicom_store(HOST, node.port, datasets)
    assert all(s.status == 0 for s in statuses), statuses
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]


def _pairs(sequence: Any) -> set[tuple[str, str]]:
    return {(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in sequence or []}


def _failures(info: Dataset) -> dict[str, int]:
    return {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in info.get("FailedSOPSequence", [])}


def _associate(node: Any, reports: Reports, ae_title: str = "MODALITY") -> Any:
    ae = pynetdicom.AE(ae_title=ae_title)
    ae.add_requested_context(COMMITMENT)
    assoc = ae.associate(
        HOST,
        node.port,
        ae_title="PACSNODE",
        evt_handlers=[(pynetdicom.evt.EVT_N_EVENT_REPORT, reports.handler("same"))],
    )
    assert assoc.is_established
    return assoc


def _action_status(assoc: Any, ds: Dataset | None, action: int = 1, instance: str = WELL_KNOWN) -> int:
    status, _ = assoc.send_n_action(ds, action, COMMITMENT, instance)
    assert status is not None, "no N-ACTION-RSP"
    return int(status.Status)


def test_report_on_the_same_association(make_storage_node):
    node = make_storage_node()
    instances = _stored(node)
    reports = Reports()
    assoc = _associate(node, reports)
    try:
        request = _request(instances)
        assert _action_status(assoc, request) == 0x0000
        event, info, label = reports.wait()
    finally:
        assoc.release()
    assert (event, label) == (1, "same")
    assert info.TransactionUID == request.TransactionUID
    assert _pairs(info.ReferencedSOPSequence) == set(instances)
    assert "FailedSOPSequence" not in info
    assert info.RetrieveAETitle == "PACSNODE"


def test_failures_missing_conflicting_and_altered(make_storage_node):
    node = make_storage_node()
    good, altered, conflicting = _stored(node)
    path = node.data / node.index.instance(altered[1])["path"]
    content = bytearray(path.read_bytes())
    content[-1] ^= 0xFF  # one bit of pixel data changed behind the archive's back
    path.write_bytes(bytes(content))
    missing = (good[0], generate_uid())
    more_missing = [(good[0], generate_uid()) for _ in range(6)]  # 10 in all: checked in parallel
    reports = Reports()
    assoc = _associate(node, reports)
    try:
        request = _request([good, altered, (MR_IMAGE, conflicting[1]), missing, *more_missing])
        assert _action_status(assoc, request) == 0x0000
        event, info, _ = reports.wait()
    finally:
        assoc.release()
    assert event == 2  # complete, failures exist
    assert _pairs(info.ReferencedSOPSequence) == {good}
    expected = {altered[1]: 0x0110, conflicting[1]: 0x0119, missing[1]: 0x0112}
    expected.update({uid: 0x0112 for _, uid in more_missing})
    assert _failures(info) == expected
    assert _pairs(info.FailedSOPSequence) == {altered, (MR_IMAGE, conflicting[1]), missing, *more_missing}


def test_file_removed_from_disk_is_a_processing_failure(make_storage_node):
    node = make_storage_node()
    kept, removed = _stored(node, 2)
    (node.data / node.index.instance(removed[1])["path"]).unlink()
    reports = Reports()
    assoc = _associate(node, reports)
    try:
        assert _action_status(assoc, _request([kept, removed])) == 0x0000
        event, info, _ = reports.wait()
    finally:
        assoc.release()
    assert event == 2 and _pairs(info.ReferencedSOPSequence) == {kept}
    assert _failures(info) == {removed[1]: 0x0110}


@pytest.fixture
def listener():
    """pynetdicom waiting for reports on a port of its own, accepting the SCP role for its peer."""
    reports = Reports()
    ae = pynetdicom.AE(ae_title="MODALITY")
    # PS3.4 J.3.3: the archive opens this association and asks for the SCP role.
    ae.add_supported_context(COMMITMENT, scu_role=False, scp_role=True)
    port = free_port()
    server = ae.start_server(
        (HOST, port),
        block=False,
        evt_handlers=[(pynetdicom.evt.EVT_N_EVENT_REPORT, reports.handler("new"))],
    )
    try:
        yield port, reports
    finally:
        server.shutdown()


def test_report_on_a_new_association_after_release(make_storage_node, listener):
    port, reports = listener
    node = make_storage_node(peers={"MODALITY": (HOST, port)})
    instances = _stored(node)
    _, gate = gate_commitment_reports(node)
    assoc = _associate(node, reports)
    request = _request(instances)
    assert _action_status(assoc, request) == 0x0000
    assoc.release()  # before the report is ready: it cannot come on this association
    gate.set()
    event, info, label = reports.wait()
    assert (event, label) == (1, "new")
    assert info.TransactionUID == request.TransactionUID
    assert _pairs(info.ReferencedSOPSequence) == set(instances)


def test_configured_to_always_report_on_a_new_association(make_storage_node, listener):
    port, reports = listener
    node = make_storage_node(peers={"MODALITY": (HOST, port)}, commitment={"same_association": False})
    instances = _stored(node, 1)
    assoc = _associate(node, reports)
    try:
        assert _action_status(assoc, _request(instances)) == 0x0000
        event, _, label = reports.wait()
    finally:
        assoc.release()
    assert (event, label) == (1, "new")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_refused_requests_and_the_association_goes_on(make_storage_node):
    node = make_storage_node()
    instances = _stored(node, 1)
    reports = Reports()
    assoc = _associate(node, reports)
    try:
        assert _action_status(assoc, _request(instances), action=2) == 0x0123  # no such action type
        assert _action_status(assoc, _request(instances), instance=generate_uid()) == 0x0117
        no_transaction = _request(instances)
        del no_transaction.TransactionUID
        assert _action_status(assoc, no_transaction) == 0x0121
        assert _action_status(assoc, _request([])) == 0x0121  # empty Referenced SOP Sequence
        bad_uid = _request(instances, transaction="not-a-uid")
        assert _action_status(assoc, bad_uid) == 0x0115
        no_item_uid = _request(instances)
        del no_item_uid.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert _action_status(assoc, no_item_uid) == 0x0121
        assert not reports.items  # nothing refused was reported on
        assert _action_status(assoc, _request(instances)) == 0x0000
        event, info, _ = reports.wait()
    finally:
        assoc.release()
    assert event == 1 and _pairs(info.ReferencedSOPSequence) == set(instances)


def test_unknown_instances_only(make_storage_node):
    node = make_storage_node()
    unknown = [("1.2.840.10008.5.1.4.1.1.2", generate_uid()) for _ in range(3)]
    reports = Reports()
    assoc = _associate(node, reports)
    try:
        assert _action_status(assoc, _request(unknown)) == 0x0000
        event, info, _ = reports.wait()
    finally:
        assoc.release()
    assert event == 2 and "ReferencedSOPSequence" not in info
    assert _failures(info) == {uid: 0x0112 for _, uid in unknown}


# ---------------------------------------------------------------- what pynetdicom will not send


async def _raw_actions(port: int, messages: list[tuple[Any, bytes | None]]) -> list[int]:
    """Send N-ACTION requests with pacsnode's client, data sets as raw bytes; their statuses."""
    from pacsnode.net.client import associate
    from pacsnode.ul.negotiation import ProposedContext

    context = ProposedContext(COMMITMENT, ("1.2.840.10008.1.2.1",))
    statuses = []
    async with associate(HOST, port, called_ae_title="PACSNODE", contexts=[context], dimse_timeout=WAIT) as a:
        ctx = a.negotiated.context_for(COMMITMENT)
        assert ctx is not None
        for command, data in messages:
            async for rsp, _ in a.request(ctx.context_id, command, data):
                statuses.append(int(rsp.status))
    return statuses


def test_unreadable_or_missing_action_information(make_storage_node):
    from pacsnode.dimse.messages import n_action_rq

    node = make_storage_node()
    garbage = n_action_rq(1, COMMITMENT, WELL_KNOWN, 1, has_dataset=True)
    # Transaction UID with a VR that does not exist: the data set cannot be read.
    truncated = b"\x08\x00\x95\x11ZZ\x04\x001.2."
    none = n_action_rq(2, COMMITMENT, WELL_KNOWN, 1, has_dataset=False)
    statuses = asyncio.run(_raw_actions(node.port, [(garbage, truncated), (none, None)]))
    assert statuses == [0x0110, 0x0120]


def test_duplicate_transaction_while_pending(make_storage_node):
    node = make_storage_node()
    instances = _stored(node, 1)
    started, gate = gate_commitment_reports(node)
    reports = Reports()
    assoc = _associate(node, reports)
    try:
        request = _request(instances)
        assert _action_status(assoc, request) == 0x0000
        assert started.wait(WAIT)
        assert _action_status(assoc, request) == 0x0131  # the same transaction, still being checked
        gate.set()
        event, _, _ = reports.wait()
    finally:
        gate.set()
        assoc.release()
    assert event == 1 and len(reports.items) == 1


def test_receiver_answers_bad_reports():
    """The SCU side (`pacsnode commit`): an unknown event type or an unreadable report is refused."""
    from pacsnode.dimse.messages import n_event_report_rq
    from pacsnode.services.base import DimseRequest
    from pacsnode.services.commitment import CommitmentReportReceiver
    from pacsnode.ul.negotiation import Negotiated, NegotiatedContext

    sent: list[Any] = []

    class Responder:
        def send(self, command: Any, dataset: bytes | None = None) -> None:
            sent.append(command)

    context = NegotiatedContext(1, COMMITMENT, "1.2.840.10008.1.2.1")
    negotiated = Negotiated("SCU", "SCP", {1: context}, 16384, 16384)
    receiver = CommitmentReportReceiver()
    bad_type = n_event_report_rq(1, COMMITMENT, WELL_KNOWN, 7)
    receiver.handle(DimseRequest(bad_type, context, negotiated, b""), Responder())  # type: ignore[arg-type]
    unreadable = n_event_report_rq(2, COMMITMENT, WELL_KNOWN, 1)
    receiver.handle(
        DimseRequest(unreadable, context, negotiated, b"\x08\x00\x95\x11ZZ\x04\x001.2."),
        Responder(),  # type: ignore[arg-type]
    )
    assert [int(c.status) for c in sent] == [0x0113, 0x0110]
