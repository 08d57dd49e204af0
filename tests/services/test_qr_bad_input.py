"""The Query/Retrieve SCP (PS3.4 Annex C) given bad or hostile requests: each is refused with the
status the standard gives it, or answered, and the node keeps serving (a C-ECHO on a fresh
association after every case).

Requests go from pynetdicom's AE (identifiers built with pydicom) on a fresh association per
case; identifiers that pydicom would not encode go as raw bytes from pacsnode's own client.  One
node per index back end serves the module (``qr``): a generated study, patients whose IDs hold
SQL wildcard characters, a series for C-GET and C-CANCEL, and C-MOVE destinations that are
configured but down.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom import datadict
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacsnode.data.uids import EXPLICIT_VR_LITTLE_ENDIAN, STUDY_ROOT_FIND
from pacsnode.dimse.messages import c_find_rq
from pacsnode.net.client import associate
from pacsnode.ul.negotiation import ProposedContext
from peerkit import AE_TITLE, HOST, WAIT, echo_ok, free_port, make_instance, new_uid, pynetdicom_store

P_FIND = PatientRootQueryRetrieveInformationModelFind
S_FIND = StudyRootQueryRetrieveInformationModelFind
P_MOVE = PatientRootQueryRetrieveInformationModelMove
S_MOVE = StudyRootQueryRetrieveInformationModelMove
P_GET = PatientRootQueryRetrieveInformationModelGet
S_GET = StudyRootQueryRetrieveInformationModelGet

# The bad values are the point: pydicom warns as it builds them.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.valuerep")

PENDING, SUCCESS, CANCEL = 0xFF00, 0x0000, 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # PS3.4 C.4.1.1.4 / C.4.2.1.5 / C.4.3.1.4
UNABLE_TO_PROCESS = 0xC000
MOVE_DESTINATION_UNKNOWN = 0xA801
OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058

# Patient IDs with the characters SQL LIKE gives a meaning to: only the first has them literally.
LIKE_IDS = ("PCT%_1", "PCTAB_1", "PCTXY1", "PCT_%1")
QUOTED_NAME = "O'Brien^Dan"
GET_SERIES_SIZE = 12


@dataclass
class QRNode:
    node: Any  # peerkit.ThreadedNode
    study: str  # a 3-instance study
    series: str
    sops: list[str]
    get_study: str  # GET_SERIES_SIZE instances, for C-CANCEL during C-GET
    get_sops: list[str]
    patients: int

    @property
    def port(self) -> int:
        return int(self.node.port)


@pytest.fixture(scope="module")
def qr(make_module_storage_node: Callable[..., Any]) -> QRNode:
    node = make_module_storage_node(peers={"DOWNSCP": (HOST, free_port())})  # nothing listens there
    study, series = new_uid(), new_uid()
    small = [
        make_instance(study=study, series=series, patient_id="QRBAD", InstanceNumber=i) for i in range(3)
    ]
    get_study = new_uid()
    get = [
        make_instance(study=get_study, patient_id="QRGET", InstanceNumber=i) for i in range(GET_SERIES_SIZE)
    ]
    like = [make_instance(patient_id=pid, PatientName=f"Like^{i}") for i, pid in enumerate(LIKE_IDS)]
    quoted = [make_instance(patient_id="QUOTE1", PatientName=QUOTED_NAME)]
    statuses = pynetdicom_store(HOST, node.port, small + get + like + quoted)
    assert all(s.ok for s in statuses), statuses
    return QRNode(
        node,
        study,
        series,
        [str(ds.SOPInstanceUID) for ds in small],
        get_study,
        [str(ds.SOPInstanceUID) for ds in get],
        patients=2 + len(LIKE_IDS) + len(quoted),
    )


@pytest.fixture
def still_serving(qr: QRNode) -> Iterator[None]:
    """After the case, the node answers a C-ECHO on a fresh association."""
    yield
    assert echo_ok(HOST, qr.port), "the node stopped answering after the bad request"


def _assoc(
    qr: QRNode,
    *contexts: str,
    roles: tuple[str, ...] = (),
    handlers: list[Any] | None = None,
    transfer_syntax: str | None = None,
) -> Any:
    ae = AE(ae_title="BADSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    for ctx in contexts:
        if transfer_syntax is None:
            ae.add_requested_context(ctx)
        else:
            ae.add_requested_context(ctx, [transfer_syntax])
    for ctx in roles:
        ae.add_requested_context(ctx)
    ext = [build_role(sop, scp_role=True) for sop in roles]
    assoc = ae.associate(HOST, qr.port, ae_title=AE_TITLE, ext_neg=ext or None, evt_handlers=handlers or None)
    assert assoc.is_established
    return assoc


def find(
    qr: QRNode, identifier: Dataset, model: str = S_FIND, transfer_syntax: str | None = None
) -> tuple[int, list[Dataset], Any]:
    """C-FIND on a fresh association: (final status, pending identifiers, final status dataset)."""
    assoc = _assoc(qr, model, transfer_syntax=transfer_syntax)
    try:
        answers: list[Dataset] = []
        final: Any = None
        for status, ident in assoc.send_c_find(identifier, model):
            assert status is not None and "Status" in status, "no C-FIND response (association ended?)"
            if int(status.Status) == PENDING:
                answers.append(ident)
            else:
                final = status
        assert final is not None
        return int(final.Status), answers, final
    finally:
        if assoc.is_established:
            assoc.release()


def ident(level: str | None, **keys: Any) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# ---------------------------------------------------------------- Query/Retrieve Level and keys


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("model", [P_FIND, S_FIND], ids=["patient-root", "study-root"])
def test_missing_query_retrieve_level(qr: QRNode, model: str) -> None:
    # PS3.4 C.4.1.2.1: the Identifier shall contain the Query/Retrieve Level.
    status, answers, final = find(qr, ident(None, PatientID="QRBAD", StudyInstanceUID=""), model)
    assert (status, answers) == (IDENTIFIER_DOES_NOT_MATCH, [])
    assert "Query/Retrieve Level" in str(final.get("ErrorComment", ""))


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(
    ("model", "level"),
    [(P_FIND, "FOO"), (S_FIND, "FOO"), (S_FIND, "PATIENT"), (P_FIND, "study"), (S_FIND, "IMAGE\\STUDY")],
    ids=["patient-root-FOO", "study-root-FOO", "study-root-PATIENT", "lower-case", "two-values"],
)
def test_invalid_query_retrieve_level(qr: QRNode, model: str, level: str) -> None:
    # PS3.4 C.6.2: the Study Root model has no PATIENT level; a level is one of the defined terms.
    status, answers, _ = find(qr, ident(level, PatientID="QRBAD"), model)
    assert (status, answers) == (IDENTIFIER_DOES_NOT_MATCH, [])


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(
    ("model", "level", "keys"),
    [
        (P_FIND, "PATIENT", {"StudyInstanceUID": ""}),
        (S_FIND, "STUDY", {"SeriesInstanceUID": ""}),
        (S_FIND, "STUDY", {"Modality": "CT"}),
        (S_FIND, "SERIES", {"SOPInstanceUID": ""}),
    ],
    ids=["patient-with-study-key", "study-with-series-key", "study-with-modality", "series-with-image-key"],
)
def test_key_below_the_level(qr: QRNode, model: str, level: str, keys: dict[str, str]) -> None:
    # PS3.4 C.4.1.2.1 (hierarchical query): no keys of the levels below the Query/Retrieve Level.
    status, answers, final = find(qr, ident(level, PatientID="QRBAD", **keys), model)
    assert (status, answers) == (IDENTIFIER_DOES_NOT_MATCH, [])
    (keyword,) = keys
    assert datadict.tag_for_keyword(keyword) in [int(t) for t in _offending(final)]


def _offending(final: Dataset) -> list[Any]:
    value = final.get("OffendingElement", [])
    return list(value) if isinstance(value, list | tuple) or hasattr(value, "__iter__") else [value]


@pytest.mark.usefixtures("still_serving")
def test_key_below_the_level_with_relational_queries_negotiated(qr: QRNode) -> None:
    # PS3.4 C.4.1.2.2: with relational queries agreed (C.5.1 extended negotiation) the same
    # query is answered: the studies that have a series of that modality.
    from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

    ae = AE(ae_title="BADSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    ae.add_requested_context(S_FIND)
    relational = SOPClassExtendedNegotiation()
    relational.sop_class_uid = S_FIND
    relational.service_class_application_information = b"\x01"
    assoc = ae.associate(HOST, qr.port, ae_title=AE_TITLE, ext_neg=[relational])
    assert assoc.is_established
    try:
        q = ident("STUDY", PatientID="QRBAD", Modality="CT", StudyInstanceUID="")
        responses = list(assoc.send_c_find(q, S_FIND))
    finally:
        assoc.release()
    assert [int(s.Status) for s, _ in responses] == [PENDING, SUCCESS]
    assert responses[0][1].StudyInstanceUID == qr.study


# ---------------------------------------------------------------- hostile values

SQL_NOISE = [
    "' OR '1'='1",
    "x' OR 1=1 --",
    "'; DROP TABLE patients; --",
    "%",
    "_",
    "%%",
    "PCT%",
    "PCT__1",
    "'\\%_;--",  # a backslash separates values (PS3.5 6.4): two values, neither matching
    '" OR ""="',
    "*' OR 'a'='a",
]


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("value", SQL_NOISE)
@pytest.mark.parametrize("keyword", ["PatientID", "PatientName", "StudyDescription", "AccessionNumber"])
def test_sql_metacharacters_match_nothing(qr: QRNode, keyword: str, value: str) -> None:
    level = "PATIENT" if keyword in ("PatientID", "PatientName") else "STUDY"
    model = P_FIND if level == "PATIENT" else S_FIND
    keys = {keyword: value} if level == "PATIENT" else {keyword: value, "StudyInstanceUID": ""}
    status, answers, final = find(qr, ident(level, **keys), model)
    if keyword == "AccessionNumber" and any(len(v) > 16 for v in value.split("\\")):
        # Too long for SH (PS3.5 6.2: 16 characters) and not a wild card: no rule can match it.
        assert (status, answers) == (UNABLE_TO_PROCESS, []), final
    else:
        assert (status, answers) == (SUCCESS, []), final
    # ...and nothing was dropped: every patient is still there.
    status, answers, _ = find(qr, ident("PATIENT", PatientID=""), P_FIND)
    assert (status, len(answers)) == (SUCCESS, qr.patients)


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("PCT%_1", {"PCT%_1"}),  # single value matching: literal, not a LIKE pattern
        ("PCT_%1", {"PCT_%1"}),
        ("PCT%*", {"PCT%_1"}),  # wild card after a literal '%'
        ("PCT?_1", {"PCT%_1"}),  # '?' is one character; '_' is itself
        ("PCT*_1", {"PCT%_1", "PCTAB_1"}),
        ("PCT_*", {"PCT_%1"}),
        ("PCT*", set(LIKE_IDS)),
    ],
)
def test_percent_and_underscore_are_literal(qr: QRNode, query: str, expected: set[str]) -> None:
    # PS3.4 C.2.2.2.1 / C.2.2.2.4: only '*' and '?' are wild cards; '%' and '_' match themselves.
    status, answers, _ = find(qr, ident("PATIENT", PatientID=query), P_FIND)
    assert status == SUCCESS
    assert {str(a.PatientID) for a in answers} == expected


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("query", [QUOTED_NAME, "O'Brien*", "o'brien^dan", "*'*"])
def test_quote_in_a_name_matches_literally(qr: QRNode, query: str) -> None:
    status, answers, _ = find(qr, ident("PATIENT", PatientName=query, PatientID=""), P_FIND)
    assert status == SUCCESS
    assert [str(a.PatientName) for a in answers] == [QUOTED_NAME]


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(
    "keys",
    [
        {"PatientID": "A" * 10240},
        {"PatientName": "B" * 10240},
        {"PatientName": "C*" * 5120},
        {"StudyDescription": "D" * 10240},
        {"StudyInstanceUID": "1." * 5120},
        {"StudyDate": "2" * 10240},
        {"StudyDate": "20240101-20231231"},  # a range that ends before it starts
        {"StudyDate": "2024-01-01"},  # not a DA value
        {"StudyInstanceUID": "1.2.abc"},  # not a UID
    ],
    ids=[
        "LO-10k",
        "PN-10k",
        "PN-wildcards-10k",
        "LO-desc-10k",
        "UI-10k",
        "DA-10k",
        "DA-inverted",
        "DA-iso",
        "UI-bad",
    ],
)
def test_values_no_matching_rule_accepts(qr: QRNode, keys: dict[str, str]) -> None:
    # PS3.4 C.4.1.1.4: C000 "Unable to process" for a key value that cannot be used for matching.
    level = "PATIENT" if set(keys) <= {"PatientID", "PatientName"} else "STUDY"
    model = P_FIND if level == "PATIENT" else S_FIND
    status, answers, final = find(qr, ident(level, **keys), model)
    assert (status, answers) == (UNABLE_TO_PROCESS, []), final
    (keyword,) = keys
    assert datadict.tag_for_keyword(keyword) in [int(t) for t in _offending(final)]


def _public_tags(count: int, *, unambiguous: bool = False) -> list[int]:
    """``count`` tags of the public dictionary (no command, file meta, directory or item tags)."""
    # Not keys but parameters of the query, which PS3.4 C.4.1.1.3.1 forbids to send empty:
    # Specific Character Set and Timezone Offset From UTC; and the Query/Retrieve Level.
    skip = {0x00080005, 0x00080201, 0x00080052}
    tags = [
        tag
        for tag, entry in sorted(datadict.DicomDictionary.items())
        if tag >> 16 not in (0x0000, 0x0002, 0x0004, 0xFFFE, 0xFFFC)
        and tag not in skip
        and entry[4]
        and not (unambiguous and " or " in entry[0])
    ]
    return tags[:count]


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(
    "transfer_syntax",
    [
        pytest.param(ExplicitVRLittleEndian, id="explicit"),
        pytest.param(ImplicitVRLittleEndian, id="implicit"),
    ],
)
def test_three_thousand_keys(qr: QRNode, transfer_syntax: str) -> None:
    # In Implicit VR, tags whose VR depends on another element ('US or OW' LUT Data with an
    # empty LUT Descriptor) cannot be read back by pydicom, the SCU here: left out of the
    # answers' check, and sent on their own below.
    tags = _public_tags(3000, unambiguous=transfer_syntax == ImplicitVRLittleEndian)
    assert len(tags) == 3000
    q = Dataset()
    for tag in tags:
        q.add_new(tag, datadict.dictionary_VR(tag).split(" or ")[0], None)
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = qr.study
    q.SeriesInstanceUID = qr.series
    q.SOPInstanceUID = ""
    status, answers, final = find(qr, q, S_FIND, transfer_syntax)
    assert status == SUCCESS, final
    assert sorted(str(a.SOPInstanceUID) for a in answers) == sorted(qr.sops)
    for a in answers:
        # PS3.4 C.4.1.1.3.2: every requested key comes back (empty when the entity has no value).
        missing = [t for t in tags if t not in a]
        assert not missing, f"{len(missing)} keys not returned, e.g. {missing[:5]}"
        assert a.Rows == 16 and str(a.PatientID) == "QRBAD"  # values read from the stored files


@pytest.mark.usefixtures("still_serving")
def test_keys_of_undecidable_vr_are_answered(qr: QRNode) -> None:
    # Implicit VR: LUT Data (0028,3006) is 'US or OW', decided by a LUT Descriptor that an
    # empty LUT sequence does not have. The node keeps such a key as a return key instead
    # of refusing the identifier (it once answered A900).
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = qr.study
    q.SeriesInstanceUID = qr.series
    q.SOPInstanceUID = ""
    q.add_new(0x00283000, "SQ", [])  # Modality LUT Sequence
    q.add_new(0x00283006, "US", None)  # LUT Data
    status, answers, final = find(qr, q, S_FIND, ImplicitVRLittleEndian)
    assert status == SUCCESS, final
    # pynetdicom yields each such answer twice, once without the identifier it cannot decode.
    assert {str(a.SOPInstanceUID) for a in answers if a is not None} == set(qr.sops)


# ---------------------------------------------------------------- identifiers pydicom would not write


def _element(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL", b"OV"):
        return head + b"\0\0" + struct.pack("<I", n) + value
    return head + struct.pack("<H", n) + value


LEVEL = _element(0x00080052, b"CS", b"STUDY ")
UNPARSABLE = {
    "truncated-value": LEVEL + _element(0x00100020, b"LO", b"ABCD", length=100),
    "truncated-header": LEVEL + b"\x10\x00\x20\x00LO",
    "bad-vr": LEVEL + _element(0x00100020, b"\x01\x02", b"ABCD"),
    "undefined-length-text": LEVEL + _element(0x00100020, b"UT", b"ABCD", length=0xFFFFFFFF),
    "sequence-never-ends": LEVEL
    + _element(0x00081110, b"SQ", b"", length=0xFFFFFFFF)
    + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    + _element(0x00081150, b"UI", b"1.2\0"),
    "tags-out-of-order-garbage": b"\xff" * 37,
}


async def _raw_find(port: int, data: bytes) -> list[int]:
    contexts = [ProposedContext(STUDY_ROOT_FIND, (EXPLICIT_VR_LITTLE_ENDIAN,))]
    async with associate(
        HOST, port, called_ae_title=AE_TITLE, calling_ae_title="RAWSCU", contexts=contexts, dimse_timeout=WAIT
    ) as assoc:
        ctx = assoc.negotiated.context_for(STUDY_ROOT_FIND, EXPLICIT_VR_LITTLE_ENDIAN)
        assert ctx is not None
        rq = c_find_rq(assoc.next_message_id(), STUDY_ROOT_FIND)
        return [int(rsp.status or 0) async for rsp, _ in assoc.request(ctx.context_id, rq, data)]


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(
    "name",
    sorted(UNPARSABLE),
)
def test_unparsable_identifier(qr: QRNode, name: str) -> None:
    # PS3.4 C.4.1.1.4: A900 "Identifier does not match SOP Class" for an Identifier that is not one.
    statuses = asyncio.run(_raw_find(qr.port, UNPARSABLE[name]))
    assert statuses == [IDENTIFIER_DOES_NOT_MATCH]


# ---------------------------------------------------------------- C-MOVE and C-GET


def _move(qr: QRNode, identifier: Dataset, destination: str, model: str = S_MOVE) -> list[tuple[Any, Any]]:
    assoc = _assoc(qr, model)
    try:
        return list(assoc.send_c_move(identifier, destination, model))
    finally:
        if assoc.is_established:
            assoc.release()


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("destination", ["NOSUCHAE", "DOWNSC", "downscp"])
def test_c_move_to_an_unknown_destination(qr: QRNode, destination: str) -> None:
    # PS3.4 C.4.2.1.5: A801 "Move Destination unknown" (AE titles compare exactly: case matters).
    responses = _move(qr, ident("STUDY", StudyInstanceUID=qr.study), destination)
    assert [int(s.Status) for s, _ in responses] == [MOVE_DESTINATION_UNKNOWN]


@pytest.mark.usefixtures("still_serving")
def test_c_move_to_a_destination_that_is_down(qr: QRNode) -> None:
    responses = _move(qr, ident("STUDY", StudyInstanceUID=qr.study), "DOWNSCP")
    (final, identifier) = responses[-1]
    # PS3.4 C.4.2.1.5 / C.4.2.3.1: no sub-operation could be done: A702, all counted as failed,
    # and the Identifier lists them (Failed SOP Instance UID List).
    assert int(final.Status) == OUT_OF_RESOURCES_SUBOPERATIONS
    assert int(final.NumberOfFailedSuboperations) == len(qr.sops)
    assert int(final.NumberOfCompletedSuboperations) == 0
    assert identifier is not None
    failed = identifier[FAILED_SOP_INSTANCE_UID_LIST].value
    assert sorted([failed] if isinstance(failed, str) else list(failed)) == sorted(qr.sops)


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(
    ("model", "keys"),
    [
        (S_MOVE, {"QueryRetrieveLevel": "STUDY", "PatientID": "QRBAD"}),
        (S_MOVE, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}),
        (S_MOVE, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2.3"}),
        (P_MOVE, {"QueryRetrieveLevel": "PATIENT", "PatientName": "QRBAD*"}),
        (S_GET, {"QueryRetrieveLevel": "STUDY", "PatientID": "QRBAD"}),
        (S_GET, {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": ""}),
        (P_GET, {"QueryRetrieveLevel": "PATIENT", "PatientID": ""}),
        (S_GET, {"PatientID": "QRBAD", "StudyInstanceUID": "1.2.3"}),
    ],
    ids=[
        "move-study-no-uid",
        "move-study-empty-uid",
        "move-series-no-series-uid",
        "move-patient-by-name",
        "get-study-no-uid",
        "get-image-empty-uid",
        "get-patient-empty-id",
        "get-no-level",
    ],
)
def test_retrieve_without_the_unique_key(qr: QRNode, model: str, keys: dict[str, str]) -> None:
    # PS3.4 C.4.2.2.1 / C.4.3.2.1: a retrieve names its entities by the Unique Key of its level.
    q = Dataset()
    for keyword, value in keys.items():
        setattr(q, keyword, value)
    assoc = _assoc(qr, model, roles=(CTImageStorage,))
    try:
        if model in (S_MOVE, P_MOVE):
            responses = list(assoc.send_c_move(q, "DOWNSCP", model))
        else:
            responses = list(assoc.send_c_get(q, model))
    finally:
        if assoc.is_established:
            assoc.release()
    assert [int(s.Status) for s, _ in responses] == [IDENTIFIER_DOES_NOT_MATCH]


@pytest.mark.usefixtures("still_serving")
def test_c_cancel_during_a_c_get(qr: QRNode) -> None:
    received: list[str] = []
    cancelled = threading.Event()
    holder: dict[str, Any] = {}

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if not cancelled.is_set():
            # Cancel while the first sub-operation is still being answered: the SCP waits for
            # this C-STORE-RSP before the next one, so the C-CANCEL-RQ is ahead of it on the wire.
            cancelled.set()
            holder["assoc"].send_c_cancel(holder["msg_id"], None, S_GET)
        return SUCCESS

    assoc = _assoc(qr, S_GET, roles=(CTImageStorage,), handlers=[(evt.EVT_C_STORE, on_store)])
    holder.update(assoc=assoc, msg_id=21)
    try:
        responses = list(assoc.send_c_get(ident("STUDY", StudyInstanceUID=qr.get_study), S_GET, msg_id=21))
        # The association is still usable: the same C-GET, uncancelled, completes.
        received_before = len(received)
        again = list(assoc.send_c_get(ident("STUDY", StudyInstanceUID=qr.get_study), S_GET, msg_id=22))
    finally:
        if assoc.is_established:
            assoc.release()
    final = responses[-1][0]
    # PS3.4 C.4.3.2.3 / PS3.7 9.3.3.2: the C-GET ends with Cancel, and counts what was done.
    assert int(final.Status) == CANCEL
    completed = int(final.NumberOfCompletedSuboperations)
    assert 1 <= completed < GET_SERIES_SIZE
    assert received_before == completed + int(final.NumberOfFailedSuboperations) + int(
        final.NumberOfWarningSuboperations
    )
    if "NumberOfRemainingSuboperations" in final:
        assert completed + int(final.NumberOfRemainingSuboperations) <= GET_SERIES_SIZE
    assert int(again[-1][0].Status) == SUCCESS
    assert int(again[-1][0].NumberOfCompletedSuboperations) == GET_SERIES_SIZE
    assert set(received[received_before:]) == set(qr.get_sops)


@pytest.mark.usefixtures("still_serving")
def test_c_cancel_after_the_end_is_ignored(qr: QRNode) -> None:
    # A C-CANCEL-RQ for an operation that has already ended (or never was) changes nothing:
    # no response (PS3.7 9.3.2.3: it has none), and the association goes on.
    assoc = _assoc(qr, S_MOVE, Verification)
    try:
        responses = list(
            assoc.send_c_move(ident("STUDY", StudyInstanceUID=qr.study), "NOSUCHAE", S_MOVE, msg_id=31)
        )
        assoc.send_c_cancel(31, None, S_MOVE)
        assoc.send_c_cancel(999, None, S_MOVE)
        echo = assoc.send_c_echo(msg_id=32)
    finally:
        if assoc.is_established:
            assoc.release()
    assert [int(s.Status) for s, _ in responses] == [MOVE_DESTINATION_UNKNOWN]
    assert int(echo.Status) == SUCCESS


# ---------------------------------------------------------------- many at once


@pytest.mark.usefixtures("still_serving")
def test_concurrent_queries_each_get_their_own_complete_answers(qr: QRNode) -> None:
    # Eight associations at once (more than the node's query threads), each asking in turn
    # for one patient's studies, a series' instances (selective: answered on the loop) and
    # every patient (a worker thread): every answer complete, none mixed with another's.
    from pacsnode.net.client import open_association, query_contexts

    expected = {
        "QRBAD": 1,
        "QRGET": 1,
        **{pid: 1 for pid in LIKE_IDS},
        "QUOTE1": 1,
    }

    async def client(n: int) -> list[str]:
        problems: list[str] = []
        assoc = await open_association(
            HOST, qr.port, called_ae_title=AE_TITLE, contexts=query_contexts([S_FIND]), dimse_timeout=WAIT
        )
        try:
            for round_ in range(15):
                pid = list(expected)[(n + round_) % len(expected)]
                studies = [
                    r async for r in assoc.find(ident("STUDY", PatientID=pid, StudyInstanceUID=""), S_FIND)
                ]
                got = [r.identifier for r in studies if r.pending]
                if len(got) != expected[pid] or any(str(a.PatientID) != pid for a in got):
                    problems.append(f"client {n}: PatientID={pid}: {[str(a.PatientID) for a in got]}")
                images = [
                    r
                    async for r in assoc.find(
                        ident(
                            "IMAGE", StudyInstanceUID=qr.study, SeriesInstanceUID=qr.series, SOPInstanceUID=""
                        ),
                        S_FIND,
                    )
                ]
                sops = sorted(str(r.identifier.SOPInstanceUID) for r in images if r.pending)
                if sops != sorted(qr.sops):
                    problems.append(f"client {n}: series answered {sops}")
                patients = [r async for r in assoc.find(ident("STUDY", PatientID="", PatientName=""), S_FIND)]
                if sum(1 for r in patients if r.pending) < len(expected):
                    problems.append(f"client {n}: {sum(1 for r in patients if r.pending)} studies in all")
        finally:
            await assoc.release()
        return problems

    async def run_all() -> list[str]:
        results = await asyncio.gather(*(client(n) for n in range(8)))
        return [p for r in results for p in r]

    assert asyncio.run(run_all()) == []
