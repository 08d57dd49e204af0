"""The Query/Retrieve SCP (PS3.4 Annex C) against real SCUs: DCMTK findscu, movescu and getscu,
pynetdicom's apps and its AE API, with DCMTK storescp and Orthanc as C-MOVE destinations, and
Orthanc as a second Q/R SCP answering the same queries over the same files.

One node per index back end is loaded once per module (``qr``) with the shared test data's
``hierarchy/``, ``charsets/`` and both DICOMDIR file-sets (one file per SOP Instance UID), a
generated UTF-8 patient named 山田, a generated study to move to Orthanc, and a generated series
of ``BULK`` instances (for C-CANCEL in the middle of a long answer).  Every expected answer is
computed from the headers of what was stored (``QRNode.headers``), never written down by hand.
"""

from __future__ import annotations

import fnmatch
import json
import sys
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from peerkit import (
    AE_TITLE,
    HOST,
    WAIT,
    CorpusFile,
    FindResult,
    PeerSCP,
    dcmtk_find,
    free_port_all_interfaces,
    item_of,
    make_instance,
    need_tool,
    new_uid,
    orthanc_peer,
    part10_dataset,
    raw_store,
    run_tool,
    running,
    store_files,
    wait_for_port,
)
from peerkit import corpus_files as load_corpus

pytestmark = pytest.mark.interop

PYNETDICOM = [sys.executable, "-m", "pynetdicom"]
CORPUS = ("hierarchy", "charsets", "dicomdir/clunie_charset_fileset", "dicomdir/pydicom_fileset")
# Enough matches that a C-CANCEL sent on the first answer arrives long before the last one:
# measured, pynetdicom's cancel lands after ~40 of 1000 and ~100 of 300 answers.
BULK = 600
YAMADA = "山田"
IR87 = ["", "ISO 2022 IR 87"]  # PS3.3 C.12.1.1.2: the default repertoire, then JIS X 0208 by escape


# ---------------------------------------------------------------- the loaded node


@dataclass
class QRNode:
    """A node loaded with the corpus, its peers' ports, and the headers of everything stored."""

    node: Any  # peerkit.ThreadedNode
    headers: list[Dataset]
    corpus_uids: frozenset[str]  # Study/Series/SOP Instance UIDs of the files Orthanc holds too
    orthanc: PeerSCP
    storescp_port: int  # STORESCP: nothing listens until a test starts storescp there
    pystore_port: int  # PYSTORE: pynetdicom movescu's own Storage SCP
    bulk_study: str
    bulk_series: str
    to_orthanc_study: str

    @property
    def port(self) -> int:
        return int(self.node.port)

    def find(self, *keys: str | bytes, model: str = "-S") -> FindResult:
        return dcmtk_find(HOST, self.port, keys, model=model)

    def where(self, pred: Callable[[Dataset], bool], keyword: str) -> set[str]:
        """The values of ``keyword`` over the stored instances for which ``pred`` holds."""
        return {str(h.get(keyword, "")) for h in self.headers if pred(h)}

    def stored_files(self) -> dict[str, Path]:
        """SOP Instance UID -> the node's stored file."""
        from sqlalchemy import select

        from pacsnode.archive.schema import instances

        with self.node.index.engine.connect() as conn:
            rows = conn.execute(select(instances.c.sop_instance_uid, instances.c.path)).all()
        return {uid: self.node.data / path for uid, path in rows}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[CorpusFile]:
    """The shared test files, plus a generated UTF-8 patient named 山田 (stored in both SCPs)."""
    files = load_corpus(*CORPUS)
    folder = tmp_path_factory.mktemp("generated")
    ds = make_instance(
        patient_id="UTF8YAMADA", PatientName=f"{YAMADA}^花子", SpecificCharacterSet="ISO_IR 192", size=4
    )
    path = folder / "utf8_yamada.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [*files, *load_corpus_file(path)]


def load_corpus_file(path: Path) -> list[CorpusFile]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, stop_before_pixels=True)
    return [CorpusFile(path, str(ds.file_meta.TransferSyntaxUID), ds)]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, corpus: list[CorpusFile]) -> Iterator[PeerSCP]:
    """Orthanc loaded with the same files: the reference Q/R SCP, and a C-MOVE destination."""
    folder = tmp_path_factory.mktemp("orthanc")
    # Orthanc 1.10 answers C-FIND only to the modalities it knows unless told otherwise.
    with orthanc_peer(folder, DicomAlwaysAllowFind=True) as peer:
        store_files(HOST, peer.port, corpus, called=peer.ae_title)
        yield peer
        # Orthanc takes ~3.5 s to stop on SIGTERM (its WebDAV and DICOM threads poll); its
        # folders are throw-away, so it is ended at once, by its own handle.
        peer.proc.kill()
        peer.proc.wait(WAIT)


