"""POST /api/studies/{study}/deidentify: a de-identified copy of a study in the archive, or sent to an AE."""

from __future__ import annotations

import pytest
import requests
from pydicom import dcmread

from peerkit import TESTDATA

SERIES = sorted((TESTDATA / "hierarchy" / "ct_series_with_seg").glob("*.dcm"))


@pytest.fixture
def node(make_storage_node):
    n = make_storage_node(http=True)
    results = n.node.archive.import_files(SERIES)
    assert all(r.ok for r in results), [r.comment for r in results if not r.ok]
    return n


def _study() -> str:
    return str(dcmread(SERIES[0], stop_before_pixels=True).StudyInstanceUID)


def test_copy_into_the_archive(node):
    url = f"{node.http_url}/api/studies/{_study()}/deidentify"
    answer = requests.post(url, json={"options": ["retain-modified-dates"]}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    new = body["StudyInstanceUID"]
    assert new != _study() and body["instances"] == len(SERIES) and not body["refused"] and not body["failed"]
    study = requests.get(f"{node.http_url}/api/studies/{new}", timeout=10).json()
    assert study["PatientID"].startswith("ANON-")
    assert study["NumberOfStudyRelatedInstances"] == len(SERIES)
    again = requests.post(url, json={"options": ["retain-modified-dates"]}, timeout=60).json()
    assert again["StudyInstanceUID"] == new  # the same key: the same UIDs (duplicates are not stored twice)


def test_bad_requests(node):
    base = f"{node.http_url}/api/studies"
    assert (
        requests.post(f"{base}/{_study()}/deidentify", json={"options": ["nope"]}, timeout=10).status_code
        == 400
    )
    assert requests.post(f"{base}/1.2.3.4/deidentify", json={}, timeout=10).status_code == 404
    assert requests.post(f"{base}/not-a-uid/deidentify", json={}, timeout=10).status_code == 400
    unknown = requests.post(f"{base}/{_study()}/deidentify", json={"destination": "NOBODY"}, timeout=10)
    assert unknown.status_code == 400


def test_copy_sent_to_another_ae(make_storage_node):
    receiver = make_storage_node(aet="RECEIVER", index_url="")  # its own index (SQLite)
    sender = make_storage_node(http=True, peers={"RECEIVER": (receiver.host, receiver.port)})
    assert all(r.ok for r in sender.node.archive.import_files(SERIES))
    url = f"{sender.http_url}/api/studies/{_study()}/deidentify"
    answer = requests.post(url, json={"destination": "RECEIVER"}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["destination"] == "RECEIVER" and body["instances"] == len(SERIES) and not body["failed"]
    assert receiver.node.archive.index.counts()["instances"] == len(SERIES)


def test_the_copy_is_audited_as_an_export(make_storage_node):
    from pacsnode.security.events import EventKind, MemoryAuditSink

    audit = MemoryAuditSink()
    node = make_storage_node(http=True, audit=audit)
    assert all(r.ok for r in node.node.archive.import_files(SERIES))
    answer = requests.post(f"{node.http_url}/api/studies/{_study()}/deidentify", json={}, timeout=60)
    assert answer.status_code == 200, answer.text
    (export,) = [e for e in audit.events if e.kind is EventKind.EXPORT]
    assert export.outcome == 0 and export.action == "R"
    study = [o for o in export.objects if o.object_id == _study()]
    assert study and sum(n for _, n in study[0].sop_classes) == len(SERIES)
