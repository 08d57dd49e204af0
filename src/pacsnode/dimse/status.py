"""PS3.7 Annex C status codes, their categories, and the service-specific codes of PS3.4."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """Status (0000,0900) values of PS3.7 Annex C and the service annexes of PS3.4.

    Some values mean different things to different services; the second name of
    such a value is an alias (``Status.UNABLE_TO_PROCESS is Status.CANNOT_UNDERSTAND``).
    """

    SUCCESS = 0x0000  # PS3.7 C.1
    # PS3.7 C.4: warnings
    OPTIONAL_ATTRIBUTES_NOT_SUPPORTED = 0x0001  # PS3.4 N-service warning (Print, Media Creation, UPS)
    ATTRIBUTE_LIST_ERROR = 0x0107  # PS3.7 C.4
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116  # PS3.7 C.4
    COERCION_OF_DATA_ELEMENTS = 0xB000  # PS3.4 B.2.3
    SUBOPERATIONS_COMPLETE_WITH_FAILURES = 0xB000  # PS3.4 C.4.2.1.5, C.4.3.1.4 (C-MOVE/C-GET)
    ELEMENTS_DISCARDED = 0xB006  # PS3.4 B.2.3
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007  # PS3.4 B.2.3
    # PS3.7 C.5: failures
    NO_SUCH_ATTRIBUTE = 0x0105  # PS3.7 C.5
    INVALID_ATTRIBUTE_VALUE = 0x0106  # PS3.7 C.5
    PROCESSING_FAILURE = 0x0110  # PS3.7 C.5
    DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.5
    NO_SUCH_SOP_INSTANCE = 0x0112  # PS3.7 C.5 (No such object instance)
    NO_SUCH_EVENT_TYPE = 0x0113  # PS3.7 C.5
    NO_SUCH_ARGUMENT = 0x0114  # PS3.7 C.5
    INVALID_ARGUMENT_VALUE = 0x0115  # PS3.7 C.5
    INVALID_OBJECT_INSTANCE = 0x0117  # PS3.7 C.5
    NO_SUCH_SOP_CLASS = 0x0118  # PS3.7 C.5
    CLASS_INSTANCE_CONFLICT = 0x0119  # PS3.7 C.5
    MISSING_ATTRIBUTE = 0x0120  # PS3.7 C.5
    MISSING_ATTRIBUTE_VALUE = 0x0121  # PS3.7 C.5
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5 (Refused: SOP class not supported)
    NO_SUCH_ACTION = 0x0123  # PS3.7 C.5
    NOT_AUTHORIZED = 0x0124  # PS3.7 C.5 (Refused: not authorized)
    DUPLICATE_INVOCATION = 0x0210  # PS3.7 C.5
    UNRECOGNIZED_OPERATION = 0x0211  # PS3.7 C.5
    MISTYPED_ARGUMENT = 0x0212  # PS3.7 C.5
    RESOURCE_LIMITATION = 0x0213  # PS3.7 C.5
    OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3, C.4.1.1.4 (Refused: out of resources)
    OUT_OF_RESOURCES_MATCHES = 0xA701  # PS3.4 C.4.2.1.5: unable to calculate number of matches
    OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702  # PS3.4 C.4.2.1.5: unable to perform sub-operations
    MOVE_DESTINATION_UNKNOWN = 0xA801  # PS3.4 C.4.2.1.5
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # PS3.4 B.2.3 (Storage)
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # PS3.4 C.4.1.1.4 (Query/Retrieve)
    CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3 (Storage: Cxxx)
    UNABLE_TO_PROCESS = 0xC000  # PS3.4 C.4.1.1.4 (Query/Retrieve: Cxxx)
    # PS3.7 C.3 and C.2
    CANCEL = 0xFE00  # PS3.7 C.3
    PENDING = 0xFF00  # PS3.7 C.2
    PENDING_WARNING = 0xFF01  # PS3.4 C.4.1.1.4: optional keys not supported


class StatusCategory(enum.Enum):
    """PS3.7 Annex C: the five status classes a response can belong to."""

    SUCCESS = "Success"
    WARNING = "Warning"
    FAILURE = "Failure"
    CANCEL = "Cancel"
    PENDING = "Pending"


_WARNING_CODES = frozenset((0x0001, 0x0107, 0x0116))  # PS3.7 C.4; PS3.4 0x0001


def category(code: int) -> StatusCategory:
    """Return the PS3.7 Annex C class of a status code.

    Codes outside the ranges Annex C and PS3.4 assign are taken as failures:
    a receiver must not read success into a value it does not know.
    """
    if code == 0x0000:
        return StatusCategory.SUCCESS  # PS3.7 C.1
    if code == 0xFF00 or code == 0xFF01:
        return StatusCategory.PENDING  # PS3.7 C.2
    if code == 0xFE00:
        return StatusCategory.CANCEL  # PS3.7 C.3
    if code in _WARNING_CODES or 0xB000 <= code <= 0xBFFF:
        return StatusCategory.WARNING  # PS3.7 C.4; PS3.4 Bxxx
    return StatusCategory.FAILURE  # PS3.7 C.5: 01xx, 02xx; PS3.4 Axxx, Cxxx


_DESCRIPTIONS: dict[int, str] = {
    0x0000: "success",
    0x0001: "requested optional attributes are not supported",
    0x0105: "no such attribute",
    0x0106: "invalid attribute value",
    0x0107: "attribute list error",
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0112: "no such SOP instance",
    0x0113: "no such event type",
    0x0114: "no such argument",
    0x0115: "invalid argument value",
    0x0116: "attribute value out of range",
    0x0117: "invalid object instance",
    0x0118: "no such SOP class",
    0x0119: "class-instance conflict",
    0x0120: "missing attribute",
    0x0121: "missing attribute value",
    0x0122: "refused: SOP class not supported",
    0x0123: "no such action",
    0x0124: "refused: not authorized",
    0x0210: "duplicate invocation",
    0x0211: "unrecognized operation",
    0x0212: "mistyped argument",
    0x0213: "resource limitation",
    0x0131: "duplicate transaction UID",  # PS3.4 J.3.2.1.1 (Storage Commitment)
    0xA701: "refused: out of resources, unable to calculate number of matches",
    0xA702: "refused: out of resources, unable to perform sub-operations",
    0xA801: "refused: move destination unknown",
    0xB000: "coercion of data elements, or sub-operations complete with failures or warnings",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
    0xFE00: "cancelled",
    0xFF00: "pending",
    0xFF01: "pending, optional keys not supported",
}

# PS3.4 B.2.3, C.4.1.1.4: ranges whose low byte is left to the implementation.
_RANGES: tuple[tuple[int, int, str], ...] = (
    (0xA700, 0xA7FF, "refused: out of resources"),
    (0xA900, 0xA9FF, "data set or identifier does not match SOP class"),
    (0xC000, 0xCFFF, "cannot understand / unable to process"),
)


def describe(code: int) -> str:
    """Return a one-line human description such as ``'Failure 0x0122: refused: SOP class not supported'``."""
    text = _DESCRIPTIONS.get(code)
    if text is None:
        text = next((t for lo, hi, t in _RANGES if lo <= code <= hi), "unrecognized status")
    return f"{category(code).value} 0x{code:04X}: {text}"
