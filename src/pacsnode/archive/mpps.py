"""PS3.4 Annex F: Modality Performed Procedure Steps: created IN PROGRESS, set COMPLETED or DISCONTINUED."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from pacsnode.archive.index import ArchiveIndex
from pacsnode.archive.schema import performed_steps
from pacsnode.archive.worklist import Worklist, stored_bytes, stored_dataset

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
_FINAL = (COMPLETED, DISCONTINUED)
STATUS_TAG = 0x00400252  # Performed Procedure Step Status

# PS3.4 Table F.7.2-1: Type 1 for N-CREATE (the SCU must send them with a value).
_CREATE_REQUIRED = {
    0x00400253: "Performed Procedure Step ID",
    0x00400241: "Performed Station AE Title",
    0x00400244: "Performed Procedure Step Start Date",
    0x00400245: "Performed Procedure Step Start Time",
    0x00080060: "Modality",
}
# Attributes an N-SET may not change (PS3.4 Table F.7.2-1, N-SET column "Not allowed").
_NOT_SETTABLE = {
    0x00080016: "SOP Class UID",
    0x00080018: "SOP Instance UID",
    0x00400253: "Performed Procedure Step ID",
    0x00400241: "Performed Station AE Title",
    0x00400244: "Performed Procedure Step Start Date",
    0x00400245: "Performed Procedure Step Start Time",
    0x00400270: "Scheduled Step Attributes Sequence",
    0x00100020: "Patient ID",
}
# PS3.4 F.7.2.2.2: a step is final only with its end date and time.
_FINAL_REQUIRED = {
    0x00400250: "Performed Procedure Step End Date",
    0x00400251: "Performed Procedure Step End Time",
}


class MppsError(Exception):
    """A refused N-CREATE or N-SET: the PS3.7 status, a comment, the attributes at fault."""

    def __init__(self, status: int, comment: str, tags: tuple[int, ...] = ()) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.tags = tags


def _has_value(ds: Dataset, tag: int) -> bool:
    elem = ds.get(tag)
    return elem is not None and elem.value not in (None, "", b"") and not (elem.VR == "SQ" and not elem.value)


class PerformedSteps:
    """The MPPS instances of the node, in its index; each change moves the linked worklist step."""

    def __init__(self, index: ArchiveIndex, worklist: Worklist) -> None:
        self.index = index
        self.worklist = worklist

    def create(self, uid: str, ds: Dataset) -> None:
        """N-CREATE (PS3.4 F.7.2.1): a new step, IN PROGRESS; raise MppsError when refused."""
        status = str(ds.get("PerformedProcedureStepStatus", "") or "")
        if status != IN_PROGRESS:
            # PS3.4 F.7.2.1.2: an MPPS is created IN PROGRESS.
            raise MppsError(
                0x0106, f"Performed Procedure Step Status is {status!r}, not IN PROGRESS", (STATUS_TAG,)
            )
        missing = tuple(tag for tag in _CREATE_REQUIRED if not _has_value(ds, tag))
        if not ds.get("ScheduledStepAttributesSequence"):
            missing += (0x00400270,)
        if missing:
            names = ", ".join(_CREATE_REQUIRED.get(t, "Scheduled Step Attributes Sequence") for t in missing)
            raise MppsError(0x0120, f"missing: {names}"[:1024], missing)
        now = datetime.now(UTC)
        row = {"sop_instance_uid": uid, "status": IN_PROGRESS, "dataset": stored_bytes(ds), "created_at": now}
        try:
            with self.index.engine.begin() as conn:
                conn.execute(performed_steps.insert().values(updated_at=now, **row))
        except IntegrityError:
            # PS3.7 C.5: 0111 Duplicate SOP Instance.
            raise MppsError(0x0111, f"an MPPS with SOP Instance UID {uid} exists") from None
        self._follow(ds, "STARTED")

    def set(self, uid: str, changes: Dataset) -> Dataset:
        """N-SET (PS3.4 F.7.2.2): change an IN PROGRESS step; returns the step as it now is."""
        with self.index.engine.begin() as conn:
            row = conn.execute(
                select(performed_steps.c.status, performed_steps.c.dataset).where(
                    performed_steps.c.sop_instance_uid == uid
                )
            ).first()
            if row is None:
                raise MppsError(0x0112, f"no MPPS with SOP Instance UID {uid}")  # PS3.7 C.5
            if row.status in _FINAL:
                # PS3.4 F.7.2.2.4.2: a COMPLETED or DISCONTINUED step may no longer be updated.
                raise MppsError(0x0110, "Performed Procedure Step Object may no longer be updated")
            fixed = tuple(tag for tag in _NOT_SETTABLE if tag in changes)
            if fixed:
                names = ", ".join(_NOT_SETTABLE[t] for t in fixed)
                raise MppsError(0x0106, f"may not be changed by N-SET: {names}"[:1024], fixed)
            step = stored_dataset(bytes(row.dataset))
            for elem in changes:
                step[elem.tag] = elem
            status = str(step.get("PerformedProcedureStepStatus", "") or "")
            if status not in (IN_PROGRESS, *_FINAL):
                raise MppsError(
                    0x0106, f"Performed Procedure Step Status {status!r} is not valid", (STATUS_TAG,)
                )
            if status in _FINAL:
                missing = tuple(tag for tag in _FINAL_REQUIRED if not _has_value(step, tag))
                if missing:
                    names = ", ".join(_FINAL_REQUIRED[t] for t in missing)
                    # PS3.4 F.7.2.2.4.2: 0110 "Performed Procedure Step Object may not yet be completed".
                    raise MppsError(0x0110, f"may not yet be {status}: missing {names}", missing)
            conn.execute(
                performed_steps.update()
                .where(performed_steps.c.sop_instance_uid == uid)
                .values(status=status, dataset=stored_bytes(step), updated_at=datetime.now(UTC))
            )
        if status in _FINAL:
            self._follow(step, status)
        return step

    def listing(self) -> list[dict[str, Any]]:
        """Every step with its status, oldest first."""
        stmt = select(
            performed_steps.c.sop_instance_uid,
            performed_steps.c.status,
            performed_steps.c.created_at,
            performed_steps.c.updated_at,
        ).order_by(performed_steps.c.id)
        with self.index.engine.connect() as conn:
            return [
                {
                    "SOPInstanceUID": r.sop_instance_uid,
                    "status": r.status,
                    "created": r.created_at.isoformat() if r.created_at else "",
                    "updated": r.updated_at.isoformat() if r.updated_at else "",
                }
                for r in conn.execute(stmt)
            ]

    def get(self, uid: str) -> Dataset | None:
        """One step's data set, or None."""
        with self.index.engine.connect() as conn:
            data = conn.execute(
                select(performed_steps.c.dataset).where(performed_steps.c.sop_instance_uid == uid)
            ).scalar()
        return None if data is None else stored_dataset(bytes(data))

    def _follow(self, step: Dataset, status: str) -> None:
        # The scheduled steps this one performs (PS3.4 F.7.2.1.1 Scheduled Step Attributes
        # Sequence: Accession Number and Scheduled Procedure Step ID) take its status.
        for item in step.get("ScheduledStepAttributesSequence") or []:
            accession = str(item.get("AccessionNumber", "") or "")
            step_id = str(item.get("ScheduledProcedureStepID", "") or "")
            if accession or step_id:
                self.worklist.follow(accession, step_id, status)
