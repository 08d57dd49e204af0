"""The HL7 v2 feed end to end: a real node (SQLite and PostgreSQL), messages sent over MLLP with the
``hl7`` package's MLLPClient, the worklist read back with DCMTK findscu -W and the patients with
findscu -P, instances stored with DCMTK storescu.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hl7.client import MLLPClient
from hl7samples import get, parse_ack, sample, variant
from pydicom import dcmread

from pacsnode.archive.schema import changes
from pacsnode.config.settings import Hl7Settings
from pacsnode.hl7.mllp import frame
from pacsnode.hl7.server import Hl7Server
from peerkit import HOST, WAIT, dcmtk_find, need_testdata, need_tool, run_tool

ORM = "orm_o01_new_latin1.hl7"
OMI = "omi_o23_new_utf8.hl7"
SPS = "ScheduledProcedureStepSequence[0]"
MWL_KEYS = [
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    f"{SPS}.Modality",
    f"{SPS}.ScheduledStationAETitle",
    f"{SPS}.ScheduledProcedureStepID",
    f"{SPS}.ScheduledProcedureStepStartDate",
    f"{SPS}.ScheduledProcedureStepStartTime",
]


class Hl7Node:
    """A started storage node with its MLLP listener; ``send`` talks MLLP, ``worklist`` asks findscu -W."""

    def __init__(self, node: Any, server: Hl7Server) -> None:
        self.node = node
        self.server = server
        self.port = server.port

    @contextlib.contextmanager
    def client(self) -> Iterator[MLLPClient]:
        with MLLPClient(HOST, self.port) as client:
            client.socket.settimeout(WAIT)
            yield client

    def send(self, payload: bytes, client: MLLPClient | None = None) -> Any:
        """Send one message (own connection unless ``client``); the parsed ACK."""
        if client is None:
            with self.client() as own:
                return self.send(payload, own)
        return parse_ack(exchange(client, frame(payload)))

    def worklist(self, *keys: str) -> list[Any]:
        """The worklist answers (findscu -W) to the MWL keys plus ``keys``."""
        result = dcmtk_find(HOST, self.node.port, [*MWL_KEYS, *keys], model="-W", called=self.node.ae_title)
        assert result.status == "Success", result.output
        return sorted(
            result.responses, key=lambda r: (str(r.AccessionNumber), _step(r, "ScheduledProcedureStepID"))
        )

    def patients(self, patient_id: str = "") -> list[Any]:
        keys = ["QueryRetrieveLevel=PATIENT", f"PatientID={patient_id}", "PatientName"]
        keys += ["PatientBirthDate", "NumberOfPatientRelatedStudies"]
        result = dcmtk_find(HOST, self.node.port, keys, model="-P", called=self.node.ae_title)
        assert result.status == "Success", result.output
        return sorted(result.responses, key=lambda r: str(r.PatientID))

    def items(self) -> list[dict[str, Any]]:
        """Every worklist item of the index, cancelled ones too (read in the node's own loop thread)."""
        return self.node.node.archive.worklist.listing(include_canceled=True)  # type: ignore[no-any-return]

    def state(self) -> tuple[Any, ...]:
        """What a message may change: worklist items (with their data sets), patients, studies, change log."""
        from sqlalchemy import select

        from pacsnode.archive.schema import patients, studies, worklist_items

        with self.node.index.engine.connect() as conn:
            rows = [
                tuple(tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns)).all())
                for t in (worklist_items, patients, studies)
            ]
            # The change log rows of this feed (the node writes others, e.g. when a study is stable).
            logged = conn.execute(
                select(changes).where(changes.c.kind.like("patient-%")).order_by(changes.c.seq)
            )
            return (*rows, tuple(tuple(r) for r in logged))

    def store(self, path: Path) -> None:
        need_tool("storescu")
        proc = run_tool(["storescu", "-aec", self.node.ae_title, HOST, str(self.node.port), str(path)])
        assert proc.returncode == 0, proc.stdout


def exchange(client: MLLPClient, block: bytes) -> bytes:
    """Send a block, read until the whole answer block is in (MLLPClient.send reads once)."""
    answer = client.send(block)
    while answer and not answer.endswith(b"\x1c\r"):
        more = client.socket.recv(65536)
        if not more:
            break
        answer += more
    return bytes(answer)


