"""Patient updates and merges (IHE RAD TF-2 4.12 Patient Update, ADT^A08 / ADT^A40) in the index and worklist.

What changes is the index -- the patient record that C-FIND, QIDO-RS and the admin API
answer from -- and the worklist items of the patient.  The stored files are not
rewritten: they keep the patient attributes the modality sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, Connection, select

from pacsnode.archive.ingest import Archive
from pacsnode.archive.matching import name_keys
from pacsnode.archive.schema import changes, patient_name_keys, patients, studies, worklist_items
from pacsnode.archive.worklist import ACTIVE, item_keys, stored_bytes, stored_dataset

T = TypeVar("T")

# DICOM keyword -> column of the patients table (PS3.4 C.6.1.1.2 patient level keys).
_COLUMNS = {
    "PatientName": ("patient_name", 324),
    "PatientBirthDate": ("patient_birth_date", 8),
    "PatientSex": ("patient_sex", 16),
}


@dataclass(frozen=True, slots=True)
class PatientKey:
    """A patient as a feed names it: Patient ID and, when the feed gives one, its issuer.

    A record whose Issuer of Patient ID is empty matches any issuer: modalities seldom
    fill (0010,0021), while an HL7 feed always has an assigning authority.
    """

    patient_id: str
    issuer: str = ""

    def matches(self, patient_id: str, issuer: str) -> bool:
        """True for a record of this patient."""
        return patient_id == self.patient_id and (not self.issuer or issuer in ("", self.issuer))


@dataclass(frozen=True, slots=True)
class PatientChange:
    """What an update or a merge changed."""

    patients: int = 0  # patient records updated, renamed or merged away
    studies: int = 0  # studies of the patient (update) or moved to the surviving patient (merge)
    worklist_items: int = 0  # scheduled steps changed

    @property
    def nothing(self) -> bool:
        """True when the index held nothing of the patient."""
        return not (self.patients or self.studies or self.worklist_items)


class PatientRecords:
    """Demographics updates and merges of one archive, each in one transaction.

    They run on the archive's committer thread, between group commits: a merge removes
    or renames patient records whose ids the committer keeps in its caches (as
    `Archive.delete` does).  Blocking: call from a worker thread.
    """

    def __init__(self, archive: Archive) -> None:
        self.index = archive.index
        self.worklist = archive.worklist
        self._archive = archive

    def _on_committer(self, fn: Callable[[], T]) -> T:
        return self._archive.exclusive(fn)

    def update(self, key: PatientKey, values: Mapping[str, str]) -> PatientChange:
        """Set these attributes (keyword -> value; "" clears) of a patient wherever the index has them."""
        return self._on_committer(lambda: self._update(key, values))

    def merge(self, prior: PatientKey, surviving: PatientKey, values: Mapping[str, str]) -> PatientChange:
        """Move everything of ``prior`` under ``surviving`` (renamed from it when unknown); set ``values``."""
        return self._on_committer(lambda: self._merge(prior, surviving, values))

    # ------------------------------------------------------------ committer thread

    def _update(self, key: PatientKey, values: Mapping[str, str]) -> PatientChange:
        now = datetime.now(UTC)
        with self.index.engine.begin() as conn:
            ids = _patients_of(conn, key)
            for pk in ids:
                _set_columns(conn, pk, values)
            uids = _studies_of(conn, ids)
            items = _update_items(conn, key, {}, values)
            result = PatientChange(len(ids), len(uids), items)
            if not result.nothing:
                detail = f"patient {key.patient_id!r} updated: {', '.join(sorted(values))}"
                _log(conn, now, "patient-updated", uids, detail)
        if result.worklist_items:
            self.worklist.reload()
        return result

    def _merge(self, prior: PatientKey, surviving: PatientKey, values: Mapping[str, str]) -> PatientChange:
        try:
            result = self._merge_rows(prior, surviving, values)
        finally:
            self.index.forget_ids()  # the committer's cached ids of the prior patient are gone
        if result.worklist_items:
            self.worklist.reload()
        return result

    def _merge_rows(
        self, prior: PatientKey, surviving: PatientKey, values: Mapping[str, str]
    ) -> PatientChange:
        now = datetime.now(UTC)
        with self.index.engine.begin() as conn:
            prior_ids = _patients_of(conn, prior)
            target_ids = [i for i in _patients_of(conn, surviving) if i not in prior_ids]
            moved: list[str] = []
            if prior_ids:
                moved = _studies_of(conn, prior_ids)
                if target_ids:
                    target, absorbed = target_ids[0], prior_ids
                else:
                    # The surviving patient has no record yet: the prior one becomes it.
                    target, absorbed = prior_ids[0], prior_ids[1:]
                    renamed: dict[str, Any] = {"patient_id": surviving.patient_id}
                    if surviving.issuer:
                        renamed["issuer_of_patient_id"] = surviving.issuer
                    conn.execute(patients.update().where(patients.c.id == target).values(**renamed))
                if absorbed:
                    conn.execute(
                        studies.update().where(studies.c.patient_fk.in_(absorbed)).values(patient_fk=target)
                    )
                    conn.execute(
                        patient_name_keys.delete().where(patient_name_keys.c.patient_fk.in_(absorbed))
                    )
                    conn.execute(patients.delete().where(patients.c.id.in_(absorbed)))
                _set_columns(conn, target, values)
            else:
                for pk in target_ids:
                    _set_columns(conn, pk, values)
            identity = {"PatientID": surviving.patient_id}
            if surviving.issuer:
                identity["IssuerOfPatientID"] = surviving.issuer
            items = _update_items(conn, prior, identity, values)
            result = PatientChange(len(prior_ids), len(moved), items)
            if not result.nothing:
                detail = f"patient {prior.patient_id!r} merged into {surviving.patient_id!r}"
                _log(conn, now, "patient-merged", moved, detail)
        return result


def _where(key: PatientKey) -> list[ColumnElement[bool]]:
    conditions = [patients.c.patient_id == key.patient_id]
    if key.issuer:
        conditions.append(patients.c.issuer_of_patient_id.in_(["", key.issuer]))
    return conditions


def _patients_of(conn: Connection, key: PatientKey) -> list[int]:
    if not key.patient_id:
        return []
    # Exact issuer first: it is the record a merge keeps when there are several.
    rows = list(conn.execute(select(patients.c.id, patients.c.issuer_of_patient_id).where(*_where(key))))
    rows.sort(key=lambda r: (r.issuer_of_patient_id != key.issuer, r.id))
    return [int(r.id) for r in rows]


def _studies_of(conn: Connection, patient_ids: list[int]) -> list[str]:
    if not patient_ids:
        return []
    stmt = select(studies.c.study_instance_uid).where(studies.c.patient_fk.in_(patient_ids))
    return sorted(conn.execute(stmt).scalars())


def _set_columns(conn: Connection, pk: int, values: Mapping[str, str]) -> None:
    columns = {_COLUMNS[k][0]: v[: _COLUMNS[k][1]] for k, v in values.items() if k in _COLUMNS}
    if not columns:
        return
    conn.execute(patients.update().where(patients.c.id == pk).values(**columns))
    if "patient_name" in columns:
        # PS3.4 C.2.2.2.1: the folded name keys follow the name.
        conn.execute(patient_name_keys.delete().where(patient_name_keys.c.patient_fk == pk))
        keys = name_keys(columns["patient_name"])
        if keys:
            conn.execute(patient_name_keys.insert(), [{"patient_fk": pk, "name_key": k} for k in keys])


def _update_items(
    conn: Connection, key: PatientKey, identity: Mapping[str, str], values: Mapping[str, str]
) -> int:
    """Rewrite the scheduled steps of a patient with new identity and attribute values."""
    rows = conn.execute(
        select(worklist_items.c.id, worklist_items.c.dataset)
        .where(worklist_items.c.status.in_(ACTIVE), worklist_items.c.patient_id == key.patient_id)
        .with_for_update()
    ).all()
    changed = 0
    for row in rows:
        ds = stored_dataset(bytes(row.dataset))
        if not key.matches(str(ds.get("PatientID", "")), str(ds.get("IssuerOfPatientID", "") or "")):
            continue
        _set_attributes(ds, {**values, **identity})
        conn.execute(
            worklist_items.update()
            .where(worklist_items.c.id == row.id)
            .values(**item_keys(ds), dataset=stored_bytes(ds), updated_at=datetime.now(UTC))
        )
        changed += 1
    return changed


def _set_attributes(ds: Dataset, values: Mapping[str, str]) -> None:
    for _ in ds.iterall():
        pass  # every text value decoded in the character set it was stored in
    if any(not v.isascii() for v in values.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"  # PS3.3 C.12.1.1.2: UTF-8 holds old and new text alike
    for keyword, value in values.items():
        setattr(ds, keyword, value)


def _log(conn: Connection, at: datetime, kind: str, study_uids: list[str], detail: str) -> None:
    # The change log has one row per study whose patient changed (none of its instances
    # changed); a change with no study in the index (worklist items only) gets one row.
    rows = [
        {
            "at": at,
            "kind": kind,
            "sop_instance_uid": "",
            "series_instance_uid": "",
            "study_instance_uid": uid,
            "detail": detail[:2000],
        }
        for uid in study_uids or [""]
    ]
    conn.execute(changes.insert(), rows)
