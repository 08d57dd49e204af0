"""Tags, groups and VR sets the de-identification walks share (the pydicom path and the byte-level path)."""

from __future__ import annotations

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
PATIENT_BIRTH_DATE = 0x00100030
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
SPECIFIC_CHARACTER_SET = 0x00080005
PATIENT_IDENTITY_REMOVED = 0x00120062
DEIDENTIFICATION_METHOD = 0x00120063
DEIDENTIFICATION_METHOD_CODE_SEQUENCE = 0x00120064
LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED = 0x00280303
OVERLAY_DATA_GROUPS = range(0x6000, 0x6020, 2)  # PS3.5 7.6: repeating groups 6000-601E
CURVE_GROUPS = range(0x5000, 0x5020, 2)
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

# Attributes of code items (PS3.3 Table 8.8-1): terminology, kept when a sequence is dummied or cleaned.
CODE_ATTRIBUTES = frozenset(
    {0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080105, 0x00080119, 0x00080120}
)
TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC", "PN"})
DATE_VRS = frozenset({"DA", "DT", "TM"})

# What identifies the patient, collected before the walk for C (clean) of free text: PS3.15 E.3.5
# asks descriptors to keep their meaning without the identifying information they may hold.
PATIENT_TERMS = (
    0x00100010,  # Patient's Name
    0x00100020,  # Patient ID
    0x00101000,  # Other Patient IDs
    0x00101001,  # Other Patient Names
    0x00101005,  # Patient's Birth Name
    0x00101060,  # Patient's Mother's Birth Name
    0x00101040,  # Patient's Address
    0x00102154,  # Patient's Telephone Numbers
    0x00080050,  # Accession Number
    0x00380010,  # Admission ID
    0x00080090,  # Referring Physician's Name
    0x00081050,  # Performing Physician's Name
    0x00081060,  # Name of Physician(s) Reading Study
    0x00081070,  # Operators' Name
    0x00081048,  # Physician(s) of Record
    0x00321032,  # Requesting Physician
)
INSTITUTION_TERMS = (0x00080080, 0x00080081, 0x00081040)  # Institution Name, Address, Department
DEVICE_TERMS = (0x00081010, 0x00181000)  # Station Name, Device Serial Number
