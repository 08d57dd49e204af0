"""DICOMweb (PS3.18) against a real client: dicomweb-client's library and its `dicomweb_client` CLI,
requests for WADO-URI and byte-level checks, Orthanc's DICOMweb plugin as a second origin server
over the same files, and the node's own DIMSE side (DCMTK findscu, getscu and storescu).

One node per index back end is loaded once per module (``web``, read-only tests) with a subset of
the shared test data picked to cover several studies, patients and modalities, uncompressed
(implicit and explicit VR) and compressed transfer syntaxes (JPEG baseline, JPEG lossless, JPEG 2000,
RLE), multi-frame images (native and RLE), an SR without pixel data, a Latin-1 name, an empty and a
missing Patient's Name.  The files go in with ``Archive.import_files`` (byte for byte, as on disk),
so every expected answer is computed from the files themselves, never written down by hand.  Tests
that store (STOW-RS, C-STORE, the CLI's ``store``) use a fresh node of their own.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from peerkit import (
    AE_TITLE,
    BIN,
    HOST,
    WAIT,
    CorpusFile,
    PeerSCP,
    dcmtk_find,
    make_instance,
    need_testdata,
    need_tool,
    new_uid,
    orthanc_peer,
    part10_dataset,
    raw_store,
    run_tool,
    store_files,
)

pytestmark = pytest.mark.interop

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
AS_STORED = (("application/dicom", "*"),)  # multipart/related; type="application/dicom"; transfer-syntax=*
TRANSCODED = ("application/dicom",)  # no transfer-syntax: PS3.18 8.7.3.5.2, Explicit VR Little Endian
CLI = str(BIN / "dicomweb_client")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

# The loaded subset (one file per SOP Instance UID; see MANIFEST.tsv for what each exercises).
FILES = (
    "hierarchy/ct_series_with_seg/IMG0001.dcm",  # CT, implicit VR; 3 series in one study
    "hierarchy/ct_series_with_seg/IMG0002.dcm",
    "hierarchy/ct_series_with_seg/IMG0003.dcm",
    "hierarchy/ct_series_with_seg/label_seg.dcm",  # SEG, 3 frames
    "hierarchy/ct_series_with_seg/legacy_enhanced_mf.dcm",  # legacy enhanced CT, 3 frames
    "hierarchy/patient_with_2_studies/study_1234.dcm",  # JPEG lossless SV1, one patient, 2 studies
    "hierarchy/patient_with_2_studies/study_2345.dcm",
    "modalities/MR_enhanced_10frames.dcm",  # 10 native frames; empty Patient's Name and Patient ID
    "transfer_syntaxes/SC_j2k_jp2_header_rct.dcm",  # JPEG 2000; no Patient's Name nor Patient ID
    "modalities/RTDOSE_rle_15frames.dcm",  # RLE, 15 frames of 32 bits
    "modalities/SR_basic_text.dcm",  # no pixel data; empty Patient ID
    "charsets/chrFrenMulti.dcm",  # ISO_IR 100: Buc^Jérôme
    "modalities/CT_small.dcm",  # a private OB element long enough to be bulk data
    "transfer_syntaxes/CT_1.2.840.10008.1.2.4.50_jpeg_baseline.dcm",  # JPEG baseline, group lengths
)
MULTI_SERIES = "hierarchy/ct_series_with_seg/IMG0001.dcm"
JPEG_LOSSLESS = "hierarchy/patient_with_2_studies/study_1234.dcm"
JPEG_BASELINE = "transfer_syntaxes/CT_1.2.840.10008.1.2.4.50_jpeg_baseline.dcm"
MR_10_FRAMES = "modalities/MR_enhanced_10frames.dcm"
RTDOSE_RLE = "modalities/RTDOSE_rle_15frames.dcm"
RTDOSE_NATIVE = "modalities/RTDOSE_15frames.dcm"  # not loaded: the same image as RTDOSE_RLE, native
CT_SMALL = "modalities/CT_small.dcm"
J2K = "transfer_syntaxes/SC_j2k_jp2_header_rct.dcm"
SR = "modalities/SR_basic_text.dcm"

# (FFFC,FFFC) Data Set Trailing Padding "has no meaning" (PS3.10 7.2) and sits after the Pixel Data.
TRAILING_PADDING = 0xFFFCFFFC


# ---------------------------------------------------------------- helpers


def _read(path: Path, *, pixels: bool = True) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, stop_before_pixels=not pixels)


def _corpus_file(path: Path) -> CorpusFile:
    ds = _read(path, pixels=False)
    return CorpusFile(path, str(ds.file_meta.TransferSyntaxUID), ds)


def _ids(h: Dataset) -> tuple[str, str, str]:
    return str(h.StudyInstanceUID), str(h.SeriesInstanceUID), str(h.SOPInstanceUID)


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


def _text(value: Any) -> str:
    """A value as text, multiple values joined by backslashes (for DICOM JSON and pydicom alike)."""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(_text(v) for v in value)
    if isinstance(value, dict):  # a PN value of DICOM JSON
        return str(value.get("Alphabetic", ""))
    return str(value)


def _json(obj: dict[str, Any], keyword: str) -> str:
    """An attribute of a DICOM JSON object as text ('' when absent or empty)."""
    return _text(obj.get(_tag(keyword), {}).get("Value"))


def _header(h: Dataset, keyword: str) -> str:
    return _text(h.get(keyword))


def _uids(objects: list[dict[str, Any]], keyword: str) -> list[str]:
    return [_json(o, keyword) for o in objects]


def _fold(text: str) -> str:
    """Case- and accent-insensitive form of a name (the node's default, [query] case_insensitive_names)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def _name_matches(pattern: str, name: str) -> bool:
    """PS3.4 C.2.2.2.4 wildcard matching of a single-group name, '*' and '?' only."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in _fold(pattern))
    return re.fullmatch(regex, _fold(name).rstrip("^ ")) is not None


def _reference(path: Path) -> Dataset:
    """A source file as the node sends it transcoded: compressed pixel data decoded by pydicom."""
    ds = _read(path)
    if UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        ds.decompress(generate_instance_uid=False)
    return ds


def _differences(
    got: Dataset, ref: Dataset, *, ignore: Callable[[int], bool] = lambda tag: False
) -> list[str]:
    """Elements of ``ref`` missing from or different in ``got``, and elements ``got`` has in excess."""
    out = []
    for elem in ref:
        if ignore(elem.tag):
            continue
        if elem.tag not in got:
            out.append(f"missing {elem.tag} {elem.keyword}")
        elif got[elem.tag].value != elem.value:
            out.append(f"differs {elem.tag} {elem.keyword}")
    out += [f"extra {e.tag} {e.keyword}" for e in got if e.tag not in ref and not ignore(e.tag)]
    return out


def _group_length(tag: int) -> bool:
    # PS3.5 7.2: Group Length (gggg,0000) is optional outside the File Meta Information, and a data
    # set re-encoded in another transfer syntax has other lengths: the node leaves them out then.
    return tag & 0xFFFF == 0


def _multipart(response: requests.Response) -> list[tuple[str, bytes]]:
    """The parts of a multipart/related body (RFC 2046 5.1.1): (Content-Type, bytes) each."""
    assert response.status_code == 200, (response.status_code, response.text[:200])
    media_type = response.headers["content-type"]
    assert media_type.startswith("multipart/related"), media_type
    m = re.search(r'boundary="?([^";]+)"?', media_type)
    assert m, media_type
    delimiter = b"\r\n--" + m.group(1).encode()
    *parts, last = (b"\r\n" + response.content).split(delimiter)
    assert last.startswith(b"--"), "no close delimiter"
    out = []
    for part in parts[1:]:  # parts[0]: the preamble
        head, sep, body = part.partition(b"\r\n\r\n")
        assert sep, "a part without a blank line after its headers"
        fields = dict(line.split(":", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ":" in line)
        content_type = next((v.strip() for k, v in fields.items() if k.lower() == "content-type"), "")
        out.append((content_type, body))
    return out


def _dataset_bytes(data: bytes, folder: Path, name: str) -> tuple[str, bytes]:
    """(transfer syntax, data set bytes) of a Part 10 file held in memory."""
    path = folder / name
    path.write_bytes(data)
    _, _, ts, body = part10_dataset(path)
    return ts, body


def _reroot(uri: str, web_root: str) -> str:
    """A URI the node built from dicomweb-client's request, put back on the node's real origin.

    dicomweb-client 0.61.2 sends ``Host: <hostname>`` without the port (web.py, ``_http_get``:
    ``headers['Host'] = self.host``), so a server that builds absolute URIs from the Host header as
    RFC 9110 7.2 says -- the node and Orthanc alike -- answers with URIs on port 80.  The path must
    be right; the origin is the client's.  (test_bulkdata checks the full URI with a correct Host.)
    """
    parts, root = urlsplit(uri), urlsplit(web_root)
    assert parts.scheme == root.scheme and parts.hostname == root.hostname, uri
    assert parts.path.startswith(root.path + "/"), uri
    return f"{root.scheme}://{root.netloc}{parts.path}"


# ---------------------------------------------------------------- the loaded node


@dataclass
class WebNode:
    """A node loaded with ``FILES``, a dicomweb-client for it, and the files by SOP Instance UID."""

    node: Any  # peerkit.ThreadedNode
    files: dict[str, CorpusFile]  # SOP Instance UID -> source file

    @property
    def url(self) -> str:
        return str(self.node.dicomweb_url)

    @property
    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=self.url)

    @property
    def headers(self) -> list[Dataset]:
        return [f.header for f in self.files.values()]

    def file(self, name: str) -> CorpusFile:
        (found,) = [f for f in self.files.values() if f.path == need_testdata(name)]
        return found

    def where(self, pred: Callable[[Dataset], bool], keyword: str) -> set[str]:
        return {_header(h, keyword) for h in self.headers if pred(h)}

    def study_of(self, name: str) -> str:
        return str(self.file(name).header.StudyInstanceUID)

    def stored_files(self) -> dict[str, Path]:
        """SOP Instance UID -> the node's stored file."""
        from sqlalchemy import select

        from pacsnode.archive.schema import instances

        with self.node.index.engine.connect() as conn:
            rows = conn.execute(select(instances.c.sop_instance_uid, instances.c.path)).all()
        return {uid: self.node.data / path for uid, path in rows}


@pytest.fixture(scope="module")
def corpus() -> list[CorpusFile]:
    files = [_corpus_file(need_testdata(name)) for name in FILES]
    assert len({f.sop_instance_uid for f in files}) == len(files)
    return files


@pytest.fixture(scope="module")
def web(make_module_storage_node: Callable[..., Any], corpus: list[CorpusFile]) -> WebNode:
    node = make_module_storage_node(http=True)
    results = node.node.archive.import_files([f.path for f in corpus])
    assert all(r.ok for r in results), results
    return WebNode(node, {f.sop_instance_uid: f for f in corpus})


@pytest.fixture(scope="module")
def orthanc_web(tmp_path_factory: pytest.TempPathFactory, corpus: list[CorpusFile]) -> Iterator[PeerSCP]:
    """Orthanc with its DICOMweb plugin, loaded with the same files through its REST API (as on disk)."""
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"Orthanc DICOMweb plugin not installed: {DICOMWEB_PLUGIN}")
    folder = tmp_path_factory.mktemp("orthanc")
    dicomweb = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado"}
    with orthanc_peer(folder, Plugins=[str(DICOMWEB_PLUGIN)], DicomWeb=dicomweb) as peer:
        for f in corpus:
            r = requests.post(
                f"http://{HOST}:{peer.http_port}/instances", data=f.path.read_bytes(), timeout=WAIT
            )
            assert r.status_code == 200 and r.json()["Status"] == "Success", (f.path, r.text)
        yield peer
        # Orthanc takes seconds to stop on SIGTERM; its folders are throw-away (as in test_qr_scp).
        peer.proc.kill()
        peer.proc.wait(WAIT)


