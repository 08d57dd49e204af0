"""PS3.15 A.5: the local audit trail in the index database: the durable send queue, and its search."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, delete, func, insert, or_, select, update

from pacsnode.archive.schema import audit_messages
from pacsnode.audit.message import VALUE_LIMIT
from pacsnode.config.logsafe import clean
from pacsnode.security.events import AuditEvent, EventKind

# sent: 0 waiting for the collector, 1 sent, 2 cannot be sent (larger than a UDP datagram).
PENDING, SENT, UNSENDABLE = 0, 1, 2

# PS3.15 A.5.1 ParticipantObjectIDTypeCode of the objects a message is searched by.
_PATIENT_NUMBER = "2"
_STUDY_INSTANCE_UID = "110180"

# EventTypeCodes (PS3.16 CID 401, 402, 404) the search knows by name as well as by code.
EVENT_TYPES = {
    "110120": "Application Start",
    "110121": "Application Stop",
    "110122": "Login",
    "110123": "Logout",
    "110124": "Attach",
    "110125": "Detach",
    "110126": "Node Authentication",
    "110127": "Emergency Override Started",
    "110128": "Network Configuration",
    "110129": "Security Configuration",
    "110130": "Hardware Configuration",
    "110131": "Software Configuration",
    "110132": "Use of Restricted Function",
    "110133": "Audit Recording Stopped",
    "110134": "Audit Recording Started",
    "110135": "Object Security Attributes Changed",
    "110136": "Security Roles Changed",
    "110137": "User security Attributes Changed",
    "110138": "Emergency Override Stopped",
    "110139": "Remote Service Operation Started",
    "110140": "Remote Service Operation Stopped",
    "110141": "Local Service Operation Started",
    "110142": "Local Service Operation Stopped",
}


def _joined(values: Iterable[str]) -> str:
    # "|a|b|": each value matched whole by LIKE '%|value|%'; escaped and cut as in the message.
    kept = [clean(v, VALUE_LIMIT) for v in dict.fromkeys(values) if v]
    return "|" + "|".join(kept) + "|" if kept else ""


def _split(joined: str) -> list[str]:
    return [v for v in joined.split("|") if v]


def _utc(value: datetime) -> datetime:
    # Kept in UTC: SQLite keeps the wall time only, so every row and filter is in one zone.
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes: they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def row_of(event: AuditEvent, xml: str) -> dict[str, Any]:
    """The audit_messages row of an event: its message and the keys it is searched by."""
    requestor = next((p for p in event.participants if p.requestor and p.network_access_point), None)
    return {
        "at": _utc(event.at),
        "event_code": event.kind.code,
        "event_types": _joined(code for code, _, _ in event.type_codes),
        "action": event.action,
        "outcome": int(event.outcome),
        "user_ids": _joined(p.user_id for p in event.participants),
        "patient_ids": _joined(o.object_id for o in event.objects if o.id_type[0] == _PATIENT_NUMBER),
        "study_uids": _joined(o.object_id for o in event.objects if o.id_type[0] == _STUDY_INSTANCE_UID),
        "source_address": (requestor.network_access_point if requestor is not None else "")[:255],
        "xml": xml,
        "sent": PENDING,
        "attempts": 0,
        "sent_at": None,
        "last_error": "",
    }


@dataclass(frozen=True, slots=True)
class Pending:
    """A message still to send: its row id, when it happened, whether it reports a failure, the XML."""

    id: int
    at: datetime
    failure: bool
    xml: str


class AuditStore:
    """The audit_messages table: appended by the trail's writer, drained in order by its sender."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Keep messages (one transaction; durable once it returns)."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(audit_messages), list(rows))

    def unsent(self, limit: int = 100) -> list[Pending]:
        """The oldest messages not yet sent, in the order they were kept."""
        c = audit_messages.c
        stmt = select(c.id, c.at, c.outcome, c.xml).where(c.sent == PENDING).order_by(c.id).limit(limit)
        with self.engine.connect() as conn:
            return [Pending(row.id, _aware(row.at), row.outcome != 0, row.xml) for row in conn.execute(stmt)]

    def mark_sent(self, ids: Sequence[int], when: datetime) -> None:
        """These messages reached the collector."""
        if ids:
            c = audit_messages.c
            with self.engine.begin() as conn:
                conn.execute(
                    update(audit_messages)
                    .where(c.id.in_(list(ids)))
                    .values(sent=SENT, sent_at=when, attempts=c.attempts + 1, last_error="")
                )

    def mark_failed(self, message_id: int, error: str, *, give_up: bool = False) -> None:
        """An attempt failed (the message waits for the next one), or it can never be sent."""
        c = audit_messages.c
        values: dict[str, Any] = {"attempts": c.attempts + 1, "last_error": error[:1024]}
        if give_up:
            values["sent"] = UNSENDABLE
        with self.engine.begin() as conn:
            conn.execute(update(audit_messages).where(c.id == message_id).values(**values))

    def prune(self, before: datetime, *, unsent_too: bool) -> int:
        """Drop messages older than ``before`` (those still to send only with ``unsent_too``)."""
        c = audit_messages.c
        stmt = delete(audit_messages).where(c.at < before)
        if not unsent_too:
            stmt = stmt.where(c.sent != PENDING)
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount or 0)

    def count_unsent(self) -> int:
        """How many messages wait for the collector."""
        c = audit_messages.c
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(c.sent == PENDING)).scalar_one())


