"""PS3.7 Annex C: status codes, categories and descriptions."""

from __future__ import annotations

import pytest

from pacsnode.dimse.status import Status, StatusCategory, category, describe

S = StatusCategory


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, S.SUCCESS),  # C.1
        (0xFF00, S.PENDING),  # C.2
        (0xFF01, S.PENDING),
        (0xFE00, S.CANCEL),  # C.3
        (0x0001, S.WARNING),  # C.4 and PS3.4 N-services
        (0x0107, S.WARNING),  # attribute list error, although in 01xx
        (0x0116, S.WARNING),  # attribute value out of range, although in 01xx
        (0xB000, S.WARNING),
        (0xB006, S.WARNING),
        (0xB007, S.WARNING),
        (0xB123, S.WARNING),
        (0xBFFF, S.WARNING),
        (0x0105, S.FAILURE),  # C.5: 01xx
        (0x0106, S.FAILURE),
        (0x0110, S.FAILURE),
        (0x0122, S.FAILURE),
        (0x0124, S.FAILURE),
        (0x01FF, S.FAILURE),
        (0x0210, S.FAILURE),  # 02xx
        (0x0213, S.FAILURE),
        (0xA000, S.FAILURE),  # PS3.4 Axxx
        (0xA700, S.FAILURE),
        (0xA7FF, S.FAILURE),
        (0xA801, S.FAILURE),
        (0xA900, S.FAILURE),
        (0xAFFF, S.FAILURE),
        (0xC000, S.FAILURE),  # PS3.4 Cxxx
        (0xC211, S.FAILURE),
        (0xCFFF, S.FAILURE),
        (0x0002, S.FAILURE),  # unassigned: never taken for success
        (0xD000, S.FAILURE),
        (0xFE01, S.FAILURE),
        (0xFF02, S.FAILURE),
        (0xFFFF, S.FAILURE),
    ],
)
def test_category_of_each_range(code, expected):
    assert category(code) is expected


def test_every_named_status_has_the_category_its_name_says():
    warnings = {
        Status.OPTIONAL_ATTRIBUTES_NOT_SUPPORTED,
        Status.ATTRIBUTE_LIST_ERROR,
        Status.ATTRIBUTE_VALUE_OUT_OF_RANGE,
        Status.COERCION_OF_DATA_ELEMENTS,
        Status.ELEMENTS_DISCARDED,
        Status.DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING,
    }
    special = {
        Status.SUCCESS: S.SUCCESS,
        Status.CANCEL: S.CANCEL,
        Status.PENDING: S.PENDING,
        Status.PENDING_WARNING: S.PENDING,
    }
    for status in Status:
        expected = special.get(status, S.WARNING if status in warnings else S.FAILURE)
        assert category(status) is expected, status


@pytest.mark.parametrize(
    ("status", "value"),
    [
        (Status.NO_SUCH_ATTRIBUTE, 0x0105),
        (Status.INVALID_ATTRIBUTE_VALUE, 0x0106),
        (Status.ATTRIBUTE_LIST_ERROR, 0x0107),
        (Status.PROCESSING_FAILURE, 0x0110),
        (Status.DUPLICATE_SOP_INSTANCE, 0x0111),
        (Status.NO_SUCH_SOP_INSTANCE, 0x0112),
        (Status.NO_SUCH_EVENT_TYPE, 0x0113),
        (Status.NO_SUCH_ARGUMENT, 0x0114),
        (Status.INVALID_ARGUMENT_VALUE, 0x0115),
        (Status.ATTRIBUTE_VALUE_OUT_OF_RANGE, 0x0116),
        (Status.INVALID_OBJECT_INSTANCE, 0x0117),
        (Status.NO_SUCH_SOP_CLASS, 0x0118),
        (Status.CLASS_INSTANCE_CONFLICT, 0x0119),
        (Status.MISSING_ATTRIBUTE, 0x0120),
        (Status.MISSING_ATTRIBUTE_VALUE, 0x0121),
        (Status.SOP_CLASS_NOT_SUPPORTED, 0x0122),
        (Status.NO_SUCH_ACTION, 0x0123),
        (Status.NOT_AUTHORIZED, 0x0124),
        (Status.DUPLICATE_INVOCATION, 0x0210),
        (Status.UNRECOGNIZED_OPERATION, 0x0211),
        (Status.MISTYPED_ARGUMENT, 0x0212),
        (Status.RESOURCE_LIMITATION, 0x0213),
        (Status.OUT_OF_RESOURCES, 0xA700),
        (Status.OUT_OF_RESOURCES_MATCHES, 0xA701),
        (Status.OUT_OF_RESOURCES_SUBOPERATIONS, 0xA702),
        (Status.MOVE_DESTINATION_UNKNOWN, 0xA801),
        (Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, 0xA900),
        (Status.CANNOT_UNDERSTAND, 0xC000),
        (Status.COERCION_OF_DATA_ELEMENTS, 0xB000),
        (Status.ELEMENTS_DISCARDED, 0xB006),
        (Status.DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING, 0xB007),
    ],
)
def test_values_of_the_standard(status, value):
    assert status == value


def test_aliases_share_one_member():
    assert Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS is Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert Status.UNABLE_TO_PROCESS is Status.CANNOT_UNDERSTAND
    assert Status.SUBOPERATIONS_COMPLETE_WITH_FAILURES is Status.COERCION_OF_DATA_ELEMENTS
    assert Status(0xA900) is Status.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_pynetdicom_agrees_on_the_general_statuses():
    from pynetdicom.status import GENERAL_STATUS

    names = {"Success": S.SUCCESS, "Failure": S.FAILURE, "Warning": S.WARNING, "Cancel": S.CANCEL}
    for code, (kind, _) in GENERAL_STATUS.items():
        assert category(code) is names[kind], hex(code)


def test_describe():
    assert describe(0x0122) == "Failure 0x0122: refused: SOP class not supported"
    assert describe(0xA7FE) == "Failure 0xA7FE: refused: out of resources"
    assert describe(0xC123) == "Failure 0xC123: cannot understand / unable to process"
    assert describe(0xFF01).startswith("Pending 0xFF01")
    assert describe(0xB123) == "Warning 0xB123: unrecognized status"
    assert describe(0x0000) == "Success 0x0000: success"
