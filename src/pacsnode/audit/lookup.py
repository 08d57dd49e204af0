"""PS3.15 A.5.3: what an event is about, read from the index before it changes (a deletion, a cancel)."""

from __future__ import annotations

from sqlalchemy import Engine, select

from pacsnode.archive.schema import instances, patients, series, studies, worklist_items
from pacsnode.audit.builders import StudyTally

# The admin API's levels (pacsnode.archive.qr_model) and the key that names an entity at each.
_KEYS = {
    "PATIENT": patients.c.patient_id,
    "STUDY": studies.c.study_instance_uid,
    "SERIES": series.c.series_instance_uid,
    "IMAGE": instances.c.sop_instance_uid,
}


def instances_under(engine: Engine, level: str, key: str) -> StudyTally:
    """The instances a patient (Patient ID), study, series or instance (UID) holds, by study (blocking)."""
    column = _KEYS.get(level)
    tally = StudyTally()
    if column is None:
        return tally
    stmt = (
        select(
            studies.c.study_instance_uid,
            instances.c.sop_class_uid,
            patients.c.patient_id,
            patients.c.patient_name,
            studies.c.accession_number,
        )
        .select_from(
            instances.join(series, series.c.id == instances.c.series_fk)
            .join(studies, studies.c.id == series.c.study_fk)
            .join(patients, patients.c.id == studies.c.patient_fk)
        )
        .where(column == key)
        .order_by(studies.c.id, instances.c.id)
    )
    with engine.connect() as conn:
        for study_uid, sop_class, patient_id, patient_name, accession in conn.execute(stmt):
            tally.add(
                study_uid,
                sop_class,
                patient_id=patient_id or "",
                patient_name=patient_name or "",
                accession_number=accession or "",
            )
    return tally


def worklist_item(engine: Engine, item_id: int) -> tuple[str, str, str] | None:
    """A worklist item's Patient ID, Patient's Name and Accession Number (None: no such item)."""
    c = worklist_items.c
    stmt = select(c.patient_id, c.patient_name, c.accession_number).where(c.id == item_id)
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    return (row.patient_id, row.patient_name, row.accession_number) if row is not None else None
