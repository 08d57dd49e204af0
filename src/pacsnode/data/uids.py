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
    extra = SUPPLEMENTARY_TRANSFER_SYNTAXES.get(uid) or SUPPLEMENTARY_STORAGE_SOP_CLASSES.get(uid)
    return extra or str(UID(uid).name) or uid


def is_valid_uid(uid: str) -> bool:
    """PS3.5 9.1: at most 64 characters of digits and dots, no leading zeros in components."""
    return UID(uid).is_valid


# PS3.6 Table A-1 entries newer than pydicom 3.0.2's UID registry (2024-2025 editions).
SUPPLEMENTARY_TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression",
}
SUPPLEMENTARY_STORAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.8": "Height Map Segmentation Storage",
}
# Transfer syntaxes of the registry that are not used on a DICOM network (PS3.5 A.5, A.6, PS3.18).
_NOT_NETWORK_SYNTAXES = frozenset(("1.2.840.10008.1.2.6.1", "1.2.840.10008.1.2.6.2", "1.2.840.10008.1.20"))


def all_transfer_syntaxes() -> tuple[str, ...]:
    """Every transfer syntax of the standard usable on the network, uncompressed ones first."""
    from pydicom._uid_dict import UID_dictionary

    known = [
        uid
        for uid, (_name, kind, *_rest) in UID_dictionary.items()
        if kind == "Transfer Syntax" and uid not in _NOT_NETWORK_SYNTAXES
    ]
    known += [uid for uid in SUPPLEMENTARY_TRANSFER_SYNTAXES if uid not in known]
    first = [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
    return tuple(first + sorted(uid for uid in known if uid not in first))


# PS3.3 non-patient IODs: no Patient, Study or Series (PS3.4 B.5 lists them with the others).
NON_PATIENT_SOP_CLASSES = frozenset(
    (
        "1.2.840.10008.5.1.4.38.1",  # Hanging Protocol Storage
        "1.2.840.10008.5.1.4.39.1",  # Color Palette Storage
        "1.2.840.10008.5.1.4.43.1",  # Generic Implant Template Storage
        "1.2.840.10008.5.1.4.44.1",  # Implant Assembly Template Storage
        "1.2.840.10008.5.1.4.45.1",  # Implant Template Group Storage
        "1.2.840.10008.5.1.4.1.1.200.1",  # CT Defined Procedure Protocol Storage
        "1.2.840.10008.5.1.4.1.1.200.3",  # Protocol Approval Storage
        "1.2.840.10008.5.1.4.1.1.200.7",  # XA Defined Procedure Protocol Storage
        "1.2.840.10008.5.1.4.1.1.201.1",  # Inventory Storage
    )
)

# PS3.4 Annex C.6 / PS3.6 Table A-1: the Query/Retrieve Information Models.
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
