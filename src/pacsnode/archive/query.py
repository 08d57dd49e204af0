"""PS3.4 C.2.2 / C.4 / C.6: the query engine: matching keys to SQL over the index, answers as data sets.

One engine serves C-FIND, C-MOVE / C-GET (which instances a retrieve names)
and, later, QIDO-RS and the admin API.  Keys held in index columns become SQL
conditions that use the indexes; the few rules SQL cannot decide exactly
(person-name component groups, fuzzy names, multi-valued attributes) narrow in
SQL and are confirmed in Python; keys the index does not hold are read from one
stored instance of each candidate entity (its header, never its pixels).
"""

from __future__ import annotations

import itertools
import logging
import threading
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import ColumnClause

from pacsnode.archive.index import ArchiveIndex
from pacsnode.archive.matching import (
    InvalidKey,
    Kind,
    Matcher,
    classify,
    like_pattern,
    multi_values,
    name_matches,
    normalize_name,
    prefix_upper_bound,
    value_matches,
)
from pacsnode.archive.qr_model import (
    ANY_LEVEL,
    DEPTH,
    IMAGE,
    INSTANCE_AVAILABILITY,
    PATIENT,
    QUERY_RETRIEVE_LEVEL,
    RETRIEVE_AE_TITLE,
    SERIES,
    STUDY,
    UNIQUE_KEY,
    QueryOptions,
    key_level,
    levels_of_root,
    name_of,
    vr_of,
)
from pacsnode.archive.schema import instances, patient_name_keys, patients, series, studies

log = logging.getLogger("pacsnode.query")

# PS3.4 C.4.1.1.4 (C-FIND) / C.4.2.1.5 (C-MOVE, C-GET) status codes the engine raises.
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000

_ESCAPE = "!"


class QueryError(Exception):
    """The request cannot be answered: a DIMSE failure status, a comment and the offending keys."""

    def __init__(self, status: int, comment: str, offending: Sequence[int] = ()) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.offending = tuple(offending)


@dataclass(frozen=True, slots=True)
class _Column:
    level: str
    name: str
    kind: str  # text, int, pn, multi (backslash-joined), count (return only)


# The keys the index holds (PS3.4 C.6.1.1 / C.6.2.1 required and common optional keys).
COLUMNS: dict[int, _Column] = {
    0x00100020: _Column(PATIENT, "patient_id", "text"),
    0x00100021: _Column(PATIENT, "issuer_of_patient_id", "text"),
    0x00100010: _Column(PATIENT, "patient_name", "pn"),
    0x00100030: _Column(PATIENT, "patient_birth_date", "text"),
    0x00100040: _Column(PATIENT, "patient_sex", "text"),
    0x0020000D: _Column(STUDY, "study_instance_uid", "text"),
    0x00080020: _Column(STUDY, "study_date", "text"),
    0x00080030: _Column(STUDY, "study_time", "text"),
    0x00080050: _Column(STUDY, "accession_number", "text"),
    0x00200010: _Column(STUDY, "study_id", "text"),
    0x00081030: _Column(STUDY, "study_description", "text"),
    0x00080090: _Column(STUDY, "referring_physician_name", "pn"),
    0x00080061: _Column(STUDY, "modalities_in_study", "multi"),
    0x00080062: _Column(STUDY, "sop_classes_in_study", "multi"),
    0x00201206: _Column(STUDY, "number_of_study_related_series", "count"),
    0x00201208: _Column(STUDY, "number_of_study_related_instances", "count"),
    0x0020000E: _Column(SERIES, "series_instance_uid", "text"),
    0x00080060: _Column(SERIES, "modality", "text"),
    0x00200011: _Column(SERIES, "series_number", "int"),
    0x0008103E: _Column(SERIES, "series_description", "text"),
    0x00080021: _Column(SERIES, "series_date", "text"),
    0x00080031: _Column(SERIES, "series_time", "text"),
    0x00180015: _Column(SERIES, "body_part_examined", "text"),
    0x00400244: _Column(SERIES, "performed_procedure_step_start_date", "text"),
    0x00400245: _Column(SERIES, "performed_procedure_step_start_time", "text"),
    0x00081010: _Column(SERIES, "station_name", "text"),
    0x00080080: _Column(SERIES, "institution_name", "text"),
    0x00201209: _Column(SERIES, "number_of_series_related_instances", "count"),
    0x00080018: _Column(IMAGE, "sop_instance_uid", "text"),
    0x00080016: _Column(IMAGE, "sop_class_uid", "text"),
    0x00200013: _Column(IMAGE, "instance_number", "int"),
    0x00280010: _Column(IMAGE, "rows", "int"),
    0x00280011: _Column(IMAGE, "columns", "int"),
    0x00280008: _Column(IMAGE, "number_of_frames", "int"),
    0x00080023: _Column(IMAGE, "content_date", "text"),
    0x00080033: _Column(IMAGE, "content_time", "text"),
    0x00083002: _Column(IMAGE, "transfer_syntax_uid", "text"),  # Available Transfer Syntax UID
}
# PS3.4 C.6.1.1.3: Number of Patient Related Studies / Series / Instances, computed.
_PATIENT_COUNTS = (0x00201200, 0x00201202, 0x00201204)
# PS3.4 C.2.2.2.5.2: date and time keys matched together when combined matching is negotiated.
_DATE_TIME_PAIRS = ((0x00080020, 0x00080030), (0x00080021, 0x00080031), (0x00080023, 0x00080033))

