"""HL7 v2.5.1 chapter 2A data types (XPN, XCN, CNN, CX, TS, CE/CWE) as DICOM values (PS3.5 6.2)."""

from __future__ import annotations

import re
from typing import Any

from pydicom.dataset import Dataset

from pacsnode.hl7.message import DATA_TYPE_ERROR, ERROR, Hl7Error, is_null, value

# HL7 v2.5.1 2A.74 DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]
_DTM = re.compile(r"(\d{8})(\d{2,6}(?:\.\d{1,4})?)?([+-]\d{4})?")


def _pn(family: str, given: str, middle: str, prefix: str, suffix: str) -> str:
    # PS3.5 6.2.1.1: family^given^middle^prefix^suffix, trailing empty components dropped.
    parts = [family, given, middle, prefix, suffix]
    if any("^" in p or "=" in p or "\\" in p for p in parts):
        parts = [p.replace("^", " ").replace("=", " ").replace("\\", " ") for p in parts]
    return "^".join(parts).rstrip("^")


def xpn(segment: Any, field: int, repetition: int = 1) -> str:
    """An XPN (family^given^middle^suffix^prefix^degree) as a DICOM PN value."""
    suffix = " ".join(
        s for s in (value(segment, field, 4, 1, repetition), value(segment, field, 6, 1, repetition)) if s
    )
    return _pn(
        value(segment, field, 1, 1, repetition),
        value(segment, field, 2, 1, repetition),
        value(segment, field, 3, 1, repetition),
        value(segment, field, 5, 1, repetition),
        suffix,
    )


def xcn(segment: Any, field: int, repetition: int = 1) -> str:
    """An XCN (id^family^given^middle^suffix^prefix^degree) as a DICOM PN value."""
    suffix = " ".join(
        s for s in (value(segment, field, 5, 1, repetition), value(segment, field, 7, 1, repetition)) if s
    )
    return _pn(
        value(segment, field, 2, 1, repetition),
        value(segment, field, 3, 1, repetition),
        value(segment, field, 4, 1, repetition),
        value(segment, field, 6, 1, repetition),
        suffix,
    )


def cnn(segment: Any, field: int) -> str:
    """The name of an NDL/CNN (id&family&given&middle&suffix&prefix in component 1) as a DICOM PN value."""
    return _pn(
        value(segment, field, 1, 2),
        value(segment, field, 1, 3),
        value(segment, field, 1, 4),
        value(segment, field, 1, 6),
        value(segment, field, 1, 5),
    )


def cx_issuer(segment: Any, field: int, repetition: int = 1) -> str:
    """The assigning authority of a CX (component 4, an HD: namespace ID, else universal ID)."""
    return value(segment, field, 4, 1, repetition) or value(segment, field, 4, 2, repetition)


def date_time(text: str, segment: str, field: int) -> tuple[str, str]:
    """A TS/DTM as DICOM (DA, TM); ("", "") for an empty value; raises Hl7Error (AE 102) when malformed."""
    if not text or is_null(text):
        return "", ""
    m = _DTM.fullmatch(text)
    if m is None:
        raise Hl7Error(ERROR, DATA_TYPE_ERROR, f"not a date/time: {text[:40]!r}", segment, field=field)
    return m.group(1), m.group(2) or ""


def date(text: str, segment: str, field: int) -> str:
    """A DT/TS as a DICOM DA (the time, if any, is dropped)."""
    return date_time(text, segment, field)[0]


def code_item(segment: Any, field: int, repetition: int = 1) -> Dataset | None:
    """A CE/CWE (code^text^scheme) as a PS3.3 Table 8.8-1 code item; None without code or scheme."""
    code, meaning, scheme = (value(segment, field, c, 1, repetition) for c in (1, 2, 3))
    if not code or not scheme:
        return None
    item = Dataset()
    item.CodeValue = code[:16]
    item.CodingSchemeDesignator = scheme[:16]
    item.CodeMeaning = (meaning or code)[:64]
    return item


def code_text(segment: Any, field: int) -> str:
    """The text of a CE/CWE (component 2, else 5 alternate text, else the code)."""
    return value(segment, field, 2) or value(segment, field, 5) or value(segment, field, 1)
