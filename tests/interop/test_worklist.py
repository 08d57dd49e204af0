"""The Modality Worklist SCP (PS3.4 Annex K) against DCMTK: findscu and pynetdicom as SCUs, and DCMTK
wlmscpfs as the reference SCP serving the same items; worklist management over REST and the CLI.

One node per index back end (``mwl``) is loaded once per module through ``POST /api/worklist`` with
every ``.wl`` file of the shared test data's ``worklist/wlistdb``; wlmscpfs serves copies of the same
files.  Every query file of ``worklist/queries`` -- and a few derived from them whose keys match some
items (most of DCMTK's own queries ask for stations no item has) -- goes to both with DCMTK findscu
(``-W``, answers extracted with ``-X``); the two multisets of answer data sets must be equal, element
by element, sequences included, order of answers ignored.

What wlmscpfs (DCMTK 3.6.7) does that PS3.4 does not ask for, and how the comparison allows for it
(each rule only touches values the worklist files do not hold):

* W1, Specific Character Set: wlmscpfs leaves it out unless started with ``-csk`` (keep the file's);
  it is started so, and (0008,0005) is compared only where both sides return it in every answer.
* W2, a requested sequence the item does not hold is left out of the answer (wlistqry0 asks for
  Requested Procedure Code Sequence, wlistqry10 for Scheduled Protocol Code Sequence; no file has
  either), where PS3.4 C.4.1.1.3.2 has a zero-length attribute returned.  A sequence without a value
  (no item, or items of empty values) that no worklist file holds is dropped from both sides.
* W3, a Scheduled Procedure Step Sequence with an empty item (universal sequence matching, PS3.4
  C.2.2.2.6: the whole sequence is returned) is filled with wlmscpfs's own list of attributes, so its
  answers carry zero-length Scheduled Procedure Step End Date, End Time and Status that neither the
  query nor any file has.  Empty elements that neither the query names nor any file holds are dropped
  from wlmscpfs's answers (not from pacsnode's).
* W4, wlmscpfs matches only on its fixed list of keys (``WLMSCPFS_MATCHING``) and ignores the value
  of any other key, e.g. Scheduled Station Name "A2" of wlistqry2/8/9/12.  PS3.4 Table K.6-1 makes
  those keys optional ("O"), so matching on them is conformant too: for such a key wlmscpfs's answers
  are kept only where their returned value matches the key (wildcards as PS3.4 C.2.2.2.4).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from peerkit import (
    AE_TITLE,
    FINAL_FIND_RESPONSE,
    HOST,
    PACSNODE,
    TESTDATA,
    WAIT,
    FindResult,
    free_port_all_interfaces,
    need_testdata,
    need_tool,
    run_tool,
    running,
    wait_for_port,
)

pytestmark = pytest.mark.interop

WORKLIST = TESTDATA / "worklist"
WLM_AE = "WLMSCP"
SPS = 0x00400100  # Scheduled Procedure Step Sequence
CHARSET = 0x00080005
PENDING = (0xFF00, 0xFF01)
PYNETDICOM = [sys.executable, "-m", "pynetdicom"]


def _query_number(path: Path) -> int:
    digits = re.sub(r"\D", "", path.stem)
    return int(digits) if digits else -1


QUERY_FILES = sorted((WORKLIST / "queries").glob("*.dcm"), key=_query_number)

# Queries derived from DCMTK's: (base query file, keys to set; "Keyword" at the top level,
# "Sps.Keyword" inside the Scheduled Procedure Step Sequence item).  Each matches at least one item.
DERIVED: dict[str, tuple[str, dict[str, str]]] = {
    "station-multivalued": ("wlistqry6", {"Sps.ScheduledStationAETitle": "AA32"}),
    "modality-ct": ("wlistqry4", {"Sps.Modality": "CT"}),
    "station-and-station-name": (  # W4: Scheduled Station Name is no wlmscpfs matching key
        "wlistqry8",
        {"Sps.ScheduledStationAETitle": "AB45", "Sps.ScheduledStationName": "STNAB89"},
    ),
    "comments-wildcard": (
        "wlistqry12",
        {"Sps.ScheduledStationAETitle": "AB45", "Sps.ScheduledStationName": ""},
    ),
    "time-range": ("wlistqry5", {"Sps.ScheduledProcedureStepStartTime": "100000-140000"}),
    "date-range-all-keys": (
        "wlistqry7",
        {"Sps.ScheduledStationAETitle": "", "Sps.ScheduledProcedureStepStartDate": "19960101-19961231"},
    ),
    "date-open-start": (
        "wlistqry9",
        {
            "Sps.ScheduledStationAETitle": "",
            "Sps.ScheduledStationName": "",
            "Sps.ScheduledProcedureStepStartDate": "-19951231",
        },
    ),
    "name-prefix-empty-item": ("wlistqry1", {"PatientName": "VIVALDI*"}),  # W3 and a wildcard
    "name-question-mark": ("wlistqry3", {"PatientName": "HAYDN^FRANZ^JOSEP?"}),
    "patient-id-and-modality": ("wlistqry11", {"PatientID": "HF", "Sps.Modality": "CR"}),
    "accession": ("wlistqry1", {"AccessionNumber": "00007"}),
    "requested-procedure-id": ("wlistqry10", {"RequestedProcedureID": "RP454G234"}),
    "performing-physician": ("wlistqry11", {"Sps.ScheduledPerformingPhysicianName": "JOHNSON"}),
}
QUERY_NAMES = [p.stem for p in QUERY_FILES] + list(DERIVED)

# W4: DCMTK 3.6.7 WlmDataSource::IsSupportedMatchingKeyAttribute -- the keys wlmscpfs matches on.
WLMSCPFS_MATCHING = frozenset(
    {
        (0x00100010,),  # Patient's Name
        (0x00102297,),  # Responsible Person
        (0x00102298,),  # Responsible Person Role
        (0x00100020,),  # Patient ID
        (0x00100021,),  # Issuer of Patient ID
        (0x00080020,),  # Study Date
        (0x00080030,),  # Study Time
        (0x00080050,),  # Accession Number
        (0x00401001,),  # Requested Procedure ID
        (0x00080090,),  # Referring Physician's Name
        (0x00100040,),  # Patient's Sex
        (0x00321032,),  # Requesting Physician
        (0x00380010,),  # Admission ID
        (0x00401003,),  # Requested Procedure Priority
        (0x00100030,),  # Patient's Birth Date
        (SPS, 0x00400001),  # > Scheduled Station AE Title
        (SPS, 0x00400002),  # > Scheduled Procedure Step Start Date
        (SPS, 0x00400003),  # > Scheduled Procedure Step Start Time
        (SPS, 0x00080060),  # > Modality
        (SPS, 0x00400006),  # > Scheduled Performing Physician's Name
    }
)


# ---------------------------------------------------------------- answers as comparable values

Path_ = tuple[int, ...]  # a tag path: the tags of the sequences an element is nested in, then its own
Value = str | tuple["Norm", ...]
Norm = tuple[tuple[int, str, Value], ...]  # (tag, VR, value) in tag order; SQ values: their items


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, force=True)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(v) for v in value)
    return str(value).rstrip(" \0")


def normalize(ds: Dataset) -> Norm:
    """A data set as nested tuples, without group lengths and File Meta Information."""
    out: list[tuple[int, str, Value]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for elem in ds:
            tag = int(elem.tag)
            if tag & 0xFFFF == 0 or tag >> 16 == 0x0002:
                continue
            value: Value = (
                tuple(normalize(item) for item in elem.value or []) if elem.VR == "SQ" else _text(elem.value)
            )
            out.append((tag, str(elem.VR), value))
    return tuple(sorted(out, key=lambda e: e[0]))


def tag_paths(ds: Dataset, prefix: Path_ = ()) -> set[Path_]:
    """Every tag path of a data set (sequence items collapsed)."""
    out: set[Path_] = set()
    for elem in ds:
        path = (*prefix, int(elem.tag))
        out.add(path)
        if elem.VR == "SQ":
            for item in elem.value or []:
                out |= tag_paths(item, path)
    return out


def _valueless(value: Value) -> bool:
    if isinstance(value, str):
        return value == ""
    return all(_valueless(v) for item in value for _, _, v in item)


def prune(answer: Norm, drop: Callable[[Path_, str, Value], bool], prefix: Path_ = ()) -> Norm:
    """The answer without the elements ``drop`` picks (tested on every level)."""
    out: list[tuple[int, str, Value]] = []
    for tag, vr, value in answer:
        path = (*prefix, tag)
        if drop(path, vr, value):
            continue
        if not isinstance(value, str):
            value = tuple(prune(item, drop, path) for item in value)
        out.append((tag, vr, value))
    return tuple(out)


def _pattern(value: str) -> re.Pattern[str]:
    """A C-FIND key value as a regular expression (PS3.4 C.2.2.2.4: '*' any run, '?' one character)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value), re.S)