@pytest.fixture(scope="module")
def qr(make_module_storage_node: Callable[..., Any], corpus: list[CorpusFile], orthanc: PeerSCP) -> QRNode:
    storescp_port = free_port_all_interfaces()
    pystore_port = free_port_all_interfaces()
    node = make_module_storage_node(
        peers={
            "STORESCP": (HOST, storescp_port),
            "PYSTORE": (HOST, pystore_port),
            "ORTHANC": (HOST, orthanc.port),
        }
    )
    store_files(HOST, node.port, corpus)
    bulk_study, bulk_series = new_uid(), new_uid()
    bulk = [
        make_instance(study=bulk_study, series=bulk_series, patient_id="BULK", InstanceNumber=i, size=1)
        for i in range(BULK)
    ]
    to_orthanc = new_uid()
    moved = [make_instance(study=to_orthanc, patient_id="TO-ORTHANC", InstanceNumber=i) for i in range(3)]
    commands = raw_store(HOST, node.port, [item_of(ds) for ds in bulk + moved])
    assert all(c.status == 0 for c in commands)
    headers = [f.header for f in corpus] + bulk + moved
    assert len(node.index.all_paths()) == len(headers)
    shared = frozenset(
        str(f.header.get(k, ""))
        for f in corpus
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )
    return QRNode(
        node, headers, shared, orthanc, storescp_port, pystore_port, bulk_study, bulk_series, to_orthanc
    )


def _pid(h: Dataset) -> str:
    return str(h.get("PatientID", ""))


def _busiest(qr: QRNode, keyword: str, pred: Callable[[Dataset], bool] = lambda h: True) -> str:
    """The value of ``keyword`` shared by most corpus instances (ties: the smallest value)."""
    counts = Counter(
        str(h.get(keyword)) for h in qr.headers if pred(h) and _pid(h) not in ("BULK", "TO-ORTHANC")
    )
    return min(counts, key=lambda v: (-counts[v], v))


# ---------------------------------------------------------------- DCMTK findscu


def _patients_with_studies(qr: QRNode) -> set[str]:
    """The Patient IDs that own a study: PS3.4 C.6.1.1.3, a study has one patient.

    A Study Instance UID stored under two Patient IDs (hierarchy/patient_id_collision's
    2.25.123 under A and B) stays with the patient the node filed it under; a Patient ID
    whose only instances went into that study has no patient record of its own.
    """
    by_study: dict[str, set[str]] = {}
    for h in qr.headers:
        by_study.setdefault(str(h.StudyInstanceUID), set()).add(_pid(h))
    conflicts = {uid for uid, pids in by_study.items() if len(pids) > 1}
    owner = {
        uid: qr.find("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}", "PatientID").values("PatientID")
        for uid in conflicts
    }
    return {
        _pid(h)
        for h in qr.headers
        if str(h.StudyInstanceUID) not in conflicts or owner[str(h.StudyInstanceUID)] == {_pid(h)}
    }


def test_findscu_patient_root_every_level(qr: QRNode) -> None:
    # PATIENT: every Patient ID once (PS3.4 C.6.1.1.2: Patient ID is the patient level's unique key).
    r = qr.find("QueryRetrieveLevel=PATIENT", "PatientID", "PatientName", model="-P")
    assert r.status == "Success", r.output
    ids = [str(x.PatientID) for x in r.responses]
    assert sorted(ids) == sorted(_patients_with_studies(qr))
    assert {str(x.QueryRetrieveLevel) for x in r.responses} == {"PATIENT"}
    assert {str(x.RetrieveAETitle) for x in r.responses} == {AE_TITLE}

    pid = _busiest(qr, "PatientID")
    r = qr.find("QueryRetrieveLevel=PATIENT", f"PatientID={pid}", "NumberOfPatientRelatedStudies", model="-P")
    (answer,) = r.responses
    assert int(answer.NumberOfPatientRelatedStudies) == len(
        qr.where(lambda h: _pid(h) == pid, "StudyInstanceUID")
    )

    r = qr.find("QueryRetrieveLevel=STUDY", f"PatientID={pid}", "StudyInstanceUID", model="-P")
    assert r.status == "Success", r.output
    assert r.values("StudyInstanceUID") == qr.where(lambda h: _pid(h) == pid, "StudyInstanceUID")
    assert len(r.responses) == len(r.values("StudyInstanceUID"))

    study = _busiest(qr, "StudyInstanceUID", lambda h: _pid(h) == pid)
    r = qr.find(
        "QueryRetrieveLevel=SERIES",
        f"PatientID={pid}",
        f"StudyInstanceUID={study}",
        "SeriesInstanceUID",
        model="-P",
    )
    assert r.values("SeriesInstanceUID") == qr.where(
        lambda h: h.StudyInstanceUID == study, "SeriesInstanceUID"
    )
    assert len(r.values("SeriesInstanceUID")) > 1

    series = _busiest(qr, "SeriesInstanceUID", lambda h: h.StudyInstanceUID == study)
    r = qr.find(
        "QueryRetrieveLevel=IMAGE",
        f"PatientID={pid}",
        f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={series}",
        "SOPInstanceUID",
        "InstanceNumber",
        model="-P",
    )
    expected = qr.where(lambda h: h.SeriesInstanceUID == series, "SOPInstanceUID")
    assert r.values("SOPInstanceUID") == expected
    assert len(r.responses) == len(expected) > 1


