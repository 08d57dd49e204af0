"""`pacsnode find`, `move`, `get` without a peer: usage errors (exit 2), failures (exit 1), their parts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from rich.console import Console

from pacsnode.cli.qr import identifiers, results_table, to_json
from pacsnode.data.part10 import read_layout
from pacsnode.data.uids import STUDY_ROOT_GET
from pacsnode.dimse.commands import Command, CommandField
from pacsnode.dimse.messages import c_store_rq
from pacsnode.net.client import RetrieveProgress, get_contexts
from pacsnode.net.receive import COMMON_STORAGE_SOP_CLASSES, InstanceWriter
from pacsnode.services.base import DimseRequest
from pacsnode.ul.negotiation import Negotiated, NegotiatedContext
from peerkit import HOST, PACSNODE, free_port, run_tool

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def pacsnode(*args: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    env["COLUMNS"] = "200"
    return run_tool([PACSNODE, *args], env=env)


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize("command", ["find", "move", "get"])
def test_help(command):
    r = pacsnode(command, "--help")
    assert r.returncode == 0, r.stdout
    for option in ("-aet", "-aec", "--key", "-P", "-S"):
        assert option in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["find", HOST, "104", "-k", "PatientNam=X"], "unknown keyword 'PatientNam'"),
        (["find", HOST, "104", "-k", "Rows=many"], "not a valid US value"),
        (["find", HOST, "104", "-P", "-S"], "not both"),
        (["find", HOST, "104", "--cancel-after", "0"], "--cancel-after"),
        (["move", HOST, "104", "-k", "StudyInstanceUID=1.2"], "move destination is required"),
        (["get", HOST, "104", "--accept-ts", "jpeg"], "not a transfer syntax UID"),
        (["find", HOST, "104", "no-such-query-file.dcm"], "does not exist"),
    ],
)
def test_bad_input_is_a_usage_error(args, message):
    r = pacsnode(*args)
    assert r.returncode == 2, r.stdout
    assert message in r.stdout
    assert "Traceback" not in r.stdout


def test_unreadable_query_file(tmp_path):
    bad = tmp_path / "query.dcm"
    bad.write_bytes(b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff")
    r = pacsnode("find", HOST, "104", str(bad))
    assert r.returncode == 2, r.stdout
    assert "cannot read query file" in r.stdout


@pytest.mark.parametrize("command", [["find"], ["move", "-aem", "DEST"], ["get", "--od", "{tmp}"]])
def test_unreachable_peer_is_a_failure(command, tmp_path):
    port = free_port()  # nothing listens there
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    r = pacsnode(*args, HOST, str(port), "-k", "StudyInstanceUID=1.2.3", "--timeout", "5")
    assert r.returncode == 1, r.stdout
    assert f"error: cannot connect to {HOST}:{port}" in r.stdout
    assert "Traceback" not in r.stdout


# ---------------------------------------------------------------- identifiers and output


def test_default_keys_only_without_keys():
    (plain,) = identifiers([], [], "study", default_keys=True)
    assert plain.QueryRetrieveLevel == "STUDY" and "StudyInstanceUID" in plain and "PatientName" in plain
    (patient,) = identifiers([], [], "patient", default_keys=True)
    assert patient.QueryRetrieveLevel == "PATIENT" and "PatientID" in patient and "StudyDate" not in patient
    (chosen,) = identifiers(["PatientID=7"], [], "study", default_keys=True)
    assert [e.keyword for e in chosen] == ["QueryRetrieveLevel", "PatientID"]


def test_one_identifier_per_query_file(tmp_path):
    paths = []
    for n in range(2):
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = f"1.2.{n}"
        paths.append(tmp_path / f"q{n}.dcm")
        ds.save_as(paths[-1], implicit_vr=True, little_endian=True)
    got = identifiers(["Modality=CT"], paths, "study")
    assert [(d.StudyInstanceUID, d.Modality, d.QueryRetrieveLevel) for d in got] == [
        ("1.2.0", "CT", "SERIES"),
        ("1.2.1", "CT", "SERIES"),
    ]


def _match(name: str, uid: str, modalities: list[str]) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name
    ds.StudyInstanceUID = uid
    ds.ModalitiesInStudy = modalities
    ds.RetrieveAETitle = "PEER"
    return ds


def test_table_and_json():
    (request,) = identifiers(["PatientName", "StudyInstanceUID", "ModalitiesInStudy"], [], "study")
    results = [_match("Buc^Jérôme", "1.2.3", ["CT", "MR"]), _match("[b]not markup[/b]", "1.2.4", ["US"])]
    console = Console(width=200, record=True)
    console.print(results_table("title", request, results))
    text = console.export_text()
    assert "Buc^Jérôme" in text and "CT\\MR" in text and "[b]not markup[/b]" in text
    header = next(line for line in text.splitlines() if "PatientName" in line)
    # The keys asked for first (in tag order), then what the peer added.
    assert header.index("ModalitiesInStudy") < header.index("PatientName") < header.index("StudyInstanceUID")
    assert header.index("StudyInstanceUID") < header.index("RetrieveAETitle")
    decoded = json.loads(to_json(results))
    assert decoded[0]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Buc^Jérôme"}]}
    assert decoded[1]["00080061"]["Value"] == ["US"]
    assert [Dataset.from_json(d).StudyInstanceUID for d in decoded] == ["1.2.3", "1.2.4"]


# ---------------------------------------------------------------- the C-GET side


def test_get_contexts_fit_in_128_with_roles():
    contexts = get_contexts([STUDY_ROOT_GET], COMMON_STORAGE_SOP_CLASSES)
    assert len(contexts) <= 128
    assert contexts[0].abstract_syntax == STUDY_ROOT_GET and contexts[0].scp_role is None
    storage = contexts[1:]
    assert len(storage) == len(COMMON_STORAGE_SOP_CLASSES)
    assert all((c.scu_role, c.scp_role) == (False, True) for c in storage)  # PS3.7 D.3.3.4
    with_jpeg = get_contexts([STUDY_ROOT_GET], COMMON_STORAGE_SOP_CLASSES, ["1.2.840.10008.1.2.4.70"])
    assert len(with_jpeg) == 1 + 2 * (127 // 2)
    assert with_jpeg[1].transfer_syntaxes == ("1.2.840.10008.1.2.4.70",)
    assert with_jpeg[2].transfer_syntaxes == (EXPLICIT, "1.2.840.10008.1.2")
    assert with_jpeg[1].abstract_syntax == with_jpeg[2].abstract_syntax == CT


@pytest.mark.parametrize(
    ("status", "failed", "uids", "ok"),
    [
        (0x0000, 0, (), True),
        (0xB000, 0, (), True),
        (0xB000, 2, ("1.2",), False),
        (0xB000, None, ("1.2",), False),
        (0xA702, 0, (), False),
        (0xFE00, 0, (), False),
    ],
)
def test_retrieve_outcome(status, failed, uids, ok):
    assert RetrieveProgress(status, 1, None, 3, failed, 0, uids).ok is ok


class _Responder:
    def __init__(self) -> None:
        self.sent: list[Command] = []

    def send(self, command: Command, dataset: bytes | None = None) -> None:
        self.sent.append(command)


def _negotiated() -> tuple[Negotiated, NegotiatedContext]:
    ctx = NegotiatedContext(3, CT, EXPLICIT, requestor_is_scu=False, requestor_is_scp=True)
    return Negotiated("PEER", "US", {3: ctx}, 16384, 16384), ctx


def _receive(writer: InstanceWriter, uid: str, data: bytes) -> Command:
    negotiated, ctx = _negotiated()
    command = c_store_rq(7, CT, uid)
    sink = writer.sink_for(command, ctx, negotiated)
    assert sink is not None
    for start in range(0, len(data), 5):
        sink.write(data[start : start + 5])
    sink.finish()
    responder = _Responder()
    writer.handle(DimseRequest(command, ctx, negotiated, None, sink), responder)
    (rsp,) = responder.sent
    assert rsp.command_field == CommandField.C_STORE_RSP and rsp.message_id_being_responded_to == 7
    return rsp


def _dataset(uid: str) -> bytes:
    from pacsnode.data.transcode import encode

    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = uid
    ds.PatientName = "Doe^Jane"
    return encode(ds, EXPLICIT)


def test_instance_writer_writes_part10_files(tmp_path):
    stored = []
    writer = InstanceWriter(tmp_path, stored.append)
    data = _dataset("1.2.3.4")
    assert _receive(writer, "1.2.3.4", data).status == 0x0000
    path = tmp_path / "1.2.3.4.dcm"
    assert [s.path for s in stored] == [path] and stored[0].size == len(data)
    with path.open("rb") as fp:
        layout = read_layout(fp)
        assert fp.read() == data  # the data set as received
    assert (layout.sop_class_uid, layout.sop_instance_uid, layout.transfer_syntax_uid) == (
        CT,
        "1.2.3.4",
        EXPLICIT,
    )
    ds = dcmread(path)
    assert ds.file_meta.SourceApplicationEntityTitle == "PEER"
    assert ds.PatientName == "Doe^Jane"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.2.3.4.dcm"]  # no partial file left


def test_instance_writer_never_takes_a_path_from_the_peer(tmp_path):
    writer = InstanceWriter(tmp_path / "out")
    (tmp_path / "out").mkdir()
    assert _receive(writer, "../../evil", _dataset("1.2.3")).status == 0x0000
    (written,) = (tmp_path / "out").iterdir()
    assert written.name.startswith("instance-") and written.suffix == ".dcm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_instance_writer_answers_out_of_resources(tmp_path):
    writer = InstanceWriter(tmp_path / "missing-folder")
    rsp = _receive(writer, "1.2.3", _dataset("1.2.3"))
    assert rsp.status == 0xA700  # PS3.4 B.2.3: Refused: Out of Resources
    assert writer.stored == []


def test_query_file_with_file_meta(tmp_path):
    # A query file written by pydicom with File Meta Information: only its data set is used.
    from pydicom.dataset import FileMetaDataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = "X*"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.2.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    path = tmp_path / "q.dcm"
    ds.save_as(path, enforce_file_format=True)
    (got,) = identifiers([], [Path(path)], "patient")
    assert [e.tag >> 16 for e in got] == [0x0008, 0x0010]


def test_retrieve_response_fields():
    """A final C-MOVE-RSP with counts and a Failed SOP Instance UID List (PS3.4 C.4.2.1.5, C.4.2.3.1)."""
    from pacsnode.data.transcode import encode
    from pacsnode.net.client import Association

    negotiated, _ = _negotiated()
    assoc = Association(None, negotiated, None)  # type: ignore[arg-type]  # no network needed
    identifier = Dataset()
    identifier.FailedSOPInstanceUIDList = ["1.2.3", "1.2.4"]
    rsp = Command(
        CommandField.C_MOVE_RSP,
        message_id_being_responded_to=5,
        status=0xB000,
        number_of_completed_suboperations=3,
        number_of_failed_suboperations=2,
        number_of_warning_suboperations=0,
        has_dataset=True,
    )
    progress = assoc._progress(3, rsp, encode(identifier, EXPLICIT))
    assert (progress.message_id, progress.remaining, progress.completed, progress.failed) == (5, None, 3, 2)
    assert progress.failed_sop_instance_uids == ("1.2.3", "1.2.4")
    assert progress.final and not progress.ok
    single = Dataset()
    single.FailedSOPInstanceUIDList = "1.2.3"
    assert assoc._progress(3, rsp, encode(single, EXPLICIT)).failed_sop_instance_uids == ("1.2.3",)


# ---------------------------------------------------------------- move --port: the command receives


def test_move_with_port_receives_the_instances_itself(make_storage_node, tmp_path):
    from peerkit import make_instance, part10_dataset, pynetdicom_store

    port = free_port()
    node = make_storage_node(peers={"MOVEME": (HOST, port)})
    study = "2.25.4242"
    sent = [make_instance(study=study, InstanceNumber=i) for i in range(3)]
    assert all(s.ok for s in pynetdicom_store(HOST, node.port, sent))
    out = tmp_path / "moved"
    r = pacsnode(
        "move", "-aet", "MOVEME", "-aec", node.ae_title, "--port", str(port), "--od", str(out),
        HOST, str(node.port), "-k", f"StudyInstanceUID={study}",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout
    assert "3 completed, 0 failed" in r.stdout and "3 files received" in r.stdout
    received = {part10_dataset(f)[1]: part10_dataset(f)[3] for f in out.iterdir()}
    assert set(received) == {str(ds.SOPInstanceUID) for ds in sent}
    # No destination and no port: nothing would receive them, a usage error.
    assert pacsnode("move", HOST, str(node.port), "-k", f"StudyInstanceUID={study}").returncode == 2


def test_move_with_a_port_in_use_fails_clearly(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = pacsnode(
            "move",
            "--port",
            str(port),
            "--od",
            str(tmp_path),
            HOST,
            str(free_port()),
            "-k",
            "StudyInstanceUID=1.2",
        )
    assert r.returncode == 1, r.stdout
    assert f"cannot listen on port {port}" in r.stdout