def _values_at(ds: Dataset, path: Path_) -> list[str]:
    elem = ds.get(path[0])
    if elem is None:
        return [""]
    if len(path) == 1:
        return _text(elem.value).split("\\")
    return [v for item in elem.value or [] for v in _values_at(item, path[1:])] or [""]


def _query_keys(query: Dataset, prefix: Path_ = ()) -> Iterator[tuple[Path_, str]]:
    """(tag path, value) of every non-sequence key with a value (not universal matching)."""
    for elem in query:
        path = (*prefix, int(elem.tag))
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _query_keys(item, path)
        elif _text(elem.value) not in ("", "*"):
            yield path, _text(elem.value)


def wlmscpfs_expected(reference: Sequence[Dataset], query: Dataset) -> list[Dataset]:
    """W4: wlmscpfs's answers, less those a key it does not match on would have excluded."""
    ignored = [(p, v) for p, v in _query_keys(query) if p not in WLMSCPFS_MATCHING and p[-1] != CHARSET]
    return [
        ds
        for ds in reference
        if all(any(_pattern(v).fullmatch(s) for s in _values_at(ds, p)) for p, v in ignored)
    ]


def comparable(
    ours: Sequence[Dataset], reference: Sequence[Dataset], query: Dataset, held: set[Path_]
) -> tuple[Counter[Norm], Counter[Norm]]:
    """The two answer multisets with the rules W1-W3 of the module docstring applied."""
    named = tag_paths(query)

    def w2(path: Path_, vr: str, value: Value) -> bool:
        return vr == "SQ" and path not in held and _valueless(value)

    def w3(path: Path_, vr: str, value: Value) -> bool:
        return vr != "SQ" and value == "" and path not in held and path not in named

    a = [prune(normalize(ds), w2) for ds in ours]
    b = [prune(prune(normalize(ds), w2), w3) for ds in reference]
    if not all(any(tag == CHARSET for tag, _, _ in n) for n in a + b):  # W1
        a = [tuple(e for e in n if e[0] != CHARSET) for n in a]
        b = [tuple(e for e in n if e[0] != CHARSET) for n in b]
    return Counter(a), Counter(b)


