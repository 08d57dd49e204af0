"""PS3.7 9.3 and 10.3: the fields of every DIMSE-C and DIMSE-N message, checks and constructors."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from pacsnode.data.uids import VERIFICATION_SOP_CLASS
from pacsnode.dimse.commands import Command, CommandField, Priority
from pacsnode.dimse.status import Status


class DataSetUsage(enum.Enum):
    """PS3.7 9.3 / 10.3: what the Command Data Set Type row of a message table allows."""

    REQUIRED = "M"  # a value other than 0101H
    FORBIDDEN = "-"  # 0101H
    CONDITIONAL = "C"  # present or absent as the status or service says
    OPTIONAL = "U"  # the user decides


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """One message table: its mandatory (M) and conditional/user (C, U) command fields.

    Command Group Length, Command Field and Command Data Set Type are in every
    message and are not listed. Field names are `Command` attribute names.
    """

    name: str
    command_field: CommandField
    section: str
    mandatory: tuple[str, ...]
    optional: tuple[str, ...]
    data_set: DataSetUsage


_SOP_CLASS = "affected_sop_class_uid"
_INSTANCE = "affected_sop_instance_uid"
_REQ_CLASS = "requested_sop_class_uid"
_REQ_INSTANCE = "requested_sop_instance_uid"
_RQ = ("message_id",)
_RSP = ("message_id_being_responded_to", "status")
# PS3.7 Annex C: fields that accompany particular status codes in any response.
_STATUS_DETAIL = ("offending_element", "error_comment", "error_id", "attribute_identifier_list")
_SUBOPERATIONS = (
    "number_of_remaining_suboperations",
    "number_of_completed_suboperations",
    "number_of_failed_suboperations",
    "number_of_warning_suboperations",
)
_M, _X, _C, _U = (
    DataSetUsage.REQUIRED,
    DataSetUsage.FORBIDDEN,
    DataSetUsage.CONDITIONAL,
    DataSetUsage.OPTIONAL,
)
_F = CommandField


def _spec(
    name: str, section: str, mandatory: tuple[str, ...], optional: tuple[str, ...], data_set: DataSetUsage
) -> MessageSpec:
    return MessageSpec(
        name, CommandField[name.replace("-", "_")], f"PS3.7 {section}", mandatory, optional, data_set
    )


_MOVE_ORIGINATOR = ("move_originator_application_entity_title", "move_originator_message_id")
_C_RSP = (_SOP_CLASS, *_STATUS_DETAIL)
_N_RSP = (_SOP_CLASS, _INSTANCE, *_STATUS_DETAIL)

MESSAGES: dict[int, MessageSpec] = {
    spec.command_field: spec
    for spec in (
        # PS3.7 9.3.1: C-STORE (Tables 9.3-1, 9.3-2)
        _spec("C-STORE-RQ", "9.3.1.1", (_SOP_CLASS, *_RQ, "priority", _INSTANCE), _MOVE_ORIGINATOR, _M),
        _spec("C-STORE-RSP", "9.3.1.2", _RSP, (_SOP_CLASS, _INSTANCE, *_STATUS_DETAIL), _X),
        # PS3.7 9.3.2: C-FIND (Tables 9.3-3, 9.3-4); the Identifier comes with Pending responses.
        _spec("C-FIND-RQ", "9.3.2.1", (_SOP_CLASS, *_RQ, "priority"), (), _M),
        _spec("C-FIND-RSP", "9.3.2.2", _RSP, _C_RSP, _C),
        # PS3.7 9.3.3: C-GET (Tables 9.3-6, 9.3-7)
        _spec("C-GET-RQ", "9.3.3.1", (_SOP_CLASS, *_RQ, "priority"), (), _M),
        _spec("C-GET-RSP", "9.3.3.2", _RSP, (*_C_RSP, *_SUBOPERATIONS), _C),
        # PS3.7 9.3.4: C-MOVE (Tables 9.3-9, 9.3-10)
        _spec("C-MOVE-RQ", "9.3.4.1", (_SOP_CLASS, *_RQ, "priority", "move_destination"), (), _M),
        _spec("C-MOVE-RSP", "9.3.4.2", _RSP, (*_C_RSP, *_SUBOPERATIONS), _C),
        # PS3.7 9.3.5: C-ECHO (Tables 9.3-12, 9.3-13)
        _spec("C-ECHO-RQ", "9.3.5.1", (_SOP_CLASS, *_RQ), (), _X),
        _spec("C-ECHO-RSP", "9.3.5.2", _RSP, _C_RSP, _X),
        # PS3.7 9.3.2.3, 9.3.3.3, 9.3.4.3: C-CANCEL-FIND/GET/MOVE-RQ share one command field.
        _spec("C-CANCEL-RQ", "9.3.2.3", ("message_id_being_responded_to",), (), _X),
        # PS3.7 10.3.1: N-EVENT-REPORT (Tables 10.3-1, 10.3-2)
        _spec("N-EVENT-REPORT-RQ", "10.3.1.1", (_SOP_CLASS, *_RQ, _INSTANCE, "event_type_id"), (), _U),
        _spec("N-EVENT-REPORT-RSP", "10.3.1.2", _RSP, (*_N_RSP, "event_type_id"), _U),
        # PS3.7 10.3.2: N-GET (Tables 10.3-3, 10.3-4); no attribute list means all attributes.
        _spec("N-GET-RQ", "10.3.2.1", (_REQ_CLASS, *_RQ, _REQ_INSTANCE), ("attribute_identifier_list",), _X),
        _spec("N-GET-RSP", "10.3.2.2", _RSP, _N_RSP, _C),
        # PS3.7 10.3.3: N-SET (Tables 10.3-5, 10.3-6)
        _spec("N-SET-RQ", "10.3.3.1", (_REQ_CLASS, *_RQ, _REQ_INSTANCE), (), _M),
        _spec("N-SET-RSP", "10.3.3.2", _RSP, _N_RSP, _U),
        # PS3.7 10.3.4: N-ACTION (Tables 10.3-7, 10.3-8)
        _spec("N-ACTION-RQ", "10.3.4.1", (_REQ_CLASS, *_RQ, _REQ_INSTANCE, "action_type_id"), (), _U),
        _spec("N-ACTION-RSP", "10.3.4.2", _RSP, (*_N_RSP, "action_type_id"), _U),
        # PS3.7 10.3.5: N-CREATE (Tables 10.3-9, 10.3-10); the SCP may assign the instance UID.
        _spec("N-CREATE-RQ", "10.3.5.1", (_SOP_CLASS, *_RQ), (_INSTANCE,), _U),
        _spec("N-CREATE-RSP", "10.3.5.2", _RSP, _N_RSP, _U),
        # PS3.7 10.3.6: N-DELETE (Tables 10.3-11, 10.3-12)
        _spec("N-DELETE-RQ", "10.3.6.1", (_REQ_CLASS, *_RQ, _REQ_INSTANCE), (), _X),
        _spec("N-DELETE-RSP", "10.3.6.2", _RSP, _N_RSP, _X),
    )
}


def validate(cmd: Command) -> list[str]:
    """Names of the mandatory fields `cmd` lacks for its message; empty when it is complete.

    ``"command_field"`` means the command field is not one of PS3.7 E.1; ``"data_set"``
    means the message requires a data set that the command does not announce;
    ``"command_data_set_type"`` means it announces one that the message forbids.
    """
    spec = MESSAGES.get(cmd.command_field)
    if spec is None:
        return ["command_field"]
    missing = [name for name in spec.mandatory if getattr(cmd, name) in (None, "")]
    if spec.data_set is DataSetUsage.REQUIRED and not cmd.has_dataset:
        missing.append("data_set")  # PS3.7 9.3 / 10.3: Command Data Set Type other than 0101H
    elif spec.data_set is DataSetUsage.FORBIDDEN and cmd.has_dataset:
        missing.append("command_data_set_type")  # PS3.7 9.3 / 10.3: shall be 0101H
    return missing


# ---------------------------------------------------------------- requests


def c_echo_rq(message_id: int, sop_class_uid: str = VERIFICATION_SOP_CLASS) -> Command:
    """PS3.7 9.3.5.1 C-ECHO-RQ."""
    return Command(_F.C_ECHO_RQ, message_id=message_id, affected_sop_class_uid=sop_class_uid)


def c_store_rq(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    priority: int = Priority.MEDIUM,
    move_originator_ae_title: str | None = None,
    move_originator_message_id: int | None = None,
) -> Command:
    """PS3.7 9.3.1.1 C-STORE-RQ; the move originator fields when it is a C-MOVE sub-operation."""
    return Command(
        _F.C_STORE_RQ,
        message_id=message_id,
        affected_sop_class_uid=sop_class_uid,
        affected_sop_instance_uid=sop_instance_uid,
        priority=priority,
        move_originator_application_entity_title=move_originator_ae_title,
        move_originator_message_id=move_originator_message_id,
        has_dataset=True,
    )


def c_find_rq(message_id: int, sop_class_uid: str, priority: int = Priority.MEDIUM) -> Command:
    """PS3.7 9.3.2.1 C-FIND-RQ; the Identifier follows as the data set."""
    return Command(
        _F.C_FIND_RQ,
        message_id=message_id,
        affected_sop_class_uid=sop_class_uid,
        priority=priority,
        has_dataset=True,
    )


def c_get_rq(message_id: int, sop_class_uid: str, priority: int = Priority.MEDIUM) -> Command:
    """PS3.7 9.3.3.1 C-GET-RQ; the Identifier follows as the data set."""
    return Command(
        _F.C_GET_RQ,
        message_id=message_id,
        affected_sop_class_uid=sop_class_uid,
        priority=priority,
        has_dataset=True,
    )


def c_move_rq(
    message_id: int, sop_class_uid: str, move_destination: str, priority: int = Priority.MEDIUM
) -> Command:
    """PS3.7 9.3.4.1 C-MOVE-RQ; the Identifier follows as the data set."""
    return Command(
        _F.C_MOVE_RQ,
        message_id=message_id,
        affected_sop_class_uid=sop_class_uid,
        move_destination=move_destination,
        priority=priority,
        has_dataset=True,
    )


def c_cancel_rq(message_id_being_responded_to: int) -> Command:
    """PS3.7 9.3.2.3 (and 9.3.3.3, 9.3.4.3) C-CANCEL-RQ for the operation with that Message ID."""
    return Command(_F.C_CANCEL_RQ, message_id_being_responded_to=message_id_being_responded_to)


def n_event_report_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, event_type_id: int, has_dataset: bool = True
) -> Command:
    """PS3.7 10.3.1.1 N-EVENT-REPORT-RQ; the Event Information data set is optional."""
    return Command(
        _F.N_EVENT_REPORT_RQ,
        message_id=message_id,
        affected_sop_class_uid=sop_class_uid,
        affected_sop_instance_uid=sop_instance_uid,
        event_type_id=event_type_id,
        has_dataset=has_dataset,
    )


def n_get_rq(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    attribute_identifier_list: tuple[int, ...] | None = None,
) -> Command:
    """PS3.7 10.3.2.1 N-GET-RQ; no attribute list means all attributes."""
    return Command(
        _F.N_GET_RQ,
        message_id=message_id,
        requested_sop_class_uid=sop_class_uid,
        requested_sop_instance_uid=sop_instance_uid,
        attribute_identifier_list=attribute_identifier_list,
    )


def n_set_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> Command:
    """PS3.7 10.3.3.1 N-SET-RQ; the Modification List follows as the data set."""
    return Command(
        _F.N_SET_RQ,
        message_id=message_id,
        requested_sop_class_uid=sop_class_uid,
        requested_sop_instance_uid=sop_instance_uid,
        has_dataset=True,
    )


def n_action_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, action_type_id: int, has_dataset: bool = False
) -> Command:
    """PS3.7 10.3.4.1 N-ACTION-RQ; the Action Information data set is optional."""
    return Command(
        _F.N_ACTION_RQ,
        message_id=message_id,
        requested_sop_class_uid=sop_class_uid,
        requested_sop_instance_uid=sop_instance_uid,
        action_type_id=action_type_id,
        has_dataset=has_dataset,
    )


def n_create_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str | None = None, has_dataset: bool = True
) -> Command:
    """PS3.7 10.3.5.1 N-CREATE-RQ; without an instance UID the SCP assigns one."""
    return Command(
        _F.N_CREATE_RQ,
        message_id=message_id,
        affected_sop_class_uid=sop_class_uid,
        affected_sop_instance_uid=sop_instance_uid,
        has_dataset=has_dataset,
    )


def n_delete_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> Command:
    """PS3.7 10.3.6.1 N-DELETE-RQ."""
    return Command(
        _F.N_DELETE_RQ,
        message_id=message_id,
        requested_sop_class_uid=sop_class_uid,
        requested_sop_instance_uid=sop_instance_uid,
    )


# ---------------------------------------------------------------- responses


def response_to(request: Command, status: int, *, has_dataset: bool = False, **fields: Any) -> Command:
    """The response to `request` with `status`; `fields` sets any other `Command` attribute.

    Copies what the response tables say the response repeats (=) from the request:
    Message ID as Message ID Being Responded To, the SOP class and instance as
    Affected (from Affected or Requested), and the Event or Action Type ID.
    """
    if request.command_field & 0x8000 or request.command_field == _F.C_CANCEL_RQ:
        raise ValueError(f"{request.command_field!r} is not a request that has a response")
    response_field = request.command_field | 0x8000  # PS3.7 E.1: response = request | 8000H
    spec = MESSAGES.get(response_field)
    repeated = spec.optional if spec is not None else ()
    rsp = Command(
        spec.command_field if spec is not None else response_field,
        message_id_being_responded_to=request.message_id,
        affected_sop_class_uid=request.affected_sop_class_uid or request.requested_sop_class_uid,
        status=status,
        has_dataset=has_dataset,
    )
    if _INSTANCE in repeated:  # PS3.7 9.3.1.2, 10.3.x.2: Affected SOP Instance UID (=)
        rsp.affected_sop_instance_uid = (
            request.affected_sop_instance_uid or request.requested_sop_instance_uid
        )
    if "event_type_id" in repeated:
        rsp.event_type_id = request.event_type_id  # PS3.7 10.3.1.2
    if "action_type_id" in repeated:
        rsp.action_type_id = request.action_type_id  # PS3.7 10.3.4.2
    return dataclasses.replace(rsp, **fields) if fields else rsp


def c_echo_rsp(request: Command, status: int = Status.SUCCESS) -> Command:
    """PS3.7 9.3.5.2 C-ECHO-RSP."""
    return response_to(request, status)


def c_store_rsp(request: Command, status: int = Status.SUCCESS, **fields: Any) -> Command:
    """PS3.7 9.3.1.2 C-STORE-RSP."""
    return response_to(request, status, **fields)
