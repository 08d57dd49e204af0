"""`pacsnode store` (and `import`) of the whole shared corpus into DCMTK storescp, Orthanc and pacsnode.

Each receiver's stored files are read back and compared with what was sent, element by
element (pydicom; File Meta Information, group lengths and Data Set Trailing Padding
aside); Pixel Data byte for byte, or, for a file the peer made us convert, as decoded
arrays.  The CLI's ``--report`` says which file went how.
"""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from pacsnode.archive.index import ArchiveIndex
from pacsnode.cli.files import DicomFile, inspect, quiet_pydicom, read_full
from pacsnode.config.settings import Settings, load_settings
from pacsnode.net.node import Node
from peerkit import (
    HOST,
    PACSNODE,
    TESTDATA,
    WAIT,
    free_port_all_interfaces,
    need_testdata,
    need_tool,
    new_loop,
    orthanc_peer,
    run_tool,
    running,
    wait_for_port,
)

pytestmark = pytest.mark.interop

PADDING = 0xFFFCFFFC  # PS3.10 7.2 Data Set Trailing Padding: not part of the instance
PIXEL_DATA = 0x7FE00010
# What decoding legitimately changes besides Pixel Data (pydicom's Dataset.decompress).
CHANGED_BY_DECODING = {0x00280004, 0x00280006}

# Files no peer gets: pacsnode says why, per file, and goes on (exit code 1).
NOT_SENDABLE = {
    "malformed/MR_3GB_bulkdata_truncated.dcm": "Not sent: truncated data set",
    "malformed/MR_j2k_pixeldata_too_short.dcm": "Not sent: truncated data set",
    "malformed/MR_truncated_pixeldata.dcm": "Not sent: truncated data set",
    "malformed/RTPLAN_truncated.dcm": "Not sent: truncated data set",
    "malformed/SC_jpegls_no_preamble.dcm": "Not sent: no SOP Instance UID in the data set",
    "transfer_syntaxes/SC_rgb_jpegls_ilv0.dcm": "Not sent: no SOP Instance UID in the data set",
    "transfer_syntaxes/SC_rgb_jpegls_ilv2.dcm": "Not sent: no SOP Instance UID in the data set",
    "malformed/UN_private_sequence.dcm": "Not sent: no SOP Class UID in the data set",
    "malformed/meta_missing_transfer_syntax.dcm": "Not sent: no SOP Class UID in the data set",
    "malformed/nested_private_SQ.dcm": "Not sent: no SOP Class UID in the data set",
    "malformed/no_preamble_DICM_in_data.dcm": "Not sent: no SOP Class UID in the data set",
    "malformed/private_SQ_undefined_length.dcm": "Not sent: no SOP Class UID in the data set",
    "charsets/chrSQEncoding_seq_other_charset.dcm": "Not sent: no SOP Class UID in the data set",
    "charsets/empty_charset_implicit.dcm": "Not sent: no SOP Class UID in the data set",
    # Worklist items and queries are not composite instances.
    **{f"worklist/queries/wlistqry{n}.dcm": "Not sent: no SOP Class UID in the data set" for n in range(13)},
    **{
        f"worklist/wlistdb/OFFIS/wklist{n}.wl": "Not sent: no SOP Class UID in the data set"
        for n in range(1, 11)
    },
}
# Files that need a conversion pydicom cannot do, when the peer refuses their own syntax.
UNCONVERTIBLE = {
    "transfer_syntaxes/CT_1.2.840.10008.1.2.4.53_jpeg_retired_p6_8.dcm",  # no decoder for JPEG 6/8
    "transfer_syntaxes/SEG_1.2.840.10008.1.2.8.1_deflated_image_frame.dcm",  # unknown to pydicom 3.0
    "transfer_syntaxes/US_1.2.840.10008.1.2.4.111_jpegxl_27f.dcm",  # JPEG XL: no decoder
    "malformed/US_jpegls_stray_item_tag_top_level.dcm",  # pydicom cannot read it
}