# ---------------------------------------------------------------- QIDO-RS


def test_search_for_studies_all(web: WebNode) -> None:
    studies = web.client.search_for_studies(
        fields=["NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy"]
    )
    uids = _uids(studies, "StudyInstanceUID")
    assert sorted(uids) == sorted(web.where(lambda h: True, "StudyInstanceUID"))
    assert len(uids) >= 10
    for obj in studies:
        study = _json(obj, "StudyInstanceUID")
        mine = [h for h in web.headers if str(h.StudyInstanceUID) == study]
        assert _json(obj, "PatientID") == _header(mine[0], "PatientID"), study
        assert _json(obj, "StudyDate") == _header(mine[0], "StudyDate"), study
        assert int(_json(obj, "NumberOfStudyRelatedInstances")) == len(mine), study
        assert int(_json(obj, "NumberOfStudyRelatedSeries")) == len({h.SeriesInstanceUID for h in mine})
        assert set(_json(obj, "ModalitiesInStudy").split("\\")) - {""} == {
            _header(h, "Modality") for h in mine
        } - {""}, study
        # PS3.18 10.6.3.3.1: Retrieve URL, the study's WADO-RS resource.
        assert urlsplit(_json(obj, "RetrieveURL")).path == f"{urlsplit(web.url).path}/studies/{study}"