_TABLES = {PATIENT: patients, STUDY: studies, SERIES: series, IMAGE: instances}
_PAGE = 256  # rows per round trip when PostgreSQL streams a large answer
# Unique or nearly unique indexed keys: one value of these finds a handful of rows.
_SELECTIVE = frozenset((0x00100020, 0x0020000D, 0x0020000E, 0x00080018, 0x00080050))


@dataclass(frozen=True, slots=True)
class Key:
    """One key of the identifier, classified."""

    tag: int
    vr: str
    matcher: Matcher
    level: str | None


@dataclass(slots=True)
class PreparedQuery:
    """A validated query: its level, keys and options."""

    root: str
    level: str
    keys: list[Key]
    options: QueryOptions
    requested: frozenset[int]  # the tags of the identifier

    @property
    def needs_file(self) -> bool:
        """Whether some key is answered from a stored instance rather than the index."""
        return any(k.tag not in COLUMNS and k.tag not in _PATIENT_COUNTS for k in self.keys)


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """An instance a retrieve names: what sending it needs."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    # The study's patient and accession number: what the audit trail names (PS3.15 A.5.3).
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""


# An identifier's element: (tag, VR, value); the value is text (the DICOM form, values
# joined by backslashes), None, bytes (binary VRs), or for a sequence its items, each a
# list of elements.
Element = tuple[int, str, Any]


def _text_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def elements_of(ds: Dataset) -> list[Element]:
    """A pydicom Dataset as identifier elements (values decoded with its character set)."""
    out: list[Element] = []
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
        except Exception:
            # A value pydicom cannot convert (an ambiguous VR whose deciding element is
            # empty, say): kept as opaque bytes, a return key that matches everything.
            raw = ds.get_item(tag)
            out.append((int(tag), "UN", getattr(raw, "value", None) or b""))
            continue
        vr = str(elem.VR)
        if vr == "SQ":
            out.append((int(elem.tag), vr, [elements_of(item) for item in elem.value or []]))
        elif vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            out.append((int(elem.tag), vr, elem.value))
        else:
            out.append((int(elem.tag), vr, _text_of(elem.value)))
    return out


def _classify_element(tag: int, vr: str, value: Any, depth: int = 0) -> Matcher:
    if vr == "SQ":
        items: list[tuple[int, Matcher]] = []
        if depth > 8:
            raise InvalidKey(tag, "sequence keys nest too deep")
        if value:
            items = [(t, _classify_element(t, v, x, depth + 1)) for t, v, x in value[0]]
        return Matcher(Kind.SEQUENCE, "SQ", items=tuple(items))
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV") or isinstance(value, bytes):
        # Binary values cannot be matched: such a key is a return key (universal).
        return Matcher(Kind.UNIVERSAL, vr)
    return classify(tag, vr if vr != "UN" else vr_of(tag), value)


def prepare(
    identifier: Dataset | list[Element], root: str, options: QueryOptions, *, retrieve: bool = False
) -> PreparedQuery:
    """Validate an identifier against the model (PS3.4 C.4.1.2.1 / C.4.2.2.1); raise QueryError."""
    elements = elements_of(identifier) if isinstance(identifier, Dataset) else identifier
    level = next((str(v or "").strip() for t, _, v in elements if t == QUERY_RETRIEVE_LEVEL), "")
    allowed = levels_of_root(root)
    if not level:
        raise QueryError(
            IDENTIFIER_DOES_NOT_MATCH, "Query/Retrieve Level (0008,0052) is missing", [QUERY_RETRIEVE_LEVEL]
        )
    if level not in allowed:
        raise QueryError(
            IDENTIFIER_DOES_NOT_MATCH,
            f"Query/Retrieve Level {level[:20]!r} is not one of {', '.join(allowed)} of this model",
            [QUERY_RETRIEVE_LEVEL],
        )
    keys: list[Key] = []
    for tag, vr, value in elements:
        if tag in ANY_LEVEL or tag >> 16 in (0x0000, 0x0002) or (tag >> 16) & 1 or tag & 0xFFFF == 0:
            continue  # group lengths, private keys: nothing to match or return
        key_lvl = key_level(tag, root)
        if not options.relational and key_lvl is not None and DEPTH[key_lvl] > DEPTH[level]:
            # PS3.4 C.4.1.2.1 (hierarchical): no keys of the levels below the Q/R level.
            raise QueryError(
                IDENTIFIER_DOES_NOT_MATCH,
                f"{name_of(tag)} is a {key_lvl}-level key, below the {level} level of this query",
                [tag],
            )
        try:
            matcher = _classify_element(tag, vr, value)
        except InvalidKey as exc:
            raise QueryError(UNABLE_TO_PROCESS, f"invalid key value: {exc}", [exc.tag]) from None
        keys.append(Key(tag, vr, matcher, key_lvl))
    requested = frozenset(t for t, _, _ in elements)
    prepared = PreparedQuery(root, level, keys, options, requested)
    if retrieve:
        _check_retrieve(prepared)
    elif options.relational:
        for key in keys:
            if (
                key.level is not None
                and DEPTH[key.level] > DEPTH[level]
                and not key.matcher.is_universal
                and key.tag not in COLUMNS
            ):
                raise QueryError(
                    UNABLE_TO_PROCESS,
                    f"relational matching on {name_of(key.tag)} is not supported (only indexed keys)",
                    [key.tag],
                )
    return prepared


def _check_retrieve(query: PreparedQuery) -> None:
    # PS3.4 C.4.2.2.1: a retrieve names entities by the Unique Key of its level (one
    # value or a list); other keys are ignored.
    unique = UNIQUE_KEY[query.level]
    key = next((k for k in query.keys if k.tag == unique), None)
    if key is None or key.matcher.kind not in (Kind.SINGLE, Kind.UID_LIST):
        raise QueryError(
            IDENTIFIER_DOES_NOT_MATCH,
            f"a {query.level}-level retrieve needs {name_of(unique)} with one value or a list of values",
            [unique],
        )
    uniques = set(UNIQUE_KEY.values())
    query.keys = [k for k in query.keys if k.tag in uniques and not k.matcher.is_universal]


# ---------------------------------------------------------------- SQL


_LABELS: dict[int, str] = {}


def _label(tag: int) -> str:
    """The name of a key's column in a result row (computed once per tag: it is read per row)."""
    label = _LABELS.get(tag)
    if label is None:
        label = _LABELS[tag] = f"c_{tag:08x}"
    return label