def _step(answer: Any, keyword: str) -> str:
    steps = answer.get("ScheduledProcedureStepSequence") or []
    return str(steps[0].get(keyword, "")) if steps else ""


def ok(ack: Any, control_id: str) -> None:
    assert (ack["MSA.F1"], ack["MSA.F2"]) == ("AA", control_id), str(ack)


@pytest.fixture
def make_hl7_node(make_storage_node: Callable[..., Any]) -> Callable[..., Hl7Node]:
    """Factory: a storage node (index back end of ``index_url``) with an MLLP listener on port 0."""

    def start(**hl7: Any) -> Hl7Node:
        node = make_storage_node()
        options = {"enabled": True, "port": 0, "host": HOST, **hl7}
        settings = node.settings.model_copy(update={"hl7": Hl7Settings(**options)})
        server = Hl7Server(settings, node.node.archive)
        node.call(server.start)
        node.node.companions.append(server)  # closed with the node
        return Hl7Node(node, server)

    return start


@pytest.fixture
def hl7_node(make_hl7_node: Callable[..., Hl7Node]) -> Hl7Node:
    return make_hl7_node()


# ---------------------------------------------------------------- orders into the worklist


def test_orders_sent_over_mllp_appear_in_the_worklist(hl7_node: Hl7Node) -> None:
    ok(hl7_node.send(sample(ORM)), "ORM0001")
    ok(hl7_node.send(sample(OMI)), "OMI0001")
    ct, mr_a, mr_b = hl7_node.worklist()
    assert str(ct.PatientName) == "Müller^Jürgen^Karl^Dr."
    assert (ct.PatientID, ct.AccessionNumber, ct.StudyInstanceUID) == (
        "PAT1001",
        "ACC7001",
        "1.2.826.0.1.3680043.10.1001.7001",
    )
    assert [_step(ct, k) for k in ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepID")] == [
        "CT",
        "CT01",
        "SPS7001",
    ]
    assert _step(ct, "ScheduledProcedureStepStartDate") == "20240612"
    for answer in (mr_a, mr_b):
        assert str(answer.PatientName) == "Παπαδοπούλου^Ελένη"
        assert answer.AccessionNumber == "ACC8001"
    assert [_step(a, "ScheduledProcedureStepID") for a in (mr_a, mr_b)] == ["SPS8001A", "SPS8001B"]
    # Matching on what the orders set: the station, a name with its accents folded.
    (only,) = hl7_node.worklist(f"{SPS}.ScheduledStationAETitle=MRSCANNER2")
    assert _step(only, "ScheduledProcedureStepID") == "SPS8001B"
    (muller,) = hl7_node.worklist("PatientName=MULLER*")
    assert muller.AccessionNumber == "ACC7001"


def test_a_resent_new_order_does_not_duplicate_its_item(hl7_node: Hl7Node) -> None:
    ok(hl7_node.send(sample(ORM)), "ORM0001")
    ok(hl7_node.send(sample(ORM)), "ORM0001")  # the sender missed our ACK and sends it again
    assert len(hl7_node.items()) == 1


def test_change_order_replaces_and_cancel_removes(hl7_node: Hl7Node) -> None:
    ok(hl7_node.send(variant(ORM, drop=("ZDS",))), "ORM0001")
    (before,) = hl7_node.worklist()
    # The modality started the step (MPPS IN PROGRESS): a change keeps that status.
    hl7_node.node.node.archive.worklist.follow("ACC7001", "SPS7001", "STARTED")
    change = variant(
        ORM, {"MSH.10": "ORM0002", "ORC.1": "XO", "ORC.7": "^^^20240614150000^^S", "ORC.18": "CT02"}
    )
    ok(hl7_node.send(change.replace(b"ZDS|", b"ZZZ|")), "ORM0002")
    (after,) = hl7_node.worklist()
    assert _step(after, "ScheduledProcedureStepStartDate") == "20240614"
    assert _step(after, "ScheduledProcedureStepStartTime") == "150000"
    assert _step(after, "ScheduledStationAETitle") == "CT02"
    assert after.StudyInstanceUID == before.StudyInstanceUID
    (item,) = hl7_node.items()
    assert item["status"] == "STARTED"
    ok(hl7_node.send(variant(ORM, {"MSH.10": "ORM0003", "ORC.1": "CA"})), "ORM0003")
    assert hl7_node.worklist() == []
    assert [i["status"] for i in hl7_node.items()] == ["CANCELED"]