# ---------------------------------------------------------------- search


class SearchError(ValueError):
    """A search filter that means nothing (an unknown event name, say)."""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """GET /api/audit filters; each given one must hold (empty: any)."""

    since: datetime | None = None
    until: datetime | None = None
    user: str = ""  # an ActiveParticipant UserID (AE title, user name, address)
    patient: str = ""  # a Patient ID
    study: str = ""  # a Study Instance UID
    event: str = ""  # an EventID or EventTypeCode, by code (110112) or by name (Query)
    outcome: int | None = None
    limit: int = 100
    offset: int = 0


def event_condition(event: str) -> ColumnElement[bool]:
    """The rows of an EventID or EventTypeCode named by code or meaning (case-insensitive)."""
    c = audit_messages.c
    wanted = event.strip()
    folded = wanted.casefold()
    for kind in EventKind:
        if folded in (kind.code, kind.meaning.casefold(), kind.name.casefold()):
            return c.event_code == kind.code
    for code, meaning in EVENT_TYPES.items():
        if folded in (code, meaning.casefold()):
            return c.event_types.contains(f"|{code}|", autoescape=True)
    if wanted.isdigit():
        return or_(c.event_code == wanted, c.event_types.contains(f"|{wanted}|", autoescape=True))
    raise SearchError(f"unknown event {event!r}: give an EventID code (110112) or name (Query)")


def search(engine: Engine, query: AuditQuery) -> dict[str, Any]:
    """One page of the trail, newest first, with each message's XML (blocking)."""
    c = audit_messages.c
    conditions: list[ColumnElement[bool]] = []
    if query.since is not None:
        conditions.append(c.at >= _utc(query.since))
    if query.until is not None:
        conditions.append(c.at <= _utc(query.until))
    for column, value in (
        (c.user_ids, query.user),
        (c.patient_ids, query.patient),
        (c.study_uids, query.study),
    ):
        if value:
            # Kept escaped and cut (_joined): so is the filter (a NUL never reaches the database).
            conditions.append(column.contains(f"|{clean(value, VALUE_LIMIT)}|", autoescape=True))
    if query.event:
        conditions.append(event_condition(query.event))
    if query.outcome is not None:
        conditions.append(c.outcome == query.outcome)
    stmt = (
        select(audit_messages)
        .where(*conditions)
        .order_by(c.at.desc(), c.id.desc())
        .limit(query.limit + 1)
        .offset(query.offset)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    more = len(rows) > query.limit
    return {
        "items": [_item(row._mapping) for row in rows[: query.limit]],
        "limit": query.limit,
        "offset": query.offset,
        "more": more,
    }


def _item(row: Any) -> dict[str, Any]:
    kind = next((k for k in EventKind if k.code == row["event_code"]), None)
    sent_at = row["sent_at"]
    return {
        "id": row["id"],
        "at": _aware(row["at"]).isoformat(),
        "event": {"code": row["event_code"], "meaning": kind.meaning if kind is not None else ""},
        "event_types": [{"code": t, "meaning": EVENT_TYPES.get(t, "")} for t in _split(row["event_types"])],
        "action": row["action"],
        "outcome": row["outcome"],
        "user_ids": _split(row["user_ids"]),
        "patient_ids": _split(row["patient_ids"]),
        "study_uids": _split(row["study_uids"]),
        "source_address": row["source_address"],
        "sent": {PENDING: "pending", SENT: "sent", UNSENDABLE: "unsendable"}.get(row["sent"], "?"),
        "sent_at": _aware(sent_at).isoformat() if sent_at is not None else None,
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "xml": row["xml"],
    }