def _col(tag: int) -> ColumnClause[Any]:
    spec = COLUMNS[tag]
    column: ColumnClause[Any] = _TABLES[spec.level].c[spec.name]
    return column


def _like(column: Any, value: str) -> ColumnElement[bool]:
    pattern, prefix = like_pattern(value, _ESCAPE)
    condition: ColumnElement[bool] = column.like(pattern, escape=_ESCAPE)
    if prefix:
        # The literal prefix as a range: an index range scan on SQLite and PostgreSQL alike.
        condition = and_(column >= prefix, column < prefix_upper_bound(prefix), condition)
    return condition


def _text_condition(column: Any, matcher: Matcher, kind: str) -> ColumnElement[bool] | None:
    if matcher.kind is Kind.UNIVERSAL:
        return None
    if matcher.kind is Kind.RANGE:
        parts = [column != ""]
        if matcher.low:
            parts.append(column >= matcher.low)
        if matcher.high:
            parts.append(column <= matcher.high + "~")
        return and_(*parts)
    if kind == "int":
        numbers = [int(v) for v in matcher.values]
        return column == numbers[0] if len(numbers) == 1 else column.in_(numbers)  # type: ignore[no-any-return]
    if matcher.vr in ("TM", "DT"):
        return or_(*(and_(column >= v, column <= v + "~") for v in matcher.values))
    if matcher.kind is Kind.WILDCARD:
        return or_(*(_like(column, v) for v in matcher.values))
    if len(matcher.values) == 1:
        return column == matcher.values[0]  # type: ignore[no-any-return]
    return column.in_(list(matcher.values))  # type: ignore[no-any-return]


