"""PS3.15 E.3 options of the Basic Application Level Confidentiality Profile; PS3.16 CID 7050 codes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pacsnode.deid.profile_table import Row


class Option(StrEnum):
    """An option (PS3.15 E.3.x), named as on the command line."""

    RETAIN_SAFE_PRIVATE = "retain-safe-private"  # E.3.10
    RETAIN_UIDS = "retain-uids"  # E.3.9
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"  # E.3.8
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"  # E.3.11
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"  # E.3.7
    RETAIN_FULL_DATES = "retain-full-dates"  # E.3.6 with Full Dates
    RETAIN_MODIFIED_DATES = "retain-modified-dates"  # E.3.6 with Modified Dates
    CLEAN_DESCRIPTORS = "clean-descriptors"  # E.3.5
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"  # E.3.4
    CLEAN_GRAPHICS = "clean-graphics"  # E.3.3
    CLEAN_PIXEL_DATA = "clean-pixel-data"  # E.3.1


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept (PS3.3 8.8): value, scheme, meaning."""

    value: str
    scheme: str
    meaning: str


# PS3.16 CID 7050 De-identification Method (coding scheme DCM).
BASIC_PROFILE_CODE = Code("113100", "DCM", "Basic Application Confidentiality Profile")
CODES: dict[Option, Code] = {
    Option.CLEAN_PIXEL_DATA: Code("113101", "DCM", "Clean Pixel Data Option"),
    Option.CLEAN_GRAPHICS: Code("113103", "DCM", "Clean Graphics Option"),
    Option.CLEAN_STRUCTURED_CONTENT: Code("113104", "DCM", "Clean Structured Content Option"),
    Option.CLEAN_DESCRIPTORS: Code("113105", "DCM", "Clean Descriptors Option"),
    Option.RETAIN_FULL_DATES: Code(
        "113106", "DCM", "Retain Longitudinal Temporal Information Full Dates Option"
    ),
    Option.RETAIN_MODIFIED_DATES: Code(
        "113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option"
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: Code("113108", "DCM", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: Code("113109", "DCM", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: Code("113110", "DCM", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: Code("113111", "DCM", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: Code("113112", "DCM", "Retain Institution Identity Option"),
}

# Each option's column of Table E.1-1 (Clean Pixel Data has none: it acts on pixels, E.3.1).
COLUMN: dict[Option, str] = {
    Option.RETAIN_SAFE_PRIVATE: "retain_safe_private",
    Option.RETAIN_UIDS: "retain_uids",
    Option.RETAIN_DEVICE_IDENTITY: "retain_device_identity",
    Option.RETAIN_INSTITUTION_IDENTITY: "retain_institution_identity",
    Option.RETAIN_PATIENT_CHARACTERISTICS: "retain_patient_characteristics",
    Option.RETAIN_FULL_DATES: "retain_full_dates",
    Option.RETAIN_MODIFIED_DATES: "retain_modified_dates",
    Option.CLEAN_DESCRIPTORS: "clean_descriptors",
    Option.CLEAN_STRUCTURED_CONTENT: "clean_structured_content",
    Option.CLEAN_GRAPHICS: "clean_graphics",
}


class OptionError(ValueError):
    """Options that cannot be combined, or an unknown option name."""


def parse_options(names: Iterable[str]) -> frozenset[Option]:
    """Options from their command-line names (or the enum values); checks they can be combined."""
    chosen: set[Option] = set()
    for name in names:
        try:
            chosen.add(Option(name.strip().lower().replace("_", "-")))
        except ValueError:
            known = ", ".join(o.value for o in Option)
            raise OptionError(f"unknown option {name!r} (known: {known})") from None
    if {Option.RETAIN_FULL_DATES, Option.RETAIN_MODIFIED_DATES} <= chosen:
        # PS3.15 E.3.6: dates are either retained or modified, not both.
        raise OptionError("retain-full-dates and retain-modified-dates exclude each other")
    return frozenset(chosen)


def action_for(row: Row, options: frozenset[Option]) -> str:
    """The action code for a row under the options chosen.

    Where several chosen options give an action for the same row, K (an explicit
    wish to keep) wins over C, and either over the Basic Profile's code.
    """
    found = [getattr(row, COLUMN[o]) for o in options if o in COLUMN]
    if "K" in found:
        return "K"
    if "C" in found:
        return "C"
    return row.basic


def method_codes(options: frozenset[Option], *, pixels_cleaned: bool) -> list[Code]:
    """PS3.15 E.1.1 item 6: the codes of the profile and of every option applied, in CID 7050 order."""
    applied = set(options)
    if pixels_cleaned:
        applied.add(Option.CLEAN_PIXEL_DATA)
    elif Option.CLEAN_PIXEL_DATA in applied:
        applied.discard(Option.CLEAN_PIXEL_DATA)  # claimed only when pixels were cleaned (or checked)
    return [BASIC_PROFILE_CODE, *sorted((CODES[o] for o in applied), key=lambda c: c.value)]