def show(n: Norm, indent: str = "  ") -> str:
    lines = []
    for tag, vr, value in n:
        if isinstance(value, str):
            lines.append(f"{indent}({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} [{value}]")
        else:
            lines.append(f"{indent}({tag >> 16:04X},{tag & 0xFFFF:04X}) SQ {len(value)} item(s)")
            lines += [show(item, indent + "    ") for item in value]
    return "\n".join(lines)


def assert_same(ours: Counter[Norm], reference: Counter[Norm], what: str) -> None:
    extra, missing = ours - reference, reference - ours
    if extra or missing:
        parts = [f"{what}: {sum(ours.values())} answers vs {sum(reference.values())}"]
        parts += [f"only pacsnode ({n}x):\n{show(a)}" for a, n in extra.items()]
        parts += [f"only the reference ({n}x):\n{show(a)}" for a, n in missing.items()]
        raise AssertionError("\n".join(parts))


# ---------------------------------------------------------------- SCUs


def findscu(port: int, called: str, query: Path, out: Path) -> FindResult:
    """DCMTK findscu -W with a query file; the answers extracted (-X) and read back."""
    exe = need_tool("findscu")
    out.mkdir(parents=True)
    proc = run_tool(
        [exe, "-v", "-W", "-aec", called, "-td", "20", HOST, str(port), str(query), "-X", "-od", str(out)],
        timeout=60,
    )
    m = FINAL_FIND_RESPONSE.search(proc.stdout)
    answers = [_read(p) for p in sorted(out.glob("rsp*.dcm"))]
    return FindResult(m.group(1) if m else None, answers, proc.stdout)