def _name_condition(matcher: Matcher, options: QueryOptions) -> ColumnElement[bool] | None:
    # Narrow through patient_name_keys (every component group, folded); exact in Python.
    if matcher.kind is Kind.UNIVERSAL or options.fuzzy_names:
        return None
    if any("=" in v for v in matcher.values):
        return None
    keys = patient_name_keys.c.name_key
    conditions: list[ColumnElement[bool]] = []
    for value in matcher.values:
        folded = normalize_name(value).rstrip(" ^") if matcher.kind is Kind.SINGLE else normalize_name(value)
        conditions.append(keys == folded if matcher.kind is Kind.SINGLE else _like(keys, folded))
    return patients.c.id.in_(select(patient_name_keys.c.patient_fk).where(or_(*conditions)))


def _modalities_condition(matcher: Matcher) -> ColumnElement[bool] | None:
    # Modalities in Study (0008,0061): studies with a series of that modality (indexed).
    if matcher.kind is Kind.UNIVERSAL:
        return None
    if matcher.kind is Kind.WILDCARD:
        where = or_(*(_like(series.c.modality, v) for v in matcher.values))
    else:
        where = series.c.modality.in_(list(matcher.values))
    return studies.c.id.in_(select(series.c.study_fk).where(where))


def _combined(query: PreparedQuery) -> tuple[list[ColumnElement[bool]], set[int]]:
    # PS3.4 C.2.2.2.5.2: with combined matching, a date range and a time range mean one
    # date-time range: StudyDate=20060705-20060707 with StudyTime=1000-1800 starts on the
    # 5th at 10:00 and ends on the 7th at 18:00.
    if not query.options.combined_datetime:
        return [], set()
    by_tag = {k.tag: k for k in query.keys}
    out: list[ColumnElement[bool]] = []
    done: set[int] = set()
    for date_tag, time_tag in _DATE_TIME_PAIRS:
        date_key, time_key = by_tag.get(date_tag), by_tag.get(time_tag)
        if date_key is None or time_key is None:
            continue
        if date_key.matcher.kind is not Kind.RANGE or time_key.matcher.kind is not Kind.RANGE:
            continue
        d, t = _col(date_tag), _col(time_tag)
        dm, tm = date_key.matcher, time_key.matcher
        out.append(d != "")
        if dm.low:
            out.append(or_(d > dm.low, and_(d == dm.low, t >= tm.low)) if tm.low else d >= dm.low)
        if dm.high:
            out.append(or_(d < dm.high, and_(d == dm.high, t <= tm.high + "~")) if tm.high else d <= dm.high)
        done |= {date_tag, time_tag}
    return out, done


_UPWARD = [IMAGE, SERIES, STUDY, PATIENT]
_PARENT_FK = {IMAGE: instances.c.series_fk, SERIES: series.c.study_fk, STUDY: studies.c.patient_fk}


