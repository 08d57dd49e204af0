"""The Storage SCP (PS3.4 Annex B) against real senders: DCMTK storescu and pynetdicom storescu send
the whole shared corpus (except malformed/) into a pacsnode Node, and every file comes out of the
archive element for element, pixel data byte for byte, behind our File Meta Information.

How the senders are driven:

* DCMTK 3.6.7 ``storescu`` cannot transcode compressed data and picks the first accepted context
  of a SOP class whatever its transfer syntax, so files go in one association per transfer syntax,
  proposing only that syntax: ``-R`` plus the per-syntax flag (``-xs``, ``-xy``, ...) where DCMTK
  has one, otherwise ``-xf`` with a generated association profile naming exactly the (SOP class,
  transfer syntax) pairs of the batch.  Syntaxes DCMTK 3.6.7 does not know at all (HTJ2K, JPEG XL,
  Deflated Image Frame Compression) go through pynetdicom's AE instead: ``DCMTK_UNKNOWN``.
* pynetdicom's ``storescu -cx`` proposes one context per (SOP class, transfer syntax); its app
  reads files without ``force``, so the few files without a preamble go through its AE API.

The corpus reuses SOP Instance UIDs on purpose (the same image in several transfer syntaxes), so
the node runs with ``duplicate_policy = replace``, each association carries unique UIDs, and each
batch is checked right after it was sent.
"""

from __future__ import annotations

import asyncio
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.data.uids import NON_PATIENT_SOP_CLASSES
from pacsnode.net.client import associate, verification_context
from pacsnode.services.storage import storage_sop_classes
from pacsnode.ul.negotiation import ProposedContext
from peerkit import (
    TESTDATA,
    assert_consistent,
    need_testdata,
    need_tool,
    part10_dataset,
    pynetdicom_store,
    run_tool,
)

pytestmark = [
    pytest.mark.interop,
    # RTDOSE_rle_15frames.dcm: an Implicit VR data set in an Explicit VR file; pydicom copes, and says so.
    pytest.mark.filterwarnings("ignore:Expected implicit VR, but found explicit VR"),
]

