"""PS3.15 E.3.10 Retain Safe Private Option: which private attributes are safe to keep."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

# A small extract of PS3.15 Table E.3.10-1 "Safe Private Attributes" (typed by hand: neither
# the standard's JSON extract nor pydicom carries that table): (private creator, group,
# element byte within the creator's block). More can be given in a file (`load_safe_list`).
SAFE_PRIVATE: frozenset[tuple[str, int, int]] = frozenset(
    {
        ("SIEMENS MR HEADER", 0x0019, 0x0C),  # B_value
        ("SIEMENS MR HEADER", 0x0019, 0x0D),  # DiffusionDirectionality
        ("SIEMENS MR HEADER", 0x0019, 0x0E),  # DiffusionGradientDirection
        ("SIEMENS MR HEADER", 0x0019, 0x27),  # B_matrix
        ("GEMS_PARM_01", 0x0043, 0x39),  # diffusion b value (Slop_int_6..9)
        ("Philips Imaging DD 001", 0x2001, 0x03),  # Diffusion B-Factor
    }
)

PRIVATE_DATA_ELEMENT_CHARACTERISTICS = 0x00080300  # PS3.3 C.12.1.1.7
PRIVATE_GROUP_REFERENCE = 0x00080301
PRIVATE_CREATOR_REFERENCE = 0x00080302
BLOCK_IDENTIFYING_INFORMATION_STATUS = 0x00080303
NONIDENTIFYING_PRIVATE_ELEMENTS = 0x00080304


class SafeListError(ValueError):
    """A safe-private list file that cannot be read."""


def load_safe_list(path: Path) -> frozenset[tuple[str, int, int]]:
    """Extra safe private attributes from TOML: ``[[safe]]`` with creator, group (0x0019), element (0x0C)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SafeListError(f"{path}: cannot read the safe private list: {exc}") from None
    found: set[tuple[str, int, int]] = set()
    for number, entry in enumerate(data.get("safe", []), 1):
        try:
            creator, group, element = str(entry["creator"]), int(entry["group"]), int(entry["element"])
        except (KeyError, TypeError, ValueError):
            raise SafeListError(f"{path}: [[safe]] entry {number} needs creator, group and element") from None
        if not group & 1 or not 0 <= element <= 0xFF:
            raise SafeListError(f"{path}: [[safe]] entry {number}: odd group and element byte 0x00..0xFF")
        found.add((creator.strip(), group, element))
    return frozenset(found)


def declared_safe(ds: Dataset) -> set[tuple[str, int, int]]:
    """Private elements the object itself declares safe (PS3.3 C.12.1.1.7, PS3.15 E.3.10).

    A block whose Block Identifying Information Status is SAFE is safe whole
    (element -1); MIXED lists its safe elements in Nonidentifying Private Elements.
    """
    safe: set[tuple[str, int, int]] = set()
    if PRIVATE_DATA_ELEMENT_CHARACTERISTICS not in ds:
        return safe
    for item in ds[PRIVATE_DATA_ELEMENT_CHARACTERISTICS].value or []:
        try:
            group = int(item[PRIVATE_GROUP_REFERENCE].value)
            creator = str(item[PRIVATE_CREATOR_REFERENCE].value).strip()
            status = str(item[BLOCK_IDENTIFYING_INFORMATION_STATUS].value).strip()
        except (KeyError, TypeError, ValueError):
            continue
        if status == "SAFE":
            safe.add((creator, group, -1))
        elif status == "MIXED" and NONIDENTIFYING_PRIVATE_ELEMENTS in item:
            elements = item[NONIDENTIFYING_PRIVATE_ELEMENTS].value
            several = isinstance(elements, MultiValue | list | tuple)
            values: Iterable[int] = elements if several else [elements]
            safe.update((creator, group, int(e) & 0xFF) for e in values if e is not None)
    return safe
