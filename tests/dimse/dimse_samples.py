"""One filled-in command per PS3.7 message, for round-trip and interoperability tests."""

from __future__ import annotations

from pacsnode.dimse.commands import Command, CommandField, Priority
from pacsnode.dimse.messages import MESSAGES

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
VERIFICATION = "1.2.840.10008.1.1"
MPPS = "1.2.840.10008.3.1.2.3.3"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
INSTANCE = "1.2.826.0.1.3680043.8.498.1234567890123"

_F = CommandField

SAMPLES: dict[CommandField, Command] = {
    _F.C_STORE_RQ: Command(
        _F.C_STORE_RQ,
        message_id=7,
        affected_sop_class_uid=CT,
        affected_sop_instance_uid=INSTANCE,
        priority=Priority.HIGH,
        move_originator_application_entity_title="MOVESCU",
        move_originator_message_id=3,
        has_dataset=True,
    ),
    _F.C_STORE_RSP: Command(
        _F.C_STORE_RSP,
        message_id_being_responded_to=7,
        affected_sop_class_uid=CT,
        affected_sop_instance_uid=INSTANCE,
        status=0xB000,
        offending_element=(0x00100010, 0x00100020),
        error_comment="coerced",
    ),
    _F.C_FIND_RQ: Command(
        _F.C_FIND_RQ,
        message_id=8,
        affected_sop_class_uid=STUDY_ROOT_FIND,
        priority=Priority.LOW,
        has_dataset=True,
    ),
    _F.C_FIND_RSP: Command(
        _F.C_FIND_RSP,
        message_id_being_responded_to=8,
        affected_sop_class_uid=STUDY_ROOT_FIND,
        status=0xFF00,
        has_dataset=True,
    ),
    _F.C_GET_RQ: Command(
        _F.C_GET_RQ,
        message_id=9,
        affected_sop_class_uid=STUDY_ROOT_GET,
        priority=Priority.MEDIUM,
        has_dataset=True,
    ),
    _F.C_GET_RSP: Command(
        _F.C_GET_RSP,
        message_id_being_responded_to=9,
        affected_sop_class_uid=STUDY_ROOT_GET,
        status=0xFF00,
        number_of_remaining_suboperations=4,
        number_of_completed_suboperations=3,
        number_of_failed_suboperations=2,
        number_of_warning_suboperations=1,
    ),
    _F.C_MOVE_RQ: Command(
        _F.C_MOVE_RQ,
        message_id=10,
        affected_sop_class_uid=STUDY_ROOT_MOVE,
        priority=Priority.MEDIUM,
        move_destination="STORESCP",
        has_dataset=True,
    ),
    _F.C_MOVE_RSP: Command(
        _F.C_MOVE_RSP,
        message_id_being_responded_to=10,
        affected_sop_class_uid=STUDY_ROOT_MOVE,
        status=0xB000,
        number_of_remaining_suboperations=0,
        number_of_completed_suboperations=5,
        number_of_failed_suboperations=1,
        number_of_warning_suboperations=0,
        error_comment="one failed",
        has_dataset=True,
    ),
    _F.C_ECHO_RQ: Command(_F.C_ECHO_RQ, message_id=1, affected_sop_class_uid=VERIFICATION),
    _F.C_ECHO_RSP: Command(
        _F.C_ECHO_RSP, message_id_being_responded_to=1, affected_sop_class_uid=VERIFICATION, status=0x0000
    ),
    _F.C_CANCEL_RQ: Command(_F.C_CANCEL_RQ, message_id_being_responded_to=8),
    _F.N_EVENT_REPORT_RQ: Command(
        _F.N_EVENT_REPORT_RQ,
        message_id=11,
        affected_sop_class_uid=COMMITMENT,
        affected_sop_instance_uid=COMMITMENT_INSTANCE,
        event_type_id=1,
        has_dataset=True,
    ),
    _F.N_EVENT_REPORT_RSP: Command(
        _F.N_EVENT_REPORT_RSP,
        message_id_being_responded_to=11,
        affected_sop_class_uid=COMMITMENT,
        affected_sop_instance_uid=COMMITMENT_INSTANCE,
        event_type_id=1,
        status=0x0000,
    ),
    _F.N_GET_RQ: Command(
        _F.N_GET_RQ,
        message_id=12,
        requested_sop_class_uid=MPPS,
        requested_sop_instance_uid=INSTANCE,
        attribute_identifier_list=(0x00100010, 0x00400252, 0x7FE00010),
    ),
    _F.N_GET_RSP: Command(
        _F.N_GET_RSP,
        message_id_being_responded_to=12,
        affected_sop_class_uid=MPPS,
        affected_sop_instance_uid=INSTANCE,
        status=0x0107,
        attribute_identifier_list=(0x7FE00010,),
        has_dataset=True,
    ),
    _F.N_SET_RQ: Command(
        _F.N_SET_RQ,
        message_id=13,
        requested_sop_class_uid=MPPS,
        requested_sop_instance_uid=INSTANCE,
        has_dataset=True,
    ),
    _F.N_SET_RSP: Command(
        _F.N_SET_RSP,
        message_id_being_responded_to=13,
        affected_sop_class_uid=MPPS,
        affected_sop_instance_uid=INSTANCE,
        status=0x0106,
        error_comment="bad value",
        error_id=42,
    ),
    _F.N_ACTION_RQ: Command(
        _F.N_ACTION_RQ,
        message_id=14,
        requested_sop_class_uid=COMMITMENT,
        requested_sop_instance_uid=COMMITMENT_INSTANCE,
        action_type_id=1,
        has_dataset=True,
    ),
    _F.N_ACTION_RSP: Command(
        _F.N_ACTION_RSP,
        message_id_being_responded_to=14,
        affected_sop_class_uid=COMMITMENT,
        affected_sop_instance_uid=COMMITMENT_INSTANCE,
        action_type_id=1,
        status=0x0000,
    ),
    _F.N_CREATE_RQ: Command(
        _F.N_CREATE_RQ,
        message_id=15,
        affected_sop_class_uid=MPPS,
        affected_sop_instance_uid=INSTANCE,
        has_dataset=True,
    ),
    _F.N_CREATE_RSP: Command(
        _F.N_CREATE_RSP,
        message_id_being_responded_to=15,
        affected_sop_class_uid=MPPS,
        affected_sop_instance_uid=INSTANCE,
        status=0x0000,
        has_dataset=True,
    ),
    _F.N_DELETE_RQ: Command(
        _F.N_DELETE_RQ, message_id=16, requested_sop_class_uid=MPPS, requested_sop_instance_uid=INSTANCE
    ),
    _F.N_DELETE_RSP: Command(
        _F.N_DELETE_RSP,
        message_id_being_responded_to=16,
        affected_sop_class_uid=MPPS,
        affected_sop_instance_uid=INSTANCE,
        status=0x0112,
        error_comment="no such instance",
    ),
}