def _study_filter_cases(web: WebNode) -> list[tuple[str, dict[str, str], set[str]]]:
    """(id, search_filters, expected Study Instance UIDs), the expected ones from the headers."""

    def studies(pred: Callable[[Dataset], bool]) -> set[str]:
        return web.where(pred, "StudyInstanceUID")

    def dated(low: str, high: str) -> Callable[[Dataset], bool]:
        def pred(h: Dataset) -> bool:
            d = _header(h, "StudyDate")
            return bool(d) and (not low or d >= low) and (not high or d <= high)

        return pred

    two = sorted(studies(lambda h: _header(h, "PatientID") == "TEST_1"))
    cases = [
        ("patient-id", {"PatientID": "TEST_1"}, studies(lambda h: _header(h, "PatientID") == "TEST_1")),
        ("date-range", {"StudyDate": "20050101-20120101"}, studies(dated("20050101", "20120101"))),
        ("date-to", {"StudyDate": "-20050101"}, studies(dated("", "20050101"))),
        ("date-from", {"StudyDate": "20100101-"}, studies(dated("20100101", ""))),
        ("date-single", {"StudyDate": "20060101"}, studies(dated("20060101", "20060101"))),
        ("uid-list", {"StudyInstanceUID": ",".join(two)}, set(two)),
        ("modality-seg", {"ModalitiesInStudy": "SEG"}, studies(lambda h: h.get("Modality") == "SEG")),
        ("modality-ct", {"ModalitiesInStudy": "CT"}, studies(lambda h: h.get("Modality") == "CT")),
    ]
    # Names: case- and accent-insensitive wildcards (the node's default).
    for pattern in ("MISTER*", "*^CT*", "test", "buc^j?r*", "Compressed*"):
        expected = studies(lambda h, p=pattern: _name_matches(p, _header(h, "PatientName")))
        cases.append((f"name-{pattern}", {"PatientName": pattern}, expected))
    return cases


def test_search_for_studies_with_filters(web: WebNode) -> None:
    client = web.client
    for name, filters, expected in _study_filter_cases(web):
        found = _uids(client.search_for_studies(search_filters=filters), "StudyInstanceUID")
        assert sorted(found) == sorted(expected), name
        assert expected, f"{name}: the case should match something"
    # Several keys at once are ANDed (PS3.18 8.3.4.1).
    both = client.search_for_studies(search_filters={"PatientID": "TEST_1", "StudyDate": "20150101-20151231"})
    assert _uids(both, "StudyInstanceUID") == [
        web.study_of("hierarchy/patient_with_2_studies/study_2345.dcm")
    ]
    assert client.search_for_studies(search_filters={"PatientID": "NO-SUCH-PATIENT"}) == []


def test_search_paging_with_limit_and_offset(web: WebNode) -> None:
    client = web.client
    everything = sorted(_uids(client.search_for_studies(), "StudyInstanceUID"))
    offsets = range(0, len(everything) + 4, 4)  # the last page is past the end
    pages = [_uids(client.search_for_studies(limit=4, offset=o), "StudyInstanceUID") for o in offsets]
    assert [len(p) for p in pages] == [max(0, min(4, len(everything) - o)) for o in offsets]
    assert pages[-1] == [] and len(pages) >= 3
    seen = [uid for page in pages for uid in page]
    assert len(seen) == len(set(seen)), "a study came twice over the pages"
    assert sorted(seen) == everything
    assert client.search_for_studies(offset=len(everything)) == []
    # dicomweb-client's get_remaining: pages of 3 until an empty page.
    remaining = client.search_for_studies(limit=3, get_remaining=True)
    assert sorted(_uids(remaining, "StudyInstanceUID")) == everything
    assert len(client.search_for_instances(limit=2)) == 2


def test_search_includefield(web: WebNode) -> None:
    client = web.client
    plain = client.search_for_studies()
    assert all(_tag("StudyDescription") not in o for o in plain), (
        "not a default attribute (PS3.18 Table 6.7.1-2a)"
    )
    # By keyword and by tag (PS3.18 8.3.4.3).
    for field in ("StudyDescription", _tag("StudyDescription")):
        with_field = client.search_for_studies(fields=[field])
        assert len(with_field) == len(plain)
        for obj in with_field:
            assert _tag("StudyDescription") in obj
            study = _json(obj, "StudyInstanceUID")
            (expected,) = web.where(lambda h, s=study: h.StudyInstanceUID == s, "StudyDescription")
            assert _json(obj, "StudyDescription") == expected, study
    series = client.search_for_series(fields=["BodyPartExamined"])
    assert all(_tag("BodyPartExamined") in o for o in series)
    for obj in series:
        uid = _json(obj, "SeriesInstanceUID")
        assert {_json(obj, "BodyPartExamined")} == web.where(
            lambda h, u=uid: h.SeriesInstanceUID == u, "BodyPartExamined"
        )
    assert {_json(o, "BodyPartExamined") for o in series} == {"", "CHEST", "HEAD"}


