"""Sample HL7 v2 messages of tests/hl7 (*.hl7, one segment per line) and helpers to derive variants.

The files keep one segment per line (LF) so that they read well in a diff; `sample` turns the
line feeds into the segment terminator HL7 wants (CR).  Each file is in the character set its
MSH-18 names (orm_o01_new_latin1.hl7 is ISO 8859-1, the others UTF-8 or ASCII).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hl7

HERE = Path(__file__).resolve().parent
ENCODING = {
    "orm_o01_new_latin1.hl7": "latin-1",
    "omi_o23_new_utf8.hl7": "utf-8",
    "adt_a08_update.hl7": "utf-8",
    "adt_a40_merge.hl7": "ascii",
}


def sample(name: str) -> bytes:
    """A sample message as sent: segments ended by CR."""
    return (HERE / name).read_bytes().replace(b"\n", b"\r")


def variant(
    name: str, fields: Mapping[str, str] | None = None, *, drop: tuple[str, ...] = (), text: str | None = None
) -> bytes:
    """A sample with whole fields replaced ("ORC.1": "XO"; composite values raw, "^^^2024..."),
    segments dropped (by ID), or raw text instead of the file."""
    encoding = ENCODING[name]
    source = text if text is not None else sample(name).decode(encoding)
    message = hl7.parse(source)
    for key, value in (fields or {}).items():
        message[key] = value
    lines = [line for line in str(message).split("\r") if line and line[:3] not in drop]
    return ("\r".join(lines) + "\r").encode(encoding)


def parse_ack(data: bytes) -> object:
    """An acknowledgement (with or without its MLLP block) as an hl7.Message."""
    return hl7.parse(data.strip(b"\x0b\x1c\r").decode("latin-1"))


def get(message: Any, key: str) -> str:
    """A value by accessor ("ERR.F3.R1.C1"); "" when the message does not have it."""
    try:
        return str(message[key])
    except (IndexError, KeyError):
        return ""