def test_findscu_study_root_every_level(qr: QRNode) -> None:
    r = qr.find(
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        "PatientID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    )
    assert r.status == "Success", r.output
    studies = qr.where(lambda h: True, "StudyInstanceUID")
    assert sorted(str(x.StudyInstanceUID) for x in r.responses) == sorted(studies)
    for x in r.responses:
        mine = [h for h in qr.headers if h.StudyInstanceUID == x.StudyInstanceUID]
        # PS3.4 C.6.1.1.3 / C.6.2.1.2: computed from what the archive holds for the study.
        assert int(x.NumberOfStudyRelatedInstances) == len(mine), x.StudyInstanceUID
        assert int(x.NumberOfStudyRelatedSeries) == len({h.SeriesInstanceUID for h in mine})
        modalities = x.get("ModalitiesInStudy") or []
        modalities = [modalities] if isinstance(modalities, str) else list(modalities)
        assert set(modalities) == {str(h.Modality) for h in mine if h.get("Modality")}, x.StudyInstanceUID

    study = _busiest(qr, "StudyInstanceUID")
    r = qr.find(
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study}",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
    )
    assert r.values("SeriesInstanceUID") == qr.where(
        lambda h: h.StudyInstanceUID == study, "SeriesInstanceUID"
    )
    for x in r.responses:
        expected = qr.where(lambda h, s=x.SeriesInstanceUID: h.SeriesInstanceUID == s, "SOPInstanceUID")
        assert int(x.NumberOfSeriesRelatedInstances) == len(expected)

    series = _busiest(qr, "SeriesInstanceUID", lambda h: h.StudyInstanceUID == study)
    r = qr.find(
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={series}",
        "SOPInstanceUID",
    )
    assert r.values("SOPInstanceUID") == qr.where(lambda h: h.SeriesInstanceUID == series, "SOPInstanceUID")

    # IMAGE level under a study only (Study Root, no series key): every instance of the study.
    r = qr.find("QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}", "SOPInstanceUID", "SOPClassUID")
    assert r.values("SOPInstanceUID") == qr.where(lambda h: h.StudyInstanceUID == study, "SOPInstanceUID")
    for x in r.responses:
        (h,) = [h for h in qr.headers if h.SOPInstanceUID == x.SOPInstanceUID]
        assert x.SOPClassUID == h.SOPClassUID


def _name_matches(pattern: str, h: Dataset) -> bool:
    """PN wildcard matching as the node does it: any component group, ignoring case."""
    name = str(h.get("PatientName", "") or "")
    return any(fnmatch.fnmatchcase(group.upper(), pattern.upper()) for group in name.split("="))


@pytest.mark.parametrize("pattern", ["Doe*", "doe^p*", "D?E^*", "*^*"])
def test_findscu_person_name_wildcards(qr: QRNode, pattern: str) -> None:
    # PS3.4 C.2.2.2.4 wild cards; C.2.2.2.1: PN may match regardless of case ([query]
    # case_insensitive_names, on by default). Patients whose Patient ID the corpus gives to
    # several names (patient_id_collision/) are left out of the expectation: their name is the
    # patient's (one per Patient ID), not the file's.
    collided = {p for p, n in Counter(_pid(h) for h in qr.headers if h.get("PatientName")).items() if n > 1}
    clash = {p for p in collided if len({str(h.PatientName) for h in qr.headers if _pid(h) == p}) > 1}
    r = qr.find("QueryRetrieveLevel=STUDY", f"PatientName={pattern}", "StudyInstanceUID", "PatientID")
    assert r.status == "Success", r.output
    got = {str(x.StudyInstanceUID) for x in r.responses if str(x.PatientID) not in clash}
    expected = qr.where(lambda h: _name_matches(pattern, h) and _pid(h) not in clash, "StudyInstanceUID")
    assert expected and got == expected


def test_findscu_wildcards_on_other_text_are_case_sensitive(qr: QRNode) -> None:
    # PS3.4 C.2.2.2.1 / C.2.2.2.4: for every VR but PN, matching is case-sensitive.
    descriptions = {str(h.get("StudyDescription", "")) for h in qr.headers}
    prefix = next(d[:4] for d in sorted(descriptions) if d[:4].strip() and d[:4].lower() != d[:4])
    r = qr.find("QueryRetrieveLevel=STUDY", f"StudyDescription={prefix}*", "StudyInstanceUID")
    expected = qr.where(lambda h: str(h.get("StudyDescription", "")).startswith(prefix), "StudyInstanceUID")
    assert expected and r.values("StudyInstanceUID") == expected
    r = qr.find("QueryRetrieveLevel=STUDY", f"StudyDescription={prefix.lower()}*", "StudyInstanceUID")
    lower = qr.where(
        lambda h: str(h.get("StudyDescription", "")).startswith(prefix.lower()), "StudyInstanceUID"
    )
    assert r.values("StudyInstanceUID") == lower


