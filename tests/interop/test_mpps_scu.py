"""`pacsnode mpps create|set` as the MPPS SCU: against pacsnode's own SCP, and against pynetdicom
as the SCP, which records what it receives."""

from __future__ import annotations

import json
import threading

import pytest
import requests
from pydicom.dataset import Dataset

from peerkit import HOST, PACSNODE, free_port, run_tool

pynetdicom = pytest.importorskip("pynetdicom")
pytestmark = pytest.mark.interop

MPPS = "1.2.840.10008.3.1.2.3.3"


def _create_json(tmp_path) -> str:
    ds = Dataset()
    ref = Dataset()
    ref.AccessionNumber = "ACC1"
    ref.ScheduledProcedureStepID = "SPS1"
    ds.ScheduledStepAttributesSequence = [ref]
    ds.PatientID = "P1"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "MODALITY"
    ds.PerformedProcedureStepStartDate = "20261126"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    path = tmp_path / "create.json"
    path.write_text(json.dumps(ds.to_json_dict()))
    return str(path)


def _complete_json(tmp_path) -> str:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = "20261126"
    ds.PerformedProcedureStepEndTime = "103000"
    path = tmp_path / "complete.json"
    path.write_text(json.dumps(ds.to_json_dict()))
    return str(path)


def test_create_and_complete_against_pacsnode(make_storage_node, tmp_path):
    node = make_storage_node(http=True)
    target = [HOST, str(node.port), "--aec", "PACSNODE"]
    created = run_tool([PACSNODE, "mpps", "create", *target[:2], _create_json(tmp_path), *target[2:]])
    assert created.returncode == 0, created.stdout
    uid = created.stdout.split()[1].rstrip(":")
    assert requests.get(f"{node.http_url}/api/mpps").json()["items"][0]["SOPInstanceUID"] == uid
    done = run_tool([PACSNODE, "mpps", "set", *target[:2], uid, _complete_json(tmp_path), *target[2:]])
    assert done.returncode == 0, done.stdout
    again = run_tool([PACSNODE, "mpps", "set", *target[:2], uid, _complete_json(tmp_path), *target[2:]])
    assert again.returncode == 1, again.stdout
    assert "0x0110" in again.stdout and "no longer be updated" in again.stdout


def test_create_and_set_against_pynetdicom(tmp_path):
    received: list[tuple[str, str, Dataset]] = []
    done = threading.Event()

    def on_create(event):
        received.append(("create", event.request.AffectedSOPInstanceUID, event.attribute_list))
        return 0x0000, event.attribute_list

    def on_set(event):
        received.append(("set", event.request.RequestedSOPInstanceUID, event.attribute_list))
        done.set()
        return 0x0000, event.attribute_list

    ae = pynetdicom.AE(ae_title="MPPSSCP")
    ae.add_supported_context(MPPS)
    port = free_port()
    handlers = [(pynetdicom.evt.EVT_N_CREATE, on_create), (pynetdicom.evt.EVT_N_SET, on_set)]
    server = ae.start_server((HOST, port), block=False, evt_handlers=handlers)
    try:
        created = run_tool(
            [PACSNODE, "mpps", "create", HOST, str(port), _create_json(tmp_path), "--aec", "MPPSSCP"]
        )
        assert created.returncode == 0, created.stdout
        uid = created.stdout.split()[1].rstrip(":")
        result = run_tool(
            [PACSNODE, "mpps", "set", HOST, str(port), uid, _complete_json(tmp_path), "--aec", "MPPSSCP"]
        )
        assert result.returncode == 0, result.stdout
        assert done.wait(10)
    finally:
        server.shutdown()
    (op1, uid1, attrs1), (op2, uid2, attrs2) = received
    assert (op1, op2) == ("create", "set") and uid1 == uid2 == uid
    assert attrs1.PerformedProcedureStepStatus == "IN PROGRESS" and attrs1.Modality == "CT"
    assert attrs1.ScheduledStepAttributesSequence[0].AccessionNumber == "ACC1"
    assert (
        attrs2.PerformedProcedureStepStatus == "COMPLETED"
        and attrs2.PerformedProcedureStepEndTime == "103000"
    )