def test_change_or_cancel_of_an_unknown_order_is_an_error_and_changes_nothing(hl7_node: Hl7Node) -> None:
    ok(hl7_node.send(sample(ORM)), "ORM0001")
    before = hl7_node.state()
    for control in ("XO", "CA", "DC"):
        ack = hl7_node.send(variant(ORM, {"MSH.10": f"X-{control}", "ORC.1": control, "OBR.18": "NOSUCH"}))
        assert (ack["MSA.F1"], ack["MSA.F2"]) == ("AE", f"X-{control}")
        assert ack["ERR.F1.R1.C1"] == "OBR" and ack["ERR.F1.R1.C3"] == "18"  # v2.3.1 ERR-1 (ELD)
        assert ack["ERR.F1.R1.C4.S1"] == "204"
    # An OMI whose second step is unknown: the first is not changed either (one transaction).
    ok(hl7_node.send(sample(OMI)), "OMI0001")
    before = hl7_node.state()
    text = sample(OMI).decode("utf-8").replace("|SPS8001B|", "|SPS-NONE|")
    ack = hl7_node.send(variant(OMI, {"MSH.10": "OMI0002", "ORC.1": "XO", "ORC.18": "X"}, text=text))
    assert (ack["MSA.F1"], ack["ERR.F2.R1.C1"], ack["ERR.F2.R1.C2"], ack["ERR.F3.R1.C1"]) == (
        "AE",
        "IPC",
        "2",
        "204",
    )
    assert hl7_node.state() == before


# ---------------------------------------------------------------- bad input: NAK, no change, still serving


def _bad_messages() -> list[tuple[str, bytes, str, str, str]]:
    """(what, payload, MSA-1, Table 0357 code in the ERR segment, MSA-2)."""
    lines = sample(ORM).split(b"\r")
    adt = "adt_a08_update.hl7"
    return [
        ("garbage", b"\x00\xff garbage \x01", "AR", "100", ""),
        ("no MSH", b"\r".join(lines[1:]), "AR", "100", ""),
        ("empty", b"", "AR", "100", ""),
        ("wrong segment order", b"\r".join([lines[0], lines[3], lines[1], lines[4]]), "AE", "100", "ORM0001"),
        ("missing ORC", variant(ORM, drop=("ORC", "OBR", "ZDS")), "AE", "101", "ORM0001"),
        ("missing OBR", variant(ORM, drop=("OBR",)), "AE", "101", "ORM0001"),
        ("missing accession", variant(ORM, {"OBR.18": ""}), "AE", "101", "ORM0001"),
        ("unknown order control", variant(ORM, {"ORC.1": "ZZ"}), "AE", "103", "ORM0001"),
        ("unsupported event", variant(ORM, {"MSH.9": "ADT^A99"}), "AR", "201", "ORM0001"),
        ("unsupported message", variant(ORM, {"MSH.9": "ORU^R01"}), "AR", "200", "ORM0001"),
        ("unsupported version", variant(ORM, {"MSH.12": "2.1"}), "AR", "203", "ORM0001"),
        ("processing ID", variant(ORM, {"MSH.11": "T"}), "AR", "202", "ORM0001"),
        ("no control ID", variant(ORM, {"MSH.10": ""}), "AR", "101", ""),
        ("unknown charset", variant(ORM, {"MSH.18": "EBCDIC"}), "AR", "103", "ORM0001"),
        ("A08 without PID", variant(adt, drop=("PID",)), "AE", "101", "ADT0001"),
        ("A40 without MRG", variant("adt_a40_merge.hl7", drop=("MRG",)), "AE", "101", "ADT0002"),
    ]