def _joined(levels: list[str]) -> Any:
    """The tables of these levels (child first) joined each to its parent."""
    source: Any = _TABLES[levels[0]]
    for child, parent in itertools.pairwise(levels):
        source = source.join(_TABLES[parent], _TABLES[parent].c.id == _PARENT_FK[child])
    return source


def _representative_path(level: str) -> Any:
    """A scalar subquery: the path of one instance of the entity (for keys the index lacks)."""
    if level == IMAGE:
        return instances.c.path
    inner = select(instances.c.path)
    if level == SERIES:
        inner = inner.where(instances.c.series_fk == series.c.id)
    elif level == STUDY:
        inner = inner.join(series, series.c.id == instances.c.series_fk)
        inner = inner.where(series.c.study_fk == studies.c.id)
    else:
        inner = (
            inner.join(series, series.c.id == instances.c.series_fk)
            .join(studies, studies.c.id == series.c.study_fk)
            .where(studies.c.patient_fk == patients.c.id)
        )
    return inner.order_by(instances.c.id).limit(1).correlate_except(instances).scalar_subquery()


def _patient_counts() -> dict[int, Any]:
    s2 = studies.alias("s2")
    se2 = series.alias("se2")
    return {
        0x00201200: select(func.count())
        .select_from(s2)
        .where(s2.c.patient_fk == patients.c.id)
        .scalar_subquery(),
        0x00201202: select(func.count())
        .select_from(se2.join(s2, s2.c.id == se2.c.study_fk))
        .where(s2.c.patient_fk == patients.c.id)
        .scalar_subquery(),
        0x00201204: select(func.coalesce(func.sum(s2.c.number_of_study_related_instances), 0))
        .where(s2.c.patient_fk == patients.c.id)
        .scalar_subquery(),
    }


@lru_cache(maxsize=512)
def _base_select(level: str, wanted: frozenset[int], needs_file: bool) -> Select[Any]:
    """The columns and joins of a level's SELECT (built once per shape: construction costs)."""
    source = _joined(_UPWARD[_UPWARD.index(level) :])
    columns: list[Any] = [_TABLES[level].c.id.label("entity_id")]
    for tag, spec in COLUMNS.items():
        if DEPTH[spec.level] <= DEPTH[level] and (tag in wanted or spec.kind == "pn"):
            columns.append(_col(tag).label(_label(tag)))
    if level == PATIENT:
        for tag, expr in _patient_counts().items():
            if tag in wanted:
                columns.append(expr.label(_label(tag)))
    if needs_file:
        columns.append(_representative_path(level).label("rep_path"))
    return select(*columns).select_from(source)


def build_select(query: PreparedQuery) -> Select[Any]:
    """The SELECT for a prepared query: the level's rows joined to their parents, filtered.

    No ORDER BY: C-FIND answers in no particular order (PS3.4 C.4.1.2.3), and a sort
    would hold the first answer back until the last row is read.
    """
    return _select(query)[0]


def _select(query: PreparedQuery) -> tuple[Select[Any], set[int]]:
    """The SELECT, and the keys whose match it decides exactly (the others are checked in Python)."""
    level = query.level
    wanted = frozenset(k.tag for k in query.keys if k.tag in COLUMNS or k.tag in _PATIENT_COUNTS)
    stmt = _base_select(level, wanted, query.needs_file)
    conditions, exact = _combined(query)
    below: list[ColumnElement[bool]] = []
    for key in query.keys:
        if key.tag in exact or key.matcher.is_universal:
            continue
        spec = COLUMNS.get(key.tag)
        if spec is None or spec.kind == "count":
            continue
        if DEPTH[spec.level] > DEPTH[level]:
            cond = _text_condition(_col(key.tag), key.matcher, spec.kind)
            if cond is not None:
                below.append(cond)
            exact.add(key.tag)
            continue
        if spec.kind == "pn":
            cond = _name_condition(key.matcher, query.options) if key.tag == 0x00100010 else None
        elif key.tag == 0x00080061:
            cond = _modalities_condition(key.matcher)
            exact.add(key.tag)
        elif spec.kind == "multi":
            cond = None
        else:
            cond = _text_condition(_col(key.tag), key.matcher, spec.kind)
            exact.add(key.tag)
        if cond is not None:
            conditions.append(cond)
    if below:
        stmt = stmt.where(_TABLES[level].c.id.in_(_below_subquery(level, below)))
    if conditions:
        stmt = stmt.where(*conditions)
    return stmt, exact