@pytest.mark.parametrize("date_range", ["20010101-20031231", "-20010101", "20060101-", "20010101"])
def test_findscu_study_date_range(qr: QRNode, date_range: str) -> None:
    low, _, high = date_range.partition("-") if "-" in date_range else (date_range, "", date_range)

    def inside(h: Dataset) -> bool:
        d = str(h.get("StudyDate", "") or "")
        # PS3.4 C.2.2.2.5.1: "occurrences of dates" -- an empty date is none, whatever the bounds.
        return bool(d) and (not low or d >= low) and (not high or d <= high)

    # (The key is returned too: findscu would let a second, empty "-k StudyDate" replace it.)
    r = qr.find("QueryRetrieveLevel=STUDY", f"StudyDate={date_range}", "StudyInstanceUID")
    assert r.status == "Success", r.output
    expected = qr.where(inside, "StudyInstanceUID")
    assert expected and r.values("StudyInstanceUID") == expected
    assert all(inside(x) for x in r.responses)


def test_findscu_list_of_uids(qr: QRNode) -> None:
    # PS3.4 C.2.2.2.2: a backslash-separated list of UIDs matches any of them.
    studies = sorted(qr.where(lambda h: _pid(h) not in ("BULK", "TO-ORTHANC"), "StudyInstanceUID"))
    wanted = studies[::7]
    r = qr.find("QueryRetrieveLevel=STUDY", "StudyInstanceUID=" + "\\".join(wanted), "PatientID")
    assert len(wanted) > 2 and r.values("StudyInstanceUID") == set(wanted)
    assert len(r.responses) == len(wanted)

    series = _busiest(qr, "SeriesInstanceUID")
    (study,) = qr.where(lambda h: h.SeriesInstanceUID == series, "StudyInstanceUID")
    sops = sorted(qr.where(lambda h: h.SeriesInstanceUID == series, "SOPInstanceUID"))[1::2]
    r = qr.find(
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={series}",
        "SOPInstanceUID=" + "\\".join(sops),
    )
    assert len(sops) > 1 and r.values("SOPInstanceUID") == set(sops)


# ---------------------------------------------------------------- character sets


def _yamada_patients(qr: QRNode) -> dict[str, str]:
    """Patient ID -> name for every patient with a name component group starting with 山田."""
    return {
        _pid(h): str(h.PatientName)
        for h in qr.headers
        if any(g.startswith(YAMADA) for g in str(h.get("PatientName", "") or "").split("="))
    }


def _raw_name(response: Dataset) -> bytes:
    raw = response.get_item(0x00100010).value
    assert isinstance(raw, bytes)
    return raw


def _charset(response: Dataset) -> list[str]:
    value = response.get("SpecificCharacterSet") or []
    return [value] if isinstance(value, str) else list(value)


def test_findscu_japanese_query_in_iso_2022_ir_87(qr: QRNode, corpus: list[CorpusFile]) -> None:
    query = encode_string(f"{YAMADA}*", convert_encodings(IR87))
    assert b"\x1b$B" in query  # the kanji really travel as JIS X 0208 behind an escape sequence
    r = qr.find(
        "QueryRetrieveLevel=PATIENT",
        b"SpecificCharacterSet=\\" + IR87[1].encode(),
        b"PatientName=" + query,
        "PatientID",
        model="-P",
    )
    assert r.status == "Success", r.output
    expected = _yamada_patients(qr)
    assert len(expected) >= 3 and r.values("PatientID") == set(expected)
    originals = {_pid(f.header): f.path for f in corpus}
    seen = Counter()
    for x in r.responses:
        charset, raw = _charset(x), _raw_name(x)
        name = expected[str(x.PatientID)]
        # PS3.4 C.4.1.1.3.2: the response names the character set its values are encoded in.
        assert decode_bytes(raw, convert_encodings(charset or ["ISO_IR 6"]), set()).rstrip(" ") == name
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom warns, and replaces, what a charset cannot hold
            try:
                encode_string(name, convert_encodings(IR87))
                fits = True
            except (UnicodeError, ValueError, UserWarning):
                fits = False
        if fits:
            # Answered in the request's character set, byte for byte as the file had it where it had it too.
            assert charset == IR87, (x.PatientID, charset)
            original = dcmread(originals[str(x.PatientID)], stop_before_pixels=True)
            if _charset(original) == IR87:
                assert raw.rstrip(b" ") == _raw_name(original).rstrip(b" ")
                seen["same bytes as the file"] += 1
            seen["IR 87"] += 1
        else:
            # Half-width katakana (ISO 2022 IR 13) do not fit IR 87: UTF-8 then.
            assert charset == ["ISO_IR 192"], (x.PatientID, charset)
            seen["UTF-8"] += 1
    assert len(seen) == 3, seen  # each case above was met


