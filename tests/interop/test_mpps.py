"""Modality Performed Procedure Step SCP (PS3.4 Annex F) with pynetdicom as the modality: create IN
PROGRESS, complete or discontinue, the illegal transitions and their statuses, the linked
worklist step, and the steps over REST."""

from __future__ import annotations

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from peerkit import HOST, TESTDATA

pynetdicom = pytest.importorskip("pynetdicom")
pytestmark = pytest.mark.interop

MPPS = "1.2.840.10008.3.1.2.3.3"
WORKLIST = sorted((TESTDATA / "worklist" / "wlistdb" / "OFFIS").glob("*.wl"))


@pytest.fixture
def node(make_storage_node):
    n = make_storage_node(http=True)
    for path in WORKLIST:
        r = requests.post(
            f"{n.http_url}/api/worklist",
            data=path.read_bytes(),
            headers={"Content-Type": "application/dicom"},
        )
        assert r.status_code == 201, r.text
    return n


@pytest.fixture
def assoc(node):
    ae = pynetdicom.AE(ae_title="MODALITY")
    ae.add_requested_context(MPPS)
    association = ae.associate(HOST, node.port, ae_title="PACSNODE")
    assert association.is_established
    yield association
    association.release()


def _in_progress(item: Dataset, **extra: object) -> Dataset:
    ds = Dataset()
    ds.PatientName = item.PatientName
    ds.PatientID = item.PatientID
    step = item.ScheduledProcedureStepSequence[0]
    ref = Dataset()
    ref.AccessionNumber = item.AccessionNumber
    ref.ScheduledProcedureStepID = step.ScheduledProcedureStepID
    ref.StudyInstanceUID = item.StudyInstanceUID
    ds.ScheduledStepAttributesSequence = [ref]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "MODALITY"
    ds.PerformedProcedureStepStartDate = "20261126"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = step.Modality
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def _status(result) -> int:
    status, _ = result
    assert status is not None, "no response"
    return int(status.Status)


def _worklist_status(node, accession: str) -> set[str]:
    items = requests.get(f"{node.http_url}/api/worklist", params={"all": "true"}).json()["items"]
    return {i["status"] for i in items if i["AccessionNumber"] == accession}


def test_create_then_complete_moves_the_worklist_step(node, assoc):
    item = dcmread(WORKLIST[0])
    uid = generate_uid()
    assert _status(assoc.send_n_create(_in_progress(item), MPPS, uid)) == 0x0000
    assert _worklist_status(node, item.AccessionNumber) == {"STARTED"}
    # a second N-CREATE of the same instance: 0111 Duplicate SOP Instance
    assert _status(assoc.send_n_create(_in_progress(item), MPPS, uid)) == 0x0111
    # completing without the end date and time: 0110 (may not yet be completed)
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    assert _status(assoc.send_n_set(done, MPPS, uid)) == 0x0110
    done.PerformedProcedureStepEndDate = "20261126"
    done.PerformedProcedureStepEndTime = "103000"
    assert _status(assoc.send_n_set(done, MPPS, uid)) == 0x0000
    assert _worklist_status(node, item.AccessionNumber) == {"COMPLETED"}
    # a final step cannot change
    again = Dataset()
    again.PerformedProcedureStepStatus = "DISCONTINUED"
    assert _status(assoc.send_n_set(again, MPPS, uid)) == 0x0110
    listed = requests.get(f"{node.http_url}/api/mpps").json()["items"]
    assert [(s["SOPInstanceUID"], s["status"]) for s in listed] == [(uid, "COMPLETED")]
    stored = requests.get(f"{node.http_url}/api/mpps/{uid}").json()
    assert stored["00400252"]["Value"] == ["COMPLETED"]
    assert stored["00400251"]["Value"] == ["103000"]


def test_discontinue(node, assoc):
    item = dcmread(WORKLIST[1])
    uid = generate_uid()
    assert _status(assoc.send_n_create(_in_progress(item), MPPS, uid)) == 0x0000
    stop = Dataset()
    stop.PerformedProcedureStepStatus = "DISCONTINUED"
    stop.PerformedProcedureStepEndDate = "20261126"
    stop.PerformedProcedureStepEndTime = "101600"
    assert _status(assoc.send_n_set(stop, MPPS, uid)) == 0x0000
    assert _worklist_status(node, item.AccessionNumber) >= {"DISCONTINUED"}