@contextlib.contextmanager
def mwl_association(port: int, called: str = AE_TITLE) -> Iterator[Any]:
    ae = AE(ae_title="PYNETMWL")
    ae.acse_timeout = ae.network_timeout = WAIT
    ae.dimse_timeout = 30
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate(HOST, port, ae_title=called)
    assert assoc.is_established, "pynetdicom could not associate for the worklist"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def pynetdicom_find(assoc: Any, query: Dataset) -> tuple[int | None, list[Dataset]]:
    """(final status, answers) of one C-FIND on an open association."""
    answers: list[Dataset] = []
    final: int | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            code = int(status.Status) if "Status" in status else None
            if code in PENDING:
                answers.append(identifier)
            else:
                final = code
    return final, answers


def failure(status: int | None) -> bool:
    """A C-FIND failure status of PS3.4 K.4.1.1.4: A700, A900 or Cxxx."""
    return status is not None and (status in (0xA700, 0xA900) or 0xC000 <= status <= 0xCFFF)


# ---------------------------------------------------------------- REST


def http(method: str, url: str, body: bytes | None = None, content_type: str = "") -> tuple[int, bytes]:
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as rsp:
            return int(rsp.status), rsp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_items(base: str, body: bytes, content_type: str) -> list[int]:
    status, data = http("POST", f"{base}/api/worklist", body, content_type)
    assert status == 201, (status, data[:500])
    items = json.loads(data)["items"]
    assert all(isinstance(i["id"], int) for i in items), items
    return [int(i["id"]) for i in items]


def listing(base: str) -> list[dict[str, Any]]:
    status, data = http("GET", f"{base}/api/worklist")
    assert status == 200, (status, data[:500])
    items: list[dict[str, Any]] = json.loads(data)["items"]
    return items


def scheduled(base: str) -> dict[int, dict[str, Any]]:
    return {int(i["id"]): i for i in listing(base) if i.get("status") == "SCHEDULED"}


# ---------------------------------------------------------------- fixtures


@dataclass
class Worklists:
    """The query files, the worklist files and the tag paths they hold."""

    db_files: list[Path]
    queries: dict[str, Path]
    held: set[Path_]


@pytest.fixture(scope="module")
def worklists(tmp_path_factory: pytest.TempPathFactory) -> Worklists:
    db_files = sorted(need_testdata("worklist", "wlistdb").rglob("*.wl"))
    need_testdata("worklist", "queries")
    assert len(db_files) >= 10 and len(QUERY_FILES) >= 13
    queries = {p.stem: p for p in QUERY_FILES}
    folder = tmp_path_factory.mktemp("derived-queries")
    for name, (base, keys) in DERIVED.items():
        ds = _read(queries[base])
        for key, value in keys.items():
            if key.startswith("Sps."):
                target = ds.ScheduledProcedureStepSequence[0]
                key = key[4:]
            else:
                target = ds
            setattr(target, key, value)
        path = folder / f"{name}.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(path)
        queries[name] = path
    held: set[Path_] = set()
    for path in db_files:
        held |= tag_paths(_read(path))
    return Worklists(db_files, queries, held)


