"""Scheduled procedure steps from orders (IHE RAD TF-2 4.4 / 4.13): scheduled, replaced, ended together."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Connection, select

from pacsnode.archive.schema import worklist_items
from pacsnode.archive.worklist import ACTIVE, SCHEDULED, Worklist, item_keys, stored_bytes, stored_dataset


class Action(enum.Enum):
    """What an order does to the scheduled procedure steps it names."""

    SCHEDULE = "schedule"  # a new step (or, for a step already on the worklist, its new content)
    REPLACE = "replace"  # new content for a step on the worklist; its status stays
    STATUS = "status"  # the step leaves the worklist (or moves), its content stays


@dataclass(frozen=True, slots=True)
class StepChange:
    """One change an order asks of the worklist, keyed by Accession Number and Scheduled Procedure Step ID.

    For STATUS, an empty ``step_id`` means every step of the accession number.
    """

    action: Action
    accession_number: str
    step_id: str
    dataset: Dataset | None = None
    status: str = ""
    keep_study_uid: bool = False  # REPLACE: the item's Study Instance UID stays (the order names none)


class UnknownOrder(LookupError):
    """A change for a step that is not on the worklist; ``position`` is the change's index."""

    def __init__(self, position: int, change: StepChange) -> None:
        super().__init__(
            f"no scheduled step with accession number {change.accession_number!r}"
            + (f" and step ID {change.step_id!r}" if change.step_id else "")
        )
        self.position = position
        self.change = change


def apply_changes(worklist: Worklist, changes: Sequence[StepChange]) -> list[str]:
    """Apply the changes of one message in one transaction; one line per change says what happened.

    Raises UnknownOrder, with nothing changed, when a REPLACE or STATUS change finds no
    step on the worklist (SCHEDULED or STARTED).
    """
    done: list[str] = []
    with worklist.index.engine.begin() as conn:
        for position, change in enumerate(changes):
            ids = _active(conn, change)
            if change.action is Action.STATUS:
                if not ids:
                    raise UnknownOrder(position, change)
                _set_status(conn, ids, change.status)
                done.append(f"{change.status.lower()} {_name(change)} ({len(ids)} item(s))")
            elif ids:
                # A new order for a step already scheduled is the same order sent again (a sender
                # that missed our acknowledgement resends): its content replaces the item's.
                _replace(conn, ids, change)
                verb = "replaced" if change.action is Action.REPLACE else "rescheduled"
                done.append(f"{verb} {_name(change)}")
            elif change.action is Action.REPLACE:
                raise UnknownOrder(position, change)
            else:
                _insert(conn, change)
                done.append(f"scheduled {_name(change)}")
    worklist.reload()
    return done


def _name(change: StepChange) -> str:
    return f"{change.accession_number}/{change.step_id}" if change.step_id else change.accession_number


def _active(conn: Connection, change: StepChange) -> list[int]:
    stmt = select(worklist_items.c.id).where(
        worklist_items.c.status.in_(ACTIVE), worklist_items.c.accession_number == change.accession_number
    )
    if change.step_id:
        stmt = stmt.where(worklist_items.c.sps_id == change.step_id)
    # The rows are locked until the commit (PostgreSQL; SQLite has one writer anyway).
    return [int(i) for i in conn.execute(stmt.order_by(worklist_items.c.id).with_for_update()).scalars()]


def _row(ds: Dataset) -> dict[str, Any]:
    return {**item_keys(ds), "dataset": stored_bytes(ds), "updated_at": datetime.now(UTC)}


def _insert(conn: Connection, change: StepChange) -> None:
    assert change.dataset is not None
    row = _row(change.dataset)
    conn.execute(worklist_items.insert().values(status=SCHEDULED, created_at=row["updated_at"], **row))


def _replace(conn: Connection, ids: list[int], change: StepChange) -> None:
    assert change.dataset is not None
    for item_id in ids:
        ds = change.dataset
        if change.keep_study_uid:
            old = conn.execute(
                select(worklist_items.c.dataset).where(worklist_items.c.id == item_id)
            ).scalar_one()
            uid = stored_dataset(bytes(old)).get("StudyInstanceUID")
            if uid:
                ds = Dataset(ds)
                ds.StudyInstanceUID = uid
        conn.execute(worklist_items.update().where(worklist_items.c.id == item_id).values(**_row(ds)))


def _set_status(conn: Connection, ids: list[int], status: str) -> None:
    conn.execute(
        worklist_items.update()
        .where(worklist_items.c.id.in_(ids))
        .values(status=status, updated_at=datetime.now(UTC))
    )
