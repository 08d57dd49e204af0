"""The index database (SQLite or PostgreSQL, SQLAlchemy Core): one transaction per group of instances."""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Insert, create_engine, event, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from pacsnode.archive.hotpath import HotPath
from pacsnode.archive.matching import name_keys
from pacsnode.archive.schema import (
    archive_owner,
    changes,
    instances,
    metadata,
    non_patient_objects,
    patient_name_keys,
    patients,
    series,
    studies,
    trash,
)
from pacsnode.data.uids import NON_PATIENT_SOP_CLASSES

log = logging.getLogger("pacsnode.archive")
# SQLite: a WAL checkpoint after this many store() groups (SQLite's own default is every
# 1,000 WAL pages; a one-instance group writes ~8).
_CHECKPOINT_EVERY = 128
# PostgreSQL: store()'s kept connection is exchanged for a pinged one after this many idle seconds.
_WRITER_IDLE = 2.0

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


# The policy start-up recovery uses when the configured one is "replace".
RECOVER_REPLACE = "recover-replace"


@dataclass(frozen=True, slots=True)
class _Known:
    """An instance already indexed, or added earlier in the same group."""

    id: int
    sha256: str
    path: str
    series_fk: int
    received_at: datetime | None = None


def _change(record: InstanceRecord, kind: str, detail: str) -> dict[str, Any]:
    return {
        "at": record.received_at,
        "kind": kind,
        "sop_instance_uid": record.sop_instance_uid,
        "series_instance_uid": record.series_instance_uid,
        "study_instance_uid": record.study_instance_uid,
        "detail": detail,
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer.  NORMAL does not sync each commit:
    # the durability point of an instance is the sync of its file, done before its
    # row is written, and Archive.open() re-indexes files whose rows a power cut
    # took away.  So an acknowledged instance costs one sync, shared by its group.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # A WAL that a long reader kept from starting over is cut back to this when it next does.
    cursor.execute("PRAGMA journal_size_limit=67108864")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    # LIKE as on PostgreSQL: case-sensitive (name keys are folded before matching).
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()


# Open transactions per SQLite database file, over every writing engine of this process
# (the index's, the audit trail's): the event loop commits inline only when there is none,
# since a transaction that holds the write lock would make it wait (busy_timeout, 5 s).
_open_transactions: dict[str, int] = {}
_open_lock = threading.Lock()


def _track_transactions(engine: Engine, database: str) -> None:
    def began(_conn: Connection) -> None:
        with _open_lock:
            _open_transactions[database] = _open_transactions.get(database, 0) + 1

    def ended(_conn: Connection) -> None:
        with _open_lock:
            _open_transactions[database] = max(0, _open_transactions.get(database, 0) - 1)

    event.listen(engine, "begin", began)
    event.listen(engine, "commit", ended)
    event.listen(engine, "rollback", ended)


def open_transactions(engine: Engine) -> int:
    """Transactions open now on the SQLite database of this engine, from any thread of this process."""
    return _open_transactions.get(str(engine.url.database), 0)


def make_engine(url: str, *, reader: bool = False) -> Engine:
    """An engine for the index URL, with the options each back end needs.

    A ``reader`` engine serves queries: autocommit (no BEGIN and ROLLBACK round trips
    around each SELECT) and no pre-ping (its caller retries once on a dropped connection).
    """
    parsed = make_url(url)
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if reader else {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 5}, **options)
        event.listen(engine, "connect", _sqlite_pragmas)
        if not reader:
            _track_transactions(engine, str(parsed.database))
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        # Bounded waits: an unreachable or stuck server fails the store, never hangs it.
        return create_engine(
            parsed,
            pool_pre_ping=not reader,
            **options,
            # synchronous_commit=off: as with SQLite, the file sync is the durability
            # point and start-up re-indexes what a server crash lost.
            # TCP keepalives and tcp_user_timeout break a connection to a server that
            # stopped answering, which statement_timeout (server side) cannot.
            # Plans: psycopg prepares a statement after a few runs and PostgreSQL may then reuse
            # a generic plan made while the tables were empty, until an ANALYZE (which, with
            # autovacuum off, never comes). The duplicate check (HotPath.find) is therefore never
            # prepared: with a cached plan, a fresh index filled in groups of 40 fell from 600 to
            # 236 instances/s by 60k instances. The other hot statements find rows by primary
            # key or foreign key index, which a generic plan keeps: 5,000-5,500/s flat to 200k,
            # against 3,400/s when every statement was planned afresh (force_custom_plan).
            connect_args={
                "connect_timeout": 5,
                "options": "-c statement_timeout=30000 -c synchronous_commit=off",
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
                "tcp_user_timeout": 15000,
            },
        )
    return create_engine(url, **options)