def test_search_fuzzymatching(web: WebNode) -> None:
    client = web.client
    french = web.study_of("charsets/chrFrenMulti.dcm")
    mister = web.study_of(JPEG_BASELINE)
    # PS3.4 C.2.2.2.1.1 (fuzzy semantic matching of person names, the node's own rules): each word of
    # the query starts a word of the name, in any order, ignoring case and accents.
    assert _uids(
        client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "jer"}),
        "StudyInstanceUID",
    ) == [french]
    assert client.search_for_studies(fuzzymatching=False, search_filters={"PatientName": "jer"}) == []
    found = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "ct mister"})
    assert _uids(found, "StudyInstanceUID") == [mister]


def test_search_for_series(web: WebNode) -> None:
    client = web.client
    every = client.search_for_series()
    assert sorted(_uids(every, "SeriesInstanceUID")) == sorted(web.where(lambda h: True, "SeriesInstanceUID"))
    for obj in every:
        series = _json(obj, "SeriesInstanceUID")
        mine = [h for h in web.headers if h.SeriesInstanceUID == series]
        assert _json(obj, "Modality") == _header(mine[0], "Modality")
        assert int(_json(obj, "NumberOfSeriesRelatedInstances")) == len(mine)
        # PS3.18 10.6.3.3.1: without a study in the path, the study's attributes come too.
        assert _json(obj, "StudyInstanceUID") == str(mine[0].StudyInstanceUID)
        assert _json(obj, "PatientID") == _header(mine[0], "PatientID")
    segs = client.search_for_series(search_filters={"Modality": "SEG"})
    assert set(_uids(segs, "SeriesInstanceUID")) == web.where(
        lambda h: h.get("Modality") == "SEG", "SeriesInstanceUID"
    )
    assert segs

    study = web.study_of(MULTI_SERIES)
    scoped = client.search_for_series(study)
    expected = web.where(lambda h: h.StudyInstanceUID == study, "SeriesInstanceUID")
    assert sorted(_uids(scoped, "SeriesInstanceUID")) == sorted(expected)
    assert len(expected) == 3
    ct = client.search_for_series(study, search_filters={"Modality": "CT"})
    assert set(_uids(ct, "SeriesInstanceUID")) == web.where(
        lambda h: h.StudyInstanceUID == study and h.Modality == "CT", "SeriesInstanceUID"
    )
    assert len(ct) == 2
    assert client.search_for_series(new_uid()) == []


def _check_instances(web: WebNode, found: list[dict[str, Any]], pred: Callable[[Dataset], bool]) -> None:
    expected = {h.SOPInstanceUID: h for h in web.headers if pred(h)}
    assert sorted(_uids(found, "SOPInstanceUID")) == sorted(expected)
    assert expected
    for obj in found:
        h = expected[_json(obj, "SOPInstanceUID")]
        for keyword in ("SOPClassUID", "InstanceNumber", "NumberOfFrames", "Rows", "Columns"):
            assert _json(obj, keyword) == _header(h, keyword), (h.SOPInstanceUID, keyword)
        assert _json(obj, "SeriesInstanceUID") == h.SeriesInstanceUID
        assert _json(obj, "StudyInstanceUID") == h.StudyInstanceUID


def test_search_for_instances(web: WebNode) -> None:
    client = web.client
    _check_instances(web, client.search_for_instances(), lambda h: True)
    study = web.study_of(MULTI_SERIES)
    _check_instances(web, client.search_for_instances(study), lambda h: h.StudyInstanceUID == study)
    series = str(web.file(MULTI_SERIES).header.SeriesInstanceUID)
    in_series = client.search_for_instances(study, series)
    _check_instances(web, in_series, lambda h: h.SeriesInstanceUID == series)
    assert len(in_series) == 3
    seg_class = "1.2.840.10008.5.1.4.1.1.66.4"
    segs = client.search_for_instances(search_filters={"SOPClassUID": seg_class})
    _check_instances(web, segs, lambda h: h.SOPClassUID == seg_class)
    one = client.search_for_instances(study, series, search_filters={"InstanceNumber": "2"})
    _check_instances(web, one, lambda h: h.SeriesInstanceUID == series and int(h.InstanceNumber) == 2)


# ---------------------------------------------------------------- WADO-RS


def _check_transcoded(got: Dataset, source: CorpusFile) -> None:
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_VR_LE, source.path.name
    ref = _reference(source.path)
    ignore = _group_length if source.transfer_syntax != EXPLICIT_VR_LE else (lambda tag: False)
    assert _differences(got, ref, ignore=ignore) == [], source.path.name


def _check_as_stored(got: Dataset, source: CorpusFile) -> None:
    assert got.file_meta.TransferSyntaxUID == source.transfer_syntax, source.path.name
    ref = _read(source.path)
    assert _differences(got, ref) == [], source.path.name
    if "PixelData" in ref:
        assert got.PixelData == ref.PixelData, source.path.name


def test_retrieve_study_default_is_explicit_vr_little_endian(web: WebNode) -> None:
    client = web.client
    for name in (MULTI_SERIES, JPEG_LOSSLESS):
        study = web.study_of(name)
        got = client.retrieve_study(study)
        expected = web.where(lambda h, s=study: h.StudyInstanceUID == s, "SOPInstanceUID")
        assert sorted(str(ds.SOPInstanceUID) for ds in got) == sorted(expected)
        for ds in got:
            _check_transcoded(ds, web.files[ds.SOPInstanceUID])
    # As stored: the implicit VR CTs and the explicit VR SEG each in their own transfer syntax.
    got = client.retrieve_study(web.study_of(MULTI_SERIES), media_types=AS_STORED)
    assert {ds.file_meta.TransferSyntaxUID for ds in got} == {"1.2.840.10008.1.2", EXPLICIT_VR_LE}
    for ds in got:
        _check_as_stored(ds, web.files[ds.SOPInstanceUID])


