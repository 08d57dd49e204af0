"""PS3.4 C.2.2.2: attribute matching (single value, universal, wildcard, range, list of UIDs, sequence)."""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom.valuerep import PersonName

# PS3.4 C.2.2.2.4: wildcards apply to these VRs only (not to dates, times, numbers, UIDs).
WILDCARD_VRS = frozenset(("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"))
# PS3.4 C.2.2.2.5: range matching applies to dates and times.
RANGE_VRS = frozenset(("DA", "TM", "DT"))
# PS3.5 Table 6.2-1: the longest value of each VR (characters; PN per component group).
MAX_LENGTH = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 64,
    "SH": 16,
    "ST": 1024,
    "TM": 16,
    "UI": 64,
}
# Upper bound suffix: '~' sorts after every digit, '.', '+' and '-', so that "1800" as the
# end of a range also takes 18:00:30 (PS3.4 C.2.2.2.5.1: a partial value covers its span).
_HIGH = "~"

_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_DATETIME = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?")
_INTEGER = re.compile(r"[+-]?\d{1,12}")
_UID = re.compile(r"[0-9.]{1,64}")


class Kind(enum.Enum):
    """How a key matches (PS3.4 C.2.2.2.1 to C.2.2.2.6)."""

    UNIVERSAL = "universal"
    SINGLE = "single value"
    WILDCARD = "wildcard"
    RANGE = "range"
    UID_LIST = "list of UIDs"
    SEQUENCE = "sequence"


