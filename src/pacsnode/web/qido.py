"""PS3.18 10.6: QIDO-RS search: query parameters as C-FIND identifiers, answers as DICOM JSON."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from pacsnode.archive.qr_model import (
    IMAGE,
    INSTANCE_AVAILABILITY,
    QUERY_RETRIEVE_LEVEL,
    SERIES,
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY,
    STUDY_INSTANCE_UID,
    QueryOptions,
    vr_of,
)
from pacsnode.archive.query import COLUMNS, Answer, Element, PreparedQuery, QueryEngine, prepare
from pacsnode.web.dicomjson import answer_json
from pacsnode.web.dicomxml import dataset_xml

# PS3.18 Table 6.7.1-2a (10.6.3.3.1): the attributes every answer carries at each level.
STUDY_DEFAULTS = (
    0x00080020,  # StudyDate
    0x00080030,  # StudyTime
    0x00080050,  # AccessionNumber
    0x00080056,  # InstanceAvailability
    0x00080061,  # ModalitiesInStudy
    0x00080090,  # ReferringPhysicianName
    0x00100010,  # PatientName
    0x00100020,  # PatientID
    0x00100030,  # PatientBirthDate
    0x00100040,  # PatientSex
    0x0020000D,  # StudyInstanceUID
    0x00200010,  # StudyID
    0x00201206,  # NumberOfStudyRelatedSeries
    0x00201208,  # NumberOfStudyRelatedInstances
)
SERIES_DEFAULTS = (
    0x00080060,  # Modality
    0x0008103E,  # SeriesDescription
    0x0020000E,  # SeriesInstanceUID
    0x00200011,  # SeriesNumber
    0x00201209,  # NumberOfSeriesRelatedInstances
    0x00400244,  # PerformedProcedureStepStartDate
    0x00400245,  # PerformedProcedureStepStartTime
)
INSTANCE_DEFAULTS = (
    0x00080016,  # SOPClassUID
    0x00080018,  # SOPInstanceUID
    0x00080056,  # InstanceAvailability
    0x00200013,  # InstanceNumber
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
)
_DEFAULTS = {STUDY: STUDY_DEFAULTS, SERIES: SERIES_DEFAULTS, IMAGE: INSTANCE_DEFAULTS}
_DEPTH = {STUDY: 0, SERIES: 1, IMAGE: 2}
_LEVEL_OF_COLUMN = {"PATIENT": 0, "STUDY": 0, "SERIES": 1, "IMAGE": 2}

_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_RESERVED = frozenset(("includefield", "fuzzymatching", "limit", "offset", "orderby"))
RETRIEVE_URL = 0x00081190
MAX_VALUE = 4096  # longer query values are refused (400), not matched


class SearchError(ValueError):
    """A query the origin server cannot run: answered 400 with this message."""


@dataclass(frozen=True, slots=True)
class Search:
    """A parsed QIDO-RS request: the identifier to run, and the paging asked for."""

    level: str
    identifier: list[Element]
    options: QueryOptions
    limit: int | None
    offset: int


def attribute_path(text: str) -> list[int]:
    """An attributeID of PS3.18 8.3.4.1: a keyword or 8 hex digits, dotted for sequence items."""
    tags: list[int] = []
    for part in text.split("."):
        part = part.strip()
        if _HEX_TAG.match(part):
            tags.append(int(part, 16))
            continue
        tag = tag_for_keyword(part)
        if tag is None:
            raise SearchError(f"unknown attribute {part[:64]!r}")
        tags.append(tag)
    if not tags:
        raise SearchError("empty attribute")
    return tags


def _value(tag: int, vr: str, text: str) -> str:
    if len(text) > MAX_VALUE:
        raise SearchError(f"the value of {keyword_for_tag(tag) or f'{tag:08X}'} is too long")
    if "\0" in text:
        raise SearchError("a query value contains NUL")
    if vr == "UI":
        # PS3.18 8.3.4.1: a list of UIDs is comma-separated; C-FIND separates with backslash.
        return "\\".join(v.strip() for v in text.replace(",", "\\").split("\\"))
    return text


def _nest(tags: Sequence[int], value: str | None) -> Element:
    """An identifier element for a (possibly sequence) path; ``value`` None is a return key."""
    tag = tags[0]
    if len(tags) == 1:
        vr = vr_of(tag)
        if vr == "SQ":
            return (tag, "SQ", [])
        return (tag, vr, None if value is None else _value(tag, vr, value))
    if vr_of(tag) != "SQ":
        raise SearchError(f"{keyword_for_tag(tag) or f'{tag:08X}'} is not a sequence")
    return (tag, "SQ", [[_nest(tags[1:], value)]])


def _merge(into: dict[int, Element], element: Element) -> None:
    tag, vr, value = element
    old = into.get(tag)
    if old is not None and vr == "SQ" and old[1] == "SQ" and old[2] and value:
        item = {e[0]: e for e in old[2][0]}
        for sub in value[0]:
            _merge(item, sub)
        into[tag] = (tag, "SQ", [list(item.values())])
        return
    if old is not None and old[2] is not None and value is None:
        return  # a matching key stays when includefield names it too
    into[tag] = element


def _level_fields(level: str) -> Iterable[int]:
    """includefield=all: every attribute the index holds at this level and above."""
    depth = _DEPTH[level]
    return (tag for tag, col in COLUMNS.items() if _LEVEL_OF_COLUMN[col.level] <= depth)


def parse(
    level: str,
    params: Sequence[tuple[str, str]],
    scope: dict[int, str],
    *,
    max_results: int,
    case_insensitive_names: bool,
) -> Search:
    """A QIDO-RS request at ``level`` (STUDY, SERIES, IMAGE) with the UIDs of its path in ``scope``."""
    keys: dict[int, Element] = {}
    include: list[int] = []
    fuzzy = False
    limit: int | None = None
    offset = 0
    for name, raw in params:
        lowered = name.lower()
        if lowered == "includefield":
            for field in raw.split(","):
                if field.strip().lower() == "all":
                    include.extend(_level_fields(level))
                elif field.strip():
                    _merge(keys, _nest(attribute_path(field), None))
            continue
        if lowered == "fuzzymatching":
            if raw.lower() not in ("true", "false"):
                raise SearchError("fuzzymatching is true or false")
            fuzzy = raw.lower() == "true"
            continue
        if lowered in ("limit", "offset"):
            if not raw.isdigit() or len(raw) > 9:
                raise SearchError(f"{lowered} is a non-negative integer")
            if lowered == "limit":
                limit = int(raw)
            else:
                offset = int(raw)
            continue
        if lowered == "orderby":
            raise SearchError("orderby is not supported")
        if lowered in _RESERVED:
            continue
        tags = attribute_path(name)
        if tags[0] == QUERY_RETRIEVE_LEVEL:
            raise SearchError("QueryRetrieveLevel is set by the resource, not a parameter")
        _merge(keys, _nest(tags, raw))
    for tag, uid in scope.items():
        keys[tag] = (tag, "UI", uid)
    for tag in _defaults(level, scope):
        _merge(keys, (tag, vr_of(tag), None))
    for tag in include:
        _merge(keys, (tag, vr_of(tag), None))
    keys.pop(INSTANCE_AVAILABILITY, None)
    identifier: list[Element] = [(QUERY_RETRIEVE_LEVEL, "CS", level), *keys.values()]
    # Instance Availability is computed by the engine when it is requested.
    identifier.append((INSTANCE_AVAILABILITY, "CS", None))
    cap = max_results or None
    if limit is not None and cap is not None:
        limit = min(limit, cap)
    options = QueryOptions(relational=True, fuzzy_names=fuzzy, case_insensitive_names=case_insensitive_names)
    return Search(level, identifier, options, limit if limit is not None else cap, offset)


def _defaults(level: str, scope: dict[int, str]) -> list[int]:
    # PS3.18 10.6.3.3.1: a search of all series (or instances) without a study in the
    # path also returns the study's defaults; without a series, the series' too.
    out = list(_DEFAULTS[level])
    if level in (SERIES, IMAGE) and STUDY_INSTANCE_UID not in scope:
        out.extend(STUDY_DEFAULTS)
    if level == IMAGE and SERIES_INSTANCE_UID not in scope:
        out.extend(SERIES_DEFAULTS)
    if level != IMAGE:
        out = [t for t in out if t != SOP_INSTANCE_UID]
    # The unique keys of the levels above always come back (they name the result).
    if level in (SERIES, IMAGE):
        out.append(STUDY_INSTANCE_UID)
    if level == IMAGE:
        out.append(SERIES_INSTANCE_UID)
    return out


# ---------------------------------------------------------------- the HTTP resource


def prepared(search: Search) -> PreparedQuery:
    """The engine's query for a search (raises QueryError)."""
    return prepare(search.identifier, STUDY, search.options)


