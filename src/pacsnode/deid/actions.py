"""PS3.15 E.1-1 action codes (D, Z, X, K, C, U and the combined ones) and the values they put in place."""

from __future__ import annotations

import functools
from enum import StrEnum

from pacsnode.deid.iod_types import SOP_CLASS_IOD, TYPES


class Act(StrEnum):
    """What is done to one element once a combined code has been resolved."""

    REMOVE = "X"  # PS3.15 E.1-1 X: remove
    EMPTY = "Z"  # Z: zero length (a Type 1 attribute gets a dummy instead)
    DUMMY = "D"  # D: a non-zero length dummy value consistent with the VR
    KEEP = "K"  # K: unchanged (a sequence's items are still de-identified)
    CLEAN = "C"  # C: values of similar meaning known not to identify
    UID = "U"  # U: a UID consistent within the set of instances


# A dummy value per VR (PS3.15 E.1-1 D: "consistent with the VR"; PS3.5 Table 6.2-1 lengths).
DUMMY_TEXT = "DEIDENTIFIED"
DUMMY: dict[str, object] = {
    "AE": DUMMY_TEXT,
    "AS": "000D",
    "CS": DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "TM": "000000",
    "UC": DUMMY_TEXT,
    "UR": "urn:uuid:00000000-0000-0000-0000-000000000000",
    "UT": DUMMY_TEXT,
    "AT": 0,
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
}
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

_STRICT = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}


def iod_of(sop_class_uid: str) -> str | None:
    """The IOD (highdicom's key) of a SOP class; None for an unknown or private class."""
    return SOP_CLASS_IOD.get(sop_class_uid.strip("\0 "))


@functools.cache
def _strictest(parent: int, tag: int) -> str:
    """The strictest Type of ``tag`` in any IOD at this position, else anywhere, else 3."""
    found = TYPES.get((parent, tag))
    kinds = (
        list(found.values()) if found else [k for (_p, t), v in TYPES.items() if t == tag for k in v.values()]
    )
    return min(kinds, key=_STRICT.__getitem__, default="3")


def attribute_type(iod: str | None, parent: int, tag: int) -> str:
    """The Type (1, 1C, 2, 2C, 3) of an attribute at top level (parent 0) or in a sequence.

    The rule when it is not known (an IOD outside the tables, or a position none of
    them has): assume the strictest Type the attribute has in any IOD, so that the
    combined action chosen from it keeps the object valid whatever its IOD.
    """
    found = TYPES.get((parent, tag))
    if iod is not None and found is not None:
        return found.get(iod, "3")  # the IOD has the attribute elsewhere only: optional here
    return _strictest(parent, tag)


def resolve(code: str, kind: str) -> Act:
    """A single action from an E.1-1 code and the attribute's Type (PS3.15 E.1-1, key to the table).

    X/Z: X unless Z is required (Type 3 vs 2); X/D: X unless D is required (3 vs 1);
    X/Z/D: X, Z or D (3, 2, 1); Z/D: Z unless D is required (2 vs 1); X/Z/U*: X, Z, or
    the sequence kept with its contained instance UIDs replaced (3, 2, 1).
    """
    if "/" not in code:
        return Act(code)
    required = kind in ("1", "1C")
    optional = kind == "3"
    if code == "X/Z":
        return Act.REMOVE if optional else Act.DUMMY if required else Act.EMPTY
    if code == "X/D":
        return Act.REMOVE if optional else Act.DUMMY
    if code == "X/Z/D":
        return Act.REMOVE if optional else Act.DUMMY if required else Act.EMPTY
    if code == "Z/D":
        return Act.DUMMY if required else Act.EMPTY
    if code == "X/Z/U*":
        return Act.REMOVE if optional else Act.UID if required else Act.EMPTY
    raise ValueError(f"unknown action code {code!r}")
