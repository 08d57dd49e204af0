"""PS3.7 9.3 and 10.3: message tables, validation, request constructors and responses."""

from __future__ import annotations

import dataclasses

import pytest
from dimse_samples import INSTANCE, MPPS, SAMPLES

from pacsnode.dimse import messages as m
from pacsnode.dimse.commands import Command, CommandField, Priority
from pacsnode.dimse.messages import MESSAGES, DataSetUsage, response_to, validate
from pacsnode.dimse.status import Status

F = CommandField


@pytest.mark.parametrize("field", list(F), ids=lambda f: f.message_name)
def test_samples_are_valid(field):
    assert validate(SAMPLES[field]) == []


@pytest.mark.parametrize("field", list(F), ids=lambda f: f.message_name)
def test_each_missing_mandatory_field_is_reported(field):
    spec = MESSAGES[field]
    assert spec.name == field.message_name
    for name in spec.mandatory:
        assert validate(dataclasses.replace(SAMPLES[field], **{name: None})) == [name]


def test_empty_uid_counts_as_missing():
    assert validate(dataclasses.replace(SAMPLES[F.C_ECHO_RQ], affected_sop_class_uid="")) == [
        "affected_sop_class_uid"
    ]


def test_data_set_rules():
    assert validate(dataclasses.replace(SAMPLES[F.C_STORE_RQ], has_dataset=False)) == ["data_set"]
    assert validate(dataclasses.replace(SAMPLES[F.C_ECHO_RQ], has_dataset=True)) == ["command_data_set_type"]
    assert validate(dataclasses.replace(SAMPLES[F.C_FIND_RSP], has_dataset=False)) == []
    assert validate(dataclasses.replace(SAMPLES[F.N_ACTION_RQ], has_dataset=False)) == []


def test_unknown_command_field():
    assert validate(Command(0x0040, message_id=1)) == ["command_field"]


def test_tables_hold_what_the_standard_says():
    assert MESSAGES[F.C_STORE_RQ].mandatory == (
        "affected_sop_class_uid",
        "message_id",
        "priority",
        "affected_sop_instance_uid",
    )
    assert "move_destination" in MESSAGES[F.C_MOVE_RQ].mandatory
    assert "event_type_id" in MESSAGES[F.N_EVENT_REPORT_RQ].mandatory
    assert "action_type_id" in MESSAGES[F.N_ACTION_RQ].mandatory
    assert "requested_sop_instance_uid" in MESSAGES[F.N_SET_RQ].mandatory
    assert "affected_sop_instance_uid" in MESSAGES[F.N_CREATE_RQ].optional
    assert MESSAGES[F.C_CANCEL_RQ].mandatory == ("message_id_being_responded_to",)
    for field, spec in MESSAGES.items():
        assert not set(spec.mandatory) & set(spec.optional)
        if F(field).is_response:
            assert spec.mandatory == ("message_id_being_responded_to", "status")
    usage = {f: spec.data_set for f, spec in MESSAGES.items()}
    assert usage[F.C_STORE_RQ] is usage[F.C_FIND_RQ] is usage[F.N_SET_RQ] is DataSetUsage.REQUIRED
    assert usage[F.C_ECHO_RQ] is usage[F.C_STORE_RSP] is usage[F.N_GET_RQ] is DataSetUsage.FORBIDDEN
    assert usage[F.N_DELETE_RQ] is usage[F.N_DELETE_RSP] is usage[F.C_CANCEL_RQ] is DataSetUsage.FORBIDDEN


def test_request_constructors_make_valid_requests():
    built = [
        m.c_echo_rq(1),
        m.c_store_rq(2, "1.2.3", "1.2.3.4", Priority.HIGH, "MOVER", 9),
        m.c_find_rq(3, "1.2.3"),
        m.c_get_rq(4, "1.2.3"),
        m.c_move_rq(5, "1.2.3", "DEST"),
        m.c_cancel_rq(5),
        m.n_event_report_rq(6, "1.2.3", "1.2.3.4", 1),
        m.n_get_rq(7, MPPS, INSTANCE, (0x00100010,)),
        m.n_set_rq(8, MPPS, INSTANCE),
        m.n_action_rq(9, "1.2.3", "1.2.3.4", 1, has_dataset=True),
        m.n_create_rq(10, MPPS),
        m.n_delete_rq(11, MPPS, INSTANCE),
    ]
    assert {c.command_field for c in built} == {f for f in F if f.is_request}
    for cmd in built:
        assert validate(cmd) == [], cmd
    echo = m.c_echo_rq(1)
    assert echo.affected_sop_class_uid == "1.2.840.10008.1.1"
    assert echo.priority is None and not echo.has_dataset
    store = built[1]
    assert (store.move_originator_application_entity_title, store.move_originator_message_id) == ("MOVER", 9)