@dataclass
class WlmSCP:
    port: int
    answers: dict[str, FindResult]  # query name -> findscu's result, filled on first use


@pytest.fixture(scope="module")
def wlmscpfs(tmp_path_factory: pytest.TempPathFactory, worklists: Worklists) -> Iterator[WlmSCP]:
    """DCMTK wlmscpfs serving copies of the same .wl files (its folder <db>/<AE title>/ with a lockfile)."""
    exe = need_tool("wlmscpfs")
    root = tmp_path_factory.mktemp("wlmscpfs")
    db = root / "db" / WLM_AE
    db.mkdir(parents=True)
    for path in worklists.db_files:
        shutil.copyfile(path, db / path.name)
    (db / "lockfile").touch()
    port = free_port_all_interfaces()
    with running([exe, "--single-process", "-csk", "-dfp", str(root / "db"), str(port)]) as proc:
        wait_for_port(port, proc)
        yield WlmSCP(port, {})


def reference(wlm: WlmSCP, worklists: Worklists, name: str, tmp: Path) -> FindResult:
    if name not in wlm.answers:
        wlm.answers[name] = findscu(wlm.port, WLM_AE, worklists.queries[name], tmp / f"wlm-{name}")
    return wlm.answers[name]


@dataclass
class MwlNode:
    node: Any  # peerkit.ThreadedNode
    ids: dict[str, int]  # worklist file name -> item id

    @property
    def port(self) -> int:
        return int(self.node.port)

    @property
    def url(self) -> str:
        return str(self.node.http_url)


@pytest.fixture(scope="module")
def mwl(make_module_storage_node: Callable[..., Any], worklists: Worklists) -> MwlNode:
    """A node whose worklist holds every .wl file, each POSTed as application/dicom."""
    node = make_module_storage_node(http=True)
    ids = {}
    for path in worklists.db_files:
        (ids[path.name],) = post_items(node.http_url, path.read_bytes(), "application/dicom")
    assert len(set(ids.values())) == len(ids)
    return MwlNode(node, ids)


# ---------------------------------------------------------------- the node against wlmscpfs


def test_rest_listing_shows_every_item(mwl: MwlNode, worklists: Worklists) -> None:
    items = scheduled(mwl.url)
    assert set(items) == set(mwl.ids.values())
    for path in worklists.db_files:
        ds = _read(path)
        step = ds.ScheduledProcedureStepSequence[0]
        item = items[mwl.ids[path.name]]
        assert item["AccessionNumber"] == str(ds.AccessionNumber)
        assert item["PatientID"] == str(ds.PatientID)
        assert item["ScheduledProcedureStepID"] == str(step.ScheduledProcedureStepID)
        assert item["Modality"] == str(step.Modality)
        assert item["ScheduledProcedureStepStartDate"] == str(step.ScheduledProcedureStepStartDate)
        assert str(step.ScheduledStationAETitle).split("\\")[0] in str(item["ScheduledStationAETitle"])


@pytest.mark.parametrize("name", QUERY_NAMES)
def test_findscu_same_answers_as_wlmscpfs(
    mwl: MwlNode, wlmscpfs: WlmSCP, worklists: Worklists, name: str, tmp_path: Path
) -> None:
    query = _read(worklists.queries[name])
    ref = reference(wlmscpfs, worklists, name, tmp_path)
    assert ref.status == "Success", ref.output
    if name in DERIVED:  # the derived queries exist to have answers
        assert ref.responses, f"{name} matches nothing in wlmscpfs:\n{ref.output}"
    ours = findscu(mwl.port, AE_TITLE, worklists.queries[name], tmp_path / "pacsnode")
    assert ours.status == "Success", ours.output
    a, b = comparable(ours.responses, wlmscpfs_expected(ref.responses, query), query, worklists.held)
    assert_same(a, b, f"{name}: pacsnode vs wlmscpfs")