def _err_code(ack: Any) -> str:
    text = str(ack)
    if "\rERR|" not in text:
        return ""
    return get(ack, "ERR.F1.R1.C4.S1") or get(ack, "ERR.F3.R1.C1")  # v2.3.1 ERR-1 (ELD), v2.5.1 ERR-3


def test_malformed_messages_get_a_nak_and_change_nothing(hl7_node: Hl7Node) -> None:
    ok(hl7_node.send(sample(OMI)), "OMI0001")
    before = hl7_node.state()
    with hl7_node.client() as client:
        for what, payload, code, error, control in _bad_messages():
            ack = hl7_node.send(payload, client)
            assert (ack["MSA.F1"], _err_code(ack), get(ack, "MSA.F2")) == (code, error, control), (
                f"{what}: {ack}"
            )
        # The same connection takes the next message.
        ok(hl7_node.send(sample(ORM), client), "ORM0001")
    after_good = hl7_node.state()
    assert after_good[0][:2] == before[0][:2] and len(after_good[0]) == 3  # only the good order was added
    assert after_good[1:] == before[1:]
    # And so does a new connection.
    ok(hl7_node.send(variant(ORM, {"MSH.10": "ORM0009", "ORC.1": "CA"})), "ORM0009")


def test_bytes_outside_blocks_are_ignored(hl7_node: Hl7Node) -> None:
    with hl7_node.client() as client:
        ack = parse_ack(exchange(client, b"\r\nnoise" + frame(sample(ORM))))
    ok(ack, "ORM0001")


def test_an_oversized_message_gets_ar_and_the_connection_closes(
    make_hl7_node: Callable[..., Hl7Node],
) -> None:
    node = make_hl7_node(max_message=4096)
    big = variant(ORM, {"OBR.13": "X" * 10_000})
    before = node.state()
    with node.client() as client:
        ack = parse_ack(exchange(client, frame(big)))
        assert (ack["MSA.F1"], ack["MSA.F2"]) == ("AR", "ORM0001")
        assert "4096" in str(ack["MSA.F3"])
        assert client.socket.recv(100) == b""  # closed by the node
    assert node.state() == before
    ok(node.send(sample(ORM)), "ORM0001")


def test_several_connections_at_once(hl7_node: Hl7Node) -> None:
    with hl7_node.client() as one, hl7_node.client() as two:
        ok(hl7_node.send(sample(ORM), one), "ORM0001")
        ok(hl7_node.send(sample(OMI), two), "OMI0001")
        ok(hl7_node.send(variant(ORM, {"MSH.10": "ORM0002", "ORC.1": "CA"}), one), "ORM0002")
    assert len(hl7_node.worklist()) == 2


def test_a_taken_port_is_an_error_naming_it(hl7_node: Hl7Node) -> None:
    settings = hl7_node.node.settings.model_copy(
        update={"hl7": Hl7Settings(enabled=True, host=HOST, port=hl7_node.port)}
    )
    other = Hl7Server(settings, hl7_node.node.node.archive)
    with pytest.raises(OSError) as info:
        hl7_node.node.call(other.start)
    assert info.value.filename == f"{HOST}:{hl7_node.port}"


# ---------------------------------------------------------------- patient update and merge


def _testdata(name: str) -> Path:
    return need_testdata("modalities", name)


def _copy_with_new_study(source: Path, folder: Path) -> Path:
    from pydicom.uid import generate_uid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / "copy.dcm"
        ds.save_as(path)
    return path


def _a08(patient_id: str, name: str, birth_date: str = "", control: str = "ADT0001") -> bytes:
    return variant(
        "adt_a08_update.hl7", {"MSH.10": control, "PID.3": patient_id, "PID.5": name, "PID.7": birth_date}
    )


