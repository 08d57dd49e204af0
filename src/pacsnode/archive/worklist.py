"""PS3.4 Annex K: the Modality Worklist: scheduled procedure steps kept, listed, cancelled, matched."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import ColumnElement, and_, or_, select

from pacsnode.archive.index import ArchiveIndex
from pacsnode.archive.matching import InvalidKey, Kind, multi_values, value_matches
from pacsnode.archive.qr_model import QueryOptions, vr_of
from pacsnode.archive.query import (
    UNABLE_TO_PROCESS,
    Answer,
    Element,
    QueryError,
    _classify_element,
    _matching_items,
    _plain,
    _reduce,
)
from pacsnode.archive.schema import worklist_items
from pacsnode.data.transcode import decode, encode
from pacsnode.data.uids import EXPLICIT_VR_LITTLE_ENDIAN

SCHEDULED = "SCHEDULED"
STARTED = "STARTED"  # an MPPS IN PROGRESS performs it (it still answers queries)
CANCELED = "CANCELED"
ACTIVE = (SCHEDULED, STARTED)  # the statuses that answer worklist queries
SPS_SEQUENCE = 0x00400100  # Scheduled Procedure Step Sequence
_SKIP = frozenset((0x00080005, 0x00080052))  # Specific Character Set, Query/Retrieve Level


def stored_bytes(ds: Dataset) -> bytes:
    """A data set as the index keeps it (worklist items, MPPS): Explicit VR LE, no meta."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = Dataset(ds)
        bare.file_meta = None  # type: ignore[assignment]
        return encode(bare, EXPLICIT_VR_LITTLE_ENDIAN)


def stored_dataset(data: bytes) -> Dataset:
    """A data set the index keeps, read back (``stored_bytes``'s inverse)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decode(data, EXPLICIT_VR_LITTLE_ENDIAN)


class WorklistError(ValueError):
    """A worklist item that cannot be scheduled (the message says why)."""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple):  # MultiValue: the DICOM form, backslash-separated
        return "\\".join(str(v) for v in value)
    return str(value)


# Keys the table holds (tag -> column, and whether the key sits in the step's item): a
# query's exact values and date ranges on them narrow the candidates in SQL.
_TOP_COLUMNS = {0x00100020: "patient_id", 0x00080050: "accession_number"}
_STEP_COLUMNS = {
    0x00080060: "modality",
    0x00400001: "station_aet",
    0x00400002: "start_date",
    0x00400009: "sps_id",
}


def _condition(column: Any, matcher: Any, multi: bool) -> Any:
    """A SQL condition no matching item fails (it may let through some that do not match)."""
    if matcher.kind is Kind.SINGLE and matcher.values:
        if multi:  # a multi-valued column (station AE titles): a substring is enough to keep it
            return or_(*(column.like(f"%{_escape(v)}%", escape="!") for v in matcher.values))
        return column.in_([v.strip() for v in matcher.values])
    if matcher.kind is Kind.RANGE:
        conditions = []
        if matcher.low:
            conditions.append(column >= matcher.low[:8])
        if matcher.high:
            conditions.append(column <= matcher.high[:8])
        return and_(*conditions) if conditions else None
    return None


def _escape(value: str) -> str:
    return value.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def item_keys(ds: Dataset) -> dict[str, str]:
    """The keys a worklist item's row holds beside its data set (what a list shows, what SQL narrows on)."""
    steps = ds.get("ScheduledProcedureStepSequence")
    step = steps[0] if steps else Dataset()
    return {
        "accession_number": _text(ds, "AccessionNumber")[:64],
        "patient_id": _text(ds, "PatientID")[:64],
        "patient_name": _text(ds, "PatientName")[:324],
        "sps_id": _text(step, "ScheduledProcedureStepID")[:64],
        "modality": _text(step, "Modality")[:16],
        "station_aet": _text(step, "ScheduledStationAETitle")[:64],
        "start_date": _text(step, "ScheduledProcedureStepStartDate")[:8],
        "start_time": _text(step, "ScheduledProcedureStepStartTime")[:16],
    }


