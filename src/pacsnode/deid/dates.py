"""PS3.15 E.3.6 Retain Longitudinal Temporal Information with Modified Dates: a per-patient date shift."""

from __future__ import annotations

import datetime as dt

from pacsnode.deid.uids import keyed

MAX_SHIFT_DAYS = 3652  # up to ten years back


def shift_days(key: bytes, patient: str) -> int:
    """Whole days to move every date of one patient back (1..MAX_SHIFT_DAYS), from a keyed hash of its ID.

    Whole days keep times of day (TM) and every interval between the patient's
    dates; the same patient gets the same shift in every batch under one key.
    """
    digest = keyed(key, "date-shift", patient)
    return -(1 + int.from_bytes(digest[:4], "big") % MAX_SHIFT_DAYS)


def _shift_da(value: str, days: int) -> str | None:
    value = value.strip()
    if len(value) == 8 and value.isdigit():
        try:
            day = dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
            moved = day + dt.timedelta(days=days)
        except (ValueError, OverflowError):  # not a date, or moved before 0001-01-01
            return None
        return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}"
    return None


def shift_date(value: str, days: int) -> str | None:
    """A DA value (or a DA range "A-B", PS3.4 C.2.2.2.5) moved by ``days``; None if it is not a date."""
    if "-" in value:
        parts = [p.strip() for p in value.split("-")]
        if len(parts) != 2:
            return None
        moved = [_shift_da(p, days) if p else "" for p in parts]
        return None if any(m is None for m in moved) else "-".join(m or "" for m in moved)
    return _shift_da(value, days)


def shift_datetime(value: str, days: int) -> str | None:
    """A DT value moved by ``days``: YYYYMMDD shifted, the time and UTC offset kept; None if not a DT."""
    value = value.strip()
    if len(value) < 8:
        return None  # a year or year-month only: nothing finer to keep consistent
    moved = _shift_da(value[:8], days)
    return None if moved is None else moved + value[8:]