def test_retrieve_series(web: WebNode) -> None:
    client = web.client
    study = web.study_of(MULTI_SERIES)
    for series in web.where(lambda h: h.StudyInstanceUID == study, "SeriesInstanceUID"):
        expected = web.where(lambda h, s=series: h.SeriesInstanceUID == s, "SOPInstanceUID")
        default = client.retrieve_series(study, series)
        as_stored = client.retrieve_series(study, series, media_types=AS_STORED)
        assert sorted(str(ds.SOPInstanceUID) for ds in default) == sorted(expected)
        assert sorted(str(ds.SOPInstanceUID) for ds in as_stored) == sorted(expected)
        for ds in default:
            _check_transcoded(ds, web.files[ds.SOPInstanceUID])
        for ds in as_stored:
            _check_as_stored(ds, web.files[ds.SOPInstanceUID])
    # A series of another study is not a series of this one (every UID of the path filters).
    other = str(web.file(JPEG_LOSSLESS).header.SeriesInstanceUID)
    with pytest.raises(requests.HTTPError) as exc:
        client.retrieve_series(study, other)
    assert exc.value.response.status_code == 404


def test_retrieve_instance_every_file(web: WebNode) -> None:
    client = web.client
    for f in web.files.values():
        ids = _ids(f.header)
        _check_transcoded(client.retrieve_instance(*ids, media_types=TRANSCODED), f)
        # dicomweb-client's own default for one instance is transfer-syntax=* (as stored).
        _check_as_stored(client.retrieve_instance(*ids), f)
        _check_as_stored(client.retrieve_instance(*ids, media_types=AS_STORED), f)
    compressed = [f for f in web.files.values() if UID(f.transfer_syntax).is_compressed]
    assert len({f.transfer_syntax for f in compressed}) == 4
    # Explicit VR Little Endian named; and a syntax the node cannot make (PS3.18 8.7.3.5: 406).
    f = web.file(JPEG_LOSSLESS)
    _check_transcoded(
        client.retrieve_instance(*_ids(f.header), media_types=(("application/dicom", EXPLICIT_VR_LE),)), f
    )
    with pytest.raises(requests.HTTPError) as exc:
        client.retrieve_instance(
            *_ids(web.file(CT_SMALL).header), media_types=(("application/dicom", "1.2.840.10008.1.2.4.90"),)
        )
    assert exc.value.response.status_code == 406


def test_retrieve_instance_as_stored_is_byte_identical(web: WebNode, tmp_path: Path) -> None:
    """The raw parts (requests, no DICOM library in between): the stored file, byte for byte, and
    its data set the source file's."""
    stored = web.stored_files()
    for f in web.files.values():
        study, series, sop = _ids(f.header)
        r = requests.get(
            f"{web.url}/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=WAIT,
        )
        ((content_type, body),) = _multipart(r)
        assert content_type == f"application/dicom; transfer-syntax={f.transfer_syntax}"
        assert body == stored[sop].read_bytes(), f.path.name
        assert _dataset_bytes(body, tmp_path, sop) == part10_dataset(f.path)[2:], f.path.name


def _bulk_handler(uris: dict[str, str]) -> Callable[[str, str, str], bytes]:
    def handler(tag: str, vr: str, uri: str) -> bytes:
        uris[tag.upper()] = uri
        return b""

    return handler


def _check_metadata(web: WebNode, obj: dict[str, Any]) -> dict[str, str]:
    """One metadata object against its source file; returns its BulkDataURIs by tag."""
    uris: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = Dataset.from_json(obj, bulk_data_uri_handler=_bulk_handler(uris))
    f = web.files[str(meta.SOPInstanceUID)]
    ref = _read(f.path)
    bulk = {int(tag, 16) for tag in uris}
    assert (
        _differences(meta, ref, ignore=lambda tag: tag in bulk or tag in (TRAILING_PADDING, 0x00083002)) == []
    )
    # PS3.18 10.4.1.2: the pixel data are referenced, never inline; and the syntax they are in.
    assert ("7FE00010" in uris) == ("PixelData" in ref), f.path.name
    assert _json(obj, "AvailableTransferSyntaxUID") == f.transfer_syntax
    study, series, sop = _ids(ref)
    for tag, uri in uris.items():
        assert urlsplit(uri).path == (
            f"{urlsplit(web.url).path}/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}"
        )
    return uris


def test_retrieve_metadata(web: WebNode) -> None:
    client = web.client
    study = web.study_of(MULTI_SERIES)
    of_study = client.retrieve_study_metadata(study)
    assert sorted(_uids(of_study, "SOPInstanceUID")) == sorted(
        web.where(lambda h: h.StudyInstanceUID == study, "SOPInstanceUID")
    )
    series = str(web.file(MULTI_SERIES).header.SeriesInstanceUID)
    of_series = client.retrieve_series_metadata(study, series)
    assert sorted(_uids(of_series, "SOPInstanceUID")) == sorted(
        web.where(lambda h: h.SeriesInstanceUID == series, "SOPInstanceUID")
    )
    for obj in [*of_study, *of_series]:
        _check_metadata(web, obj)
    bulk = set()
    for f in web.files.values():
        uris = _check_metadata(web, client.retrieve_instance_metadata(*_ids(f.header)))
        bulk |= set(uris)
    assert {"7FE00010", "60003000", "00431029"} <= bulk  # pixel data, overlay data, a private OB


def test_bulkdata(web: WebNode) -> None:
    client = web.client
    checked: set[tuple[str, str]] = set()
    for f in web.files.values():
        if UID(f.transfer_syntax).is_compressed:
            continue  # the pixel data of these are frames: test_frames_*
        ref = _read(f.path)
        uris: dict[str, str] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Dataset.from_json(
                client.retrieve_instance_metadata(*_ids(ref)), bulk_data_uri_handler=_bulk_handler(uris)
            )
        for tag, uri in uris.items():
            (value,) = client.retrieve_bulkdata(_reroot(uri, web.url))
            assert value == ref[int(tag, 16)].value, (f.path.name, tag)
            checked.add((f.path.name, tag))
    images = {f.path.name for f in web.files.values() if "Rows" in f.header}
    plain = {f.path.name for f in web.files.values() if not UID(f.transfer_syntax).is_compressed}
    assert {name for name, tag in checked if tag == "7FE00010"} == images & plain
    assert {tag for _, tag in checked} == {"7FE00010", "00431029"}
    # With a Host header that names the port (requests), the BulkDataURI is the node's own, whole.
    f = web.file(CT_SMALL)
    study, series, sop = _ids(f.header)
    r = requests.get(f"{web.url}/studies/{study}/series/{series}/instances/{sop}/metadata", timeout=WAIT)
    instance = f"{web.url}/studies/{study}/series/{series}/instances/{sop}"
    assert r.json()[0]["7FE00010"]["BulkDataURI"] == f"{instance}/bulkdata/7FE00010"
    assert r.json()[0]["00431029"]["BulkDataURI"] == f"{instance}/bulkdata/00431029"