@pytest.mark.parametrize("field", [f for f in F if f.is_request and f is not F.C_CANCEL_RQ])
def test_response_to_every_request_is_valid(field):
    request = SAMPLES[field]
    rsp = response_to(request, Status.SUCCESS)
    assert rsp.command_field is field.response_field
    assert rsp.message_id_being_responded_to == request.message_id
    assert rsp.status == Status.SUCCESS
    assert rsp.affected_sop_class_uid == (request.affected_sop_class_uid or request.requested_sop_class_uid)
    assert validate(rsp) == []
    optional = MESSAGES[rsp.command_field].optional
    for name in ("affected_sop_instance_uid", "event_type_id", "action_type_id"):
        assert (getattr(rsp, name) is not None) == (name in optional), name  # PS3.7: "(=)" fields


def test_response_to_copies_instance_event_and_action():
    rsp = response_to(SAMPLES[F.N_SET_RQ], Status.SUCCESS)
    assert (rsp.affected_sop_class_uid, rsp.affected_sop_instance_uid) == (MPPS, INSTANCE)
    assert rsp.requested_sop_class_uid is None
    assert response_to(SAMPLES[F.N_EVENT_REPORT_RQ], 0).event_type_id == 1
    assert response_to(SAMPLES[F.N_ACTION_RQ], 0).action_type_id == 1
    store = response_to(SAMPLES[F.C_STORE_RQ], 0)
    assert store.affected_sop_instance_uid == SAMPLES[F.C_STORE_RQ].affected_sop_instance_uid
    assert response_to(SAMPLES[F.C_FIND_RQ], 0).affected_sop_instance_uid is None


def test_response_to_with_fields_and_data_set():
    rsp = response_to(
        SAMPLES[F.C_MOVE_RQ],
        Status.PENDING,
        has_dataset=False,
        number_of_remaining_suboperations=3,
        number_of_completed_suboperations=1,
        number_of_failed_suboperations=0,
        number_of_warning_suboperations=0,
    )
    assert rsp.number_of_remaining_suboperations == 3
    pending = response_to(SAMPLES[F.C_FIND_RQ], Status.PENDING, has_dataset=True)
    assert pending.has_dataset
    failed = response_to(SAMPLES[F.C_STORE_RQ], Status.PROCESSING_FAILURE, error_comment="disk full")
    assert failed.error_comment == "disk full"
    with pytest.raises(TypeError):
        response_to(SAMPLES[F.C_STORE_RQ], 0, no_such_field=1)


def test_response_to_unknown_request_field_still_answers():
    rsp = response_to(
        Command(0x0040, message_id=4, affected_sop_class_uid="1.2"), Status.UNRECOGNIZED_OPERATION
    )
    assert rsp.command_field == 0x8040
    assert rsp.message_id_being_responded_to == 4


@pytest.mark.parametrize("field", [F.C_CANCEL_RQ, F.C_ECHO_RSP, F.C_STORE_RSP])
def test_response_to_refuses_what_has_no_response(field):
    with pytest.raises(ValueError):
        response_to(SAMPLES[field], 0)


def test_c_echo_and_c_store_responses():
    assert m.c_echo_rsp(m.c_echo_rq(5)) == Command(
        F.C_ECHO_RSP, message_id_being_responded_to=5, affected_sop_class_uid="1.2.840.10008.1.1", status=0
    )
    rsp = m.c_store_rsp(
        SAMPLES[F.C_STORE_RQ], Status.COERCION_OF_DATA_ELEMENTS, offending_element=(0x00100010,)
    )
    assert rsp.status == 0xB000 and rsp.offending_element == (0x100010,)
    assert validate(rsp) == []