@pytest.mark.parametrize("name", QUERY_NAMES)
def test_pynetdicom_same_answers_as_findscu(
    mwl: MwlNode, worklists: Worklists, name: str, tmp_path: Path
) -> None:
    query = _read(worklists.queries[name])
    dcmtk = findscu(mwl.port, AE_TITLE, worklists.queries[name], tmp_path / "dcmtk")
    assert dcmtk.status == "Success", dcmtk.output
    with mwl_association(mwl.port) as assoc:
        status, answers = pynetdicom_find(assoc, query)
    assert status == 0x0000
    a = Counter(normalize(ds) for ds in answers)
    b = Counter(normalize(ds) for ds in dcmtk.responses)
    assert_same(a, b, f"{name}: pynetdicom vs findscu")


def test_pynetdicom_findscu_app(mwl: MwlNode, worklists: Worklists, tmp_path: Path) -> None:
    query = worklists.queries["name-prefix-empty-item"]
    out = tmp_path / "app"
    out.mkdir()
    proc = run_tool(
        [*PYNETDICOM, "findscu", HOST, str(mwl.port), "-aec", AE_TITLE, "-W", "-w", "-f", str(query)],
        cwd=out,
    )
    assert proc.returncode == 0, proc.stdout
    dcmtk = findscu(mwl.port, AE_TITLE, query, tmp_path / "dcmtk")
    answers = [_read(p) for p in sorted(out.glob("rsp*.dcm"))]
    assert len(answers) == 3, proc.stdout  # VIVALDI^ANTONIO has three items
    assert Counter(normalize(a) for a in answers) == Counter(normalize(a) for a in dcmtk.responses)


# ---------------------------------------------------------------- bad input


def _step_query(**keys: str) -> Dataset:
    with warnings.catch_warnings():  # pydicom warns about the invalid values it is given
        warnings.simplefilter("ignore")
        return _build_step_query(keys)