def test_frames_native(web: WebNode) -> None:
    client = web.client
    f = web.file(MR_10_FRAMES)
    ref = _read(f.path)
    size = int(ref.Rows) * int(ref.Columns) * int(ref.BitsAllocated) // 8
    assert int(ref.NumberOfFrames) == 10 and len(ref.PixelData) == 10 * size

    def frame(n: int) -> bytes:
        return bytes(ref.PixelData[(n - 1) * size : n * size])

    got = client.retrieve_instance_frames(*_ids(ref), frame_numbers=[1, 5, 10])
    assert got == [frame(1), frame(5), frame(10)]
    got = client.retrieve_instance_frames(
        *_ids(ref), frame_numbers=[7], media_types=("application/octet-stream",)
    )
    assert got == [frame(7)]
    with pytest.raises(requests.HTTPError) as exc:
        client.retrieve_instance_frames(*_ids(ref), frame_numbers=[11])
    assert exc.value.response.status_code == 404

    # A compressed image without transfer-syntax=*: native frames (PS3.18 8.7.3.5.2), here the
    # pixels of the same dose grid stored natively in RTDOSE_15frames.dcm.
    native = _read(need_testdata(RTDOSE_NATIVE))
    rle = web.file(RTDOSE_RLE)
    assert native.SOPInstanceUID == rle.header.SOPInstanceUID
    size = len(native.PixelData) // 15
    got = client.retrieve_instance_frames(*_ids(rle.header), frame_numbers=[1, 8, 15])
    assert got == [bytes(native.PixelData[(n - 1) * size : n * size]) for n in (1, 8, 15)]


def test_frames_compressed_as_stored(web: WebNode) -> None:
    client = web.client
    rle = _read(web.file(RTDOSE_RLE).path)
    frames = list(generate_frames(rle.PixelData, number_of_frames=15))
    got = client.retrieve_instance_frames(
        *_ids(rle), frame_numbers=[1, 15], media_types=(("image/dicom-rle", "*"),)
    )
    assert got == [frames[0], frames[14]]
    got = client.retrieve_instance_frames(
        *_ids(rle), frame_numbers=[3], media_types=(("application/octet-stream", "*"),)
    )
    assert got == [frames[2]]

    # PS3.18 Table 8.7.3-2: the media type of each compressed frame.
    for name, media_type in (
        (JPEG_BASELINE, "image/jpeg"),
        (JPEG_LOSSLESS, "image/jpeg"),
        (J2K, "image/jp2"),
    ):
        ref = _read(need_testdata(name))
        (stored_frame,) = generate_frames(ref.PixelData, number_of_frames=1)
        (got_frame,) = client.retrieve_instance_frames(
            *_ids(ref), frame_numbers=[1], media_types=((media_type, "*"),)
        )
        assert got_frame == stored_frame, name
        if name == JPEG_BASELINE:  # Pillow reads baseline JPEG, not lossless
            image = Image.open(io.BytesIO(got_frame))
            assert image.format == "JPEG" and image.size == (ref.Columns, ref.Rows)
            assert _grey_levels(image) > 16


def _grey_levels(image: Image.Image) -> int:
    return len(set(image.convert("L").getdata()))


def test_rendered(web: WebNode) -> None:
    client = web.client
    ct = web.file(CT_SMALL).header
    for media_type, fmt in (("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/gif", "GIF")):
        image = Image.open(
            io.BytesIO(client.retrieve_instance_rendered(*_ids(ct), media_types=(media_type,)))
        )
        assert image.format == fmt and image.size == (ct.Columns, ct.Rows), media_type
        assert _grey_levels(image) > 16, media_type
    # quality (PS3.18 8.3.5.1.2): a lower quality is a smaller JPEG.
    small = client.retrieve_instance_rendered(*_ids(ct), media_types=("image/jpeg",), params={"quality": 10})
    large = client.retrieve_instance_rendered(*_ids(ct), media_types=("image/jpeg",), params={"quality": 95})
    assert len(small) < len(large)

    mr = web.file(MR_10_FRAMES).header
    first, last = (
        client.retrieve_instance_frames_rendered(*_ids(mr), frame_numbers=[n], media_types=("image/png",))
        for n in (1, 10)
    )
    images = [Image.open(io.BytesIO(data)) for data in (first, last)]
    assert all(i.format == "PNG" and i.size == (mr.Columns, mr.Rows) for i in images)
    assert images[0].tobytes() != images[1].tobytes(), "frame 1 and frame 10 rendered alike"
    series = Image.open(
        io.BytesIO(client.retrieve_series_rendered(*_ids(mr)[:2], media_types=("image/png",)))
    )
    assert series.format == "PNG" and series.size == (mr.Columns, mr.Rows)
    # An SR has nothing to render.
    with pytest.raises(requests.HTTPError) as exc:
        client.retrieve_instance_rendered(*_ids(web.file(SR).header), media_types=("image/jpeg",))
    assert exc.value.response.status_code == 400


# ---------------------------------------------------------------- WADO-URI