PYNETDICOM = [sys.executable, "-m", "pynetdicom"]
# Label Map Segmentation Storage (2024): a standard Storage SOP class that pydicom 3.0.2's UID
# dictionary -- where the node takes its list from -- does not know yet; configured here.
LABEL_MAP_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.7"
# Transfer syntaxes DCMTK 3.6.7 cannot send ("DIMSE Unsupported transfer syntax").
DCMTK_UNKNOWN = {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.8.1"}
# DCMTK 3.6.7 refuses to send a SOP class it does not know unless a -xf profile names it.
DCMTK_UNKNOWN_SOP = {LABEL_MAP_SEGMENTATION}
# Files DCMTK cannot read for sending: a GDCM-converted RLE file whose data set is Implicit VR
# inside an Explicit VR syntax (DCMTK sees UN everywhere: "missing SOP class"); pynetdicom sends it.
DCMTK_UNREADABLE = {"modalities/RTDOSE_rle_15frames.dcm"}
# storescu's per-syntax proposal flags (each also proposes the uncompressed syntaxes; the node
# prefers the file's own syntax only when it is the single compressed one offered).
DCMTK_FLAGS = {
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.5": "-xr",
}
# Refused on purpose: a patient object (not a PS3.3 non-patient IOD) without Study or
# Series Instance UID, both Type 1, is answered 0xA900 (some pydicom test files lack them).
UNACCEPTED_TS: set[str] = set()
PADDING = Tag(0xFFFC, 0xFFFC)  # PS3.10 7.2 Data Set Trailing Padding: DCMTK drops it
BATCH = 40


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    needs_force: bool
    has_study: bool

    @property
    def name(self) -> str:
        return self.path.relative_to(TESTDATA).as_posix()


def corpus() -> list[CorpusFile]:
    """Every storable instance of the shared corpus outside malformed/."""
    root = need_testdata()
    known = {s.uid for s in storage_sop_classes()} | {LABEL_MAP_SEGMENTATION}
    out: list[CorpusFile] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.relative_to(root).parts[0] == "malformed":
            continue
        try:
            ds = dcmread(path, force=True, stop_before_pixels=True)
        except Exception:
            continue  # not DICOM (README, PNG, .dump)
        meta = getattr(ds, "file_meta", Dataset())
        sop_class = str(ds.get("SOPClassUID", ""))
        ts = str(meta.get("TransferSyntaxUID", ""))
        if sop_class not in known or not ts or not ds.get("SOPInstanceUID"):
            # DICOMDIR, worklist items and queries, and the files without a SOP Class or
            # SOP Instance UID (two charset samples, the preamble-less JPEG-LS SC_rgb_jpegls_ilv*).
            continue
        try:
            dcmread(path, stop_before_pixels=True)
            needs_force = False
        except InvalidDicomError:
            needs_force = True
        has_study = bool(ds.get("StudyInstanceUID"))
        out.append(CorpusFile(path, sop_class, str(ds.SOPInstanceUID), ts, needs_force, has_study))
    assert len(out) >= 150, f"only {len(out)} storable files found under {root}"
    return out


def unique_batches(files: list[CorpusFile], size: int = BATCH) -> Iterator[list[CorpusFile]]:
    """Split into batches whose SOP Instance UIDs are unique (greedy, order kept)."""
    pending = list(files)
    while pending:
        batch: list[CorpusFile] = []
        uids: set[str] = set()
        rest: list[CorpusFile] = []
        for f in pending:
            if f.sop_instance in uids or len(batch) >= size:
                rest.append(f)
            else:
                batch.append(f)
                uids.add(f.sop_instance)
        yield batch
        pending = rest


# ---------------------------------------------------------------- comparing data sets


STRING_VRS = {
    "AE",
    "AS",
    "CS",
    "DA",
    "DS",
    "DT",
    "IS",
    "LO",
    "LT",
    "PN",
    "SH",
    "ST",
    "TM",
    "UC",
    "UI",
    "UR",
    "UT",
}
TEXT_VRS = {"SH", "LO", "ST", "LT", "UT", "PN", "UC"}
PIXEL_DATA = Tag(0x7FE0, 0x0010)


def _vr(elem: Any) -> str | None:
    """The VR of an element as read, or from the dictionary for Implicit VR (None: unknown)."""
    if isinstance(elem, RawDataElement) and elem.VR is None:
        try:
            return str(dictionary_VR(elem.tag))
        except KeyError:
            return None
    return str(elem.VR) if elem.VR is not None else None


def _normalised(value: Any, vr: str | None, dcmtk: bool) -> Any:
    # DCMTK parses what it sends and writes string values without trailing padding
    # (then pads to even length itself): compare those modulo trailing spaces/NULs.
    if dcmtk and vr in STRING_VRS:
        if isinstance(value, bytes):
            return value.rstrip(b" \0")
        if isinstance(value, str):
            return value.rstrip(" \0")
    if dcmtk and isinstance(value, bytes) and len(value) % 2:
        return value + b"\0"  # DCMTK pads an odd-length value (e.g. 8-bit Pixel Data) to even
    return value


def diff_datasets(sent: Dataset, stored: Dataset, *, dcmtk: bool, where: str = "") -> list[str]:
    """Differences element by element: raw value bytes, recursing into sequence items.

    Ignores the File Meta Information (group 0002, ours), Data Set Trailing Padding
    (FFFC,FFFC) and the retired group lengths (gggg,0000), which DCMTK recalculates and
    pydicom (so pynetdicom) drops when encoding; when DCMTK sent the file, also trailing
    padding of string values and the pad byte it adds to odd-length values.
    """

    def wanted(tag: Tag) -> bool:
        return tag.group != 0x0002 and tag != PADDING and tag.element != 0

    problems: list[str] = []
    # Tags only: iterating a Dataset itself would decode every element.
    tags_a = {t for t in list(sent.keys()) if wanted(t)}
    tags_b = {t for t in list(stored.keys()) if wanted(t)}
    for tag in sorted(tags_a ^ tags_b):
        problems.append(f"{where}{tag}: only in {'sent' if tag in tags_a else 'stored'}")
    for tag in sorted(tags_a & tags_b):
        a, b = sent.get_item(tag), stored.get_item(tag)
        vr = _vr(a)
        if vr == "SQ" or _vr(b) == "SQ":
            seq_a, seq_b = sent[tag].value, stored[tag].value
            if len(seq_a) != len(seq_b):
                problems.append(f"{where}{tag}: {len(seq_a)} items sent, {len(seq_b)} stored")
                continue
            for i, (item_a, item_b) in enumerate(zip(seq_a, seq_b, strict=True)):
                problems += diff_datasets(item_a, item_b, dcmtk=dcmtk, where=f"{where}{tag}[{i}].")
            continue
        if isinstance(a, RawDataElement) and isinstance(b, RawDataElement):
            va, vb = a.value, b.value  # the bytes as encoded
        else:  # pydicom already decoded one of them while reading (e.g. Pixel Representation)
            va, vb = sent[tag].value, stored[tag].value
        if _normalised(va, vr, dcmtk) != _normalised(vb, vr, dcmtk):
            problems.append(f"{where}{tag}: value differs ({str(va)[:40]!r} vs {str(vb)[:40]!r})")
    return problems


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def expected_instance_keys(ds: Dataset) -> dict[str, Any]:
    """The instance-level index keys of a data set, as pydicom reads them (an oracle for the
    node's own header reader)."""
    charset = ds.get("SpecificCharacterSet")
    charset_text = "\\".join(charset) if isinstance(charset, list | MultiValue) else str(charset or "")
    return {
        "sop_class_uid": str(ds.SOPClassUID),
        "instance_number": _int_or_none(ds, "InstanceNumber"),
        "rows": _int_or_none(ds, "Rows"),
        "columns": _int_or_none(ds, "Columns"),
        "number_of_frames": _int_or_none(ds, "NumberOfFrames"),
        "specific_character_set": charset_text.strip(),
        # DA as YYYYMMDD, also where the file has the ACR-NEMA form YYYY.MM.DD (PS3.5 6.2).
        "content_date": str(ds.get("ContentDate", "") or "").replace(".", ""),
        "content_time": str(ds.get("ContentTime", "") or ""),
    }


def patient_name_of(node: Any, row: dict[str, Any]) -> str:
    from sqlalchemy import select

    from pacsnode.archive.schema import patients, series, studies

    query = (
        select(patients.c.patient_name)
        .join(studies, studies.c.patient_fk == patients.c.id)
        .join(series, series.c.study_fk == studies.c.id)
        .where(series.c.id == row["series_fk"])
    )
    with node.index.engine.connect() as conn:
        return str(conn.execute(query).scalar_one())


def check_stored(
    node: Any, f: CorpusFile, source_ae: str, *, dcmtk: bool, stats: dict[str, int]
) -> list[str]:
    """What is wrong with the archived copy of a sent file (empty: stored faithfully)."""
    row = node.index.instance(f.sop_instance)
    if row is None:
        return [f"{f.name}: not in the index"]
    stored_path = node.data / row["path"]
    if not stored_path.is_file():
        return [f"{f.name}: index row points at missing {row['path']}"]
    stored = dcmread(stored_path)
    sent = dcmread(f.path, force=True)
    problems = [f"{f.name}: {p}" for p in diff_datasets(sent, stored, dcmtk=dcmtk)]
    if is_charset_file(f):
        # The index holds text decoded with the file's Specific Character Set (PS3.5 6.1).
        name = patient_name_of(node, row)
        if name != str(sent.get("PatientName", "") or "")[:324]:
            problems.append(f"{f.name}: index patient name {name!r}, pydicom reads {sent.PatientName!r}")
        text_problems, checked = charset_problems(f, sent, stored, dcmtk=dcmtk)
        problems += text_problems
        stats["charset text elements"] = stats.get("charset text elements", 0) + checked
    meta = stored.file_meta
    expected_meta = {
        "ImplementationClassUID": IMPLEMENTATION_CLASS_UID,
        "ImplementationVersionName": IMPLEMENTATION_VERSION_NAME,
        "SourceApplicationEntityTitle": source_ae,
        "TransferSyntaxUID": f.transfer_syntax,  # the negotiated one: each batch proposes only it
        "MediaStorageSOPClassUID": f.sop_class,
        "MediaStorageSOPInstanceUID": f.sop_instance,
    }
    for keyword, value in expected_meta.items():
        if str(meta.get(keyword, "")).strip() != value:
            problems.append(f"{f.name}: meta {keyword} = {meta.get(keyword)!r}, expected {value!r}")
    if row["transfer_syntax_uid"] != f.transfer_syntax:
        problems.append(f"{f.name}: index transfer syntax {row['transfer_syntax_uid']}")
    for key, value in expected_instance_keys(sent).items():
        if key not in row and f.sop_class in NON_PATIENT_SOP_CLASSES:
            continue  # a non-patient object's row keeps no image keys
        if row[key] != value:
            problems.append(f"{f.name}: index {key} = {row[key]!r}, the file says {value!r}")
    if row["source_ae_title"] != source_ae:
        problems.append(f"{f.name}: index source AE {row['source_ae_title']!r}")
    if PIXEL_DATA in sent:
        pixels = [_normalised(ds.get_item(PIXEL_DATA).value, "OB", dcmtk) for ds in (sent, stored)]
        if pixels[0] != pixels[1]:
            problems.append(f"{f.name}: pixel data differs")
    return problems


def charset_problems(f: CorpusFile, sent: Dataset, stored: Dataset, *, dcmtk: bool) -> tuple[list[str], int]:
    """Charset files: every text element keeps its bytes (no decode and re-encode on the way)."""
    problems: list[str] = []
    checked = 0
    for tag in list(sent.keys()):
        raw = sent.get_item(tag)
        vr = _vr(raw)
        if vr in TEXT_VRS and isinstance(raw, RawDataElement):
            got = stored.get_item(tag)
            if got is None or _normalised(got.value, vr, dcmtk) != _normalised(raw.value, vr, dcmtk):
                problems.append(f"{f.name} {tag}: text bytes changed: {raw.value!r} -> {got!r}")
            checked += 1
    return problems, checked


def is_charset_file(f: CorpusFile) -> bool:
    return f.name.startswith("charsets/") or "charset" in f.name


# ---------------------------------------------------------------- senders


def _profile(path: Path, batch: list[CorpusFile]) -> None:
    """A DCMTK association profile proposing exactly the batch's (SOP class, transfer syntax) pairs."""
    syntaxes = sorted({f.transfer_syntax for f in batch})
    classes = sorted({f.sop_class for f in batch})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    n = 0
    for sop in classes:
        for i in range(len(syntaxes)):
            n += 1
            lines.append(f"PresentationContext{n} = {sop}\\TS{i}")
    lines += ["[[Profiles]]", "[Batch]", "PresentationContexts = Contexts", ""]
    path.write_text("\n".join(lines))


def dcmtk_route(f: CorpusFile) -> str:
    """How the DCMTK test sends a file: storescu -R with a flag, storescu -xf, or pynetdicom."""
    if f.transfer_syntax in DCMTK_UNKNOWN or f.name in DCMTK_UNREADABLE:
        return "pynetdicom"
    if f.sop_class in DCMTK_UNKNOWN_SOP or f.transfer_syntax not in DCMTK_FLAGS:
        return "-xf"
    return "-R"


def send_dcmtk(node: Any, batch: list[CorpusFile], route: str, workdir: Path) -> str:
    ts = batch[0].transfer_syntax
    assert all(f.transfer_syntax == ts for f in batch)
    args = [need_tool("storescu"), "-v", "-nh", "-aet", "DCMTKSCU", "-aec", node.ae_title]
    if route == "-R":
        args += ["-R", DCMTK_FLAGS[ts]]
    else:
        cfg = workdir / "storescu.cfg"
        _profile(cfg, batch)
        args += ["-xf", str(cfg), "Batch"]
    r = run_tool([*args, node.host, str(node.port), *(str(f.path) for f in batch)], timeout=120)
    return r.stdout


def send_pynetdicom_app(node: Any, batch: list[CorpusFile]) -> str:
    args = [*PYNETDICOM, "storescu", node.host, str(node.port), "-aet", "PYNETDICOM"]
    args += ["-aec", node.ae_title, "-cx", "-v", *(str(f.path) for f in batch)]
    r = run_tool(args, timeout=120)
    return r.stdout


def send_pynetdicom_ae(node: Any, batch: list[CorpusFile], calling: str) -> None:
    datasets = [dcmread(f.path, force=True) for f in batch]
    statuses = pynetdicom_store(node.host, node.port, datasets, called=node.ae_title, calling=calling)
    assert all(s.ok for s in statuses), statuses


@pytest.fixture
def corpus_node(make_storage_node):
    need_testdata("modalities")
    return make_storage_node(duplicate_policy="replace", private_sop_classes=[LABEL_MAP_SEGMENTATION])


def gap_of(f: CorpusFile) -> str | None:
    """Why the node refuses this corpus file on purpose, or None."""
    if f.transfer_syntax in UNACCEPTED_TS:
        return "transfer syntax not accepted"
    if not f.has_study and f.sop_class not in NON_PATIENT_SOP_CLASSES:
        return "non-patient object"
    return None


def check_gaps(node: Any, files: list[CorpusFile]) -> None:
    """The known gaps behave as documented: context rejected, or 0xA900 with a comment."""
    for f in files:
        gap = gap_of(f)
        if gap == "transfer syntax not accepted":
            assert not context_accepted(node, f.sop_class, f.transfer_syntax), f.name
        elif gap == "non-patient object":
            (status,) = pynetdicom_store(node.host, node.port, [dcmread(f.path, force=True)])
            assert status.status == 0xA900 and "StudyInstanceUID" in status.comment, (f.name, status)
        assert node.index.instance(f.sop_instance) is None or gap is None


def context_accepted(node: Any, sop_class: str, ts: str) -> bool:
    async def probe() -> bool:
        contexts = [ProposedContext(sop_class, (ts,)), verification_context()]
        async with associate(node.host, node.port, called_ae_title=node.ae_title, contexts=contexts) as assoc:
            return assoc.negotiated.context_for(sop_class, ts) is not None

    return asyncio.run(probe())


def assert_all_stored(results: dict[str, list[str]], files: list[CorpusFile]) -> None:
    failed = {name: p for name, p in results.items() if p}
    assert len(results) == len([f for f in files if gap_of(f) is None])
    assert not failed, f"{len(failed)} of {len(results)} files not stored faithfully:\n" + "\n".join(
        "\n".join(p) for p in failed.values()
    )


def test_dcmtk_storescu_sends_the_whole_corpus(corpus_node, tmp_path):
    files = corpus()
    groups: dict[tuple[str, str], list[CorpusFile]] = defaultdict(list)
    for f in files:
        if gap_of(f) is None:
            groups[(dcmtk_route(f), f.transfer_syntax)].append(f)
    results: dict[str, list[str]] = {}
    stats: dict[str, int] = {}
    routes: dict[str, int] = defaultdict(int)
    for (route, _ts), group in sorted(groups.items()):
        for batch in unique_batches(group):
            routes[route] += len(batch)
            if route == "pynetdicom":
                send_pynetdicom_ae(corpus_node, batch, "DCMTKSCU")
                log = ""
            else:
                log = send_dcmtk(corpus_node, batch, route, tmp_path)
            for f in batch:
                results[f.name] = check_stored(
                    corpus_node, f, "DCMTKSCU", dcmtk=route != "pynetdicom", stats=stats
                )
                if results[f.name] and log:
                    results[f.name].append(log[-3000:])
    assert_all_stored(results, files)
    assert routes["-R"] > 120, routes  # most of the corpus goes through storescu -R
    assert stats["charset text elements"] > 100, stats
    check_gaps(corpus_node, files)
    assert_consistent(corpus_node.data, corpus_node.index)


def test_pynetdicom_storescu_sends_the_whole_corpus(corpus_node):
    files = corpus()
    results: dict[str, list[str]] = {}
    stats: dict[str, int] = {}
    for batch in unique_batches([f for f in files if gap_of(f) is None]):
        log = send_pynetdicom_app(corpus_node, [f for f in batch if not f.needs_force])
        forced = [f for f in batch if f.needs_force]
        if forced:
            # pynetdicom's app reads without force: preamble-less files go through its AE API.
            send_pynetdicom_ae(corpus_node, forced, "PYNETDICOM")
        for f in batch:
            results[f.name] = check_stored(corpus_node, f, "PYNETDICOM", dcmtk=False, stats=stats)
            if results[f.name]:
                results[f.name].append(log[-3000:])
    assert_all_stored(results, files)
    assert stats["charset text elements"] > 100, stats
    check_gaps(corpus_node, files)
    assert_consistent(corpus_node.data, corpus_node.index)


def test_non_patient_objects_are_stored_outside_the_hierarchy(corpus_node):
    palettes = [f for f in corpus() if f.sop_class in NON_PATIENT_SOP_CLASSES]
    assert palettes  # Color Palette Storage is in the corpus
    for f in palettes:
        (status,) = pynetdicom_store(corpus_node.host, corpus_node.port, [dcmread(f.path, force=True)])
        assert status.ok, (f.name, status)
        row = corpus_node.index.instance(f.sop_instance)
        assert row is not None and "series_fk" not in row
        assert part10_dataset(corpus_node.data / row["path"])[1] == f.sop_instance
    assert_consistent(corpus_node.data, corpus_node.index)