def _build_step_query(keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    step = Dataset()
    step.Modality = ""
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = ""
    step.ScheduledProcedureStepStartTime = ""
    step.ScheduledProcedureStepID = ""
    for key, value in keys.items():
        if key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            setattr(ds, key, value)
        else:
            setattr(step, key, value)
    ds.ScheduledProcedureStepSequence = [step]
    return ds


@pytest.mark.parametrize(
    "key,value",
    [
        ("ScheduledProcedureStepStartDate", "2020-ab"),
        ("ScheduledProcedureStepStartDate", "19960101-1996"),
        ("ScheduledProcedureStepStartTime", "12ab"),
        ("PatientBirthDate", "1678-03-04"),
    ],
)
def test_invalid_key_value_fails_and_the_node_keeps_serving(
    mwl: MwlNode, wlmscpfs: WlmSCP, key: str, value: str
) -> None:
    bad = _step_query(**{key: value})
    with mwl_association(wlmscpfs.port, WLM_AE) as assoc:  # the reference refuses it too
        ref_status, ref_answers = pynetdicom_find(assoc, bad)
    assert failure(ref_status) and not ref_answers, hex(ref_status or 0)
    with mwl_association(mwl.port) as assoc:
        status, answers = pynetdicom_find(assoc, bad)
        assert failure(status), hex(status) if status is not None else "no final status"
        assert not answers
        # The same association still answers a valid query.
        status, answers = pynetdicom_find(assoc, _step_query(Modality="MR"))
        assert status == 0x0000
        assert sorted(str(a.PatientID) for a in answers) == ["AV35674", "MWA484763"]
    with mwl_association(mwl.port) as assoc:  # and so does a new one
        status, answers = pynetdicom_find(assoc, _step_query(PatientID="HF"))
    assert status == 0x0000 and len(answers) == 3


# ---------------------------------------------------------------- management: REST and CLI


def _sps_ids(port: int) -> list[str]:
    with mwl_association(port) as assoc:
        status, answers = pynetdicom_find(assoc, _step_query())
    assert status == 0x0000
    return sorted(str(a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID) for a in answers)


def _json_item(path: Path) -> dict[str, Any]:
    ds = _read(path)
    doc: dict[str, Any] = ds.to_json_dict()
    return doc


def test_rest_add_as_json_cancel_and_errors(
    make_storage_node: Callable[..., Any], worklists: Worklists
) -> None:
    node = make_storage_node(http=True)
    base = node.http_url
    files = worklists.db_files[:3]
    steps = sorted(str(_read(p).ScheduledProcedureStepSequence[0].ScheduledProcedureStepID) for p in files)
    # A DICOM JSON array of three items (PS3.18 F.2), and one object on its own.
    ids = post_items(base, json.dumps([_json_item(p) for p in files[:2]]).encode(), "application/dicom+json")
    ids += post_items(base, json.dumps(_json_item(files[2])).encode(), "application/dicom+json")
    assert len(set(ids)) == 3
    assert set(scheduled(base)) == set(ids)
    assert _sps_ids(node.port) == steps

    # Not DICOM, and an item without its Scheduled Procedure Step: refused, nothing added.
    status, _ = http("POST", f"{base}/api/worklist", b"not a DICOM file", "application/dicom")
    assert 400 <= status < 500
    no_step = _json_item(files[0])
    del no_step["00400100"]
    status, _ = http("POST", f"{base}/api/worklist", json.dumps(no_step).encode(), "application/dicom+json")
    assert 400 <= status < 500
    assert set(scheduled(base)) == set(ids)

    # Cancel one: it leaves C-FIND and the scheduled items; the others stay.
    victim = scheduled(base)[ids[0]]
    status, _ = http("DELETE", f"{base}/api/worklist/{ids[0]}")
    assert status == 204
    left = _sps_ids(node.port)
    assert left == sorted(s for s in steps if s != victim["ScheduledProcedureStepID"]) and len(left) == 2
    assert set(scheduled(base)) == set(ids[1:])
    assert all(i["status"] == "CANCELED" for i in listing(base) if i["id"] == ids[0])
    status, _ = http("DELETE", f"{base}/api/worklist/{max(ids) + 1000}")
    assert status == 404


def _cli(*args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    env["COLUMNS"] = "250"
    return run_tool([PACSNODE, "worklist", *args], env=env)


def test_cli_add_list_cancel(make_storage_node: Callable[..., Any], worklists: Worklists) -> None:
    need_tool(PACSNODE)
    node = make_storage_node(http=True)
    base = node.http_url
    files = worklists.db_files[:4]
    steps = {p.name: str(_read(p).ScheduledProcedureStepSequence[0].ScheduledProcedureStepID) for p in files}

    added = _cli("add", "--url", base, *map(str, files))
    assert added.returncode == 0, added.stdout
    items = scheduled(base)
    assert sorted(i["ScheduledProcedureStepID"] for i in items.values()) == sorted(steps.values())

    shown = _cli("list", "--url", base)
    assert shown.returncode == 0, shown.stdout
    assert all(s in shown.stdout for s in steps.values()), shown.stdout

    victim_id, victim = next(iter(items.items()))
    gone = victim["ScheduledProcedureStepID"]
    cancelled = _cli("cancel", "--url", base, str(victim_id))
    assert cancelled.returncode == 0, cancelled.stdout
    shown = _cli("list", "--url", base)
    assert shown.returncode == 0, shown.stdout
    # Gone from the list, or listed as cancelled.
    assert all("CANCEL" in line.upper() for line in shown.stdout.splitlines() if gone in line), shown.stdout
    assert all(s in shown.stdout for s in steps.values() if s != gone), shown.stdout
    assert _sps_ids(node.port) == sorted(s for s in steps.values() if s != gone)

    unknown = _cli("cancel", "--url", base, str(max(items) + 1000))
    assert unknown.returncode != 0, unknown.stdout
    assert len(_sps_ids(node.port)) == 3