def test_a08_updates_the_worklist_and_the_patient_record(hl7_node: Hl7Node) -> None:
    ct = _testdata("CT_small.dcm")  # Patient ID 1CT1, CompressedSamples^CT1
    hl7_node.store(ct)
    order = variant(ORM, {"PID.3": "1CT1", "PID.5": "CompressedSamples^CT1"})
    ok(hl7_node.send(order), "ORM0001")
    ok(hl7_node.send(_a08("1CT1", "Groß^Günther", "19700102")), "ADT0001")
    (item,) = hl7_node.worklist()
    assert str(item.PatientName) == "Groß^Günther"
    (patient,) = hl7_node.patients("1CT1")
    assert str(patient.PatientName) == "Groß^Günther"
    assert patient.PatientBirthDate == "19700102"
    (by_name,) = hl7_node.patients()
    assert by_name.PatientID == "1CT1"
    # The stored file keeps what the modality sent; the change log says what happened.
    with hl7_node.node.index.engine.connect() as conn:
        logged = conn.execute(changes.select().where(changes.c.kind == "patient-updated")).all()
    assert [r.study_instance_uid for r in logged] == [dcmread(ct, stop_before_pixels=True).StudyInstanceUID]
    (path,) = hl7_node.node.index.all_paths()
    assert (
        str(dcmread(hl7_node.node.data / path, stop_before_pixels=True).PatientName)
        == "CompressedSamples^CT1"
    )
    # A patient the index does not know: accepted, nothing changes.
    before = hl7_node.state()
    ok(hl7_node.send(_a08("NOBODY", "No^Body", control="ADT0002")), "ADT0002")
    assert hl7_node.state() == before


def test_a40_merges_patients_in_the_index_and_the_worklist(hl7_node: Hl7Node, tmp_path: Path) -> None:
    hl7_node.store(_testdata("CT_small.dcm"))  # 1CT1
    hl7_node.store(_testdata("MR_small.dcm"))  # 4MR1
    ok(hl7_node.send(variant(ORM, {"PID.3": "4MR1^^^GENHOSP"})), "ORM0001")
    merge = variant(
        "adt_a40_merge.hl7", {"PID.3": "1CT1^^^GENHOSP", "PID.5": "Merged^Patient", "MRG.1": "4MR1"}
    )
    ok(hl7_node.send(merge), "ADT0002")
    (patient,) = hl7_node.patients()
    assert (patient.PatientID, str(patient.PatientName)) == ("1CT1", "Merged^Patient")
    assert int(patient.NumberOfPatientRelatedStudies) == 2
    (item,) = hl7_node.worklist()
    assert (item.PatientID, str(item.PatientName)) == ("1CT1", "Merged^Patient")
    with hl7_node.node.index.engine.connect() as conn:
        logged = conn.execute(changes.select().where(changes.c.kind == "patient-merged")).all()
    assert len(logged) == 1  # the one study that moved
    # A merge into a patient the index does not have renames the record.
    ok(hl7_node.send(variant("adt_a40_merge.hl7", {"PID.3": "NEW1", "MRG.1": "1CT1", "MSH.10": "M2"})), "M2")
    (renamed,) = hl7_node.patients()
    assert (renamed.PatientID, int(renamed.NumberOfPatientRelatedStudies)) == ("NEW1", 2)
    # An instance still carrying a merged-away ID makes a new record (the caches forgot the old one).
    hl7_node.store(_copy_with_new_study(_testdata("MR_small.dcm"), tmp_path))
    assert [p.PatientID for p in hl7_node.patients()] == ["4MR1", "NEW1"]


# ---------------------------------------------------------------- `pacsnode serve` with [hl7] enabled


def test_serve_starts_the_listener_when_enabled(tmp_path: Path) -> None:
    from peerkit import ServeOutput

    config = tmp_path / "pacsnode.toml"
    config.write_text(
        f'[node]\ndata = "{tmp_path / "data"}"\ndicom_port = 0\n\n[hl7]\nenabled = true\nport = 0\n'
    )
    serve = ServeOutput(["--config", str(config)])
    try:
        m = serve.wait_for(r"receiving HL7 v2 over MLLP on 127\.0\.0\.1:(\d+)")
        with MLLPClient(HOST, int(m.group(1))) as client:
            client.socket.settimeout(WAIT)
            ok(parse_ack(exchange(client, frame(sample(ORM)))), "ORM0001")
        serve.wait_for(r"ORM\^O01 ORM0001: AA scheduled ACC7001/SPS7001")
    finally:
        serve.stop()