assert set(SAMPLES) == set(CommandField) == set(MESSAGES)


# ---------------------------------------------------------------- annotated wire fixtures

# Each element: tag as group (2 bytes LE) + element (2 bytes LE), value length (4 bytes LE), value.

C_ECHO_RQ = bytes.fromhex(
    "0000 0000 04000000 38000000"  # (0000,0000) UL 4: group length 56 = everything below
    "0000 0200 12000000"  # (0000,0002) UI 18: Affected SOP Class UID ...
    "312e322e3834302e31303030382e312e31 00"  # "1.2.840.10008.1.1" + NUL pad to even
    "0000 0001 02000000 3000"  # (0000,0100) US 2: Command Field 0x0030 C-ECHO-RQ
    "0000 1001 02000000 0100"  # (0000,0110) US 2: Message ID 1
    "0000 0008 02000000 0101"  # (0000,0800) US 2: Command Data Set Type 0x0101 = no data set
)

C_ECHO_RSP = bytes.fromhex(
    "0000 0000 04000000 42000000"  # (0000,0000) UL 4: group length 66
    "0000 0200 12000000"  # (0000,0002) UI 18: Affected SOP Class UID ...
    "312e322e3834302e31303030382e312e31 00"  # "1.2.840.10008.1.1" + NUL
    "0000 0001 02000000 3080"  # (0000,0100) US 2: Command Field 0x8030 C-ECHO-RSP
    "0000 2001 02000000 0100"  # (0000,0120) US 2: Message ID Being Responded To 1
    "0000 0008 02000000 0101"  # (0000,0800) US 2: no data set
    "0000 0009 02000000 0000"  # (0000,0900) US 2: Status 0x0000 Success
)

C_STORE_RQ = bytes.fromhex(
    "0000 0000 04000000 7e000000"  # (0000,0000) UL 4: group length 126
    "0000 0200 1a000000"  # (0000,0002) UI 26: Affected SOP Class UID ...
    "312e322e3834302e31303030382e352e312e342e312e312e32 00"  # "1.2.840.10008.5.1.4.1.1.2" (CT) + NUL
    "0000 0001 02000000 0100"  # (0000,0100) US 2: Command Field 0x0001 C-STORE-RQ
    "0000 1001 02000000 0700"  # (0000,0110) US 2: Message ID 7
    "0000 0007 02000000 0000"  # (0000,0700) US 2: Priority 0 MEDIUM
    "0000 0008 02000000 0000"  # (0000,0800) US 2: Command Data Set Type 0x0000 = data set follows
    "0000 0010 12000000"  # (0000,1000) UI 18: Affected SOP Instance UID ...
    "312e322e332e342e352e362e372e382e39 00"  # "1.2.3.4.5.6.7.8.9" + NUL
    "0000 3010 08000000 4d4f564553435520"  # (0000,1030) AE 8: Move Originator AE Title "MOVESCU " (space pad)
    "0000 3110 02000000 0300"  # (0000,1031) US 2: Move Originator Message ID 3
)

ECHO_RQ = Command(CommandField.C_ECHO_RQ, message_id=1, affected_sop_class_uid="1.2.840.10008.1.1")
ECHO_RSP = Command(
    CommandField.C_ECHO_RSP,
    message_id_being_responded_to=1,
    affected_sop_class_uid="1.2.840.10008.1.1",
    status=0,
)
STORE_RQ = Command(
    CommandField.C_STORE_RQ,
    message_id=7,
    affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    affected_sop_instance_uid="1.2.3.4.5.6.7.8.9",
    priority=Priority.MEDIUM,
    move_originator_application_entity_title="MOVESCU",
    move_originator_message_id=3,
    has_dataset=True,
)
FIXTURES: list[tuple[Command, bytes]] = [(ECHO_RQ, C_ECHO_RQ), (ECHO_RSP, C_ECHO_RSP), (STORE_RQ, C_STORE_RQ)]
