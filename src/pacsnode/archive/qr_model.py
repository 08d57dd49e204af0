"""PS3.4 C.6: the Patient Root and Study Root information models: levels, unique keys, key levels."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag

from pacsnode.data.uids import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
DEPTH = {level: i for i, level in enumerate(LEVELS)}

# SOP class -> (root, operation)
MODELS: dict[str, tuple[str, str]] = {
    PATIENT_ROOT_FIND: (PATIENT, "find"),
    PATIENT_ROOT_MOVE: (PATIENT, "move"),
    PATIENT_ROOT_GET: (PATIENT, "get"),
    STUDY_ROOT_FIND: (STUDY, "find"),
    STUDY_ROOT_MOVE: (STUDY, "move"),
    STUDY_ROOT_GET: (STUDY, "get"),
}


def model_sop_class(root: str, operation: str) -> str:
    """The SOP class of an operation ("find", "move", "get") in the PATIENT or STUDY root model."""
    return next(sop for sop, model in MODELS.items() if model == (root, operation))


def model_sop_classes(operation: str) -> tuple[str, ...]:
    """The SOP classes of an operation, Patient Root first."""
    return tuple(sop for sop, (_root, op) in MODELS.items() if op == operation)


QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
TIMEZONE_OFFSET = 0x00080201
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058

PATIENT_ID = 0x00100020
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018

# PS3.4 C.6.1.1.2-C.6.1.1.5 / C.6.2.1: the Unique Key of each level.
UNIQUE_KEY = {
    PATIENT: PATIENT_ID,
    STUDY: STUDY_INSTANCE_UID,
    SERIES: SERIES_INSTANCE_UID,
    IMAGE: SOP_INSTANCE_UID,
}

# Keys that belong to no level: they may appear in any identifier (PS3.4 C.4.1.1.3).
ANY_LEVEL = frozenset(
    (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE, INSTANCE_AVAILABILITY, TIMEZONE_OFFSET)
)

# Patient Study Module attributes live in group 0010 but are study-level (PS3.3 C.7.2.2).
_STUDY_LEVEL_IN_GROUP_0010 = frozenset(
    (0x00101010, 0x00101020, 0x00101022, 0x00101023, 0x00101030, 0x00102180, 0x001021B0, 0x00102000)
)

# PS3.4 Tables C.6-2 and C.6-5 (study level) plus the other General Study / Patient Study attributes.
_STUDY_KEYS = frozenset(
    (
        0x00080020,  # Study Date
        0x00080030,  # Study Time
        0x00080050,  # Accession Number
        0x00080051,  # Issuer of Accession Number Sequence
        0x00080061,  # Modalities in Study
        0x00080062,  # SOP Classes in Study
        0x00080063,  # Anatomic Regions in Study Code Sequence
        0x00080090,  # Referring Physician's Name
        0x00081030,  # Study Description
        0x00081032,  # Procedure Code Sequence
        0x00081048,  # Physician(s) of Record
        0x00081060,  # Name of Physician(s) Reading Study
        0x00081080,  # Admitting Diagnoses Description
        0x00081110,  # Referenced Study Sequence
        0x00200010,  # Study ID
        0x0020000D,  # Study Instance UID
        0x00201070,  # Other Study Numbers
        0x00201206,  # Number of Study Related Series
        0x00201208,  # Number of Study Related Instances
        0x00321032,  # Requesting Physician
        0x00321033,  # Requesting Service
        0x00321060,  # Requested Procedure Description
        0x00401012,  # Reason For Performed Procedure Code Sequence
        0x00321066,  # Reason for Visit
        0x00380010,  # Admission ID
    )
)

# PS3.4 Tables C.6-3 / C.6-6 (series level) and other General Series / Equipment attributes.
_SERIES_KEYS = frozenset(
    (
        0x00080021,  # Series Date
        0x00080031,  # Series Time
        0x00080060,  # Modality
        0x00080070,  # Manufacturer
        0x00080080,  # Institution Name
        0x00081010,  # Station Name
        0x0008103E,  # Series Description
        0x00081040,  # Institutional Department Name
        0x00081050,  # Performing Physician's Name
        0x00081070,  # Operators' Name
        0x00081090,  # Manufacturer's Model Name
        0x00081111,  # Referenced Performed Procedure Step Sequence
        0x00180015,  # Body Part Examined
        0x00181030,  # Protocol Name
        0x00185100,  # Patient Position
        0x0020000E,  # Series Instance UID
        0x00200011,  # Series Number
        0x00200052,  # Frame of Reference UID
        0x00200060,  # Laterality
        0x00201209,  # Number of Series Related Instances
        0x00400244,  # Performed Procedure Step Start Date
        0x00400245,  # Performed Procedure Step Start Time
        0x00400253,  # Performed Procedure Step ID
        0x00400254,  # Performed Procedure Step Description
        0x00400275,  # Request Attributes Sequence
    )
)

# PS3.4 C.6.1.1.3: Number of Patient Related Studies / Series / Instances.
_PATIENT_COMPUTED = frozenset((0x00201200, 0x00201202, 0x00201204))


def level_of(tag: int) -> str | None:
    """The level a key belongs to; None for keys of any level (and private or unknown tags: IMAGE)."""
    if tag in ANY_LEVEL:
        return None
    if tag in _PATIENT_COMPUTED:
        return PATIENT
    if tag >> 16 == 0x0010 and tag not in _STUDY_LEVEL_IN_GROUP_0010:
        return PATIENT
    if tag in _STUDY_KEYS or tag in _STUDY_LEVEL_IN_GROUP_0010:
        return STUDY
    if tag in _SERIES_KEYS:
        return SERIES
    return IMAGE


def levels_of_root(root: str) -> tuple[str, ...]:
    """The levels of a model: Study Root has no PATIENT level (PS3.4 C.6.2)."""
    return LEVELS if root == PATIENT else LEVELS[1:]


def key_level(tag: int, root: str) -> str | None:
    """A key's level within a model: in Study Root, patient keys are study keys (PS3.4 C.6.2.1)."""
    level = level_of(tag)
    if root == STUDY and level == PATIENT:
        return STUDY
    return level


def vr_of(tag: int) -> str:
    """The dictionary VR of a tag ('UN' when unknown or private)."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def name_of(tag: int) -> str:
    """A tag as users read it: keyword and (gggg,eeee)."""
    return f"{keyword_for_tag(tag) or 'private/unknown'} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass(frozen=True, slots=True)
class QueryOptions:
    """What the SCU negotiated for C-FIND (PS3.4 C.5.1) and how the node matches names."""

    relational: bool = False
    combined_datetime: bool = False
    fuzzy_names: bool = False
    case_insensitive_names: bool = True
