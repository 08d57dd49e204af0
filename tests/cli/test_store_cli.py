"""`pacsnode store` and `pacsnode import`: usage, failures, untouched and converted sends, streaming."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, generate_uid

from pacsnode.archive.index import ArchiveIndex
from pacsnode.cli.files import MEDIA_STORAGE_DIRECTORY, DicomFile, inspect, quiet_pydicom, read_full
from pacsnode.cli.store import MAX_CONTEXTS, contexts_for, plan_associations
from pacsnode.config.settings import NetworkSettings, Settings, load_settings
from pacsnode.data.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from pacsnode.services.catalog import default_registry
from peerkit import (
    HOST,
    PACSNODE,
    MemoryStorageSCP,
    free_port,
    need_testdata,
    run_tool,
    storage_registration,
    storage_sop_classes,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
UNCOMPRESSED_LE = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
TS_DIR = ("transfer_syntaxes",)


def pacsnode(*args: str, **kwargs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    env["COLUMNS"] = "250"  # Rich wraps at 80 columns when not on a terminal
    return run_tool([PACSNODE, *args], env=env, **kwargs)


def report_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def storage_server(make_threaded_server, sop_classes=None, transfer_syntaxes=UNCOMPRESSED_LE, **kw):
    """A node whose Storage SCP keeps data sets in memory; uncompressed LE only unless told."""
    scp = kw.pop("scp", None) or MemoryStorageSCP()
    registry = default_registry(Settings())
    classes = [c for c in storage_sop_classes() if sop_classes is None or c.uid in sop_classes]
    registry.register(storage_registration(scp, classes, transfer_syntaxes))
    return make_threaded_server(registry=registry, **kw), scp


def dataset_bytes(path: Path) -> bytes:
    item = inspect(path)
    assert isinstance(item, DicomFile), item
    return path.read_bytes()[item.offset :]


def decode(data: bytes, transfer_syntax: str) -> Dataset:
    ts = UID(transfer_syntax)
    ds = read_dataset(io.BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    return ds


# ---------------------------------------------------------------- help and usage


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], "store"),
        (["--help"], "import"),
        (["store", "--help"], "--no-recursive"),
        (["store", "--help"], "--aec"),
        (["store", "-h"], "recursively"),
        (["import", "--help"], "--data"),
    ],
)
def test_help(args, expected):
    r = pacsnode(*args)
    assert r.returncode == 0, r.stdout
    assert expected in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["store"],
        ["store", HOST],
        ["store", HOST, "104"],
        ["store", HOST, "104", "/no/such/file.dcm"],
        ["store", HOST, "0", "{file}"],
        ["store", HOST, "notaport", "{file}"],
        ["store", HOST, "104", "{file}", "--max-pdu", "10"],
        ["store", HOST, "104", "{file}", "--bogus"],
        ["import"],
        ["import", "/no/such/folder"],
        ["import", "{file}", "--bogus"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_usage_exits_2(args, tmp_path):
    f = tmp_path / "f.dcm"
    f.write_bytes(b"x")
    r = pacsnode(*(a.replace("{file}", str(f)) for a in args), cwd=tmp_path)
    assert r.returncode == 2, r.stdout
    assert "Usage" in r.stdout or "Error" in r.stdout


# ---------------------------------------------------------------- failures: exit 1


def test_store_to_closed_port_fails_every_file(tmp_path):
    src = need_testdata("modalities", "CT_small.dcm")
    port = free_port()
    r = pacsnode("store", HOST, str(port), str(src), str(need_testdata("modalities", "MR_small.dcm")))
    assert r.returncode == 1, r.stdout
    assert "Not sent: no association" in r.stdout
    assert f"cannot connect to {HOST}:{port}" in r.stdout
    assert "0 of 2 DICOM files stored" in r.stdout


def test_store_to_peer_that_never_answers():
    src = need_testdata("modalities", "CT_small.dcm")
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)
        r = pacsnode("store", HOST, str(listener.getsockname()[1]), str(src), "-ta", "0.3")
    assert r.returncode == 1
    assert "no answer to A-ASSOCIATE-RQ within 0.3 s" in r.stdout


def test_nothing_to_send(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM\n")
    r = pacsnode("store", HOST, "104", str(tmp_path))
    assert r.returncode == 1
    assert "Skipped: not DICOM" in r.stdout
    assert "no DICOM files to send" in r.stdout


def test_sop_class_the_peer_does_not_support(make_threaded_server):
    srv, scp = storage_server(make_threaded_server, sop_classes={MR})
    ct = need_testdata("modalities", "CT_small.dcm")
    mr = need_testdata("modalities", "MR_small.dcm")
    r = pacsnode("store", HOST, str(srv.port), str(ct), str(mr))
    assert r.returncode == 1, r.stdout
    assert "the peer does not support CT Image Storage" in r.stdout
    assert "1 of 2 DICOM files stored" in r.stdout
    assert [x.command.affected_sop_class_uid for x in scp.received] == [MR]
    srv.wait_idle()


def test_malformed_files_are_reported_not_sent(make_threaded_server, tmp_path):
    srv, _ = storage_server(make_threaded_server)
    malformed = need_testdata("malformed")
    report = tmp_path / "report.tsv"
    r = pacsnode("store", HOST, str(srv.port), str(malformed), "--report", str(report))
    assert r.returncode == 1
    rows = {Path(row["path"]).name: row for row in report_rows(report)}
    assert len(rows) == len(list(malformed.iterdir()))
    assert rows["MR_3GB_bulkdata_truncated.dcm"]["result"] == "Not sent: truncated data set"
    assert "declares 3221225472 bytes" in rows["MR_3GB_bulkdata_truncated.dcm"]["comment"]
    assert rows["RTPLAN_truncated.dcm"]["result"] == "Not sent: truncated data set"
    assert rows["UN_private_sequence.dcm"]["result"] == "Not sent: no SOP Class UID in the data set"
    # A bare Explicit VR Little Endian data set, without preamble or meta, goes as it is.
    assert rows["RTPLAN_explicit_le_no_meta.dcm"]["result"] == "Success"
    assert rows["RTPLAN_explicit_le_no_meta.dcm"]["transfer_syntax"] == EXPLICIT_VR_LITTLE_ENDIAN
    assert "Traceback" not in r.stdout
    srv.wait_idle()


# ---------------------------------------------------------------- sending untouched


def test_files_go_untouched_whatever_their_name_and_preamble(make_threaded_server, tmp_path):
    srv, scp = storage_server(make_threaded_server)
    original = need_testdata("modalities", "CT_small.dcm")
    raw = original.read_bytes()
    data = dataset_bytes(original)
    (tmp_path / "sub").mkdir()
    shutil.copy(original, tmp_path / "IMAGE0001")  # no suffix
    (tmp_path / "sub" / "no_preamble").write_bytes(raw[128:])  # starts with "DICM"
    (tmp_path / "sub" / "bare.bin").write_bytes(data)  # no meta at all
    (tmp_path / "readme.txt").write_text("hello\n")
    r = pacsnode("store", HOST, str(srv.port), str(tmp_path), "-v", "--aec", "PACSNODE")
    assert r.returncode == 0, r.stdout
    assert "3 of 3 DICOM files stored" in r.stdout
    assert "Skipped: not DICOM" in r.stdout
    assert len(scp.received) == 3
    for got in scp.received:
        assert got.dataset == data
        assert got.context.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN
        assert got.association.calling_ae_title == "PACSNODE"
    srv.wait_idle()


def test_no_recursive_takes_the_top_level_only(make_threaded_server, tmp_path):
    srv, scp = storage_server(make_threaded_server)
    (tmp_path / "sub").mkdir()
    shutil.copy(need_testdata("modalities", "CT_small.dcm"), tmp_path / "a.dcm")
    shutil.copy(need_testdata("modalities", "MR_small.dcm"), tmp_path / "sub" / "b.dcm")
    r = pacsnode("store", HOST, str(srv.port), str(tmp_path), "--no-recursive")
    assert r.returncode == 0, r.stdout
    assert len(scp.received) == 1
    r = pacsnode("store", HOST, str(srv.port), str(tmp_path))
    assert r.returncode == 0, r.stdout
    assert len(scp.received) == 3
    srv.wait_idle()


def test_dicomdir_brings_in_its_files(make_threaded_server, tmp_path):
    srv, scp = storage_server(make_threaded_server)
    dicomdir = need_testdata("dicomdir", "pydicom_fileset", "DICOMDIR")
    report = tmp_path / "r.tsv"
    r = pacsnode("store", HOST, str(srv.port), str(dicomdir), "--report", str(report))
    assert r.returncode == 0, r.stdout
    rows = report_rows(report)
    assert rows[0]["result"].startswith("Skipped: DICOMDIR")
    sent = [row for row in rows[1:] if row["result"] == "Success"]
    assert len(sent) == len(rows) - 1 == 31
    assert len(scp.received) == 31
    srv.wait_idle()


def test_dicomdir_missing_file_is_a_failure(make_threaded_server, tmp_path):
    srv, scp = storage_server(make_threaded_server)
    fileset = tmp_path / "fs"
    shutil.copytree(need_testdata("dicomdir", "clunie_charset_fileset"), fileset)
    (fileset / "SCSGREEK").unlink()
    r = pacsnode("store", HOST, str(srv.port), str(fileset / "DICOMDIR"))
    assert r.returncode == 1, r.stdout
    assert "Not sent: missing file referenced by a DICOMDIR" in r.stdout
    assert "SCSGREEK" in r.stdout
    assert len(scp.received) == 10
    srv.wait_idle()


def test_more_than_128_contexts_take_several_associations(make_threaded_server, tmp_path):
    srv, scp = storage_server(make_threaded_server)
    # 80 classes x 2 contexts (not the DICOMDIR's class: a DICOMDIR is read, never sent)
    classes = [c.uid for c in storage_sop_classes() if c.uid != MEDIA_STORAGE_DIRECTORY][:80]
    for n, sop_class in enumerate(classes):
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.PatientID = "P"
        ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
        ds.save_as(tmp_path / f"{n:03d}.dcm", enforce_file_format=True)
    r = pacsnode("store", HOST, str(srv.port), str(tmp_path), "-v")
    assert r.returncode == 0, r.stdout
    assert "association 2/2" in r.stdout
    assert sorted(x.command.affected_sop_class_uid for x in scp.received) == sorted(classes)
    assert len({id(x.association) for x in scp.received}) == 2
    srv.wait_idle()


def test_big_data_set_streams_in_pdus_of_the_peer_size(make_threaded_server, tmp_path):
    # 24 MB: sent from a memory map in chunks, under flow control, in 16 kB PDUs.
    srv, scp = storage_server(make_threaded_server, network=NetworkSettings(max_pdu_length=16384))
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4096, 3072, 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = np.random.default_rng(1).integers(0, 65535, 4096 * 3072, dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    r = pacsnode("store", HOST, str(srv.port), str(path))
    assert r.returncode == 0, r.stdout
    (got,) = scp.received
    assert got.dataset == dataset_bytes(path)
    srv.wait_idle()


# ---------------------------------------------------------------- conversion


CONVERTED = [
    "CT_1.2.840.10008.1.2.4.50_jpeg_baseline.dcm",
    "CT_1.2.840.10008.1.2.4.80_jpegls_lossless.dcm",
    "CT_1.2.840.10008.1.2.4.90_j2k_lossless.dcm",
    "CT_1.2.840.10008.1.2.5_rle.dcm",
    "CT_1.2.840.10008.1.2.2_explicit_be.dcm",
    "CT_1.2.840.10008.1.2.1.99_deflated.dcm",
]


def test_refused_transfer_syntaxes_are_converted(make_threaded_server, tmp_path):
    srv, scp = storage_server(make_threaded_server, transfer_syntaxes=UNCOMPRESSED_LE)
    files = [need_testdata(*TS_DIR, name) for name in CONVERTED]
    report = tmp_path / "r.tsv"
    r = pacsnode("store", HOST, str(srv.port), *map(str, files), "--report", str(report))
    assert r.returncode == 0, r.stdout
    assert f"{len(files)} converted" in r.stdout
    rows = {Path(row["path"]).name: row for row in report_rows(report)}
    assert {row["converted"] for row in rows.values()} == {"yes"}
    assert len(scp.received) == len(files)
    with quiet_pydicom():
        for path, got in zip(files, scp.received, strict=True):
            assert got.context.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN
            received = decode(got.dataset, EXPLICIT_VR_LITTLE_ENDIAN)
            item = inspect(path)
            assert isinstance(item, DicomFile)
            sent = read_full(item)
            assert received.SOPInstanceUID == sent.SOPInstanceUID  # a new syntax, not a new instance
            assert np.array_equal(received.pixel_array, sent.pixel_array), path.name
            for elem in sent:
                # Changed by decoding: Pixel Data, Photometric Interpretation, Planar Configuration;
                # group lengths (retired, PS3.5 7.2) are not written again.
                if elem.tag not in (0x7FE00010, 0x00280004, 0x00280006) and elem.tag & 0xFFFF:
                    assert received[elem.tag].value == elem.value, (path.name, elem.tag)
    srv.wait_idle()


def test_no_convert_counts_refused_files_as_failed(make_threaded_server):
    srv, scp = storage_server(make_threaded_server, transfer_syntaxes=UNCOMPRESSED_LE)
    jpeg = need_testdata(*TS_DIR, CONVERTED[0])
    plain = need_testdata("modalities", "CT_small.dcm")
    r = pacsnode("store", HOST, str(srv.port), str(jpeg), str(plain), "--no-convert")
    assert r.returncode == 1, r.stdout
    assert "Not sent: transfer syntax refused (--no-convert)" in r.stdout
    assert len(scp.received) == 1
    srv.wait_idle()


def test_big_endian_is_sent_as_is_when_accepted(make_threaded_server):
    srv, scp = storage_server(
        make_threaded_server, transfer_syntaxes=(EXPLICIT_VR_BIG_ENDIAN, *UNCOMPRESSED_LE)
    )
    be = need_testdata(*TS_DIR, "CT_1.2.840.10008.1.2.2_explicit_be.dcm")
    r = pacsnode("store", HOST, str(srv.port), str(be))
    assert r.returncode == 0, r.stdout
    (got,) = scp.received
    assert got.context.transfer_syntax == EXPLICIT_VR_BIG_ENDIAN
    assert got.dataset == dataset_bytes(be)
    srv.wait_idle()


def test_deflated_is_sent_as_is_padded_to_even_length(make_threaded_server):
    srv, scp = storage_server(
        make_threaded_server, transfer_syntaxes=(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, *UNCOMPRESSED_LE)
    )
    deflated = need_testdata(*TS_DIR, "CT_1.2.840.10008.1.2.1.99_deflated.dcm")
    r = pacsnode("store", HOST, str(srv.port), str(deflated))
    assert r.returncode == 0, r.stdout
    (got,) = scp.received
    assert got.context.transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    data = dataset_bytes(deflated)
    # PS3.5 A.5: an odd-length deflated stream gets one trailing NUL.
    assert got.dataset == data + b"\0" * (len(data) % 2)
    srv.wait_idle()


# ---------------------------------------------------------------- a peer that aborts


class AbortingSCP(MemoryStorageSCP):
    """Aborts the association (a sink that runs out of memory) on one SOP Instance UID."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def sink_for(self, command, context, association):
        if command.affected_sop_instance_uid != self.victim:
            return None

        class Exploding:
            def write(self, fragment: bytes) -> None:
                raise MemoryError("test: refuse this data set")

            def finish(self) -> bytes | None:
                return None

            def discard(self) -> None:
                pass

        return Exploding()