class Worklist:
    """The scheduled procedure steps of the node, in its index; matched in memory."""

    def __init__(self, index: ArchiveIndex) -> None:
        self.index = index
        self._lock = threading.Lock()
        self._items: dict[int, Dataset] | None = None

    # ------------------------------------------------------------ management

    def add(self, ds: Dataset) -> int:
        """Schedule an item (a worklist data set as DCMTK's .wl files hold); returns its id."""
        steps = ds.get("ScheduledProcedureStepSequence")
        # PS3.4 K.6.1.2.2 / Table K.6-1: one Scheduled Procedure Step per worklist item.
        if not steps or len(steps) != 1:
            raise WorklistError("a worklist item has one Scheduled Procedure Step Sequence item")
        try:
            data = stored_bytes(ds)
        except Exception as exc:
            raise WorklistError(f"cannot encode the item: {exc}") from None
        now = datetime.now(UTC)
        row = {"status": SCHEDULED, **item_keys(ds), "dataset": data, "created_at": now, "updated_at": now}
        with self.index.engine.begin() as conn:
            key = conn.execute(worklist_items.insert().values(**row)).inserted_primary_key
            assert key is not None
            new_id = int(key[0])
        with self._lock:
            if self._items is not None:
                self._items[new_id] = stored_dataset(data)
        return new_id

    def cancel(self, item_id: int) -> bool:
        """Take an item off the worklist (it stays in the index, CANCELED); False if unknown."""
        with self.index.engine.begin() as conn:
            done = conn.execute(
                worklist_items.update()
                .where(worklist_items.c.id == item_id, worklist_items.c.status.in_(ACTIVE))
                .values(status=CANCELED, updated_at=datetime.now(UTC))
            ).rowcount
        with self._lock:
            if self._items is not None:
                self._items.pop(item_id, None)
        return bool(done)

    def follow(self, accession_number: str, step_id: str, status: str) -> int:
        """A performed step's status moves the scheduled step it performs (PS3.4 F.7.2.1.1).

        STARTED keeps it on the worklist; COMPLETED and DISCONTINUED take it off.
        Returns the number of items changed.
        """
        conditions: list[ColumnElement[bool]] = [worklist_items.c.status.in_(ACTIVE)]
        if accession_number:
            conditions.append(worklist_items.c.accession_number == accession_number)
        if step_id:
            conditions.append(worklist_items.c.sps_id == step_id)
        with self.index.engine.begin() as conn:
            changed = conn.execute(
                worklist_items.update().where(*conditions).values(status=status, updated_at=datetime.now(UTC))
            ).rowcount
        if changed:
            with self._lock:
                self._items = None  # reloaded at the next query
        return int(changed)

    def reload(self) -> None:
        """Items changed in the index by other code (the HL7 feed): read them again at the next query."""
        with self._lock:
            self._items = None

    def listing(self, *, include_canceled: bool = False) -> list[dict[str, Any]]:
        """Every item with the keys a list shows, oldest first."""
        columns = [c for c in worklist_items.c if c.name != "dataset"]
        stmt = select(*columns).order_by(worklist_items.c.id)
        if not include_canceled:
            stmt = stmt.where(worklist_items.c.status.in_(ACTIVE))
        with self.index.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            {
                "id": r.id,
                "status": r.status,
                "AccessionNumber": r.accession_number,
                "PatientID": r.patient_id,
                "PatientName": r.patient_name,
                "ScheduledProcedureStepID": r.sps_id,
                "Modality": r.modality,
                "ScheduledStationAETitle": r.station_aet,
                "ScheduledProcedureStepStartDate": r.start_date,
                "ScheduledProcedureStepStartTime": r.start_time,
            }
            for r in rows
        ]

    def _scheduled_by_id(self) -> dict[int, Dataset]:
        with self._lock:
            if self._items is None:
                with self.index.engine.connect() as conn:
                    rows = conn.execute(
                        select(worklist_items.c.id, worklist_items.c.dataset).where(
                            worklist_items.c.status.in_(ACTIVE)
                        )
                    ).all()
                self._items = {int(r.id): stored_dataset(bytes(r.dataset)) for r in rows}
            return dict(self._items)

    # ------------------------------------------------------------ C-FIND (PS3.4 K.4.1.3)

    def find(
        self, identifier: list[Element], options: QueryOptions, cancelled: threading.Event | None = None
    ) -> Iterator[Answer]:
        """The items matching a Modality Worklist query, each with the keys it asks for.

        Matching follows PS3.4 K.2.2 (C.2.2.2): single value, universal, wildcard, date and
        time ranges, lists of UIDs, and sequence matching inside the Scheduled Procedure
        Step Sequence; raises QueryError for a value no rule accepts.
        """
        keys = []
        for tag, vr, value in identifier:
            if tag in _SKIP or tag >> 16 in (0x0000, 0x0002) or tag & 0xFFFF == 0:
                continue
            try:
                keys.append((tag, vr if vr != "UN" else vr_of(tag), _classify_element(tag, vr, value)))
            except InvalidKey as exc:
                raise QueryError(UNABLE_TO_PROCESS, f"invalid key value: {exc}", [exc.tag]) from None
        for item in self._candidates(keys):
            if cancelled is not None and cancelled.is_set():
                return
            answer = self._match(item, keys, options)
            if answer is not None:
                yield answer

    def _candidates(self, keys: list[tuple[int, str, Any]]) -> list[Dataset]:
        """The items the indexed keys of a query leave (all of them when it has none)."""
        conditions = []
        for tag, _vr, matcher in keys:
            if tag in _TOP_COLUMNS:
                conditions.append(_condition(worklist_items.c[_TOP_COLUMNS[tag]], matcher, False))
            elif tag == SPS_SEQUENCE and matcher.kind is Kind.SEQUENCE:
                for sub_tag, sub in matcher.items:
                    if sub_tag in _STEP_COLUMNS:
                        column = worklist_items.c[_STEP_COLUMNS[sub_tag]]
                        conditions.append(_condition(column, sub, sub_tag == 0x00400001))
        conditions = [c for c in conditions if c is not None]
        items = self._scheduled_by_id()
        if not conditions:
            return list(items.values())
        stmt = select(worklist_items.c.id).where(worklist_items.c.status.in_(ACTIVE), *conditions)
        with self.index.engine.connect() as conn:
            ids = conn.execute(stmt).scalars().all()
        return [items[i] for i in ids if i in items]

    @staticmethod
    def _match(item: Dataset, keys: list[tuple[int, str, Any]], options: QueryOptions) -> Answer | None:
        fold = options.case_insensitive_names or options.fuzzy_names
        out: dict[int, tuple[str, Any]] = {}
        for tag, vr, matcher in keys:
            stored = item.get(tag)
            if matcher.kind is Kind.SEQUENCE:
                present = stored is not None and stored.VR == "SQ" and stored.value
                items = list(stored.value) if present else []
                found = _matching_items(matcher, items, options)
                # PS3.4 C.2.2.2.6: a sequence of universal keys matches an item without it too.
                if not found and not matcher.is_universal:
                    return None
                wanted = [t for t, _ in matcher.items]
                out[tag] = ("SQ", DicomSequence([_reduce(i, wanted) for i in (found or items)]))
                continue
            if not matcher.is_universal and not value_matches(
                matcher,
                multi_values(None if stored is None else stored.value),
                fold_names=fold,
                fuzzy_names=options.fuzzy_names,
            ):
                return None
            if stored is None:
                out[tag] = (vr, None)
            else:
                plain = _plain(stored)
                out[tag] = (str(plain.VR), plain.value)
        return Answer(out)