def test_findscu_japanese_query_in_utf8(qr: QRNode) -> None:
    r = qr.find(
        "QueryRetrieveLevel=STUDY",
        "SpecificCharacterSet=ISO_IR 192",
        f"PatientName={YAMADA}*".encode(),
        "PatientID",
        "StudyInstanceUID",
    )
    assert r.status == "Success", r.output
    expected = _yamada_patients(qr)
    assert r.values("PatientID") == set(expected)
    assert r.values("StudyInstanceUID") == qr.where(lambda h: _pid(h) in expected, "StudyInstanceUID")
    for x in r.responses:
        assert _charset(x) == ["ISO_IR 192"]
        assert _raw_name(x).rstrip(b" ") == expected[str(x.PatientID)].encode("utf-8")


def test_findscu_phonetic_and_half_width_groups(qr: QRNode) -> None:
    # A query without '=' matches any component group: the phonetic one (hiragana) here, and a
    # half-width katakana query finds the ideographic file's alphabetic group (folded to full width).
    for query in ("やまだ^たろう", "ﾔﾏﾀﾞ*"):
        r = qr.find(
            "QueryRetrieveLevel=PATIENT",
            "SpecificCharacterSet=ISO_IR 192",
            f"PatientName={query}".encode(),
            "PatientID",
            model="-P",
        )
        assert r.status == "Success", r.output

        def has(h: Dataset, query: str = query) -> bool:
            import unicodedata

            groups = str(h.get("PatientName", "") or "").split("=")
            fold = [unicodedata.normalize("NFKC", g) for g in groups]
            want = unicodedata.normalize("NFKC", query)
            return any(fnmatch.fnmatchcase(g, want) for g in fold)

        expected = qr.where(has, "PatientID")
        assert expected and r.values("PatientID") == expected, query


# ---------------------------------------------------------------- DCMTK movescu and getscu


def _received(folder: Path) -> dict[str, Path]:
    """SOP Instance UID -> received file, for every file under a folder."""
    out = {}
    for path in folder.rglob("*"):
        if path.is_file():
            out[part10_dataset(path)[1]] = path
    return out


def _assert_same_instances(qr: QRNode, received: dict[str, Path], expected: set[str]) -> int:
    """Received files are the expected instances; the data sets are the stored ones, byte for
    byte where the transfer syntax did not change, element for element where it did.
    Returns how many were compared byte for byte."""
    assert set(received) == expected
    stored = qr.stored_files()
    identical = 0
    for uid, path in received.items():
        sop_class, _, ts, data = part10_dataset(path)
        s_class, _, s_ts, s_data = part10_dataset(stored[uid])
        assert sop_class == s_class
        if ts == s_ts:
            assert data == s_data, f"{uid}: data set changed on the way"
            identical += 1
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a, b = dcmread(path), dcmread(stored[uid])
            assert {e.tag: e.value for e in a} == {e.tag: e.value for e in b}, uid
    return identical


def _storescp(folder: Path, port: int, ae_title: str = "STORESCP") -> Any:
    need_tool("storescp")
    folder.mkdir(parents=True, exist_ok=True)
    # +B: write the data set exactly as received (bit-preserving).
    return running(["storescp", "-aet", ae_title, "+B", "-od", str(folder), str(port)])


def test_movescu_study_to_storescp(qr: QRNode, tmp_path: Path) -> None:
    study = _busiest(qr, "StudyInstanceUID", lambda h: h.get("Modality") == "SEG")
    expected = qr.where(lambda h: h.StudyInstanceUID == study, "SOPInstanceUID")
    with _storescp(tmp_path / "recv", qr.storescp_port) as proc:
        wait_for_port(qr.storescp_port, proc)
        r = run_tool(
            [
                "movescu", "-v", "-aet", "MOVESCU", "-aec", AE_TITLE, "-aem", "STORESCP", "-S",
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", HOST, str(qr.port),
            ]
        )  # fmt: skip
    assert r.returncode == 0, r.stdout
    assert "Received Final Move Response (Success)" in r.stdout, r.stdout
    assert r.stdout.count("(Pending)") == len(expected)
    identical = _assert_same_instances(qr, _received(tmp_path / "recv"), expected)
    assert len(expected) >= 3 and identical >= 1


def test_movescu_patient_root_series_level(qr: QRNode, tmp_path: Path) -> None:
    series = _busiest(qr, "SeriesInstanceUID")
    (h0,) = {(_pid(h), h.StudyInstanceUID) for h in qr.headers if h.SeriesInstanceUID == series}
    expected = qr.where(lambda h: h.SeriesInstanceUID == series, "SOPInstanceUID")
    with _storescp(tmp_path / "recv", qr.storescp_port) as proc:
        wait_for_port(qr.storescp_port, proc)
        r = run_tool(
            [
                "movescu", "-v", "-aet", "MOVESCU", "-aec", AE_TITLE, "-aem", "STORESCP", "-P",
                "-k", "QueryRetrieveLevel=SERIES", "-k", f"PatientID={h0[0]}",
                "-k", f"StudyInstanceUID={h0[1]}", "-k", f"SeriesInstanceUID={series}", HOST, str(qr.port),
            ]
        )  # fmt: skip
    assert "Received Final Move Response (Success)" in r.stdout, r.stdout
    _assert_same_instances(qr, _received(tmp_path / "recv"), expected)