def _below_subquery(level: str, conditions: list[ColumnElement[bool]]) -> Select[Any]:
    """Relational matching: the ids of level entities that have a matching descendant."""
    source = _joined(_UPWARD[: _UPWARD.index(level) + 1])
    return select(_TABLES[level].c.id).select_from(source).where(*conditions)


# ---------------------------------------------------------------- answers


@dataclass
class _Candidate:
    row: Any
    header: Dataset | None = None


class QueryEngine:
    """Runs prepared queries against the index; reads stored headers for keys it does not hold."""

    def __init__(self, index: ArchiveIndex, resolve: Callable[[str], Path], retrieve_ae_title: str) -> None:
        self.index = index
        self.resolve = resolve
        self.retrieve_ae_title = retrieve_ae_title

    @staticmethod
    def is_selective(query: PreparedQuery) -> bool:
        """Whether a query is answered from an index lookup of a few rows, without reading files.

        Such a query may run on the caller's thread: a thread hop would cost more.
        """
        if query.needs_file or query.options.fuzzy_names:
            return False
        for key in query.keys:
            m = key.matcher
            if key.tag in _SELECTIVE and m.kind in (Kind.SINGLE, Kind.UID_LIST) and len(m.values) <= 64:
                return True
            if key.tag == 0x00100010 and m.kind is Kind.SINGLE and not any("=" in v for v in m.values):
                return True
        return False

    def find(
        self,
        query: PreparedQuery,
        cancelled: threading.Event | None = None,
        limit: int = 0,
        *,
        stream: bool = True,
    ) -> Generator[Answer, None, None]:
        """Yield one response identifier per matching entity, as the database yields rows.

        ``stream``: on PostgreSQL, read through a server-side cursor (rows arrive as the
        server yields them, memory stays bounded); a selective query skips it, saving its
        round trips.  SQLite's cursor always steps lazily.
        """
        stmt, exact = _select(query)
        sent = 0
        rows = self._rows(stmt, _TABLES[query.level].c.id, stream)
        try:
            for row in rows:
                if cancelled is not None and cancelled.is_set():
                    return
                candidate = _Candidate(row)
                if not self._confirm(query, candidate, exact):
                    continue
                yield self._answer(query, candidate)
                sent += 1
                if limit and sent >= limit:
                    return
        finally:
            rows.close()

    def _rows(self, stmt: Select[Any], entity_id: Any, stream: bool) -> Generator[Any, None, None]:
        """The rows of a SELECT, read on the reader engine.

        SQLite's cursor steps lazily: one query, rows as they are found.  On PostgreSQL a
        streamed query is read in pages by entity id (keyset pagination): memory stays
        bounded and each page costs one round trip, where a server-side cursor costs
        five (BEGIN, DECLARE, FETCH, CLOSE, ROLLBACK).
        """
        conn = self.index.reader.connect()
        paged = stream and conn.dialect.name != "sqlite"

        def page(last: int) -> Select[Any]:
            return stmt.where(entity_id > last).order_by(entity_id).limit(_PAGE)

        try:
            first = page(0) if paged else stmt
            try:
                result = conn.execute(first)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # The server dropped the connection (a restart): once more, on a new one.
                conn.close()
                conn = self.index.reader.connect()
                result = conn.execute(first)
            if not paged:
                try:
                    yield from result
                finally:
                    result.close()
                return
            rows = result.all()
            while True:
                yield from rows
                if len(rows) < _PAGE:
                    return
                rows = conn.execute(page(rows[-1].entity_id)).all()
        finally:
            conn.close()

    def instances(self, query: PreparedQuery, cancelled: threading.Event | None = None) -> list[InstanceRef]:
        """Every instance a retrieve identifier names (PS3.4 C.4.2.2.1), in series and instance order."""
        stmt = (
            select(
                instances.c.sop_class_uid,
                instances.c.sop_instance_uid,
                instances.c.transfer_syntax_uid,
                instances.c.path,
                instances.c.size,
                series.c.series_instance_uid,
                studies.c.study_instance_uid,
                patients.c.patient_id,
                patients.c.patient_name,
                studies.c.accession_number,
            )
            .select_from(_joined(_UPWARD))
            .order_by(series.c.id, instances.c.instance_number, instances.c.id)
        )
        conditions: list[ColumnElement[bool]] = []
        for key in query.keys:
            spec = COLUMNS[key.tag]
            cond = _text_condition(_col(key.tag), key.matcher, spec.kind)
            if cond is not None:
                conditions.append(cond)
        if conditions:
            stmt = stmt.where(*conditions)
        with self.index.reader.connect() as conn:
            out = []
            for row in conn.execute(stmt):
                if cancelled is not None and cancelled.is_set():
                    break
                out.append(InstanceRef(*row[:7], *(text or "" for text in row[7:])))
            return out

    # ------------------------------------------------------------ per entity

    def _header(self, candidate: _Candidate) -> Dataset:
        if candidate.header is None:
            path = getattr(candidate.row, "rep_path", None)
            header = Dataset()
            if path:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        header = dcmread(self.resolve(path), stop_before_pixels=True, force=True)
                except Exception as exc:  # a damaged file costs its keys, not the query
                    log.warning("cannot read %s for query keys: %s", path, exc)
            candidate.header = header
        return candidate.header

    def _stored(self, query: PreparedQuery, candidate: _Candidate, tag: int) -> list[str]:
        spec = COLUMNS.get(tag)
        if spec is not None:
            value = getattr(candidate.row, _label(tag), None)
            if value is None:
                return [""]
            text = str(value)
            return text.split("\\") if spec.kind == "multi" else [text]
        elem = self._header(candidate).get(tag)
        return multi_values(None if elem is None else elem.value)

    def _confirm(self, query: PreparedQuery, candidate: _Candidate, exact: set[int]) -> bool:
        """Whether an entity SQL found matches the keys SQL could not decide exactly."""
        options = query.options
        for key in query.keys:
            if key.tag in exact or key.matcher.is_universal:
                continue
            spec = COLUMNS.get(key.tag)
            if (spec is not None and spec.kind == "count") or key.tag in _PATIENT_COUNTS:
                continue  # computed attributes are returned, not matched
            if key.level is not None and DEPTH[key.level] > DEPTH[query.level]:
                continue  # relational key below the level: decided in SQL
            if key.matcher.kind is Kind.SEQUENCE:
                elem = self._header(candidate).get(key.tag)
                items = list(elem.value) if elem is not None and elem.VR == "SQ" and elem.value else []
                if not _matching_items(key.matcher, items, options):
                    return False
                continue
            stored = self._stored(query, candidate, key.tag)
            if not value_matches(
                key.matcher,
                stored,
                fold_names=options.case_insensitive_names or options.fuzzy_names,
                fuzzy_names=options.fuzzy_names,
            ):
                return False
        return True

    def _answer(self, query: PreparedQuery, candidate: _Candidate) -> Answer:
        out: dict[int, tuple[str, Any]] = {
            QUERY_RETRIEVE_LEVEL: ("CS", query.level),
            RETRIEVE_AE_TITLE: ("AE", self.retrieve_ae_title),
        }
        for key in query.keys:
            vr = key.vr if key.vr != "UN" else vr_of(key.tag)
            if key.level is not None and DEPTH[key.level] > DEPTH[query.level]:
                out[key.tag] = (vr, None)  # a relational key below the level: not returned
                continue
            out[key.tag] = self._element(query, candidate, key, vr)
        if INSTANCE_AVAILABILITY in query.requested:
            # PS3.3 C.4.23.1.1 (0008,0056): every stored instance is on line.
            out[INSTANCE_AVAILABILITY] = ("CS", "ONLINE")
        return Answer(out)

    def _element(self, query: PreparedQuery, candidate: _Candidate, key: Key, vr: str) -> tuple[str, Any]:
        tag = key.tag
        if tag in COLUMNS or tag in _PATIENT_COUNTS:
            value = getattr(candidate.row, _label(tag), None)
            if tag in COLUMNS and COLUMNS[tag].kind == "multi":
                parts = [p for p in str(value or "").split("\\") if p]
                return vr, parts if len(parts) > 1 else (parts[0] if parts else None)
            if value is None or value == "":
                return vr, None
            return vr, value if vr in ("US", "UL", "SS", "SL") else str(value)
        stored = self._header(candidate).get(tag)
        if stored is None:
            return vr, None
        if key.matcher.kind is Kind.SEQUENCE:
            items = list(stored.value) if stored.VR == "SQ" and stored.value else []
            wanted = [t for t, _ in key.matcher.items]
            if wanted:
                items = _matching_items(key.matcher, items, query.options)
            return "SQ", DicomSequence([_reduce(item, wanted) for item in items])
        plain = _plain(stored)
        return str(plain.VR), plain.value


