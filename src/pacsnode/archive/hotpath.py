"""The index's per-instance statements as plain DB-API SQL (SQLite and PostgreSQL).

Why by hand: SQLAlchemy Core adds ~40 us of Python to each statement it runs,
about as much again as the database itself; the five statements below run for
every stored instance, inside a transaction SQLAlchemy opened, so they go to the
driver's cursor directly.  Everything else keeps using SQLAlchemy.

The writes of a group are queued and sent together by ``flush``. On PostgreSQL
they go in one psycopg pipeline with the COMMIT: one round trip to the server
instead of one per statement (each ~0.1-0.3 ms on a loaded 2-core machine).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection

if TYPE_CHECKING:
    import psycopg

_INSTANCE_COLUMNS = (
    "series_fk",
    "sop_instance_uid",
    "sop_class_uid",
    "path",
    "size",
    "sha256",
    "source_ae_title",
    "received_at",
    "instance_number",
    "transfer_syntax_uid",
    "specific_character_set",
    "rows",
    "columns",
    "number_of_frames",
    "content_date",
    "content_time",
)
_CHANGE_COLUMNS = ("at", "kind", "sop_instance_uid", "series_instance_uid", "study_instance_uid", "detail")


def _insert(table: str, columns: Sequence[str]) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(f"%({c})s" for c in columns)
    return f'INSERT INTO "{table}" ({names}) VALUES ({values})'


_SERIES_WITH_INSTANCES = (
    'SELECT count(*) FROM "series" WHERE "study_fk" = %(id)s AND "number_of_series_related_instances" > 0'
)
_SQL = {
    "instances": _insert("instances", _INSTANCE_COLUMNS),
    "changes": _insert("changes", _CHANGE_COLUMNS),
    "series": 'UPDATE "series" SET "number_of_series_related_instances" = '
    '"number_of_series_related_instances" + %(n)s WHERE "id" = %(id)s',
    # Number of Study Related Series counted afresh (after the series updates, which
    # run first): no statement depends on another's result, so all go in one flight.
    "study": 'UPDATE "studies" SET "number_of_study_related_instances" = '
    '"number_of_study_related_instances" + %(n)s, "number_of_study_related_series" = '
    f"({_SERIES_WITH_INSTANCES}), "
    '"updated_at" = %(now)s WHERE "id" = %(id)s',
    "study_content": 'UPDATE "studies" SET "number_of_study_related_instances" = '
    '"number_of_study_related_instances" + %(n)s, "number_of_study_related_series" = '
    f"({_SERIES_WITH_INSTANCES}), "
    '"updated_at" = %(now)s, '
    '"modalities_in_study" = %(modalities)s, "sop_classes_in_study" = %(sop_classes)s '
    'WHERE "id" = %(id)s',
}
_FIND = (
    'SELECT "id", "sop_instance_uid", "sha256", "path", "series_fk", "received_at" '
    'FROM "instances" WHERE "sop_instance_uid" IN ({})'
)


_Found = tuple[int, str, str, str, int, datetime | None]


class HotPath:
    """Runs the per-instance statements on the DB-API cursor of a SQLAlchemy connection."""

    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"
        # sqlite3 takes :name parameters, psycopg %(name)s.
        self._sql = {k: self._style(v) for k, v in _SQL.items()}
        self._find_sql: dict[int, str] = {}  # by the number of UIDs looked up
        self._last_time: tuple[datetime, Any] | None = None  # a group's rows share one time
        self._pending: list[tuple[str, list[dict[str, Any]]]] = []  # (statement, rows), in order

    def _style(self, sql: str) -> str:
        return re.sub(r"%\((\w+)\)s", r":\1", sql) if self.sqlite else sql

    def _time(self, value: datetime) -> Any:
        # SQLAlchemy's SQLite DateTime stores naive "YYYY-MM-DD HH:MM:SS.ffffff" text (UTC here).
        if not self.sqlite:
            return value
        last = self._last_time
        if last is not None and last[0] is value:
            return last[1]
        # isoformat: the same text as strftime("%Y-%m-%d %H:%M:%S.%f") at a tenth of the cost.
        text = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        self._last_time = (value, text)
        return text

    def _read_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    def find(
        self, conn: Connection, uids: Sequence[str]
    ) -> list[tuple[int, str, str, str, int, datetime | None]]:
        """Rows (id, SOP Instance UID, sha256, path, series id, received at) of these UIDs."""
        if not uids:
            return []
        params = {f"u{i}": uid for i, uid in enumerate(uids)}
        sql = self._find_sql.get(len(uids))
        if sql is None:
            sql = self._style(_FIND.format(", ".join(f"%({k})s" for k in params)))
            if len(self._find_sql) < 512:
                self._find_sql[len(uids)] = sql
        cursor = conn.connection.cursor()
        try:
            if self.sqlite:
                cursor.execute(sql, params)
            else:
                # Never prepared, so always planned with its values: a plan cached while
                # the index was empty would scan the whole table for a group's UIDs.
                cast("psycopg.Cursor[Any]", cursor).execute(sql, params, prepare=False)
            rows = cursor.fetchall()
        finally:
            cursor.close()
        return [(r[0], r[1], r[2], r[3], r[4], self._read_time(r[5])) for r in rows]

    def insert_instances(self, rows: Sequence[dict[str, Any]]) -> None:
        """Queue the INSERT of a group's instance rows."""
        self._queue("instances", [{**r, "received_at": self._time(r["received_at"])} for r in rows])

    def insert_changes(self, rows: Sequence[dict[str, Any]]) -> None:
        """Queue the INSERT of a group's change log rows."""
        self._queue("changes", [{**r, "at": self._time(r["at"])} for r in rows])

    def add_to_series(self, series_id: int, n: int) -> None:
        """Queue: add n to a series' instance count."""
        self._queue("series", [{"n": n, "id": series_id}])

    def add_to_study(self, study_id: int, n: int, content: tuple[str, str] | None) -> None:
        """Queue: add n instances to a study, count its series again (and set its content lists).

        Queue it after the updates of the study's series: its series count reads them.
        """
        params: dict[str, Any] = {"n": n, "id": study_id, "now": self._time(datetime.now(UTC))}
        key = "study"
        if content is not None:
            params["modalities"], params["sop_classes"] = content
            key = "study_content"
        self._queue(key, [params])

    def _queue(self, key: str, rows: list[dict[str, Any]]) -> None:
        if self._pending and self._pending[-1][0] == key:
            self._pending[-1][1].extend(rows)
        else:
            self._pending.append((key, rows))

    def reset(self) -> None:
        """Forget queued writes (their transaction failed)."""
        self._pending = []

    def flush(self, conn: Connection, *, commit: bool = False) -> None:
        """Run the queued writes, in order; with ``commit`` (PostgreSQL), COMMIT in the same flight.

        Call it before any statement that must see them.  ``commit`` leaves the
        transaction finished at the driver: SQLAlchemy's own commit then sends nothing.
        """
        pending, self._pending = self._pending, []
        if self.sqlite and not pending:
            return
        assert not (commit and self.sqlite), "SQLite commits through SQLAlchemy"
        raw = conn.connection.dbapi_connection
        assert raw is not None
        # PostgreSQL: psycopg pipeline mode (libpq >= 14), the statements and the COMMIT are
        # sent together and their results read once.  No SQLAlchemy statement may run inside
        # it (its results are read before the pipeline syncs).
        with contextlib.nullcontext() if self.sqlite else raw.pipeline():
            cursor = raw.cursor()
            try:
                for key, rows in pending:
                    cursor.executemany(self._sql[key], rows)
            finally:
                cursor.close()
            if commit:
                raw.commit()