def test_bad_requests(node, assoc):
    item = dcmread(WORKLIST[2])
    # created in a status other than IN PROGRESS: 0106
    assert (
        _status(
            assoc.send_n_create(
                _in_progress(item, PerformedProcedureStepStatus="COMPLETED"), MPPS, generate_uid()
            )
        )
        == 0x0106
    )
    # a Type 1 attribute missing: 0120
    bare = _in_progress(item)
    del bare.PerformedStationAETitle
    assert _status(assoc.send_n_create(bare, MPPS, generate_uid())) == 0x0120
    # N-SET of an unknown step: 0112
    change = Dataset()
    change.PerformedProcedureStepDescription = "x"
    assert _status(assoc.send_n_set(change, MPPS, generate_uid())) == 0x0112
    # N-SET of an attribute it may not change: 0106; an invalid status: 0106
    uid = generate_uid()
    assert _status(assoc.send_n_create(_in_progress(item), MPPS, uid)) == 0x0000
    moved = Dataset()
    moved.PerformedProcedureStepID = "OTHER"
    assert _status(assoc.send_n_set(moved, MPPS, uid)) == 0x0106
    odd = Dataset()
    odd.PerformedProcedureStepStatus = "PAUSED"
    assert _status(assoc.send_n_set(odd, MPPS, uid)) == 0x0106
    # nothing of the refused requests was kept; the node still serves
    assert [s["SOPInstanceUID"] for s in requests.get(f"{node.http_url}/api/mpps").json()["items"]] == [uid]
    assert _status(assoc.send_n_set(change, MPPS, uid)) == 0x0000


def test_accepted_steps_are_forwarded_in_order(make_storage_node, tmp_path):
    # pynetdicom as the MPPS SCP the node forwards to ([mpps] forward_to = ["FWD"]).
    import threading

    from peerkit import free_port

    received: list[tuple[str, str, str]] = []
    finished = threading.Event()

    def on_create(event):
        received.append(
            (
                "create",
                event.request.AffectedSOPInstanceUID,
                event.attribute_list.PerformedProcedureStepStatus,
            )
        )
        return 0x0000, event.attribute_list

    def on_set(event):
        received.append(
            ("set", event.request.RequestedSOPInstanceUID, event.attribute_list.PerformedProcedureStepStatus)
        )
        finished.set()
        return 0x0000, event.attribute_list

    port = free_port()
    fwd = pynetdicom.AE(ae_title="FWD")
    fwd.add_supported_context(MPPS)
    handlers = [(pynetdicom.evt.EVT_N_CREATE, on_create), (pynetdicom.evt.EVT_N_SET, on_set)]
    server = fwd.start_server((HOST, port), block=False, evt_handlers=handlers)
    try:
        node = make_storage_node(peers={"FWD": (HOST, port)}, mpps={"forward_to": ["FWD"]})
        ae = pynetdicom.AE(ae_title="MODALITY")
        ae.add_requested_context(MPPS)
        assoc = ae.associate(HOST, node.port, ae_title="PACSNODE")
        assert assoc.is_established
        item = dcmread(WORKLIST[3])
        uid = generate_uid()
        refused = _in_progress(item, PerformedProcedureStepStatus="COMPLETED")
        assert _status(assoc.send_n_create(refused, MPPS, generate_uid())) == 0x0106  # not forwarded
        assert _status(assoc.send_n_create(_in_progress(item), MPPS, uid)) == 0x0000
        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        done.PerformedProcedureStepEndDate = "20261126"
        done.PerformedProcedureStepEndTime = "104500"
        assert _status(assoc.send_n_set(done, MPPS, uid)) == 0x0000
        assoc.release()
        assert finished.wait(30)
    finally:
        server.shutdown()
    assert received == [("create", uid, "IN PROGRESS"), ("set", uid, "COMPLETED")]