def test_wado_uri(web: WebNode) -> None:
    stored = web.stored_files()
    wado = f"{web.node.http_url}/wado"
    for f in web.files.values():
        study, series, sop = _ids(f.header)
        params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
        r = requests.get(wado, params={**params, "contentType": "application/dicom"}, timeout=WAIT)
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom", f.path.name
        assert r.content == stored[sop].read_bytes(), f.path.name
        if "Rows" not in f.header:
            # PS3.18 9.1.2.1.5: without contentType, an object that is not an image comes as DICOM.
            r = requests.get(wado, params=params, timeout=WAIT)
            assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
            continue
        r = requests.get(wado, params={**params, "contentType": "image/jpeg"}, timeout=WAIT)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", f.path.name
        image = Image.open(io.BytesIO(r.content))
        assert image.format == "JPEG" and image.size == (f.header.Columns, f.header.Rows), f.path.name
    # Explicit VR Little Endian asked for: the implicit VR file converted, the same elements.
    f = web.file(MULTI_SERIES)
    study, series, sop = _ids(f.header)
    r = requests.get(
        wado,
        params={
            "requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop,
            "contentType": "application/dicom", "transferSyntax": EXPLICIT_VR_LE,
        },
        timeout=WAIT,
    )  # fmt: skip
    _check_transcoded(dcmread(io.BytesIO(r.content)), f)
    r = requests.get(
        wado,
        params={"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": new_uid()},
        timeout=WAIT,
    )
    assert r.status_code == 404


# ---------------------------------------------------------------- the dicomweb_client CLI


def _cli(url: str, *args: str) -> str:
    """Run dicomweb_client; its standard output (its log goes to standard error)."""
    r = subprocess.run([CLI, "--url", url, *args], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_cli_search_and_retrieve(web: WebNode, tmp_path: Path) -> None:
    studies = json.loads(_cli(web.url, "search", "studies"))
    assert sorted(_uids(studies, "StudyInstanceUID")) == sorted(web.where(lambda h: True, "StudyInstanceUID"))
    study = web.study_of(MULTI_SERIES)
    series = json.loads(_cli(web.url, "search", "series", "--study", study))
    assert sorted(_uids(series, "SeriesInstanceUID")) == sorted(
        web.where(lambda h: h.StudyInstanceUID == study, "SeriesInstanceUID")
    )
    filtered = json.loads(_cli(web.url, "search", "studies", "--filter", "PatientID=TEST_1", "--limit", "1"))
    assert len(filtered) == 1 and _json(filtered[0], "PatientID") == "TEST_1"
    expected = web.where(lambda h: h.StudyInstanceUID == study, "SOPInstanceUID")
    metadata = json.loads(_cli(web.url, "retrieve", "studies", "--study", study, "metadata"))
    assert sorted(_uids(metadata, "SOPInstanceUID")) == sorted(expected)
    for obj in metadata:
        _check_metadata(web, obj)
    out = tmp_path / "out"
    out.mkdir()
    _cli(web.url, "retrieve", "studies", "--study", study, "full", "--save", "--output-dir", str(out))
    saved = sorted(out.iterdir())
    assert sorted(p.name for p in saved) == sorted(f"{uid}.dcm" for uid in expected)
    for path in saved:
        ds = _read(path)
        _check_transcoded(ds, web.files[str(ds.SOPInstanceUID)])


# ---------------------------------------------------------------- the same answers as Orthanc


def test_same_answers_as_orthanc(web: WebNode, orthanc_web: PeerSCP) -> None:
    """Study, series and instance UIDs and their key attributes, from the node and from Orthanc's
    DICOMweb plugin holding the same files; every difference is explained below, and asserted
    as explained."""
    mine = web.client
    theirs = DICOMwebClient(url=f"http://{HOST}:{orthanc_web.http_port}/dicom-web")
    study_fields = ["NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy"]
    study_keys = ("PatientID", "PatientName", "StudyDate", *study_fields)

    def studies(client: DICOMwebClient) -> dict[str, dict[str, str]]:
        out = {}
        for obj in client.search_for_studies(fields=study_fields):
            values = {k: _json(obj, k) for k in study_keys}
            values["ModalitiesInStudy"] = "\\".join(sorted(values["ModalitiesInStudy"].split("\\")))
            out[_json(obj, "StudyInstanceUID")] = values
        return out

    a, b = studies(mine), studies(theirs)
    assert sorted(a) == sorted(b) == sorted(web.where(lambda h: True, "StudyInstanceUID"))
    assert all(v["NumberOfStudyRelatedInstances"] and v["NumberOfStudyRelatedSeries"] for v in b.values())

    # Patients without a Patient ID: SR_basic_text, MR_enhanced_10frames (empty name) and
    # SC_j2k_jp2_header_rct (no name). Nothing says they are one person, so each study keeps
    # its own patient record and answers its own name, as Orthanc does.
    no_id = {uid for uid, v in b.items() if v["PatientID"] == ""}
    assert len(no_id) == 3
    assert {uid: a[uid]["PatientName"] for uid in no_id} == {uid: b[uid]["PatientName"] for uid in no_id}
    assert a == b

    for study in sorted(a):
        series_a = {_json(o, "SeriesInstanceUID"): o for o in mine.search_for_series(study)}
        series_b = {_json(o, "SeriesInstanceUID"): o for o in theirs.search_for_series(study)}
        assert sorted(series_a) == sorted(series_b), study
        for series, obj in series_a.items():
            assert _json(obj, "NumberOfSeriesRelatedInstances"), series
            for key in ("Modality", "NumberOfSeriesRelatedInstances", "SeriesNumber"):
                assert _json(obj, key) == _json(series_b[series], key), (series, key)
            inst_a = {_json(o, "SOPInstanceUID"): o for o in mine.search_for_instances(study, series)}
            inst_b = {_json(o, "SOPInstanceUID"): o for o in theirs.search_for_instances(study, series)}
            assert sorted(inst_a) == sorted(inst_b), series
            for sop, o in inst_a.items():
                assert _json(o, "SOPClassUID"), sop
                for key in ("SOPClassUID", "InstanceNumber"):
                    assert _json(o, key) == _json(inst_b[sop], key), (sop, key)


# ---------------------------------------------------------------- STOW-RS, C-STORE, and both ways round


def _save(ds: Dataset, folder: Path) -> Path:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_stow_rs_then_qido_wado_c_find_and_c_get(
    make_storage_node: Callable[..., Any], tmp_path: Path
) -> None:
    need_tool("getscu")
    node = make_storage_node(http=True)
    client = DICOMwebClient(url=node.dicomweb_url)
    study = new_uid()
    sent = [make_instance(study=study, patient_id="STOW-1", InstanceNumber=i, size=8 + i) for i in range(3)]
    # What dicomweb-client posts: each data set written by pydicom.dcmwrite.
    sources = {str(ds.SOPInstanceUID): _save(ds, tmp_path) for ds in sent}
    response = client.store_instances(sent)
    assert sorted(str(i.ReferencedSOPInstanceUID) for i in response.ReferencedSOPSequence) == sorted(sources)
    assert "FailedSOPSequence" not in response

    # QIDO-RS and WADO-RS.
    found = client.search_for_instances(search_filters={"PatientID": "STOW-1"})
    assert sorted(_uids(found, "SOPInstanceUID")) == sorted(sources)
    for ds in client.retrieve_study(study, media_types=AS_STORED):
        ref = _read(sources[str(ds.SOPInstanceUID)])
        assert _differences(ds, ref) == [] and ds.PixelData == ref.PixelData

    # DIMSE: C-FIND finds them, C-GET brings them back, each data set byte for byte as posted.
    r = dcmtk_find(
        HOST, node.port, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}", "SOPInstanceUID"]
    )
    assert r.status == "Success", r.output
    assert r.values("SOPInstanceUID") == set(sources)
    out = tmp_path / "get"
    out.mkdir()
    g = run_tool(
        [
            "getscu", "-v", "+B", "-aec", AE_TITLE, "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}", "-od", str(out), HOST, str(node.port),
        ]
    )  # fmt: skip
    assert g.returncode == 0 and "Received C-GET Response (Success)" in g.stdout, g.stdout
    received = {part10_dataset(p)[1]: p for p in out.iterdir()}
    assert sorted(received) == sorted(sources)
    for uid, path in received.items():
        assert part10_dataset(path)[2:] == part10_dataset(sources[uid])[2:], uid