def run_search(
    engine: QueryEngine, search: Search, base: str, *, xml: bool = False, query: PreparedQuery | None = None
) -> tuple[list[Any], bool]:
    """The answers of a search, and whether more matched than were sent (blocking).

    Each answer carries its Retrieve URL; it is a DICOM JSON object, or with ``xml`` a
    PS3.19 document.  A search that is not selective runs (and is encoded) off the loop.
    """
    if query is None:
        query = prepared(search)
    wanted = None if search.limit is None else search.offset + search.limit + 1
    out: list[Any] = []
    more = False
    stream = not engine.is_selective(query)
    for position, answer in enumerate(engine.find(query, limit=wanted or 0, stream=stream)):
        if position < search.offset:
            continue
        if search.limit is not None and len(out) >= search.limit:
            more = True
            break
        answer.elements.pop(QUERY_RETRIEVE_LEVEL, None)  # a C-FIND key, not a QIDO-RS attribute
        # PS3.18 10.6.3.3.1: each match names the WADO-RS resource it can be retrieved from.
        answer.elements[RETRIEVE_URL] = ("UR", retrieve_url(base, search.level, answer))
        if xml:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append(dataset_xml(answer.dataset()))
        else:
            out.append(answer_json(answer))
    return out, more


def retrieve_url(base: str, level: str, answer: Answer) -> str:
    """PS3.18 10.6.3.3.1 Retrieve URL (0008,1190) of a match: its WADO-RS resource."""
    values = answer.elements
    url = f"{base}/studies/{values.get(STUDY_INSTANCE_UID, ('', ''))[1]}"
    if level in (SERIES, IMAGE):
        url += f"/series/{values.get(SERIES_INSTANCE_UID, ('', ''))[1]}"
    if level == IMAGE:
        url += f"/instances/{values.get(SOP_INSTANCE_UID, ('', ''))[1]}"
    return url