def test_getscu_study(qr: QRNode, tmp_path: Path) -> None:
    need_tool("getscu")
    study = _busiest(qr, "StudyInstanceUID", lambda h: str(h.get("Modality", "")) == "CT")
    expected = qr.where(lambda h: h.StudyInstanceUID == study, "SOPInstanceUID")
    out = tmp_path / "get"
    out.mkdir()
    r = run_tool(
        [
            "getscu", "-v", "+B", "-aec", AE_TITLE, "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}", "-od", str(out), HOST, str(qr.port),
        ]
    )  # fmt: skip
    assert r.returncode == 0, r.stdout
    assert "Received C-GET Response (Success)" in r.stdout, r.stdout
    assert f"Number of Completed Suboperations : {len(expected)}" in r.stdout
    assert "Number of Failed Suboperations    : 0" in r.stdout
    _assert_same_instances(qr, _received(out), expected)


# ---------------------------------------------------------------- pynetdicom's apps


def test_pynetdicom_findscu_series(qr: QRNode, tmp_path: Path) -> None:
    study = _busiest(qr, "StudyInstanceUID")
    r = run_tool(
        [
            *PYNETDICOM, "findscu", HOST, str(qr.port), "-aec", AE_TITLE, "-S", "-w",
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}", "-k", "SeriesInstanceUID=",
            "-k", "Modality=", "-k", "NumberOfSeriesRelatedInstances=",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout
    answers = [dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    assert {str(a.SeriesInstanceUID) for a in answers} == qr.where(
        lambda h: h.StudyInstanceUID == study, "SeriesInstanceUID"
    )
    for a in answers:
        mine = [h for h in qr.headers if h.SeriesInstanceUID == a.SeriesInstanceUID]
        assert a.Modality == mine[0].Modality and int(a.NumberOfSeriesRelatedInstances) == len(mine)


def test_pynetdicom_getscu_series(qr: QRNode, tmp_path: Path) -> None:
    series = _busiest(qr, "SeriesInstanceUID")
    (study,) = qr.where(lambda h: h.SeriesInstanceUID == series, "StudyInstanceUID")
    out = tmp_path / "get"
    r = run_tool(
        [
            *PYNETDICOM, "getscu", HOST, str(qr.port), "-aec", AE_TITLE, "-S", "-od", str(out),
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}",
            "-k", f"SeriesInstanceUID={series}",
        ]
    )  # fmt: skip
    assert r.returncode == 0, r.stdout
    _assert_same_instances(
        qr, _received(out), qr.where(lambda h: h.SeriesInstanceUID == series, "SOPInstanceUID")
    )


def test_pynetdicom_movescu_to_its_own_storescp(qr: QRNode, tmp_path: Path) -> None:
    study = _busiest(qr, "StudyInstanceUID", lambda h: str(h.get("Modality", "")) == "CT")
    out = tmp_path / "moved"
    r = run_tool(
        [
            *PYNETDICOM, "movescu", HOST, str(qr.port), "-aec", AE_TITLE, "-S",
            "-aet", "PYSTORE", "-aem", "PYSTORE", "--store", "--store-port", str(qr.pystore_port),
            "--store-aet", "PYSTORE", "-od", str(out),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
        ]
    )  # fmt: skip
    assert r.returncode == 0, r.stdout
    _assert_same_instances(
        qr, _received(out), qr.where(lambda h: h.StudyInstanceUID == study, "SOPInstanceUID")
    )


# ---------------------------------------------------------------- pynetdicom's AE API


def _associate(qr: QRNode, *contexts: str) -> Any:
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for ctx in contexts:
        ae.add_requested_context(ctx)
    assoc = ae.associate(HOST, qr.port, ae_title=AE_TITLE)
    assert assoc.is_established
    return assoc


def test_c_cancel_in_the_middle_of_a_c_find(qr: QRNode) -> None:
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = qr.bulk_study
    q.SeriesInstanceUID = qr.bulk_series
    q.SOPInstanceUID = ""
    model = StudyRootQueryRetrieveInformationModelFind
    assoc = _associate(qr, model)
    try:
        statuses = []
        for status, _ in assoc.send_c_find(q, model, msg_id=11):
            if not statuses:
                # PS3.7 9.3.2.3: C-CANCEL-RQ names the C-FIND by its Message ID.
                assoc.send_c_cancel(11, None, model)
            statuses.append(int(status.Status))
        # PS3.4 C.4.1.2.3: the C-FIND ends with status Cancel, before the last match.
        assert statuses[-1] == 0xFE00, hex(statuses[-1])
        assert set(statuses[:-1]) == {0xFF00}
        assert 1 <= len(statuses) - 1 < BULK
        # The association goes on: the same query, uncancelled, answers every match.
        pending = [s for s, _ in assoc.send_c_find(q, model, msg_id=12)]
        assert [int(s.Status) for s in pending].count(0xFF00) == BULK
        assert int(pending[-1].Status) == 0
    finally:
        assoc.release()


def _orthanc_instances(peer: PeerSCP, study: str) -> list[dict[str, Any]]:
    body = json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": study}, "Expand": True}).encode()
    request = urllib.request.Request(f"http://{HOST}:{peer.http_port}/tools/find", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as rsp:
        return list(json.load(rsp))


def _orthanc_file(peer: PeerSCP, orthanc_id: str) -> bytes:
    with urllib.request.urlopen(
        f"http://{HOST}:{peer.http_port}/instances/{orthanc_id}/file", timeout=10
    ) as rsp:
        return bytes(rsp.read())


def test_c_move_to_orthanc_with_counts(qr: QRNode, tmp_path: Path) -> None:
    expected = qr.where(lambda h: h.StudyInstanceUID == qr.to_orthanc_study, "SOPInstanceUID")
    before = {
        i["MainDicomTags"]["SOPInstanceUID"] for i in _orthanc_instances(qr.orthanc, qr.to_orthanc_study)
    }
    assert not before & expected
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = qr.to_orthanc_study
    model = StudyRootQueryRetrieveInformationModelMove
    assoc = _associate(qr, model)
    try:
        responses = [status for status, _ in assoc.send_c_move(q, "ORTHANC", model)]
    finally:
        assoc.release()
    *pending, final = responses
    assert int(final.Status) == 0
    # PS3.4 C.4.2.1.4 / PS3.7 9.3.4.2: each pending response counts what is left and what is done.
    assert [int(p.Status) for p in pending] == [0xFF00] * len(expected)
    assert [int(p.NumberOfRemainingSuboperations) for p in pending] == list(range(len(expected) - 1, -1, -1))
    assert [int(p.NumberOfCompletedSuboperations) for p in pending] == list(range(1, len(expected) + 1))
    assert int(final.NumberOfCompletedSuboperations) == len(expected)
    assert int(final.NumberOfFailedSuboperations) == 0 and int(final.NumberOfWarningSuboperations) == 0
    arrived = _orthanc_instances(qr.orthanc, qr.to_orthanc_study)
    assert {i["MainDicomTags"]["SOPInstanceUID"] for i in arrived} == expected
    stored = qr.stored_files()
    for item in arrived:
        path = tmp_path / f"{item['ID']}.dcm"
        path.write_bytes(_orthanc_file(qr.orthanc, item["ID"]))
        uid = item["MainDicomTags"]["SOPInstanceUID"]
        assert part10_dataset(path)[3] == part10_dataset(stored[uid])[3], uid


# ---------------------------------------------------------------- the same queries against Orthanc


def _comparison_queries(qr: QRNode) -> list[tuple[str, str, list[str], str]]:
    """(id, model, keys, UID returned) for the queries run against both SCPs."""
    shared = [h for h in qr.headers if str(h.get("SOPInstanceUID")) in qr.corpus_uids]
    pid = _busiest(qr, "PatientID")
    study = _busiest(qr, "StudyInstanceUID")
    seg_study = next(str(h.StudyInstanceUID) for h in shared if h.get("Modality") == "SEG")
    all_studies = sorted({str(h.StudyInstanceUID) for h in shared})
    return [
        ("study-by-patient-id", "-S", [f"PatientID={pid}"], "StudyInstanceUID"),
        ("study-by-name-doe", "-S", ["PatientName=Doe*"], "StudyInstanceUID"),
        ("study-by-name-lower", "-S", ["PatientName=d?e^p*"], "StudyInstanceUID"),
        ("study-by-name-any", "-S", ["PatientName=*^*"], "StudyInstanceUID"),
        ("study-by-name-h", "-S", ["PatientName=H*"], "StudyInstanceUID"),
        ("study-dates-closed", "-S", ["StudyDate=20010101-20101231"], "StudyInstanceUID"),
        ("study-dates-to", "-S", ["StudyDate=-20010101"], "StudyInstanceUID"),
        ("study-dates-from", "-S", ["StudyDate=20030101-"], "StudyInstanceUID"),
        ("study-description", "-S", ["StudyDescription=Brain*"], "StudyInstanceUID"),
        ("study-modality", "-S", ["ModalitiesInStudy=SEG"], "StudyInstanceUID"),
        ("series-by-study", "-S", [f"StudyInstanceUID={study}"], "SeriesInstanceUID"),
        ("series-of-every-study", "-S", ["StudyInstanceUID=" + "\\".join(all_studies)], "SeriesInstanceUID"),
        ("image-by-study", "-S", [f"StudyInstanceUID={seg_study}"], "SOPInstanceUID"),
        ("patients", "-P", ["PatientID"], "PatientID"),
        ("patient-A-studies", "-S", ["PatientID=A"], "StudyInstanceUID"),
        ("patient-B-studies", "-S", ["PatientID=B"], "StudyInstanceUID"),
    ]


_LEVEL = {
    "StudyInstanceUID": "STUDY",
    "SeriesInstanceUID": "SERIES",
    "SOPInstanceUID": "IMAGE",
    "PatientID": "PATIENT",
}


def test_same_answers_as_orthanc(qr: QRNode) -> None:
    """Each query against both SCPs, UIDs restricted to the files both hold (the node also holds
    generated series that Orthanc does not, and Orthanc may hold a study moved to it); every
    difference is explained below, and asserted as explained."""
    shared = [h for h in qr.headers if str(h.get("SOPInstanceUID")) in qr.corpus_uids]
    shared_ids = {_pid(h) for h in shared}
    answers: dict[str, tuple[set[str], set[str]]] = {}
    for name, model, keys, uid in _comparison_queries(qr):
        argv = [f"QueryRetrieveLevel={_LEVEL[uid]}", *keys, uid]
        mine = qr.find(*argv, model=model)
        theirs = dcmtk_find(HOST, qr.orthanc.port, argv, model=model, called=qr.orthanc.ae_title)
        assert mine.status == theirs.status == "Success", (name, mine.output, theirs.output)
        keep = shared_ids if uid == "PatientID" else qr.corpus_uids
        answers[name] = (mine.values(uid) & keep, theirs.values(uid) & keep)
        assert answers[name] != (set(), set()), name

    def studies(pred: Callable[[Dataset], bool]) -> set[str]:
        return {str(h.StudyInstanceUID) for h in shared if pred(h)}

    # 1. StudyDate=-20010101. PS3.4 C.2.2.2.5.1 (b): "- <date1>" matches "all occurrences of dates
    # prior to and including <date1>"; a study whose Study Date is empty has no such occurrence,
    # yet Orthanc (comparing strings: "" < "20010101") returns those whose files have the
    # attribute with an empty value (not those whose files lack it).
    mine, theirs = answers.pop("study-dates-to")
    empty = studies(lambda h: "StudyDate" in h and not h.StudyDate)
    assert empty and theirs - mine == empty and not mine - theirs

    # 2. PatientName=H*. patient_id_collision/ holds three files with Patient ID COMMON and names
    # HELLO, WORLD and FOO. Patient ID is the Patient level's unique key (PS3.4 C.6.1.1.2) and
    # Patient's Name an attribute of that level, so the node keeps one patient with one name (that
    # of the first file stored) and matches all its studies or none; Orthanc matches the copy of
    # the name it keeps per study.
    mine, theirs = answers.pop("study-by-name-h")
    clash = {p for p in shared_ids if len({str(h.PatientName) for h in shared if _pid(h) == p}) > 1}
    clashing = studies(lambda h: _pid(h) in clash)
    assert clash and mine - clashing == theirs - clashing
    assert theirs & clashing == studies(lambda h: _pid(h) in clash and _name_matches("H*", h))
    for pid in clash:
        (patient,) = qr.find(
            "QueryRetrieveLevel=PATIENT", f"PatientID={pid}", "PatientName", model="-P"
        ).responses
        of_patient = studies(lambda h, pid=pid: _pid(h) == pid)
        assert mine & of_patient == (
            of_patient if str(patient.PatientName).upper().startswith("H") else set()
        )

    # 3. PatientID=A / B. Issue131-a and -b carry one Study Instance UID (2.25.123) under Patient
    # IDs A and B. The Study Instance UID is the Study level's unique key (PS3.4 C.6.1.1.3,
    # C.6.2.1.1), so a study has one patient: the node files the later instance under the study
    # it already has, and its patient (whichever came first); Orthanc keys a study by Patient ID
    # and Study Instance UID and has two studies of that UID, one per patient.
    (conflict,) = {
        uid
        for uid in studies(lambda h: True)
        if len({_pid(h) for h in shared if h.StudyInstanceUID == uid}) > 1
    }
    (owner,) = qr.find("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={conflict}", "PatientID").values(
        "PatientID"
    )
    for pid in sorted({_pid(h) for h in shared if h.StudyInstanceUID == conflict}):
        mine, theirs = answers.pop(f"patient-{pid}-studies")
        assert theirs == studies(lambda h, pid=pid: _pid(h) == pid)
        assert mine == (theirs if pid == owner else theirs - {conflict})

    # 4. At the PATIENT level, the same: a Patient ID whose only instances went into another
    # patient's study has no patient record in the node; Orthanc lists it.
    mine, theirs = answers.pop("patients")
    orphans = {_pid(h) for h in shared} - _patients_with_studies(qr)
    assert orphans and theirs - mine == orphans and not mine - theirs

    unexplained = {name: (a - b, b - a) for name, (a, b) in answers.items() if a != b}
    assert not unexplained, f"unexplained differences (only the node, only Orthanc): {unexplained}"
