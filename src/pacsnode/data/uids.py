"""PS3.5 Section 10 and PS3.6 Annex A: the UIDs pacsnode names, taken from pydicom's registry."""

from __future__ import annotations

from pydicom.uid import UID

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"  # retired, still met in the field

# PS3.5 10.1: every conformant implementation supports Implicit VR Little Endian.
UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


def uid_name(uid: str) -> str:
    """The registered name of a UID (PS3.6 Annex A), or the UID itself when unknown."""
    return str(UID(uid).name) or uid


def is_valid_uid(uid: str) -> bool:
    """PS3.5 9.1: at most 64 characters of digits and dots, no leading zeros in components."""
    return UID(uid).is_valid