@dataclass(slots=True)
class Answer:
    """One match: (VR, value) by tag; values are text, numbers, lists of them, or Sequences."""

    elements: dict[int, tuple[str, Any]]

    def items(self) -> list[tuple[int, str, Any]]:
        """(tag, VR, value) in ascending tag order, as PS3.5 7.1 encodes them."""
        return [(tag, vr, value) for tag, (vr, value) in sorted(self.elements.items())]

    def texts(self) -> Iterator[str]:
        """Every text value, sequences included (to choose the answer's character set)."""
        for _tag, vr, value in self.items():
            if vr == "SQ":
                for item in value or []:
                    yield from (str(v) for e in item.iterall() if e.VR != "SQ" for v in _as_list(e.value))
            elif value is not None:
                yield from (str(v) for v in _as_list(value))

    def dataset(self) -> Dataset:
        """The answer as a pydicom Dataset."""
        out = Dataset()
        for tag, vr, value in self.items():
            out.add_new(tag, vr, value)
        return out


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _plain(elem: DataElement) -> DataElement:
    """A copy of a stored element with text already decoded (re-encoded in the answer's charset)."""
    vr = str(elem.VR)
    value = elem.value
    if vr == "PN":
        value = (
            [str(v) for v in value]
            if isinstance(value, MultiValue | list | tuple)
            else (str(value) if value is not None else None)
        )
    elif vr == "SQ":
        value = DicomSequence([_reduce(item, []) for item in (value or [])])
    return DataElement(int(elem.tag), vr, value)


