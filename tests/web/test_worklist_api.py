"""The worklist's REST API (/api/worklist) and `pacsnode worklist`: items go in as DICOM files or
DICOM JSON, are listed and cancelled, and bad bodies get a 4xx with the reason."""

from __future__ import annotations

import json

import pytest
import requests
from pydicom import dcmread

from peerkit import PACSNODE, TESTDATA, run_tool

ITEMS = sorted((TESTDATA / "worklist" / "wlistdb" / "OFFIS").glob("*.wl"))


@pytest.fixture
def node(make_storage_node):
    return make_storage_node(http=True)


def test_add_list_cancel_over_rest(node):
    url = f"{node.http_url}/api/worklist"
    first = requests.post(url, data=ITEMS[0].read_bytes(), headers={"Content-Type": "application/dicom"})
    assert first.status_code == 201, first.text
    as_json = [dcmread(p).to_json_dict() for p in ITEMS[1:3]]
    second = requests.post(url, data=json.dumps(as_json), headers={"Content-Type": "application/dicom+json"})
    assert second.status_code == 201, second.text
    ids = [i["id"] for i in first.json()["items"] + second.json()["items"]]
    assert len(set(ids)) == 3
    listed = requests.get(url).json()["items"]
    assert [i["id"] for i in listed] == ids
    assert listed[0]["PatientID"] == str(dcmread(ITEMS[0]).PatientID)
    assert listed[0]["Modality"] == str(dcmread(ITEMS[0]).ScheduledProcedureStepSequence[0].Modality)
    assert requests.delete(f"{url}/{ids[0]}").status_code == 204
    assert requests.delete(f"{url}/{ids[0]}").status_code == 404
    assert [i["id"] for i in requests.get(url).json()["items"]] == ids[1:]
    everything = requests.get(url, params={"all": "true"}).json()["items"]
    assert [i["status"] for i in everything] == ["CANCELED", "SCHEDULED", "SCHEDULED"]


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/dicom", b"not dicom at all", 400),
        ("application/dicom+json", b"{broken", 400),
        ("application/dicom+json", b"{}", 400),  # no Scheduled Procedure Step Sequence
        ("text/plain", b"hello", 415),
    ],
)
def test_bad_bodies(node, content_type, body, status):
    r = requests.post(f"{node.http_url}/api/worklist", data=body, headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    assert requests.get(f"{node.http_url}/api/worklist").json()["items"] == []


def test_cli_round_trip(node):
    env_url = ["--url", node.http_url]
    added = run_tool([PACSNODE, "worklist", "add", *map(str, ITEMS[:2]), *env_url])
    assert added.returncode == 0, added.stdout
    assert "scheduled as" in added.stdout
    listed = run_tool([PACSNODE, "worklist", "list", *env_url], env={"COLUMNS": "250"})
    assert listed.returncode == 0, listed.stdout
    assert str(dcmread(ITEMS[0]).PatientID) in listed.stdout
    item_id = requests.get(f"{node.http_url}/api/worklist").json()["items"][0]["id"]
    cancelled = run_tool([PACSNODE, "worklist", "cancel", str(item_id), *env_url])
    assert cancelled.returncode == 0, cancelled.stdout
    again = run_tool([PACSNODE, "worklist", "cancel", str(item_id), *env_url])
    assert again.returncode == 1 and "404" in again.stdout
    down = run_tool([PACSNODE, "worklist", "list", "--url", "http://127.0.0.1:9"])
    assert down.returncode == 1 and "cannot reach" in down.stdout
