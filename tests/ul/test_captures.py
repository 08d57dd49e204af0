"""A-ASSOCIATE PDUs captured from real peers (DCMTK 3.6.7, pynetdicom 3.0.4) decode, re-encode and negotiate.

The .hex files in tests/fixtures/ul/ were recorded once by tests/fixtures/ul/capture.py
(see its header); these tests only read them, no sockets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsnode.ul.connection import AssociationAccepted, AssociationRequested, Role, UpperLayer
from pacsnode.ul.negotiation import AcceptorPolicy, SOPClassSupport, interpret_accept, negotiate
from pacsnode.ul.pdu import (
    DICOM_APPLICATION_CONTEXT,
    AssociateAC,
    AssociateRQ,
    ContextResult,
    PDUReader,
    decode_bytes,
    encode,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ul"

DCMTK_IMPL_PREFIX = "1.2.276.0.7230010"
PYNETDICOM_IMPL_PREFIX = "1.2.826.0.1.3680043.9.3811"

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
JPEG2000 = "1.2.840.10008.1.2.4.91"

# SOP classes of the files storescu was given (see the header of dcmtk_storescu_rq.hex).
STORESCU_SOP_CLASSES = {
    CT_IMAGE,
    MR_IMAGE,
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG Waveform
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography
}


def load(name: str) -> bytes:
    text = (FIXTURES / f"{name}.hex").read_text()
    return bytes.fromhex("".join(line for line in text.splitlines() if not line.startswith("#")))


RQ_CAPTURES = ["dcmtk_echoscu_rq", "dcmtk_storescu_rq", "pynetdicom_echoscu_rq", "pacsnode_request_rq"]
AC_CAPTURES = ["dcmtk_storescp_ac", "pynetdicom_echoscp_ac"]
ALL_CAPTURES = RQ_CAPTURES + AC_CAPTURES
# Byte-identical on re-encoding: every capture except DCMTK's A-ASSOCIATE-RQs (see below).
IDENTICAL = ["pynetdicom_echoscu_rq", "pacsnode_request_rq", "dcmtk_storescp_ac", "pynetdicom_echoscp_ac"]


def rq(name: str) -> AssociateRQ:
    pdu = decode_bytes(load(name))
    assert isinstance(pdu, AssociateRQ)
    return pdu


def ac(name: str) -> AssociateAC:
    pdu = decode_bytes(load(name))
    assert isinstance(pdu, AssociateAC)
    return pdu


def presentation_context_offsets(raw: bytes) -> list[int]:
    """Offsets of the Presentation Context Items of an A-ASSOCIATE PDU (walked by hand)."""
    pos, out = 6 + 68, []
    while pos < len(raw):
        if raw[pos] in (0x20, 0x21):
            out.append(pos)
        pos += 4 + int.from_bytes(raw[pos + 2 : pos + 4], "big")
    return out


# ------------------------------------------------------------------ decode + round trip


@pytest.mark.parametrize("name", IDENTICAL)
def test_re_encoding_gives_identical_bytes(name):
    raw = load(name)
    assert encode(decode_bytes(raw)) == raw


@pytest.mark.parametrize("name", ["dcmtk_echoscu_rq", "dcmtk_storescu_rq"])
def test_dcmtk_rq_re_encodes_except_a_reserved_byte(name):
    # DCMTK sends FFH in the reserved byte 7 of each A-ASSOCIATE-RQ Presentation
    # Context Item (the byte that holds Result/Reason in the AC). PS3.8 9.3.2.2 says
    # reserved fields are sent as 00H and not tested on receipt, so we ignore it on
    # decode and send 00H: the only differences on re-encoding are those bytes.
    raw = load(name)
    again = encode(decode_bytes(raw))
    assert len(again) == len(raw)
    diffs = {i for i, (a, b) in enumerate(zip(raw, again, strict=True)) if a != b}
    assert diffs == {pc + 6 for pc in presentation_context_offsets(raw)}
    assert all(raw[i] == 0xFF and again[i] == 0x00 for i in diffs)
    assert decode_bytes(again) == decode_bytes(raw)


@pytest.mark.parametrize("name", ALL_CAPTURES)
def test_decode_encode_decode_is_stable(name):
    first = decode_bytes(load(name))
    assert decode_bytes(encode(first)) == first


@pytest.mark.parametrize("name", ALL_CAPTURES)
def test_capture_one_byte_at_a_time(name):
    raw = load(name)
    reader = PDUReader(max_pdata_length=16384)
    got = []
    for i in range(len(raw)):
        reader.feed(raw[i : i + 1])
        if (pdu := reader.next_pdu()) is not None:
            got.append((i, pdu))
    assert got == [(len(raw) - 1, decode_bytes(raw))]


# ------------------------------------------------------------------ what we know of each peer


@pytest.mark.parametrize("name", ALL_CAPTURES)
def test_common_fields(name):
    pdu = decode_bytes(load(name))
    assert isinstance(pdu, AssociateRQ | AssociateAC)
    assert pdu.protocol_version == 1
    assert pdu.application_context == DICOM_APPLICATION_CONTEXT
    assert pdu.user_information.has_max_length


def test_dcmtk_echoscu():
    pdu = rq("dcmtk_echoscu_rq")
    assert (pdu.called_ae_title, pdu.calling_ae_title) == ("X", "ECHOSCU")
    assert [
        (pc.context_id, pc.abstract_syntax, pc.transfer_syntaxes) for pc in pdu.presentation_contexts
    ] == [(1, VERIFICATION, (IMPLICIT_LE,))]
    ui = pdu.user_information
    assert ui.implementation_class_uid.startswith(DCMTK_IMPL_PREFIX + ".")
    assert ui.implementation_version_name.startswith("OFFIS_DCMTK_")
    assert ui.max_length == 16384


def test_dcmtk_storescu_many_contexts():
    pdu = rq("dcmtk_storescu_rq")
    assert (pdu.called_ae_title, pdu.calling_ae_title) == ("STORESCP", "STORESCU")
    pcs = pdu.presentation_contexts
    assert [pc.context_id for pc in pcs] == list(range(1, 2 * len(pcs), 2))
    assert {pc.abstract_syntax for pc in pcs} == STORESCU_SOP_CLASSES
    # storescu -R: per SOP class one context with Explicit VR LE, one with the defaults.
    assert len(pcs) == 2 * len(STORESCU_SOP_CLASSES)
    for first, second in zip(pcs[::2], pcs[1::2], strict=True):
        assert first.abstract_syntax == second.abstract_syntax
        assert first.transfer_syntaxes == (EXPLICIT_LE,)
        assert second.transfer_syntaxes == (EXPLICIT_BE, IMPLICIT_LE)
    assert pdu.user_information.implementation_class_uid.startswith(DCMTK_IMPL_PREFIX + ".")
    assert pdu.user_information.max_length == 16384


def test_pynetdicom_echoscu():
    pdu = rq("pynetdicom_echoscu_rq")
    assert (pdu.called_ae_title, pdu.calling_ae_title) == ("ANY-SCP", "ECHOSCU")
    (pc,) = pdu.presentation_contexts
    assert (pc.context_id, pc.abstract_syntax) == (1, VERIFICATION)
    assert pc.transfer_syntaxes == (EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE, EXPLICIT_BE)
    ui = pdu.user_information
    assert ui.implementation_class_uid.startswith(PYNETDICOM_IMPL_PREFIX + ".")
    assert ui.implementation_version_name.startswith("PYNETDICOM_")
    assert ui.max_length == 16382


def test_our_request_as_sent():
    pdu = rq("pacsnode_request_rq")
    assert [(pc.context_id, pc.abstract_syntax) for pc in pdu.presentation_contexts] == [
        (1, VERIFICATION),
        (3, CT_IMAGE),
        (5, PATIENT_ROOT_FIND),
        (7, MR_IMAGE),
    ]


def test_dcmtk_storescp_accept():
    pdu = ac("dcmtk_storescp_ac")
    assert (pdu.called_ae_title, pdu.calling_ae_title) == ("ANY-SCP", "PACSNODE")  # echoed from our RQ
    assert [(pc.context_id, pc.result) for pc in pdu.presentation_contexts] == [
        (1, ContextResult.ACCEPTANCE),
        (3, ContextResult.ACCEPTANCE),
        (5, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED),
        (7, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED),
    ]
    ui = pdu.user_information
    assert ui.implementation_class_uid.startswith(DCMTK_IMPL_PREFIX + ".")
    assert ui.max_length == 16384
    assert ui.role_selections == ()  # storescp does not answer our role selection: defaults apply


def test_pynetdicom_echoscp_accept():
    pdu = ac("pynetdicom_echoscp_ac")
    assert (pdu.called_ae_title, pdu.calling_ae_title) == ("ANY-SCP", "PACSNODE")
    assert [(pc.context_id, pc.result) for pc in pdu.presentation_contexts] == [
        (1, ContextResult.ACCEPTANCE),
        (3, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED),
        (5, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED),
        (7, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED),
    ]
    ui = pdu.user_information
    assert ui.implementation_class_uid.startswith(PYNETDICOM_IMPL_PREFIX + ".")
    assert ui.max_length == 16382


# ------------------------------------------------------------ captures through our machine and negotiation


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "dcmtk_storescp_ac",
            {1: (VERIFICATION, IMPLICIT_LE), 3: (CT_IMAGE, EXPLICIT_LE)},
        ),
        ("pynetdicom_echoscp_ac", {1: (VERIFICATION, IMPLICIT_LE)}),
    ],
)
def test_requestor_machine_takes_the_real_accept(name, expected):
    request = rq("pacsnode_request_rq")
    ul = UpperLayer(Role.REQUESTOR)
    ul.request_association(request)
    ul.transport_connected()
    assert decode_bytes(ul.data_to_send()) == request
    indications = ul.receive_data(load(name))
    assert indications == [AssociationAccepted(ac(name))]
    assert ul.is_established
    agreed = interpret_accept(request, ac(name))
    assert {cid: (c.abstract_syntax, c.transfer_syntax) for cid, c in agreed.contexts.items()} == expected
    assert all(c.requestor_is_scu and not c.requestor_is_scp for c in agreed.contexts.values())
    assert set(agreed.rejected_contexts) == {1, 3, 5, 7} - set(expected)


@pytest.mark.parametrize("name", ["dcmtk_echoscu_rq", "dcmtk_storescu_rq", "pynetdicom_echoscu_rq"])
def test_acceptor_machine_answers_the_real_request(name):
    policy = AcceptorPolicy(
        ae_title="ANY-SCP",
        supported={
            uid: SOPClassSupport(uid, (EXPLICIT_LE, IMPLICIT_LE))
            for uid in [VERIFICATION, *sorted(STORESCU_SOP_CLASSES)]
        },
        implementation_class_uid="1.2.826.0.1.3680043.10.1",
    )
    ul = UpperLayer(Role.ACCEPTOR)
    ul.transport_connected()
    [indication] = ul.receive_data(load(name))
    assert isinstance(indication, AssociationRequested)
    answer, agreed = negotiate(indication.request, policy)
    assert isinstance(answer, AssociateAC) and agreed is not None
    ul.accept(answer)
    assert ul.is_established
    sent = decode_bytes(ul.data_to_send())
    assert sent == answer
    # Every proposed context is answered, in order, and each accepted one with a proposed syntax.
    proposed = indication.request.presentation_contexts
    assert [pc.context_id for pc in answer.presentation_contexts] == [pc.context_id for pc in proposed]
    for pc, res in zip(proposed, answer.presentation_contexts, strict=True):
        assert res.result == ContextResult.ACCEPTANCE
        # The requestor's first supported syntax (Big Endian is not supported here).
        assert res.transfer_syntax == next(ts for ts in pc.transfer_syntaxes if ts != EXPLICIT_BE)
    assert agreed.peer_max_pdu_length == indication.request.user_information.max_length