def test_stow_rs_into_another_study_is_refused(make_storage_node: Callable[..., Any]) -> None:
    node = make_storage_node(http=True)
    client = DICOMwebClient(url=node.dicomweb_url)
    study = new_uid()
    stray = make_instance(patient_id="STRAY")  # a study of its own, posted to /studies/{study}
    with pytest.raises(requests.HTTPError) as exc:
        client.store_instances([stray], study_instance_uid=study)
    # PS3.18 10.5.3: none stored, 409; Failure Reason A900 (the Study Instance UID does not match).
    assert exc.value.response.status_code == 409
    answer = Dataset.from_json(exc.value.response.json())
    (failed,) = answer.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == stray.SOPInstanceUID and failed.FailureReason == 0xA900
    assert client.search_for_instances(search_filters={"PatientID": "STRAY"}) == []


def test_c_store_then_qido_and_wado_rs(make_storage_node: Callable[..., Any], tmp_path: Path) -> None:
    node = make_storage_node(http=True)
    generated = _corpus_file(_save(make_instance(patient_id="CSTORE-1", size=32), tmp_path))
    jpeg = _corpus_file(need_testdata(JPEG_BASELINE))
    # DCMTK storescu sends the Explicit VR file; the JPEG one goes with the node's own SCU, its data
    # set bytes as on disk (storescu 3.6.7 cannot send it, and pynetdicom re-encodes it without
    # its Group Length elements).
    store_files(HOST, node.port, [generated])
    (rsp,) = raw_store(HOST, node.port, [part10_dataset(jpeg.path)])
    assert rsp.status == 0
    client = DICOMwebClient(url=node.dicomweb_url)
    for f in (generated, jpeg):
        study, series, sop = _ids(f.header)
        found = client.search_for_instances(search_filters={"SOPInstanceUID": sop})
        assert _uids(found, "SOPInstanceUID") == [sop]
        assert _json(found[0], "StudyInstanceUID") == study and _json(found[0], "SeriesInstanceUID") == series
        r = requests.get(
            f"{node.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=WAIT,
        )
        ((content_type, body),) = _multipart(r)
        assert content_type == f"application/dicom; transfer-syntax={f.transfer_syntax}"
        # The data set as C-STORE carried it, byte for byte, is the one the file holds.
        assert _dataset_bytes(body, tmp_path, f"{sop}.got") == part10_dataset(f.path)[2:], f.path.name


def test_cli_store_instances(make_storage_node: Callable[..., Any], tmp_path: Path) -> None:
    node = make_storage_node(http=True)
    ds = make_instance(patient_id="CLI-STORE")
    path = _save(ds, tmp_path)
    _cli(node.dicomweb_url, "store", "instances", str(path))
    client = DICOMwebClient(url=node.dicomweb_url)
    found = client.search_for_instances(search_filters={"PatientID": "CLI-STORE"})
    assert _uids(found, "SOPInstanceUID") == [str(ds.SOPInstanceUID)]
    got = client.retrieve_instance(*_ids(ds))
    assert _differences(got, _read(path)) == [] and got.PixelData == ds.PixelData


def test_metadata_keeps_elements_after_the_pixel_data(make_storage_node: Callable[..., Any]) -> None:
    node = make_storage_node(http=True)
    client = DICOMwebClient(url=node.dicomweb_url)
    ds = make_instance(patient_id="AFTER-PIXELS")
    ds.add_new(0x7FE10010, "LO", "PACSNODE TEST")  # a private block above the Pixel Data
    ds.add_new(0x7FE11001, "LO", "after the pixels")
    client.store_instances([ds])
    stored = client.retrieve_instance(*_ids(ds), media_types=AS_STORED)
    assert stored[0x7FE11001].value == "after the pixels"  # the node kept it: only metadata loses it
    obj = client.retrieve_instance_metadata(*_ids(ds))
    assert obj.get("7FE11001", {}).get("Value") == ["after the pixels"]
    assert obj.get("7FE10010", {}).get("Value") == ["PACSNODE TEST"]
