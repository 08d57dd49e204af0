"""The index database (SQLite or PostgreSQL, SQLAlchemy Core): one transaction per group of instances."""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Insert, create_engine, event, func, select
from sqlalchemy.engine import make_url

from pacsnode.archive.schema import changes, instances, metadata, patients, series, studies

log = logging.getLogger("pacsnode.archive")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the index keeps of one instance, read from its header."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient: dict[str, str]
    study: dict[str, str]
    series: dict[str, Any]
    instance: dict[str, Any]
    path: str
    size: int
    sha256: str
    source_ae_title: str
    received_at: datetime


class Outcome(enum.Enum):
    """What the index did with a record."""

    STORED = "stored"
    REPLACED = "replaced"
    IDENTICAL_DUPLICATE = "identical-duplicate"
    KEPT_FIRST = "kept-first"
    REJECTED_DUPLICATE = "rejected-duplicate"


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """The outcome for one record, with a file that is no longer needed, if any."""

    outcome: Outcome
    obsolete_path: str | None = None


def _new_id(conn: Connection, statement: Insert) -> int:
    key = conn.execute(statement).inserted_primary_key
    assert key is not None
    return int(key[0])


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; FULL syncs the WAL on every commit,
    # which the durability contract needs (NORMAL may lose the last commits).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for the index URL, with the options each back end needs."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 5})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        # Bounded waits: an unreachable or stuck server fails the store, never hangs it.
        return create_engine(
            parsed,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 5, "options": "-c statement_timeout=30000"},
        )
    return create_engine(url)