class ArchiveIndex:
    """Patients, studies, series, instances and the change log."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._reader: Engine | None = None
        self._hot = HotPath(self.engine.dialect.name)
        self.forget_ids()
        # store() keeps its connection between groups (a pool checkout and return, and on
        # PostgreSQL the pre-ping's round trip, cost as much as the statements of a
        # one-instance group). SQLite: it checkpoints the WAL every _CHECKPOINT_EVERY groups.
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._writer: Connection | None = None
        self._writer_used = 0.0
        self._writer_lock = threading.Lock()
        self._groups = 0

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the newest (or the given) Alembic revision."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        sqlite = self.engine.dialect.name == "sqlite"
        with self.engine.connect() as conn:
            if sqlite:
                # sqlite.org/lang_altertable.html: a table is rebuilt with foreign keys off
                # (the pragma is a no-op inside a transaction), then they are checked.
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()
            try:
                with conn.begin():
                    config.attributes["connection"] = conn
                    command.upgrade(config, revision)
                    if sqlite:
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                        if broken:
                            raise RuntimeError(f"index migration broke foreign keys: {broken[:5]}")
            finally:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    conn.commit()

    @property
    def reader(self) -> Engine:
        """The engine queries read through (see `make_engine`)."""
        if self._reader is None:
            self._reader = make_engine(self.url, reader=True)
        return self._reader

    def dispose(self) -> None:
        """Close pooled connections."""
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self.engine.dispose()
        if self._reader is not None:
            self._reader.dispose()

    # ------------------------------------------------------------ writes

    def store(
        self,
        records: Sequence[InstanceRecord],
        policy: str,
        before_commit: Callable[[], None] | None = None,
    ) -> list[StoreOutcome]:
        """Index a group of instances in one transaction; return what happened to each.

        The hot path of ingest: one query finds duplicates for the whole group,
        patient/study/series ids come from a cache, rows go in with executemany,
        and the computed attributes are updated by increments.  ``before_commit``
        runs last inside the transaction: an exception from it rolls everything back.
        """
        with self._writer_lock:
            conn = self._writer
            now = time.monotonic()
            if conn is not None and not self._sqlite and now - self._writer_used > _WRITER_IDLE:
                # PostgreSQL: a connection idle for a while may have been dropped (a server
                # restart, a firewall); a fresh checkout is pinged by the pool first.
                self._writer = None
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            if conn is None:
                conn = self._writer = self.engine.connect()
                if self._sqlite:
                    # Checkpoints run between groups (_checkpoint), not inside a commit.
                    conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
                    conn.commit()
            self._writer_used = now
            try:
                with conn.begin():
                    outcomes = self._store(conn, records, policy)
                    if self._sqlite:
                        self._hot.flush(conn)  # beside a large group's file sync (the syncer thread)
                    if before_commit is not None:
                        before_commit()
                    if not self._sqlite:
                        # The writes and the COMMIT in one round trip, once the files are durable.
                        self._hot.flush(conn, commit=True)
            except BaseException:
                self._hot.reset()
                self.forget_ids()  # ids cached in a rolled-back transaction are not real
                self._writer = None  # a fresh connection next time, whatever state this one is in
                with contextlib.suppress(Exception):
                    conn.close()
                raise
            self._groups += 1
            if self._sqlite and self._groups % _CHECKPOINT_EVERY == 0:
                self._checkpoint(conn)
            return outcomes

    def _checkpoint(self, conn: Connection) -> None:
        """Copy the WAL into the database, on the writer's connection between two groups.

        PASSIVE (it never waits for readers). Being the only writer, it backfills every frame
        unless a reader still uses an old one, so the next group starts the WAL over and
        overwrites its pages. A checkpoint from another thread, as before, raced the writer:
        under sustained ingest it never caught up, and the WAL grew by ~40 KB per instance
        without end (180 MB in 5 s here). This one costs ~5 ms every 128 groups.
        """
        raw = conn.connection.driver_connection
        try:
            assert raw is not None
            raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception as exc:  # the next one will try again; the WAL only grows meanwhile
            log.warning("index checkpoint failed: %s", exc)

    def _store(self, conn: Connection, records: Sequence[InstanceRecord], policy: str) -> list[StoreOutcome]:
        if any(r.sop_class_uid in NON_PATIENT_SOP_CLASSES for r in records):
            outcomes: dict[int, StoreOutcome] = {}
            rest: list[tuple[int, InstanceRecord]] = []
            for i, r in enumerate(records):
                if r.sop_class_uid in NON_PATIENT_SOP_CLASSES:
                    outcomes[i] = self._store_non_patient(conn, r, policy)
                else:
                    rest.append((i, r))
            for (i, _), outcome in zip(
                rest, self._store_patient(conn, [r for _, r in rest], policy), strict=True
            ):
                outcomes[i] = outcome
            return [outcomes[i] for i in range(len(records))]
        return self._store_patient(conn, records, policy)

    def _store_non_patient(self, conn: Connection, record: InstanceRecord, policy: str) -> StoreOutcome:
        table = non_patient_objects
        known = conn.execute(
            select(table.c.id, table.c.sha256, table.c.path).where(
                table.c.sop_instance_uid == record.sop_instance_uid
            )
        ).first()
        values = {
            "sop_instance_uid": record.sop_instance_uid,
            "sop_class_uid": record.sop_class_uid,
            "transfer_syntax_uid": record.instance.get("transfer_syntax_uid", ""),
            "path": record.path,
            "size": record.size,
            "sha256": record.sha256,
            "source_ae_title": record.source_ae_title,
            "received_at": record.received_at,
        }
        if known is None:
            conn.execute(table.insert().values(**values))
            self._hot.insert_changes([_change(record, "created", "non-patient object")])
            return StoreOutcome(Outcome.STORED)
        if known.sha256 == record.sha256:
            return StoreOutcome(Outcome.IDENTICAL_DUPLICATE, record.path)
        if policy == "reject":
            return StoreOutcome(Outcome.REJECTED_DUPLICATE, record.path)
        if policy in ("keep-first", RECOVER_REPLACE):
            return StoreOutcome(Outcome.KEPT_FIRST, record.path)
        conn.execute(table.update().where(table.c.id == known.id).values(**values))
        conn.execute(trash.insert().values(path=known.path, at=record.received_at))
        self._hot.insert_changes([_change(record, "replaced", "non-patient object")])
        return StoreOutcome(Outcome.REPLACED, known.path)

    def _store_patient(
        self, conn: Connection, records: Sequence[InstanceRecord], policy: str
    ) -> list[StoreOutcome]:
        if not records:
            return []
        uids = list({r.sop_instance_uid for r in records})
        existing: dict[str, _Known] = {
            uid: _Known(pk, sha, path, series_fk, at)
            for pk, uid, sha, path, series_fk, at in self._hot.find(conn, uids)
        }
        outcomes: list[StoreOutcome] = []
        new_rows: list[dict[str, Any]] = []
        change_rows: list[dict[str, Any]] = []
        added: dict[int, int] = {}  # series id -> instances added
        recount_series: set[int] = set()
        recount_studies: set[int] = set()
        for record in records:
            uid = record.sop_instance_uid
            known = existing.get(uid)
            obsolete: str | None = None
            kind = "created"
            if known is not None:
                if known.sha256 == record.sha256:
                    outcomes.append(StoreOutcome(Outcome.IDENTICAL_DUPLICATE, record.path))
                    continue
                if policy == "reject":
                    outcomes.append(StoreOutcome(Outcome.REJECTED_DUPLICATE, record.path))
                    continue
                if policy == "keep-first":
                    change_rows.append(_change(record, "duplicate-ignored", f"kept {known.path}"))
                    outcomes.append(StoreOutcome(Outcome.KEPT_FIRST, record.path))
                    continue
                if policy == RECOVER_REPLACE and (
                    known.received_at is None or record.received_at <= known.received_at
                ):
                    # Start-up recovery: an older file is the leftover of a replacement
                    # whose row committed; only a newer one is a replacement whose row was lost.
                    outcomes.append(StoreOutcome(Outcome.KEPT_FIRST, record.path))
                    continue
                # replace: the old row goes now, its file after the commit.
                if new_rows:  # the old row may be one of this group's
                    self._hot.insert_instances(new_rows)
                    new_rows = []
                self._hot.flush(conn)  # the DELETE below must see the queued rows
                conn.execute(instances.delete().where(instances.c.sop_instance_uid == uid))
                conn.execute(trash.insert().values(path=known.path, at=record.received_at))
                recount_series.add(known.series_fk)
                recount_studies.add(self._study_of_series(conn, known.series_fk))
                obsolete, kind = known.path, "replaced"
            study_fk = self._study(conn, record)
            series_fk = self._series(conn, record, study_fk)
            new_rows.append(
                {
                    "series_fk": series_fk,
                    "sop_instance_uid": uid,
                    "sop_class_uid": record.sop_class_uid,
                    "path": record.path,
                    "size": record.size,
                    "sha256": record.sha256,
                    "source_ae_title": record.source_ae_title,
                    "received_at": record.received_at,
                    **record.instance,
                }
            )
            # A later record of this group with the same UID must see this one.
            existing[uid] = _Known(-1, record.sha256, record.path, series_fk, record.received_at)
            change_rows.append(_change(record, kind, ""))
            if obsolete is None:
                added[series_fk] = added.get(series_fk, 0) + 1
            else:
                recount_series.add(series_fk)
                recount_studies.add(study_fk)
            self._note_study_content(study_fk, record)
            outcomes.append(StoreOutcome(Outcome.REPLACED if obsolete else Outcome.STORED, obsolete))
        if new_rows:
            self._hot.insert_instances(new_rows)
        if change_rows:
            self._hot.insert_changes(change_rows)
        self._count(conn, added, recount_series, recount_studies)
        return outcomes

    # ------------------------------------------------------------ the hierarchy, cached

    def forget_ids(self) -> None:
        """Drop the cached patient, study and series ids (they refill from the database)."""
        self._patients: dict[tuple[str, str], int] = {}
        self._studies: dict[str, int] = {}
        self._series_ids: dict[str, int] = {}
        self._series_study: dict[int, int] = {}
        # study id -> (modalities, SOP classes), for studies whose computed attributes are loaded
        self._study_content: dict[int, tuple[set[str], set[str]]] = {}
        self._dirty_content: set[int] = set()

    def _patient(self, conn: Connection, record: InstanceRecord) -> int:
        key = (record.patient.get("patient_id", ""), record.patient.get("issuer_of_patient_id", ""))
        cached = self._patients.get(key)
        if cached is not None:
            return cached
        # Without a Patient ID nothing says two studies are of one person: each such study
        # gets a patient record of its own (merging them would show one patient's name on
        # another's study).
        row = (
            conn.execute(
                select(patients.c.id).where(
                    patients.c.patient_id == key[0], patients.c.issuer_of_patient_id == key[1]
                )
            ).first()
            if key[0]
            else None
        )
        if row is not None:
            pk = int(row.id)
        else:
            pk = _new_id(conn, patients.insert().values(**record.patient))
            keys = name_keys(record.patient.get("patient_name", ""))
            if keys:
                conn.execute(patient_name_keys.insert(), [{"patient_fk": pk, "name_key": k} for k in keys])
        if key[0]:
            self._patients[key] = pk
        return pk

    def _study(self, conn: Connection, record: InstanceRecord) -> int:
        """The study's row id; a new study gets its patient (found or created) first."""
        uid = record.study_instance_uid
        cached = self._studies.get(uid)
        if cached is not None:
            return cached
        row = conn.execute(
            select(studies.c.id, patients.c.patient_id, patients.c.issuer_of_patient_id)
            .join(patients, patients.c.id == studies.c.patient_fk)
            .where(studies.c.study_instance_uid == uid)
        ).first()
        if row is not None:
            identity = (record.patient.get("patient_id", ""), record.patient.get("issuer_of_patient_id", ""))
            if (row.patient_id, row.issuer_of_patient_id) != identity:
                # PS3.4 C.6.1.1.3: a study belongs to one patient. The instance is filed under
                # the study as stored (its file keeps its own Patient ID), and no patient
                # record without studies is made for the other ID.
                log.warning(
                    "study %s belongs to patient %r, instance %s says %r: filed under the study",
                    uid,
                    row.patient_id,
                    record.sop_instance_uid,
                    identity[0],
                )
            pk = int(row.id)
        else:
            pk = _new_id(
                conn,
                studies.insert().values(
                    patient_fk=self._patient(conn, record),
                    study_instance_uid=uid,
                    updated_at=record.received_at,
                    **record.study,
                ),
            )
        self._studies[uid] = pk
        return pk

    def _series(self, conn: Connection, record: InstanceRecord, study_fk: int) -> int:
        uid = record.series_instance_uid
        cached = self._series_ids.get(uid)
        if cached is not None:
            return cached
        row = conn.execute(
            select(series.c.id, series.c.study_fk).where(series.c.series_instance_uid == uid)
        ).first()
        if row is not None:
            pk, study_of = int(row.id), int(row.study_fk)
        else:
            pk = _new_id(
                conn, series.insert().values(study_fk=study_fk, series_instance_uid=uid, **record.series)
            )
            study_of = study_fk
        if len(self._series_ids) > 100_000:
            self.forget_ids()  # bound the caches; they refill from the database
        self._series_ids[uid] = pk
        self._series_study[pk] = study_of
        return pk

    def _study_of_series(self, conn: Connection, series_id: int) -> int:
        study = self._series_study.get(series_id)
        if study is None:
            study = int(conn.execute(select(series.c.study_fk).where(series.c.id == series_id)).scalar_one())
            self._series_study[series_id] = study
        return study

    def _note_study_content(self, study_fk: int, record: InstanceRecord) -> None:
        content = self._study_content.get(study_fk)
        if content is None:
            return  # not loaded yet: the full recount of this study will compute it
        modalities, sop_classes = content
        modality = str(record.series.get("modality") or "")
        if (modality and modality not in modalities) or record.sop_class_uid not in sop_classes:
            if modality:
                modalities.add(modality)
            sop_classes.add(record.sop_class_uid)
            self._dirty_content.add(study_fk)

    def _count(
        self, conn: Connection, added: dict[int, int], recount_series: set[int], recount_studies: set[int]
    ) -> None:
        # PS3.4 C.6.1.1.3 / C.6.2.1.2: the computed attributes follow every change, by
        # increments on the hot path and by a full recount after a replacement or for
        # a study met for the first time since start-up.
        by_study: dict[int, int] = {}
        for series_id, n in added.items():
            study = self._study_of_series(conn, series_id)
            if series_id not in recount_series:
                self._hot.add_to_series(series_id, n)
            by_study[study] = by_study.get(study, 0) + n
        full = {s for s in by_study if s not in self._study_content} | recount_studies
        for study_id, n in by_study.items():
            if study_id in full:
                continue
            content: tuple[str, str] | None = None
            if study_id in self._dirty_content:
                modalities, sop_classes = self._study_content[study_id]
                content = ("\\".join(sorted(modalities)), "\\".join(sorted(sop_classes)))
            self._hot.add_to_study(study_id, n, content)
        self._dirty_content.clear()
        if recount_series or full:
            self._hot.flush(conn)  # the recount reads the queued rows
            self._recount(conn, recount_series, full)

    def _recount(self, conn: Connection, series_ids: set[int], study_ids: set[int]) -> None:
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
            sop_classes = set(
                conn.execute(
                    select(instances.c.sop_class_uid)
                    .distinct()
                    .join(series, series.c.id == instances.c.series_fk)
                    .where(series.c.study_fk == study_id)
                ).scalars()
            )
            modalities = {r[0] for r in rows if r[0] and r[1] > 0}
            self._study_content[study_id] = (modalities, sop_classes)
            conn.execute(
                studies.update()
                .where(studies.c.id == study_id)
                .values(
                    number_of_study_related_series=sum(1 for r in rows if r[1] > 0),
                    number_of_study_related_instances=sum(r[1] for r in rows),
                    modalities_in_study="\\".join(sorted(modalities)),
                    sop_classes_in_study="\\".join(sorted(sop_classes)),
                    updated_at=func.now(),
                )
            )

    def delete(self, level: str, key: str) -> list[str] | None:
        """Remove a patient (by Patient ID), study, series or instance (by UID) and all below it.

        One transaction deletes the instance rows, journals their files in the trash
        (replayed at start-up, so a crash never leaves a file without its row or the
        reverse), drops parents left empty, recounts the others and logs each removal
        in the change log.  Returns the files to delete, or None when nothing matched.
        Runs on the committer's thread: it shares the hierarchy caches.
        """
        where = {
            "PATIENT": patients.c.patient_id == key,
            "STUDY": studies.c.study_instance_uid == key,
            "SERIES": series.c.series_instance_uid == key,
            "IMAGE": instances.c.sop_instance_uid == key,
        }[level]
        stmt = (
            select(
                instances.c.id,
                instances.c.path,
                instances.c.sop_instance_uid,
                instances.c.series_fk,
                series.c.series_instance_uid,
                series.c.study_fk,
                studies.c.study_instance_uid,
                studies.c.patient_fk,
            )
            .select_from(
                instances.join(series, series.c.id == instances.c.series_fk)
                .join(studies, studies.c.id == series.c.study_fk)
                .join(patients, patients.c.id == studies.c.patient_fk)
            )
            .where(where)
        )
        try:
            with self.engine.begin() as conn:
                rows = conn.execute(stmt).all()
                if not rows:
                    return self._delete_empty(conn, level, key)
                now = datetime.now(UTC)
                ids = [r.id for r in rows]
                for i in range(0, len(ids), 500):
                    conn.execute(instances.delete().where(instances.c.id.in_(ids[i : i + 500])))
                conn.execute(trash.insert(), [{"path": r.path, "at": now} for r in rows])
                conn.execute(
                    changes.insert(),
                    [
                        {
                            "at": now,
                            "kind": "deleted",
                            "sop_instance_uid": r.sop_instance_uid,
                            "series_instance_uid": r.series_instance_uid,
                            "study_instance_uid": r.study_instance_uid,
                            "detail": f"{level.lower()} deleted",
                        }
                        for r in rows
                    ],
                )
                self._prune(conn, {r.series_fk for r in rows}, {r.study_fk for r in rows})
                self._drop_empty_patients(conn, {r.patient_fk for r in rows})
                return [r.path for r in rows]
        finally:
            self.forget_ids()

    def _delete_empty(self, conn: Connection, level: str, key: str) -> list[str] | None:
        """An entity without instances (left by an interrupted delete): remove its row."""
        table = {"PATIENT": patients, "STUDY": studies, "SERIES": series}.get(level)
        column = {"PATIENT": "patient_id", "STUDY": "study_instance_uid", "SERIES": "series_instance_uid"}
        if table is None:
            return None
        ids = set(conn.execute(select(table.c.id).where(table.c[column[level]] == key)).scalars())
        if not ids:
            return None
        if level == "SERIES":
            self._prune(conn, ids, set())
        elif level == "STUDY":
            self._prune(conn, set(), ids)
        else:
            self._drop_empty_patients(conn, ids)
        return []

    def _prune(self, conn: Connection, series_ids: set[int], study_ids: set[int]) -> None:
        empty_series = set(
            conn.execute(
                select(series.c.id).where(
                    series.c.id.in_(series_ids),
                    ~select(instances.c.id).where(instances.c.series_fk == series.c.id).exists(),
                )
            ).scalars()
        )
        if empty_series:
            conn.execute(series.delete().where(series.c.id.in_(empty_series)))
        empty_studies = set(
            conn.execute(
                select(studies.c.id).where(
                    studies.c.id.in_(study_ids),
                    ~select(series.c.id).where(series.c.study_fk == studies.c.id).exists(),
                )
            ).scalars()
        )
        if empty_studies:
            conn.execute(studies.delete().where(studies.c.id.in_(empty_studies)))
        # PS3.4 C.6.1.1.3: the computed attributes of what remains follow the deletion.
        self._recount(conn, series_ids - empty_series, study_ids - empty_studies)

    def _drop_empty_patients(self, conn: Connection, patient_ids: set[int]) -> None:
        empty = list(
            conn.execute(
                select(patients.c.id).where(
                    patients.c.id.in_(patient_ids),
                    ~select(studies.c.id).where(studies.c.patient_fk == patients.c.id).exists(),
                )
            ).scalars()
        )
        if empty:
            conn.execute(patient_name_keys.delete().where(patient_name_keys.c.patient_fk.in_(empty)))
            conn.execute(patients.delete().where(patients.c.id.in_(empty)))

    def trash_paths(self) -> list[str]:
        """Files whose deletion was committed but may not have happened."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(trash.c.path)).scalars())

    def empty_trash(self, paths: Iterable[str]) -> None:
        """These files are deleted: forget them."""
        done = list(paths)
        if done:
            with self.engine.begin() as conn:
                conn.execute(trash.delete().where(trash.c.path.in_(done)))

    # ------------------------------------------------------------ owner (archive/ownership.py)

    def owner(self) -> tuple[str, str] | None:
        """The id and last folder of the data folder this index belongs to; None if unclaimed."""
        with self.engine.connect() as conn:
            row = conn.execute(select(archive_owner.c.folder_id, archive_owner.c.folder)).first()
        return (str(row[0]), str(row[1])) if row is not None else None

    def claim_owner(self, folder_id: str, folder: str) -> tuple[str, str]:
        """Claim an unclaimed index for a data folder; returns the owner (another, if it won)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(archive_owner).values(
                        id=1, folder_id=folder_id, folder=folder, claimed_at=datetime.now(UTC)
                    )
                )
        except IntegrityError:  # another archive claimed it first (the one row has id 1)
            pass
        owner = self.owner()
        assert owner is not None
        return owner

    def set_owner_folder(self, folder: str) -> None:
        """Record where the owning data folder is now (it moved)."""
        with self.engine.begin() as conn:
            conn.execute(update(archive_owner).values(folder=folder))

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
                for table in (instances, non_patient_objects):
                    found.update(conn.execute(select(table.c.path).where(table.c.path.in_(chunk))).scalars())
        return found

    def instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The index row of one instance, or None."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(instances).where(instances.c.sop_instance_uid == sop_instance_uid)
                ).first()
                or conn.execute(
                    select(non_patient_objects).where(
                        non_patient_objects.c.sop_instance_uid == sop_instance_uid
                    )
                ).first()
            )
        return dict(row._mapping) if row is not None else None

    def counts(self) -> dict[str, int]:
        """How many patients, studies, series and instances are indexed."""
        with self.engine.connect() as conn:
            return {
                table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                for table in (patients, studies, series, instances, non_patient_objects)
            }

    def stored_bytes(self) -> int:
        """The size of every indexed file, summed."""
        with self.engine.connect() as conn:
            return int(
                (conn.execute(select(func.coalesce(func.sum(instances.c.size), 0))).scalar_one() or 0)
                + (
                    conn.execute(select(func.coalesce(func.sum(non_patient_objects.c.size), 0))).scalar_one()
                    or 0
                )
            )

    def all_paths(self) -> list[str]:
        """Every file path the index references (for consistency checks)."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(instances.c.path)).scalars()) + list(
                conn.execute(select(non_patient_objects.c.path)).scalars()
            )

    def drop_all(self) -> None:
        """Remove every table (tests only)."""
        metadata.drop_all(self.engine)
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