def pacsnode(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    env["COLUMNS"] = "250"
    return run_tool([PACSNODE, *args], env=env, timeout=120)


@dataclass(frozen=True)
class Row:
    """One line of `pacsnode store --report`."""

    path: Path
    result: str
    status: str
    sop_instance_uid: str
    transfer_syntax: str
    converted: bool

    @property
    def relative(self) -> str:
        return self.path.relative_to(TESTDATA).as_posix()

    @property
    def stored(self) -> bool:
        return self.status in ("0x0000",) or self.status.startswith("0xB")


def read_report(path: Path) -> list[Row]:
    with path.open(encoding="utf-8") as fh:
        return [
            Row(
                Path(r["path"]),
                r["result"],
                r["status"],
                r["sop_instance_uid"],
                r["transfer_syntax"],
                r["converted"] == "yes",
            )
            for r in csv.DictReader(fh, delimiter="\t")
        ]


def store_corpus(port: int, aec: str, report: Path) -> list[Row]:
    """`pacsnode store` of the whole corpus; checks what every peer must see the same way."""
    corpus = need_testdata()
    r = pacsnode("store", HOST, str(port), str(corpus), "--aec", aec, "--report", str(report))
    assert r.returncode == 1, r.stdout  # the corpus holds files nobody can send
    assert "Traceback" not in r.stdout
    assert "Success" in r.stdout and "Not sent: truncated data set" in r.stdout
    rows = read_report(report)
    every_file = sorted(p for p in corpus.rglob("*") if p.is_file())
    assert sorted(r.path for r in rows) == every_file  # each file reported once
    by_name = {r.relative: r for r in rows}
    for name, result in NOT_SENDABLE.items():
        assert by_name[name].result == result, name
    return rows


def unexpected_failures(rows: list[Row], peer_refusals: set[str]) -> list[str]:
    allowed = set(NOT_SENDABLE) | UNCONVERTIBLE | peer_refusals
    return [
        f"{r.relative}: {r.result}"
        for r in rows
        if not r.stored and not r.result.startswith("Skipped") and r.relative not in allowed
    ]


# ---------------------------------------------------------------- comparing


def _elements(ds: Dataset) -> dict[int, object]:
    return {
        int(e.tag): e
        for e in ds
        if e.tag != PADDING and e.tag & 0xFFFF and e.tag >> 16 != 0x0002  # group lengths are retired
    }


def differences(sent: Dataset, got: Dataset, converted: bool, where: str = "") -> list[str]:
    """Element-by-element differences; with `converted`, Pixel Data is left to the caller."""
    out: list[str] = []
    mine, theirs = _elements(sent), _elements(got)
    for tag in sorted(set(mine) | set(theirs)):
        name = f"{where}({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if converted and (tag == PIXEL_DATA or tag in CHANGED_BY_DECODING):
            continue
        a, b = mine.get(tag), theirs.get(tag)
        if a is None or b is None:
            out.append(f"{name} only {'sent' if b is None else 'received'}")
            continue
        if a.VR == "SQ" and b.VR == "SQ":  # type: ignore[attr-defined]
            items_a, items_b = a.value, b.value  # type: ignore[attr-defined]
            if len(items_a) != len(items_b):
                out.append(f"{name}: {len(items_a)} items sent, {len(items_b)} received")
                continue
            for i, (x, y) in enumerate(zip(items_a, items_b, strict=True)):
                out += differences(x, y, converted, f"{name}[{i}].")
            continue
        va, vb = a.value, b.value  # type: ignore[attr-defined]
        if converted and isinstance(va, bytes) and len(va) % 2:
            va += b"\0"  # re-encoding pads odd values (PS3.5 7.1.1)
        if va != vb:
            out.append(f"{name}: {str(va)[:40]!r} sent, {str(vb)[:40]!r} received")
    return out


def compare(row: Row, received: Path) -> list[str]:
    """How the data set stored in `received` differs from the file `row` sent."""
    item = inspect(row.path)
    assert isinstance(item, DicomFile)
    sent = read_full(item)
    got = dcmread(received)
    problems = differences(sent, got, row.converted)
    if row.converted and "PixelData" in sent:
        try:
            if not np.array_equal(sent.pixel_array, got.pixel_array):
                problems.append("decoded pixel data differ")
        except Exception as exc:
            problems.append(f"cannot decode: {exc}")
    return problems


def check_stored(rows: list[Row], files: list[Path], keeps: str) -> int:
    """Every stored file equals the file sent under its SOP Instance UID.

    `keeps`: "all" (every C-STORE makes a file, as storescp +uf), "last" (a resend
    replaces, as Orthanc with OverwriteInstances) or "first" (pacsnode's reject policy).
    """
    by_uid: dict[str, list[Row]] = {}
    for r in rows:
        if r.stored:
            by_uid.setdefault(r.sop_instance_uid, []).append(r)
    problems: list[str] = []
    seen: set[str] = set()
    with quiet_pydicom():
        unmatched = {uid: list(group) for uid, group in by_uid.items()}
        for path in files:
            uid = str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            seen.add(uid)
            candidates = unmatched.get(uid)
            if not candidates:
                problems.append(f"{path}: {uid} stored but never sent (or stored twice)")
                continue
            if keeps == "all":
                diffs = {c.relative: compare(c, path) for c in candidates}
                match = next((c for c in candidates if not diffs[c.relative]), None)
                if match is None:
                    problems.append(f"{path}: equals none of the files sent as {uid}: {diffs}")
                else:
                    candidates.remove(match)
                continue
            expected = candidates[-1] if keeps == "last" else candidates[0]
            diff = compare(expected, path)
            # An identical copy sent again is the same instance: any of them may be the one kept.
            if diff and not any(not compare(c, path) for c in candidates):
                problems.append(f"{path} ({expected.relative}): {diff[:5]}")
            unmatched[uid] = []
    if keeps == "all":
        left = [r.relative for group in unmatched.values() for r in group]
        assert not left, f"reported stored, but not found on the peer: {left}"
    else:
        assert seen == set(by_uid), f"missing on the peer: {sorted(set(by_uid) - seen)}"
    assert not problems, "\n".join(problems)
    return len(files)


# ---------------------------------------------------------------- DCMTK storescp


def test_store_corpus_to_storescp(tmp_path):
    need_tool("storescp")
    received = tmp_path / "received"
    received.mkdir()
    port = free_port_all_interfaces()
    # +xa: every transfer syntax DCMTK knows; -pm: unknown SOP classes too; +B: write the
    # data set exactly as received; +uf: a file per C-STORE, even for a UID sent twice.
    args = ["storescp", "-aet", "STORESCP", "+xa", "-pm", "+B", "+uf", "-od", str(received), str(port)]
    with running(args) as proc:
        wait_for_port(port, proc)
        rows = store_corpus(port, "STORESCP", tmp_path / "report.tsv")
    # DCMTK 3.6.7 has no Color Palette Storage context; HTJ2K and JPEG lossless
    # process 14 (4.57) it refuses, so pacsnode converts those.
    assert not unexpected_failures(rows, {"modalities/PAL_hotiron_color_palette.dcm"})
    converted = {r.relative for r in rows if r.converted}
    assert "transfer_syntaxes/SC_rgb_1.2.840.10008.1.2.4.201_htj2k_lossless.dcm" in converted
    stored = [r for r in rows if r.stored]
    assert len(stored) >= 180
    assert check_stored(rows, sorted(received.iterdir()), keeps="all") == len(stored)


# ---------------------------------------------------------------- Orthanc


@pytest.fixture
def orthanc(tmp_path) -> Iterator[tuple[int, Path]]:
    with orthanc_peer(tmp_path) as peer:
        yield peer.port, peer.folder


def test_store_corpus_to_orthanc(orthanc, tmp_path):
    port, storage = orthanc
    rows = store_corpus(port, "ORTHANC", tmp_path / "report.tsv")
    # Orthanc 1.10.1 refuses these itself: no PatientID/Study/Series UID (A700) or a data
    # set it cannot parse (C000); it has no Color Palette Storage context.
    refused_by_orthanc = {
        "modalities/PAL_hotiron_color_palette.dcm",
        "transfer_syntaxes/SC_1.2.840.10008.1.2.4.81_jpegls_near_lossless_8bit.dcm",
        "transfer_syntaxes/SC_jpegls_signed_16bit.dcm",
        "transfer_syntaxes/SC_rgb_1.2.840.10008.1.2.4.201_htj2k_lossless.dcm",
        "malformed/CT_j2k_nearly_all_VR_UN.dcm",
        "modalities/RTDOSE_rle_15frames.dcm",
    }
    assert not unexpected_failures(rows, refused_by_orthanc)
    assert sum(r.stored for r in rows) >= 175
    files = sorted(p for p in storage.rglob("*") if p.is_file() and p.suffix != ".json")
    assert check_stored(rows, files, keeps="last") == len({r.sop_instance_uid for r in rows if r.stored})


# ---------------------------------------------------------------- pacsnode itself


@pytest.fixture
def node(tmp_path) -> Iterator[tuple[int, Settings]]:
    """A pacsnode Node (archive, Storage SCP) on port 0 in a thread of its own."""
    settings = load_settings(None, {"node": {"data": tmp_path / "node", "dicom_port": 0}}, environ={})
    loop = new_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-node", daemon=True)
    thread.start()
    server = Node(settings)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(WAIT)
    try:
        yield server.server.port, settings
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(WAIT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


def indexed_files(settings: Settings) -> tuple[dict[str, int], list[Path]]:
    index = ArchiveIndex(settings.index_url())
    try:
        counts = index.counts()
        # Non-patient objects (Color Palette) are stored outside the hierarchy's table.
        counts["instances"] += counts.pop("non_patient_objects")
        return counts, [settings.node.data / p for p in index.all_paths()]
    finally:
        index.dispose()


def test_store_corpus_to_pacsnode(node, tmp_path):
    port, settings = node
    rows = store_corpus(port, "PACSNODE", tmp_path / "report.tsv")
    # pacsnode takes every transfer syntax pydicom knows, so it converts nothing pydicom
    # can decode; the corpus reuses UIDs on purpose, and a different object under a
    # stored UID is refused (duplicate_policy = reject), as is an instance without
    # Study/Series Instance UID (A900); pydicom 3.0's registry lacks Label Map Segmentation.
    duplicates = {r.relative for r in rows if r.status == "0x0111"}
    assert duplicates
    no_identifiers = {r.relative for r in rows if r.status == "0xA900"}
    refused_by_pacsnode = (
        duplicates
        | no_identifiers
        | {
            "modalities/SEG_label_map.dcm",
            "transfer_syntaxes/SEG_1.2.840.10008.1.2.8.1_deflated_image_frame.dcm",
            "transfer_syntaxes/US_1.2.840.10008.1.2.4.111_jpegxl_27f.dcm",
        }
    )
    assert not unexpected_failures(rows, refused_by_pacsnode)
    counts, files = indexed_files(settings)
    uids = {r.sop_instance_uid for r in rows if r.stored}
    assert counts["instances"] == len(uids)
    assert check_stored(rows, files, keeps="first") == len(uids)


def test_import_corpus(tmp_path):
    data = tmp_path / "data"
    report = tmp_path / "report.tsv"
    corpus = need_testdata()
    r = pacsnode("import", str(corpus), "--data", str(data), "--report", str(report))
    assert r.returncode == 1, r.stdout  # duplicates and unreadable files
    assert "Not imported: truncated data set" in r.stdout
    rows = read_report(report)
    assert sorted(r.path for r in rows) == sorted(p for p in corpus.rglob("*") if p.is_file())
    settings = load_settings(None, {"node": {"data": data}}, environ={})
    counts, files = indexed_files(settings)
    uids = {r.sop_instance_uid for r in rows if r.stored}
    assert counts["instances"] == len(uids) >= 140
    assert check_stored(rows, files, keeps="first") == len(uids)
