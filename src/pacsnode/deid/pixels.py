"""PS3.15 E.3.1 Clean Pixel Data: burned-in annotation blanked by rules per device and image size."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID

BURNED_IN_ANNOTATION = 0x00280301
PIXEL_DATA = 0x7FE00010
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


class PixelRuleError(ValueError):
    """A rules file that cannot be read."""


class PixelError(ValueError):
    """Pixel data that a rule applies to but that cannot be blanked (the instance is refused)."""


@dataclass(frozen=True, slots=True)
class PixelRule:
    """Where a device burns in text: rectangles (x, y, width, height; columns and rows from top left)."""

    rectangles: tuple[tuple[int, int, int, int], ...]
    manufacturer: str | None = None
    model: str | None = None
    rows: int | None = None
    columns: int | None = None

    def matches(self, manufacturer: str, model: str, rows: int, columns: int) -> bool:
        """Whether this rule is for an image of this device and size (a field left out matches any)."""
        return (
            (self.manufacturer is None or self.manufacturer.casefold() == manufacturer.strip().casefold())
            and (self.model is None or self.model.casefold() == model.strip().casefold())
            and (self.rows is None or self.rows == rows)
            and (self.columns is None or self.columns == columns)
        )


def load_rules(path: Path) -> tuple[PixelRule, ...]:
    """Rules from TOML: ``[[rule]]`` with rectangles, and manufacturer, model, rows, columns (optional)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PixelRuleError(f"{path}: cannot read the pixel rules: {exc}") from None
    rules = []
    for number, entry in enumerate(data.get("rule", []), 1):
        where = f"{path}: [[rule]] {number}"
        try:
            rectangles = tuple(
                (int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in entry["rectangles"] if len(r) == 4
            )
        except (KeyError, TypeError, ValueError, IndexError):
            raise PixelRuleError(f"{where}: rectangles = [[x, y, width, height], ...] is required") from None
        if not rectangles or any(w <= 0 or h <= 0 or x < 0 or y < 0 for x, y, w, h in rectangles):
            raise PixelRuleError(f"{where}: each rectangle needs x, y >= 0 and width, height > 0")
        unknown = set(entry) - {"manufacturer", "model", "rows", "columns", "rectangles"}
        if unknown:
            raise PixelRuleError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        rules.append(
            PixelRule(
                rectangles,
                manufacturer=str(entry["manufacturer"]) if "manufacturer" in entry else None,
                model=str(entry["model"]) if "model" in entry else None,
                rows=int(entry["rows"]) if "rows" in entry else None,
                columns=int(entry["columns"]) if "columns" in entry else None,
            )
        )
    return tuple(rules)


def rule_for(ds: Dataset, rules: tuple[PixelRule, ...]) -> PixelRule | None:
    """The first rule for this image's Manufacturer, Manufacturer's Model Name, Rows and Columns."""
    if PIXEL_DATA not in ds or not rules:
        return None
    manufacturer = str(ds.get("Manufacturer", "") or "")
    model = str(ds.get("ManufacturerModelName", "") or "")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    return next((r for r in rules if r.matches(manufacturer, model, rows, columns)), None)


def _fill(ds: Dataset, big_endian: bool) -> bytes:
    """One sample's bytes for "blank": black (the lowest value, or the highest for MONOCHROME1)."""
    size = int(ds.BitsAllocated) // 8
    stored = int(ds.get("BitsStored", ds.BitsAllocated))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    high = (1 << (stored - 1)) - 1 if signed else (1 << stored) - 1
    low = -(1 << (stored - 1)) if signed else 0
    value = high if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1" else low
    return value.to_bytes(size, "big" if big_endian else "little", signed=signed)


def blank(ds: Dataset, rule: PixelRule, transfer_syntax: str) -> str:
    """Blank the rule's rectangles in every frame; returns the transfer syntax the pixels are now in.

    Native pixel data is edited byte by byte in place, with no decoding. Compressed
    pixel data is decoded by pydicom's handlers and stored native (Explicit VR Little
    Endian), since re-encoding would be lossy or slow; the caller records the change.
    """
    syntax = UID(transfer_syntax)
    if syntax.is_compressed:
        try:
            ds.decompress()  # pydicom: decode every frame, Explicit VR Little Endian, PS3.5 8.2
        except Exception as exc:
            raise PixelError(
                f"burned-in annotation to blank, but the pixel data cannot be decoded: {exc}"
            ) from None
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if bits not in (8, 16, 32) or photometric.endswith("_422") or photometric.endswith("_420"):
        raise PixelError(f"cannot blank {bits}-bit {photometric} pixel data in place")
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    planar = int(ds.get("PlanarConfiguration", 0) or 0) == 1
    size = bits // 8
    data = bytearray(ds.PixelData)
    frame_bytes = rows * columns * samples * size
    if len(data) < frame_bytes * frames:
        raise PixelError(f"pixel data has {len(data)} bytes, {frame_bytes * frames} expected")
    fill = _fill(ds, transfer_syntax == _BIG_ENDIAN)
    for frame in range(frames):
        base = frame * frame_bytes
        for x, y, width, height in rule.rectangles:
            x0, x1 = min(x, columns), min(x + width, columns)
            for row in range(min(y, rows), min(y + height, rows)):
                if planar:
                    for plane in range(samples):
                        start = base + (plane * rows * columns + row * columns + x0) * size
                        data[start : start + (x1 - x0) * size] = fill * (x1 - x0)
                else:
                    start = base + (row * columns + x0) * samples * size
                    data[start : start + (x1 - x0) * samples * size] = fill * ((x1 - x0) * samples)
    ds.PixelData = bytes(data)
    ds.BurnedInAnnotation = "NO"  # PS3.15 E.3.1: the annotation is gone
    return transfer_syntax
