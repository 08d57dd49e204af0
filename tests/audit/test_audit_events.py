"""Every DIMSE and HTTP path of a running node reports its PS3.15 A.5.3 events with the true outcome.

A node with a MemoryAuditSink (events as emitted) for the paths; one with its real audit trail
for GET /api/audit. Peers: pynetdicom (C-STORE, C-FIND, C-MOVE and its destination, C-GET, MWL,
MPPS) and httpx (QIDO-RS, WADO-RS, WADO-URI, STOW-RS, the admin API).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacsnode.audit.message import AuditSource, render, schema_path
from pacsnode.security.events import AuditEvent, EventKind, MemoryAuditSink, Outcome
from peerkit import (
    AE_TITLE,
    HOST,
    WAIT,
    free_port,
    make_instance,
    new_uid,
    pynetdicom_store,
    start_threaded_node,
    storage_settings,
)

SCHEMA = etree.RelaxNG(etree.parse(schema_path()))
MULTIPART = 'multipart/related; type="application/dicom"'


class Audited:
    """A running node whose events go to a MemoryAuditSink, with a pynetdicom C-MOVE destination."""

    def __init__(self, node: Any, sink: MemoryAuditSink, move_received: list[str]) -> None:
        self.node = node
        self.sink = sink
        self.move_received = move_received

    def take(self) -> list[AuditEvent]:
        """The events since the last take, once every association has ended; each renders valid."""
        self.node.wait_idle()
        events, self.sink.events[:] = list(self.sink.events), []
        for event in events:
            doc = etree.fromstring(render(event, AuditSource(AE_TITLE)).encode("utf-8"))
            assert SCHEMA.validate(doc), SCHEMA.error_log
        return events

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.node.http_url, timeout=WAIT)


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    dest = AE(ae_title="MOVESCP")
    dest.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    port = free_port()
    server = dest.start_server((HOST, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    sink = MemoryAuditSink()
    settings = storage_settings(tmp_path_factory.mktemp("audited"), "", peers={"MOVESCP": (HOST, port)})
    node = start_threaded_node(settings, http=True, audit=sink)
    try:
        yield Audited(node, sink, received)
    finally:
        node.close()
        server.shutdown()


def _one(events: list[AuditEvent], kind: EventKind) -> AuditEvent:
    found = [e for e in events if e.kind is kind]
    assert len(found) == 1, [(e.kind, e.action) for e in events]
    return found[0]


def _roles(event: AuditEvent) -> dict[str, tuple[str, bool]]:
    return {p.user_id: (p.role, p.requestor) for p in event.participants}


def _studies(event: AuditEvent) -> dict[str, dict[str, int]]:
    return {o.object_id: dict(o.sop_classes) for o in event.objects if o.id_type[0] == "110180"}


def _patients(event: AuditEvent) -> list[str]:
    return [o.object_id for o in event.objects if o.id_type[0] == "2"]


def _store(audited: Audited, datasets: list[Dataset], calling: str = "MODALITY") -> list[int | None]:
    return [s.status for s in pynetdicom_store(HOST, audited.node.port, datasets, calling=calling)]


def _ae(*contexts: str, roles: tuple[str, ...] = ()) -> Any:
    ae = AE(ae_title="QRSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    for ctx in (*contexts, *roles):
        ae.add_requested_context(ctx)
    return ae, [build_role(sop, scp_role=True) for sop in roles] or None


# ---------------------------------------------------------------- DIMSE


def test_c_store_reports_each_study_of_an_association_when_it_ends(audited: Audited) -> None:
    audited.take()
    s1, s2 = new_uid(), new_uid()
    first = make_instance(study=s1, patient_id="STORE-1", AccessionNumber="ACC-1")
    again = make_instance(
        study=s1, patient_id="STORE-1", sop_instance=str(first.SOPInstanceUID)
    )  # other pixels
    other = make_instance(study=s2, patient_id="STORE-2")
    statuses = _store(audited, [first, make_instance(study=s1, patient_id="STORE-1"), other, again])
    assert statuses == [0, 0, 0, 0x0111]  # duplicate_policy reject: a different object under a stored UID
    events = audited.take()
    transferred = {_patients(e)[0]: e for e in events if e.kind is EventKind.INSTANCES_TRANSFERRED}
    assert set(transferred) == {"STORE-1", "STORE-2"} and len(events) == 2
    one = transferred["STORE-1"]
    assert one.action == "C" and one.outcome is Outcome.MINOR_FAILURE
    assert "1 of 3 instance(s) failed: 0x0111" in one.outcome_description
    assert _studies(one) == {s1: {CTImageStorage: 3}}
    assert _roles(one) == {"MODALITY": ("Source Role ID", True), AE_TITLE: ("Destination Role ID", False)}
    source = next(p for p in one.participants if p.user_id == "MODALITY")
    assert source.network_access_point == HOST
    assert one.objects[0].accession_numbers == ("ACC-1",)
    assert transferred["STORE-2"].outcome is Outcome.SUCCESS


def test_c_find_reports_a_query_with_its_identifier_and_the_outcome(audited: Audited) -> None:
    audited.take()
    ae, _ = _ae(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(HOST, audited.node.port, ae_title=AE_TITLE)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientID = "STORE-1"
    q.StudyInstanceUID = ""
    answers = list(assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind))
    bad = Dataset()
    bad.QueryRetrieveLevel = "NOSUCHLEVEL"
    refused = list(assoc.send_c_find(bad, StudyRootQueryRetrieveInformationModelFind))
    assoc.release()
    assert answers[-1][0].Status == 0 and refused[-1][0].Status != 0
    ok, failed = [e for e in audited.take() if e.kind is EventKind.QUERY]
    assert ok.outcome is Outcome.SUCCESS and failed.outcome is Outcome.MINOR_FAILURE
    assert _roles(ok) == {"QRSCU": ("Source Role ID", True), AE_TITLE: ("Destination Role ID", False)}
    query = ok.objects[0]
    assert query.object_id == StudyRootQueryRetrieveInformationModelFind and query.role == 3
    sent = dcmread(io.BytesIO(query.query), force=True)  # the identifier as received (implicit VR)
    assert sent.PatientID == "STORE-1" and sent.QueryRetrieveLevel == "STUDY"
    assert query.detail == (("TransferSyntax", b"1.2.840.10008.1.2"),)


def test_c_move_reports_begin_and_end_to_its_destination_and_an_unknown_one_fails(audited: Audited) -> None:
    study = new_uid()
    assert _store(audited, [make_instance(study=study, patient_id="MOVE-1") for _ in range(2)]) == [0, 0]
    audited.take()
    ae, _ = _ae(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(HOST, audited.node.port, ae_title=AE_TITLE)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study
    moved = list(assoc.send_c_move(q, "MOVESCP", StudyRootQueryRetrieveInformationModelMove))
    nowhere = list(assoc.send_c_move(q, "NOWHERE", StudyRootQueryRetrieveInformationModelMove))
    assoc.release()
    assert moved[-1][0].Status == 0 and nowhere[-1][0].Status == 0xA801
    events = audited.take()
    begin = _one(events, EventKind.BEGIN_TRANSFERRING)
    sent, refused = [e for e in events if e.kind is EventKind.INSTANCES_TRANSFERRED]
    expected = {
        AE_TITLE: ("Source Role ID", False),
        "MOVESCP": ("Destination Role ID", False),
        "QRSCU": ("", True),  # PS3.15 A.5.3.7: the C-MOVE's requestor, a third participant
    }
    assert _roles(begin) == _roles(sent) == expected
    assert sent.action == "R" and sent.outcome is Outcome.SUCCESS
    assert _studies(sent) == {study: {CTImageStorage: 2}} and _patients(sent) == ["MOVE-1"]
    assert refused.outcome is Outcome.MINOR_FAILURE and "NOWHERE" in refused.outcome_description
    assert refused.objects == ()


def test_c_get_reports_the_requestor_as_destination(audited: Audited) -> None:
    study = new_uid()
    assert _store(audited, [make_instance(study=study, patient_id="GET-1")]) == [0]
    audited.take()
    ae, roles = _ae(StudyRootQueryRetrieveInformationModelGet, roles=(CTImageStorage,))
    assoc = ae.associate(
        HOST,
        audited.node.port,
        ae_title=AE_TITLE,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, lambda e: 0)],
    )
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study
    got = list(assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    assert got[-1][0].Status == 0
    events = audited.take()
    sent = _one(events, EventKind.INSTANCES_TRANSFERRED)
    assert _one(events, EventKind.BEGIN_TRANSFERRING)
    assert _roles(sent) == {AE_TITLE: ("Source Role ID", False), "QRSCU": ("Destination Role ID", True)}
    assert _studies(sent) == {study: {CTImageStorage: 1}}


def test_worklist_query_and_mpps_report_query_and_procedure_record(audited: Audited) -> None:
    audited.take()
    ae, _ = _ae(ModalityWorklistInformationFind, ModalityPerformedProcedureStep)
    assoc = ae.associate(HOST, audited.node.port, ae_title=AE_TITLE)
    q = Dataset()
    q.PatientName = "*"
    list(assoc.send_c_find(q, ModalityWorklistInformationFind))
    step = Dataset()
    step.PatientID = "MPPS-1"
    step.PatientName = "Step^Patient"
    step.PerformedProcedureStepStatus = "IN PROGRESS"
    step.PerformedProcedureStepID = "PPS1"
    step.PerformedStationAETitle = "MODALITY"
    step.PerformedProcedureStepStartDate = "20240102"
    step.PerformedProcedureStepStartTime = "101010"
    step.Modality = "CT"
    item = Dataset()
    item.StudyInstanceUID = study = new_uid()
    item.AccessionNumber = "ACC-MPPS"
    step.ScheduledStepAttributesSequence = [item]
    uid = new_uid()
    status, _ = assoc.send_n_create(step, ModalityPerformedProcedureStep, uid)
    again, _ = assoc.send_n_create(step, ModalityPerformedProcedureStep, uid)  # 0111 duplicate
    assoc.release()
    assert status.Status == 0 and again.Status == 0x0111
    events = audited.take()
    query = _one(events, EventKind.QUERY)
    assert query.objects[0].object_id == ModalityWorklistInformationFind
    created, duplicate = [e for e in events if e.kind is EventKind.PROCEDURE_RECORD]
    assert created.action == "C" and created.outcome is Outcome.SUCCESS
    assert duplicate.outcome is Outcome.MINOR_FAILURE
    assert _patients(created) == ["MPPS-1"] and list(_studies(created)) == [study]
    study_object = next(o for o in created.objects if o.object_id == study)
    assert study_object.mpps_uids == (uid,) and study_object.accession_numbers == ("ACC-MPPS",)


# ---------------------------------------------------------------- HTTP


def _part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = "audit-boundary"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts
    )
    return body + f"--{boundary}--\r\n".encode(), f'{MULTIPART}; boundary="{boundary}"'


def test_dicomweb_reports_stow_qido_wado_and_wado_uri(audited: Audited) -> None:
    audited.take()
    study = new_uid()
    good = make_instance(study=study, patient_id="WEB-1")
    body, content_type = _multipart([_part10(good), b"not dicom"])
    with audited.http() as http:
        stored = http.post("/dicom-web/studies", content=body, headers={"content-type": content_type})
        assert stored.status_code == 202
        assert http.get("/dicom-web/studies", params={"PatientID": "WEB-1"}).status_code == 200
        assert http.get("/dicom-web/studies", params={"StudyDate": "not-a-date"}).status_code == 400
        wado = http.get(f"/dicom-web/studies/{study}", headers={"accept": MULTIPART})
        assert wado.status_code == 200
        uri = http.get(
            "/wado",
            params={
                "requestType": "WADO",
                "studyUID": study,
                "seriesUID": str(good.SeriesInstanceUID),
                "objectUID": str(good.SOPInstanceUID),
                "contentType": "application/dicom",
            },
        )
        assert uri.status_code == 200
        assert http.get(f"/dicom-web/studies/{new_uid()}", headers={"accept": MULTIPART}).status_code == 404
    events = audited.take()
    stow, unreadable, wado_rs, wado_uri = [e for e in events if e.kind is EventKind.INSTANCES_TRANSFERRED]
    assert (
        stow.action == "C"
        and stow.outcome is Outcome.SUCCESS
        and _studies(stow) == {study: {CTImageStorage: 1}}
    )
    assert _roles(stow) == {HOST: ("Source Role ID", True), AE_TITLE: ("Destination Role ID", False)}
    assert unreadable.outcome is Outcome.MINOR_FAILURE and unreadable.objects == ()  # a part without a study
    for sent in (wado_rs, wado_uri):
        assert sent.action == "R" and sent.outcome is Outcome.SUCCESS
        assert _roles(sent) == {AE_TITLE: ("Source Role ID", False), HOST: ("Destination Role ID", True)}
        assert _patients(sent) == ["WEB-1"]
    ok, bad = [e for e in events if e.kind is EventKind.QUERY]
    assert ok.outcome is Outcome.SUCCESS and bad.outcome is Outcome.MINOR_FAILURE
    assert ok.objects[0].query == b"/dicom-web/studies?PatientID=WEB-1"
    assert len(events) == 6  # the unknown study: nothing was transferred, nothing to report


def test_admin_api_reports_deletions_and_orders(audited: Audited) -> None:
    study, series = new_uid(), new_uid()
    keep = make_instance(study=study, series=new_uid(), patient_id="DEL-1")
    assert _store(audited, [keep, make_instance(study=study, series=series, patient_id="DEL-1")]) == [0, 0]
    audited.take()
    item = {
        "00100020": {"vr": "LO", "Value": ["ORDER-1"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Order^Patient"}]},
        "00080050": {"vr": "SH", "Value": ["ACC-ORDER"]},
        "0020000D": {"vr": "UI", "Value": [new_uid()]},
        "00400100": {
            "vr": "SQ",
            "Value": [
                {
                    "00080060": {"vr": "CS", "Value": ["CT"]},
                    "00400001": {"vr": "AE", "Value": ["MODALITY"]},
                    "00400002": {"vr": "DA", "Value": ["20240102"]},
                    "00400003": {"vr": "TM", "Value": ["101010"]},
                    "00400009": {"vr": "SH", "Value": ["SPS-1"]},
                }
            ],
        },
    }
    with audited.http() as http:
        assert http.delete(f"/api/series/{series}").status_code == 200
        assert http.delete(f"/api/studies/{study}").status_code == 200
        added = http.post(
            "/api/worklist", content=json.dumps(item), headers={"content-type": "application/dicom+json"}
        )
        assert added.status_code == 201, added.text
        item_id = added.json()["items"][0]["id"]
        assert http.delete(f"/api/worklist/{item_id}").status_code == 204
        assert http.get("/api/patients", params={"PatientID": "DEL-1"}).status_code == 200
    events = audited.take()
    accessed = _one(events, EventKind.INSTANCES_ACCESSED)
    assert accessed.action == "D" and _studies(accessed) == {study: {CTImageStorage: 1}}
    deleted = _one(events, EventKind.STUDY_DELETED)
    assert deleted.action == "D" and _studies(deleted) == {study: {CTImageStorage: 1}}
    assert _patients(deleted) == ["DEL-1"]
    assert deleted.participants[0].user_id == HOST and deleted.participants[0].requestor
    created, cancelled = [e for e in events if e.kind is EventKind.ORDER_RECORD]
    assert (created.action, cancelled.action) == ("C", "D")
    assert _patients(created) == _patients(cancelled) == ["ORDER-1"]
    assert created.objects[0].detail == (("AccessionNumber", b"ACC-ORDER"),)
    assert _one(events, EventKind.QUERY).objects[0].query == b"/api/patients?PatientID=DEL-1"


def sample(name: str) -> bytes:
    """A message of tests/hl7 as sent (segments ended by CR, as tests/hl7/hl7samples.py reads them)."""
    return (Path(__file__).resolve().parents[1] / "hl7" / name).read_bytes().replace(b"\n", b"\r")


def test_hl7_orders_and_patient_updates_report_order_and_patient_records(
    audited: Audited, tmp_path: Path
) -> None:
    from pacsnode.archive.patients import PatientRecords
    from pacsnode.config.settings import Hl7Settings
    from pacsnode.hl7.feed import Hl7Feed

    archive = audited.node.node.archive
    sink = MemoryAuditSink()
    feed = Hl7Feed(Hl7Settings(enabled=True), archive.worklist, PatientRecords(archive), AE_TITLE, sink)
    order = feed.handle(sample("orm_o01_new_latin1.hl7"), "192.0.2.5:3000")
    update = feed.handle(sample("adt_a08_update.hl7"), "192.0.2.5:3000")
    merge = feed.handle(sample("adt_a40_merge.hl7"), "192.0.2.5:3000")
    assert (order.code, update.code, merge.code) == ("AA", "AA", "AA")
    kinds = [(e.kind, e.action, e.outcome) for e in sink.events]
    assert kinds[0] == (EventKind.ORDER_RECORD, "C", Outcome.SUCCESS)
    assert (EventKind.PATIENT_RECORD, "U", Outcome.SUCCESS) in kinds
    assert (EventKind.PATIENT_RECORD, "D", Outcome.SUCCESS) in kinds  # the merged-away patient
    sender = sink.events[0].participants[0]
    assert sender.requestor and sender.network_access_point == "192.0.2.5" and "|" in sender.user_id
    for event in sink.events:
        assert SCHEMA.validate(etree.fromstring(render(event, AuditSource(AE_TITLE)).encode("utf-8")))
    again = feed.handle(
        sample("orm_o01_new_latin1.hl7").replace(b"|NW|", b"|XO|").replace(b"ORM^O01", b"ORM^O01")
    )
    assert again.code == "AA"
    assert sink.events[-1].kind is EventKind.ORDER_RECORD and sink.events[-1].action == "U"


# ---------------------------------------------------------------- the trail behind GET /api/audit


def test_a_node_keeps_its_trail_and_serves_it_at_api_audit(tmp_path: Path) -> None:
    node = start_threaded_node(
        storage_settings(tmp_path / "data", ""), http=True
    )  # [audit] enabled by default
    try:
        study = new_uid()
        assert [
            s.status
            for s in pynetdicom_store(HOST, node.port, [make_instance(study=study, patient_id="API-1")])
        ] == [0]
        node.wait_idle()
        trail = node.node.trail
        assert trail is not None and trail.flush(WAIT)
        with httpx.Client(base_url=node.http_url, timeout=WAIT) as http:
            page = http.get("/api/audit", params={"patient": "API-1"}).json()
            assert [i["event"]["code"] for i in page["items"]] == ["110104"]
            row = page["items"][0]
            assert row["study_uids"] == [study] and row["action"] == "C" and row["outcome"] == 0
            assert SCHEMA.validate(etree.fromstring(row["xml"].encode("utf-8")))
            starts = http.get("/api/audit", params={"event": "Application Start"}).json()["items"]
            assert len(starts) == 1
            assert http.get("/api/audit", params={"event": "nonsense"}).status_code == 400
            assert http.get("/api/audit", params={"since": "not a time"}).status_code == 422
            assert trail.flush(WAIT)
            used = http.get("/api/audit", params={"event": "110101"}).json()["items"]
            assert used and used[0]["event"]["meaning"] == "Audit Log Used"
    finally:
        node.close()
    # The stop is in the trail too (kept before the node's index closed).
    from pacsnode.archive.index import ArchiveIndex
    from pacsnode.audit.store import AuditQuery, search

    index = ArchiveIndex(node.settings.index_url())
    try:
        stops = search(index.engine, AuditQuery(event="Application Stop"))["items"]
        assert len(stops) == 1 and stops[0]["user_ids"][0] == AE_TITLE
    finally:
        index.dispose()


def test_pacsnode_import_keeps_an_import_message_per_study(tmp_path: Path) -> None:
    from rich.console import Console

    from pacsnode.archive.index import ArchiveIndex
    from pacsnode.audit.store import AuditQuery, search
    from pacsnode.cli.importer import run_import

    folder = tmp_path / "cd"
    folder.mkdir()
    study = new_uid()
    for n in range(2):
        dcmwrite(
            folder / f"{n}.dcm", make_instance(study=study, patient_id="IMPORT-1"), enforce_file_format=True
        )
    (folder / "bad.dcm").write_bytes(b"DICM" * 10)
    settings = storage_settings(tmp_path / "data", "")
    run_import([folder], settings, recursive=True, verbose=0, console=Console(file=io.StringIO()))
    index = ArchiveIndex(settings.index_url())
    try:
        items = search(index.engine, AuditQuery(event="Import"))["items"]
    finally:
        index.dispose()
    assert [(i["patient_ids"], i["study_uids"], i["action"], i["outcome"]) for i in items] == [
        (["IMPORT-1"], [study], "C", 0)
    ]
    doc = etree.fromstring(items[0]["xml"].encode("utf-8"))
    assert SCHEMA.validate(doc)
    media = [p for p in doc.findall("ActiveParticipant") if p.find("MediaIdentifier") is not None]
    assert [m.get("UserID") for m in media] == [folder.resolve().as_uri()]
    assert media[0].find("RoleIDCode").get("csd-code") == "110155"  # Source Media
    assert items[0]["sent"] == "pending"  # the serving node sends it