def test_abort_on_one_file_costs_that_file_only(make_threaded_server, tmp_path):
    names = ["CT_small.dcm", "MR_small.dcm", "PR_gsps_small.dcm"]
    for name in names:
        shutil.copy(need_testdata("modalities", name), tmp_path / name)
    victim = str(pydicom.dcmread(tmp_path / "MR_small.dcm").SOPInstanceUID)
    srv, scp = storage_server(make_threaded_server, scp=AbortingSCP(victim))
    r = pacsnode("store", HOST, str(srv.port), str(tmp_path))
    assert r.returncode == 1, r.stdout
    assert "Failure: association lost while sending" in r.stdout
    assert "2 of 3 DICOM files stored" in r.stdout
    assert len(scp.received) == 2
    srv.wait_idle()


class SilentSCP(MemoryStorageSCP):
    """Never answers the C-STORE of one SOP Instance UID."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def handle(self, request, responder):
        if request.command.affected_sop_instance_uid != self.victim:
            return super().handle(request, responder)
        return asyncio.Event().wait()  # the association's task waits until it is cancelled


def test_dimse_timeout_costs_that_file_only(make_threaded_server, tmp_path):
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(need_testdata("modalities", name), tmp_path / name)
    victim = str(pydicom.dcmread(tmp_path / "CT_small.dcm").SOPInstanceUID)
    srv, scp = storage_server(make_threaded_server, scp=SilentSCP(victim))
    r = pacsnode("store", HOST, str(srv.port), str(tmp_path), "-td", "0.5")
    assert r.returncode == 1, r.stdout
    assert "Failure: association lost while sending" in r.stdout
    assert "no response to message 1 within 0.5 s" in r.stdout
    assert "1 of 2 DICOM files stored" in r.stdout
    assert [x.command.affected_sop_instance_uid for x in scp.received] != [victim]
    assert len(scp.received) == 1
    srv.wait_idle()


# ---------------------------------------------------------------- planning (no network)


def _file(sop_class: str, ts: str, must_convert: bool = False) -> DicomFile:
    return DicomFile(Path("x"), 10, 0, ts, sop_class, "1.2.3", True, must_convert)


def test_contexts_own_syntaxes_then_uncompressed():
    jpeg = "1.2.840.10008.1.2.4.50"
    ctxs = contexts_for(CT, [jpeg, EXPLICIT_VR_LITTLE_ENDIAN])
    assert [c.transfer_syntaxes for c in ctxs] == [(jpeg,), (EXPLICIT_VR_LITTLE_ENDIAN,), UNCOMPRESSED_LE]
    both = contexts_for(CT, [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN])
    assert len(both) == 2  # both uncompressed syntaxes already have their context


def test_plans_keep_each_sop_class_in_one_association():
    classes = [f"1.2.3.{n}" for n in range(100)]
    files = [_file(c, ts) for c in classes for ts in ("1.2.840.10008.1.2.4.50", EXPLICIT_VR_LITTLE_ENDIAN)]
    plans = plan_associations(files)
    assert len(plans) == 3  # 100 classes x 3 contexts = 300 contexts
    assert all(len(p.contexts) <= MAX_CONTEXTS for p in plans)
    assert sum(len(p.files) for p in plans) == len(files)
    for plan in plans:
        assert {f.sop_class_uid for f in plan.files} == {c.abstract_syntax for c in plan.contexts}


def test_a_file_that_must_be_converted_proposes_no_context_of_its_own():
    (plan,) = plan_associations([_file(CT, "1.2.840.10008.1.2.4.50", must_convert=True)])
    assert [c.transfer_syntaxes for c in plan.contexts] == [UNCOMPRESSED_LE]


# ---------------------------------------------------------------- import


def test_import_then_import_again(tmp_path):
    data = tmp_path / "data"
    src = tmp_path / "in"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(need_testdata("modalities", name), src / name)
    (src / "no_preamble").write_bytes(
        need_testdata(*TS_DIR, "CT_1.2.840.10008.1.2.4.50_jpeg_baseline.dcm").read_bytes()[128:]
    )
    (src / "notes.txt").write_text("x")
    r = pacsnode("import", str(src), "--data", str(data))
    assert r.returncode == 0, r.stdout
    assert "3 of 3 DICOM files in the archive" in r.stdout
    index = ArchiveIndex(load_settings(None, {"node": {"data": data}}, environ={}).index_url())
    try:
        assert index.counts()["instances"] == 3
    finally:
        index.dispose()
    r = pacsnode("import", str(src), "--data", str(data))
    assert r.returncode == 0, r.stdout
    assert "Success (already in the archive)" in r.stdout


def test_import_reports_what_it_refuses(tmp_path):
    data = tmp_path / "data"
    r = pacsnode(
        "import",
        str(need_testdata("malformed", "RTPLAN_truncated.dcm")),
        str(need_testdata("modalities", "CT_small.dcm")),
        "--data",
        str(data),
    )
    assert r.returncode == 1, r.stdout
    assert "Not imported: truncated data set" in r.stdout
    assert "1 of 2 DICOM files in the archive" in r.stdout