class ArchiveIndex:
    """Patients, studies, series, instances and the change log."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()

    # ------------------------------------------------------------ writes

    def store(self, records: Sequence[InstanceRecord], policy: str) -> list[StoreOutcome]:
        """Index a group of instances in one transaction; return what happened to each."""
        outcomes: list[StoreOutcome] = []
        touched_series: set[int] = set()
        touched_studies: set[int] = set()
        with self.engine.begin() as conn:
            for record in records:
                outcome = self._store_one(conn, record, policy, touched_series, touched_studies)
                outcomes.append(outcome)
            self._recount(conn, touched_series, touched_studies)
        return outcomes

    def _store_one(
        self,
        conn: Connection,
        record: InstanceRecord,
        policy: str,
        touched_series: set[int],
        touched_studies: set[int],
    ) -> StoreOutcome:
        existing = conn.execute(
            select(instances.c.id, instances.c.sha256, instances.c.path, instances.c.series_fk).where(
                instances.c.sop_instance_uid == record.sop_instance_uid
            )
        ).first()
        obsolete: str | None = None
        kind = "created"
        if existing is not None:
            if existing.sha256 == record.sha256:
                return StoreOutcome(Outcome.IDENTICAL_DUPLICATE, record.path)
            if policy == "reject":
                return StoreOutcome(Outcome.REJECTED_DUPLICATE, record.path)
            if policy == "keep-first":
                self._log_change(conn, record, "duplicate-ignored", f"kept {existing.path}")
                return StoreOutcome(Outcome.KEPT_FIRST, record.path)
            # replace: the old row goes, the new one comes; the old file is deleted after commit.
            conn.execute(instances.delete().where(instances.c.id == existing.id))
            touched_series.add(existing.series_fk)
            study_of_old = conn.execute(
                select(series.c.study_fk).where(series.c.id == existing.series_fk)
            ).scalar_one()
            touched_studies.add(study_of_old)
            obsolete = existing.path
            kind = "replaced"
        patient_fk = self._patient(conn, record)
        study_fk = self._study(conn, record, patient_fk)
        series_fk = self._series(conn, record, study_fk)
        conn.execute(
            instances.insert().values(
                series_fk=series_fk,
                sop_instance_uid=record.sop_instance_uid,
                sop_class_uid=record.sop_class_uid,
                path=record.path,
                size=record.size,
                sha256=record.sha256,
                source_ae_title=record.source_ae_title,
                received_at=record.received_at,
                **record.instance,
            )
        )
        touched_series.add(series_fk)
        touched_studies.add(study_fk)
        self._log_change(conn, record, kind, "")
        return StoreOutcome(Outcome.REPLACED if obsolete else Outcome.STORED, obsolete)

    def _patient(self, conn: Connection, record: InstanceRecord) -> int:
        pid = record.patient.get("patient_id", "")
        issuer = record.patient.get("issuer_of_patient_id", "")
        row = conn.execute(
            select(patients.c.id).where(
                patients.c.patient_id == pid, patients.c.issuer_of_patient_id == issuer
            )
        ).first()
        if row is not None:
            return int(row.id)
        return _new_id(conn, patients.insert().values(**record.patient))

    def _study(self, conn: Connection, record: InstanceRecord, patient_fk: int) -> int:
        row = conn.execute(
            select(studies.c.id, studies.c.patient_fk).where(
                studies.c.study_instance_uid == record.study_instance_uid
            )
        ).first()
        if row is not None:
            if row.patient_fk != patient_fk:
                log.warning(
                    "study %s already belongs to another patient; instance %s filed under it",
                    record.study_instance_uid,
                    record.sop_instance_uid,
                )
            return int(row.id)
        return _new_id(
            conn,
            studies.insert().values(
                patient_fk=patient_fk,
                study_instance_uid=record.study_instance_uid,
                updated_at=record.received_at,
                **record.study,
            ),
        )

    def _series(self, conn: Connection, record: InstanceRecord, study_fk: int) -> int:
        row = conn.execute(
            select(series.c.id).where(series.c.series_instance_uid == record.series_instance_uid)
        ).first()
        if row is not None:
            return int(row.id)
        return _new_id(
            conn,
            series.insert().values(
                study_fk=study_fk, series_instance_uid=record.series_instance_uid, **record.series
            ),
        )

    def _recount(self, conn: Connection, series_ids: set[int], study_ids: set[int]) -> None:
        # PS3.4 C.6.1.1.3: Number of Series Related Instances and friends are computed.
        for series_id in series_ids:
            n = conn.execute(
                select(func.count()).select_from(instances).where(instances.c.series_fk == series_id)
            ).scalar_one()
            conn.execute(
                series.update().where(series.c.id == series_id).values(number_of_series_related_instances=n)
            )
        for study_id in study_ids:
            rows = conn.execute(
                select(series.c.modality, series.c.number_of_series_related_instances).where(
                    series.c.study_fk == study_id
                )
            ).all()
            sop_classes = conn.execute(
                select(instances.c.sop_class_uid)
                .distinct()
                .join(series, series.c.id == instances.c.series_fk)
                .where(series.c.study_fk == study_id)
            ).scalars()
            conn.execute(
                studies.update()
                .where(studies.c.id == study_id)
                .values(
                    number_of_study_related_series=sum(1 for r in rows if r[1] > 0),
                    number_of_study_related_instances=sum(r[1] for r in rows),
                    modalities_in_study="\\".join(sorted({r[0] for r in rows if r[0] and r[1] > 0})),
                    sop_classes_in_study="\\".join(sorted(sop_classes)),
                    updated_at=func.now(),
                )
            )

    def _log_change(self, conn: Connection, record: InstanceRecord, kind: str, detail: str) -> None:
        conn.execute(
            changes.insert().values(
                at=record.received_at,
                kind=kind,
                sop_instance_uid=record.sop_instance_uid,
                series_instance_uid=record.series_instance_uid,
                study_instance_uid=record.study_instance_uid,
                detail=detail,
            )
        )

    # ------------------------------------------------------------ reads

    def newest_received_at(self) -> datetime | None:
        """When the newest indexed instance arrived (for the start-up sweep)."""
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(instances.c.received_at))).scalar()
        return value if isinstance(value, datetime) else None

    def known_paths(self, paths: Iterable[str]) -> set[str]:
        """Which of these relative paths the index references."""
        wanted = list(paths)
        found: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                found.update(
                    conn.execute(select(instances.c.path).where(instances.c.path.in_(chunk))).scalars()
                )
        return found

    def instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The index row of one instance, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(instances).where(instances.c.sop_instance_uid == sop_instance_uid)
            ).first()
        return dict(row._mapping) if row is not None else None

    def counts(self) -> dict[str, int]:
        """How many patients, studies, series and instances are indexed."""
        with self.engine.connect() as conn:
            return {
                table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                for table in (patients, studies, series, instances)
            }

    def all_paths(self) -> list[str]:
        """Every file path the index references (for consistency checks)."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(instances.c.path)).scalars())

    def drop_all(self) -> None:
        """Remove every table (tests only)."""
        metadata.drop_all(self.engine)
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