def _reduce(item: Dataset, wanted: list[int]) -> Dataset:
    out = Dataset()
    for elem in item:
        if not wanted or int(elem.tag) in wanted:
            out[elem.tag] = _plain(elem)
    for tag in wanted:
        if tag not in out:
            out.add_new(tag, vr_of(tag), None)
    return out


def _matching_items(matcher: Matcher, items: list[Dataset], options: QueryOptions) -> list[Dataset]:
    """PS3.4 C.2.2.2.6: the stored items whose values match every key of the query's item."""
    if not matcher.items:
        return items
    found = []
    for item in items:
        ok = True
        for tag, sub in matcher.items:
            if sub.is_universal:
                continue
            elem = item.get(tag)
            if sub.kind is Kind.SEQUENCE:
                nested = list(elem.value) if elem is not None and elem.VR == "SQ" and elem.value else []
                ok = bool(_matching_items(sub, nested, options))
            else:
                ok = value_matches(
                    sub,
                    multi_values(None if elem is None else elem.value),
                    fold_names=options.case_insensitive_names,
                    fuzzy_names=options.fuzzy_names,
                )
            if not ok:
                break
        if ok:
            found.append(item)
    return found


__all__ = [
    "COLUMNS",
    "Answer",
    "Element",
    "InstanceRef",
    "Key",
    "PreparedQuery",
    "QueryEngine",
    "QueryError",
    "build_select",
    "elements_of",
    "name_matches",
    "prepare",
]