class InvalidKey(ValueError):
    """A key's value cannot be used for matching (PS3.4 C.4.1.2.3: the SCP refuses the query)."""

    def __init__(self, tag: int, message: str) -> None:
        super().__init__(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {message}")
        self.tag = tag


@dataclass(frozen=True, slots=True)
class Matcher:
    """One key of a query, classified: the values to match and how."""

    kind: Kind
    vr: str
    # SINGLE / WILDCARD (any of several values matches) / UID_LIST
    values: tuple[str, ...] = ()
    low: str = ""  # RANGE: "" = open
    high: str = ""
    items: tuple[tuple[int, Matcher], ...] = field(default=())  # SEQUENCE: the item's keys

    @property
    def is_universal(self) -> bool:
        """True when every entity matches (the key only asks for the value to be returned)."""
        return self.kind is Kind.UNIVERSAL or (
            self.kind is Kind.SEQUENCE and all(m.is_universal for _, m in self.items)
        )


def _check_length(tag: int, vr: str, value: str) -> None:
    limit = MAX_LENGTH.get(vr)
    if vr == "PN":
        if any(len(group) > 64 for group in value.split("=")) or value.count("=") > 2:
            raise InvalidKey(tag, "is longer than a Person Name allows (64 characters a group)")
    elif limit is not None and len(value) > limit:
        raise InvalidKey(tag, f"is longer than {vr} allows ({limit} characters)")


def _check_format(tag: int, vr: str, value: str) -> None:
    pattern = {"DA": _DATE, "TM": _TIME, "DT": _DATETIME, "IS": _INTEGER, "UI": _UID}.get(vr)
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidKey(tag, f"{value[:40]!r} is not a valid {vr} value for matching")


def classify(tag: int, vr: str, value: str | None) -> Matcher:
    """Classify a non-sequence key's value; raise InvalidKey for a value no rule accepts."""
    text = (value or "").strip(" ") if vr not in ("LT", "ST", "UT") else (value or "").rstrip(" ")
    text = text.rstrip("\0")
    if "\0" in text:
        # Fix (tests/security): as QIDO does; PostgreSQL refused the query (0xC001, a traceback).
        raise InvalidKey(tag, "contains NUL")
    if text == "" or (vr in WILDCARD_VRS and text.strip("*") == "" and vr != "UI"):
        # PS3.4 C.2.2.2.3: zero length (or a lone '*', C.2.2.2.4) matches every entity.
        return Matcher(Kind.UNIVERSAL, vr)
    if vr == "UI":
        # PS3.4 C.2.2.2.2: a backslash-separated list of UIDs matches any of them.
        uids = tuple(u.strip(" \0") for u in text.split("\\") if u.strip(" \0"))
        for uid in uids:
            _check_format(tag, vr, uid)
        return Matcher(Kind.UID_LIST if len(uids) > 1 else Kind.SINGLE, vr, uids)
    if vr in RANGE_VRS and "-" in text and not (vr == "DT" and _DATETIME.fullmatch(text)):
        low, _, high = text.partition("-")
        if vr == "DT" and text.count("-") > 1:
            # A DT bound may carry a negative UTC offset: split at the dash between two bounds.
            match = re.fullmatch(r"(.*?\d)?-(\d.*)?", text)
            low, high = (match.group(1) or "", match.group(2) or "") if match else (low, high)
        low, high = low.strip(), high.strip()
        if not low and not high:
            raise InvalidKey(tag, "a range needs at least one bound")
        for bound in (low, high):
            if bound:
                _check_format(tag, vr, bound)
        if low and high and low > high and vr != "TM":  # a time range may wrap (combined matching)
            raise InvalidKey(tag, f"range {text!r} ends before it starts")
        return Matcher(Kind.RANGE, vr, low=low, high=high)
    values = tuple(v.strip(" ") for v in text.split("\\")) if vr not in ("LT", "ST", "UT") else (text,)
    # An empty member of a list of values is no value to match (nor universal matching).
    values = tuple(v for v in values if v) or ("",)
    if values == ("",):
        return Matcher(Kind.UNIVERSAL, vr)
    for v in values:
        _check_length(tag, vr, v)
        if vr not in WILDCARD_VRS:
            _check_format(tag, vr, v)
    if vr in WILDCARD_VRS and any("*" in v or "?" in v for v in values):
        return Matcher(Kind.WILDCARD, vr, values)
    return Matcher(Kind.SINGLE, vr, values)


# ---------------------------------------------------------------- person names


def normalize_name(text: str) -> str:
    """The case- and accent-insensitive form of a name (PS3.4 C.2.2.2.1, PN literal matching).

    Latin diacritics go (NFKD, then the marks of U+0300..U+036F dropped) and
    compatibility forms fold (half-width katakana to full width); the Japanese
    voicing marks, which change the sound, stay.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not "\u0300" <= c <= "\u036f")
    return unicodedata.normalize("NFKC", stripped).upper()


def name_groups(value: str) -> list[str]:
    """The component groups of a PN value (alphabetic, ideographic, phonetic; PS3.5 6.2.1)."""
    return value.split("=")[:3]


def name_keys(value: str) -> set[str]:
    """The folded, trimmed component groups of a stored name: the rows of its index keys."""
    return {key for group in name_groups(value) if (key := _trim_name(normalize_name(group)))}


def _trim_name(value: str) -> str:
    # PS3.5 6.2.1: trailing empty components and their '^' separators carry no meaning.
    return value.rstrip(" ^")


@lru_cache(maxsize=1024)
def _pattern(value: str) -> re.Pattern[str]:
    parts = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in value)
    return re.compile("".join(parts), re.DOTALL)


def _text_matches(query: str, stored: str, wildcard: bool) -> bool:
    if wildcard:
        return _pattern(query).fullmatch(stored) is not None
    return query == stored


def _name_group_matches(query: str, stored: str, wildcard: bool, fold: bool) -> bool:
    if fold:
        query, stored = normalize_name(query), normalize_name(stored)
    return _text_matches(_trim_name(query), _trim_name(stored), wildcard)


def _fuzzy_name_matches(query: str, stored: str) -> bool:
    # Fuzzy semantic matching of person names (PS3.4 C.2.2.2.1.1, negotiated): each word
    # of the query, in any order, is the start of some word of any group of the name,
    # ignoring case and accents; '*' and '?' keep their wildcard meaning inside a word.
    words = [w for w in re.split(r"[\^=\s,]+", normalize_name(query)) if w.strip("*")]
    names = [w for w in re.split(r"[\^=\s,]+", normalize_name(stored)) if w]
    return all(any(_pattern(word + "*").fullmatch(name) for name in names) for word in words)


def name_matches(query: str, stored: str, *, wildcard: bool, fold: bool, fuzzy: bool = False) -> bool:
    """PN matching: a query without '=' matches any component group; with '=', group by group."""
    if fuzzy:
        return _fuzzy_name_matches(query, stored)
    groups = name_groups(stored)
    if "=" not in query:
        return any(_name_group_matches(query, g, wildcard, fold) for g in groups if g or not query)
    for i, q in enumerate(name_groups(query)):
        if q.strip("*") == "":
            continue  # an empty (or '*') group of the query matches anything (C.2.2.2.3)
        if not _name_group_matches(q, groups[i] if i < len(groups) else "", wildcard, fold):
            return False
    return True


# ---------------------------------------------------------------- matching stored values


def _time_key(value: str) -> str:
    # ACR-NEMA times may carry colons (HH:MM:SS); compare digits only.
    return value.replace(":", "").strip()


def _in_range(matcher: Matcher, stored: str) -> bool:
    value = _time_key(stored) if matcher.vr in ("TM", "DT") else stored.strip()
    if not value:
        return False
    if matcher.low and value < matcher.low:
        return False
    return not (matcher.high and value > matcher.high + _HIGH)


def value_matches(
    matcher: Matcher, stored: Sequence[str], *, fold_names: bool = False, fuzzy_names: bool = False
) -> bool:
    """Whether a stored (possibly multi-valued) attribute matches a non-sequence key."""
    kind = matcher.kind
    if kind is Kind.UNIVERSAL:
        return True
    if kind is Kind.RANGE:
        return any(_in_range(matcher, s) for s in stored)
    if matcher.vr == "PN":
        wildcard = kind is Kind.WILDCARD
        return any(
            name_matches(q, s, wildcard=wildcard, fold=fold_names, fuzzy=fuzzy_names)
            for q in matcher.values
            for s in stored
        )
    if matcher.vr in ("TM", "DT"):
        # A single time value covers its span, as a range from it to itself does.
        spans = [Matcher(Kind.RANGE, matcher.vr, low=q, high=q) for q in matcher.values]
        return any(_in_range(span, s) for span in spans for s in stored)
    if matcher.vr == "IS":
        wanted = {int(q) for q in matcher.values}
        return any(_int_or_none(s) in wanted for s in stored)
    wildcard = kind is Kind.WILDCARD
    cleaned = [s.strip(" \0") for s in stored]
    return any(_text_matches(q, s, wildcard) for q in matcher.values for s in cleaned)


def _int_or_none(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def like_pattern(value: str, escape: str = "!") -> tuple[str, str]:
    """A DICOM wildcard value as a SQL LIKE pattern, and its literal prefix (for an index range)."""
    out: list[str] = []
    prefix: list[str] = []
    literal = True
    for c in value:
        if c == "*":
            out.append("%")
            literal = False
        elif c == "?":
            out.append("_")
            literal = False
        else:
            out.append(escape + c if c in ("%", "_", escape) else c)
            if literal:
                prefix.append(c)
    return "".join(out), "".join(prefix)


def prefix_upper_bound(prefix: str) -> str:
    """The smallest string greater than every string that starts with ``prefix`` (binary order)."""
    return prefix + "\U0010ffff"


def multi_values(value: object) -> list[str]:
    """A pydicom value (single, MultiValue, PersonName, number) as a list of strings."""
    if value is None:
        return [""]
    if isinstance(value, str | bytes):
        return [value.decode("latin-1") if isinstance(value, bytes) else value]
    if isinstance(value, PersonName):
        return [str(value)]  # one name (iterating a PersonName yields its characters)
    if isinstance(value, Iterable):
        items = [str(v) for v in value]
        return items or [""]
    return [str(value)]
