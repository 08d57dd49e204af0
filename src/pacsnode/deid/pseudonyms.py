"""PS3.15 E.1-1 Patient ID (Z/D) and Patient's Name (Z): a pseudonym per patient (table or keyed hash)."""

from __future__ import annotations

import base64
import csv
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pacsnode.deid.uids import keyed


class PseudonymError(ValueError):
    """A pseudonym table that cannot be read."""


def load_table(path: Path) -> dict[str, str]:
    """Original Patient ID -> pseudonym, from CSV (two columns, optional header) or TOML ([patients])."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PseudonymError(f"{path}: cannot read the pseudonym table: {exc}") from None
    table: dict[str, str] = {}
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PseudonymError(f"{path}: not valid TOML: {exc}") from None
        patients = data.get("patients", data)
        if not isinstance(patients, dict):
            raise PseudonymError(f"{path}: expected a [patients] table of ID = pseudonym")
        for original, pseudonym in patients.items():
            if not isinstance(pseudonym, str):
                raise PseudonymError(f"{path}: pseudonym of {original!r} is not a string")
            table[str(original)] = pseudonym
    else:
        for number, row in enumerate(csv.reader(text.splitlines()), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise PseudonymError(f"{path}:{number}: expected original_id,pseudonym")
            if number == 1 and row[0].strip().lower() in (
                "original",
                "original_id",
                "patient_id",
                "patientid",
            ):
                continue
            table[row[0].strip()] = row[1].strip()
    for original, pseudonym in table.items():
        if not pseudonym or len(pseudonym) > 64 or "\\" in pseudonym:
            raise PseudonymError(f"{path}: pseudonym of {original!r} must be 1..64 characters without '\\'")
    return table


class Pseudonyms:
    """The pseudonym of a patient: from the table when it lists the patient, else keyed-hash derived."""

    def __init__(self, key: bytes, table: Mapping[str, str] | None = None, prefix: str = "ANON") -> None:
        self._key = key
        self._table = dict(table or {})
        self._prefix = prefix

    def __call__(self, patient_id: str) -> str:
        found = self._table.get(patient_id.strip())
        if found is not None:
            return found
        digest = keyed(self._key, "pseudonym", patient_id.strip())
        return (
            f"{self._prefix}-{base64.b32encode(digest[:10]).decode('ascii')}"  # 21 characters: fits LO and PN
        )
