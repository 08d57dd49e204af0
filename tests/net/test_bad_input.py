"""Hostile and broken peers on raw sockets (PS3.8 9.3.1, 9.3.8, 9.1.5 ARTIM): the server answers with
the exact A-ABORT, closes, and keeps serving a well-behaved association opened beforehand."""

from __future__ import annotations

import asyncio
import dataclasses
import struct

import pytest

from pacsnode.config.settings import NetworkSettings
from pacsnode.data.uids import UNCOMPRESSED_TRANSFER_SYNTAXES, VERIFICATION_SOP_CLASS
from pacsnode.dimse.commands import Command, CommandField, decode_command, encode_command
from pacsnode.dimse.messages import c_echo_rq, c_find_rq
from pacsnode.dimse.status import Status
from pacsnode.ul.negotiation import ProposedContext, build_request
from pacsnode.ul.pdu import (
    PDV,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    ReleaseRP,
    ReleaseRQ,
    decode_bytes,
    encode,
    encode_pdata,
)
from peerkit import (
    AE_TITLE,
    bystander,
    echo_pdata,
    raw_associate,
    raw_connect,
    read_pdu,
    read_until_eof,
)

MAX_PDU = 16384
SMALL_TIMERS = NetworkSettings(
    artim_timeout=0.5,
    read_timeout=0.5,
    idle_timeout=30.0,  # the bystander must not be aborted as idle while a test runs
    max_pdu_length=MAX_PDU,
    max_associations=4,
)


@pytest.fixture
async def srv(make_server):
    return await make_server(network=SMALL_TIMERS)


def associate_rq(called: str = AE_TITLE, calling: str = "RAWPEER") -> bytes:
    return encode(
        build_request(
            called,
            calling,
            [ProposedContext(VERIFICATION_SOP_CLASS, UNCOMPRESSED_TRANSFER_SYNTAXES)],
            implementation_class_uid="1.2.3.4",
            max_pdu_length=MAX_PDU,
        )
    )


async def open_stream(srv, associated: bool):
    """A raw connection, before association (Sta2) or on an established association (Sta6)."""
    if associated:
        raw = await raw_associate(srv.host, srv.port, max_pdu_length=MAX_PDU)
        return raw.reader, raw.writer
    return await raw_connect(srv.host, srv.port)


async def expect_abort_and_close(reader, source: int, reason: int) -> None:
    assert await read_until_eof(reader) == [Abort(source, reason)]


# ---------------------------------------------------------------- unrecognised bytes


@pytest.mark.parametrize("associated", [False, True], ids=["before-association", "associated"])
async def test_unknown_pdu_type(srv, associated):
    async with bystander(srv.host, srv.port):
        reader, writer = await open_stream(srv, associated)
        writer.write(bytes([0x09, 0]) + struct.pack(">I", 4) + bytes(4))
        # PS3.8 9.3.1: unrecognised PDU type -> A-ABORT, service-provider, reason 1.
        await expect_abort_and_close(reader, 2, 1)
        writer.close()


async def test_http_request_on_dicom_port(srv):
    async with bystander(srv.host, srv.port):
        reader, writer = await raw_connect(srv.host, srv.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await expect_abort_and_close(reader, 2, 1)
        writer.close()


@pytest.mark.parametrize(
    ("pdu_type", "associated"),
    [(0x01, False), (0x04, False), (0x04, True), (0x05, True)],
    ids=["associate-rq", "p-data-before", "p-data-associated", "release-rq"],
)
async def test_pdu_length_0xffffffff(srv, pdu_type, associated):
    async with bystander(srv.host, srv.port):
        reader, writer = await open_stream(srv, associated)
        # Only the 6-byte header is sent: the A-ABORT proves the length was judged at the
        # header, without waiting for (or buffering) 4 GiB.
        writer.write(bytes([pdu_type, 0]) + struct.pack(">I", 0xFFFFFFFF))
        await writer.drain()
        assert await read_pdu(reader) == Abort(2, 6)
        # Whatever follows is not buffered; the server closes at ARTIM.
        writer.write(bytes(65536))
        assert await read_until_eof(reader) == []
        writer.close()


def _mutate_pc_item_length(raw: bytearray) -> None:
    # PS3.8 9.3.2: 6-byte header + 68 fixed bytes, then the application context item.
    app = 74
    pc = app + 4 + struct.unpack_from(">H", raw, app + 2)[0]
    assert raw[pc] == 0x20
    struct.pack_into(">H", raw, pc + 2, 0xFFFF)


def _mutate_abstract_syntax_length(raw: bytearray) -> None:
    app = 74
    pc = app + 4 + struct.unpack_from(">H", raw, app + 2)[0]
    pc_len = struct.unpack_from(">H", raw, pc + 2)[0]
    abstract = pc + 8  # item header + context ID, 3 reserved bytes
    assert raw[abstract] == 0x30
    struct.pack_into(">H", raw, abstract + 2, pc_len)  # longer than what is left of its parent


def _mutate_user_information_sub_item(raw: bytearray) -> None:
    ui = raw.rindex(bytes([0x50, 0]))
    ui_len = struct.unpack_from(">H", raw, ui + 2)[0]
    assert raw[ui + 4] == 0x51  # Maximum Length sub-item first
    struct.pack_into(">H", raw, ui + 6, ui_len)


def _mutate_user_information_overruns_pdu(raw: bytearray) -> None:
    ui = raw.rindex(bytes([0x50, 0]))
    struct.pack_into(">H", raw, ui + 2, struct.unpack_from(">H", raw, ui + 2)[0] + 1)


@pytest.mark.parametrize(
    "mutate",
    [
        _mutate_pc_item_length,
        _mutate_abstract_syntax_length,
        _mutate_user_information_sub_item,
        _mutate_user_information_overruns_pdu,
    ],
    ids=["presentation-context", "abstract-syntax", "user-info-sub-item", "user-info-item"],
)
async def test_item_longer_than_its_parent(srv, mutate):
    raw = bytearray(associate_rq())
    mutate(raw)
    async with bystander(srv.host, srv.port):
        reader, writer = await raw_connect(srv.host, srv.port)
        writer.write(bytes(raw))
        # PS3.8 9.3.8: invalid PDU parameter value.
        await expect_abort_and_close(reader, 2, 6)
        writer.close()


async def test_short_associate_rq(srv):
    async with bystander(srv.host, srv.port):
        reader, writer = await raw_connect(srv.host, srv.port)
        writer.write(bytes([0x01, 0]) + struct.pack(">I", 10) + bytes(10))
        await expect_abort_and_close(reader, 2, 6)
        writer.close()


# ---------------------------------------------------------------- PDUs out of order


async def test_pdata_before_association(srv):
    async with bystander(srv.host, srv.port):
        reader, writer = await raw_connect(srv.host, srv.port)
        writer.write(echo_pdata())
        # PS3.8 Table 9-10, Sta2 + Evt10 -> AA-1: A-ABORT (unexpected PDU), then close at ARTIM.
        await expect_abort_and_close(reader, 2, 2)
        writer.close()


@pytest.mark.parametrize("pdu", [ReleaseRP(), AssociateRJ(1, 1, 1)], ids=["release-rp", "associate-rj"])
async def test_other_unexpected_pdu_before_association(srv, pdu):
    async with bystander(srv.host, srv.port):
        reader, writer = await raw_connect(srv.host, srv.port)
        writer.write(encode(pdu))
        await expect_abort_and_close(reader, 2, 2)
        writer.close()


async def test_second_associate_rq_on_established_association(srv):
    async with bystander(srv.host, srv.port):
        raw = await raw_associate(srv.host, srv.port)
        assert (await raw.echo()).status == Status.SUCCESS
        raw.writer.write(associate_rq())
        # PS3.8 Table 9-10, Sta6 + Evt6 -> AA-8: A-ABORT, service-provider, unexpected PDU.
        await expect_abort_and_close(raw.reader, 2, 2)
        raw.close()


async def test_associate_ac_sent_by_requestor(srv):
    async with bystander(srv.host, srv.port):
        raw = await raw_associate(srv.host, srv.port)
        raw.writer.write(encode(raw.accept))
        await expect_abort_and_close(raw.reader, 2, 2)
        raw.close()


# ---------------------------------------------------------------- maximum PDU length


def _padded_echo(message_id: int, command_length: int) -> bytes:
    """A C-ECHO-RQ command set of exactly ``command_length`` bytes (an unknown element pads it)."""
    bare = len(encode_command(c_echo_rq(message_id)))
    pad = command_length - bare - 8
    assert pad >= 0
    command = Command(
        CommandField.C_ECHO_RQ,
        message_id=message_id,
        affected_sop_class_uid=VERIFICATION_SOP_CLASS,
        extra={0x7FFF: bytes(pad)},
    )
    encoded = encode_command(command)
    assert len(encoded) == command_length
    return encoded


async def test_pdata_of_exactly_the_maximum_length_is_served(srv):
    async with bystander(srv.host, srv.port):
        raw = await raw_associate(srv.host, srv.port)
        # PS3.8 D.1: the P-DATA-TF variable field may be as long as the advertised maximum.
        pdu = encode_pdata(1, True, True, _padded_echo(5, MAX_PDU - 6))
        assert len(pdu) == 6 + MAX_PDU
        raw.writer.write(pdu)
        reply = await read_pdu(raw.reader)
        assert isinstance(reply, PDataTF)
        rsp = decode_command(reply.pdvs[0].data)
        assert (rsp.command_field, rsp.message_id_being_responded_to, rsp.status) == (
            CommandField.C_ECHO_RSP,
            5,
            Status.SUCCESS,
        )
        raw.writer.write(encode(ReleaseRQ()))
        assert await read_pdu(raw.reader) == ReleaseRP()
        raw.close()


async def test_pdata_larger_than_our_maximum(srv):
    async with bystander(srv.host, srv.port):
        raw = await raw_associate(srv.host, srv.port)
        pdu = encode_pdata(1, True, True, _padded_echo(5, MAX_PDU - 5))
        assert len(pdu) == 6 + MAX_PDU + 1
        raw.writer.write(pdu)
        await expect_abort_and_close(raw.reader, 2, 6)
        raw.close()


# ---------------------------------------------------------------- silence and stalls


async def test_silent_connection_closed_at_artim(srv):
    async with bystander(srv.host, srv.port):
        reader, writer = await raw_connect(srv.host, srv.port)
        # PS3.8 9.1.5 / Sta2 + Evt18 -> AA-2: close without sending anything.
        assert await read_until_eof(reader) == []
        writer.close()


async def test_half_associate_rq_then_stall(srv):
    async with bystander(srv.host, srv.port):
        reader, writer = await raw_connect(srv.host, srv.port)
        writer.write(associate_rq()[:40])
        assert await read_until_eof(reader) == []
        writer.close()


async def test_half_pdata_then_stall_on_established_association(srv):
    async with bystander(srv.host, srv.port):
        raw = await raw_associate(srv.host, srv.port)
        assert (await raw.echo()).status == Status.SUCCESS
        raw.writer.write(echo_pdata(2)[:20])
        # No ARTIM in Sta6: the read timeout ends it, with an A-ABORT.
        assert await read_until_eof(raw.reader) == [Abort(2, 0)]
        raw.close()


async def test_command_without_its_last_fragment_then_stall(srv):
    async with bystander(srv.host, srv.port):
        raw = await raw_associate(srv.host, srv.port)
        command = encode_command(c_echo_rq(3))
        raw.writer.write(encode_pdata(1, True, False, command[:10]))  # whole PDU, not the last PDV
        assert await read_until_eof(raw.reader) == [Abort(2, 0)]
        raw.close()


# ---------------------------------------------------------------- association limit


async def test_more_associations_than_the_limit(srv):
    async with bystander(srv.host, srv.port):
        # The bystander holds one of the four slots.
        streams = await asyncio.gather(*(raw_connect(srv.host, srv.port) for _ in range(6)))
        for i, (_, writer) in enumerate(streams):
            writer.write(associate_rq(calling=f"RAW{i}"))
        answers = await asyncio.gather(*(read_pdu(reader) for reader, _ in streams))
        accepted = [s for s, a in zip(streams, answers, strict=True) if isinstance(a, AssociateAC)]
        rejected = [a for a in answers if isinstance(a, AssociateRJ)]
        assert len(accepted) == 3
        assert rejected == [AssociateRJ(2, 3, 2)] * 3
        assert srv.server.active == 4
        for (reader, writer), answer in zip(streams, answers, strict=True):
            if isinstance(answer, AssociateAC):
                writer.write(echo_pdata(9))
                reply = await read_pdu(reader)
                assert isinstance(reply, PDataTF)
                assert decode_command(reply.pdvs[0].data).status == Status.SUCCESS
                writer.write(encode(ReleaseRQ()))
                assert await read_pdu(reader) == ReleaseRP()
            # After the RJ or the RP the server waits for us to close (PS3.8 Sta13).
            writer.close()
    await srv.wait_idle()
    assert srv.server.active == 0


# ---------------------------------------------------------------- malformed DIMSE inside valid P-DATA


def _group_0008_element() -> bytes:
    good = encode_command(c_echo_rq(1))
    return good + struct.pack("<HHI", 0x0008, 0x0010, 2) + b"XX"


def _no_command_field() -> bytes:
    body = struct.pack("<HHIH", 0x0000, 0x0110, 2, 1) + struct.pack("<HHIH", 0x0000, 0x0800, 2, 0x0101)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _value_runs_past_end() -> bytes:
    return encode_command(c_echo_rq(1)) + struct.pack("<HHI", 0x0000, 0x7FFF, 1000) + b"short"


@pytest.mark.parametrize(
    ("pdvs", "reason"),
    [
        ([PDV(1, True, True, b"\x01\x02\x03")], 6),
        ([PDV(1, True, True, _no_command_field())], 6),
        ([PDV(1, True, True, _group_0008_element())], 6),
        ([PDV(1, True, True, _value_runs_past_end())], 6),
        ([PDV(1, False, True, b"\x08\x00\x10\x00\x00\x00\x00\x00")], 5),
        ([PDV(3, True, True, encode_command(c_echo_rq(1)))], 6),
        ([PDV(1, True, False, encode_command(c_echo_rq(1))[:12]), PDV(1, False, True, b"x")], 5),
    ],
    ids=[
        "garbage",
        "no-command-field",
        "non-group-0000-element",
        "length-past-end",
        "data-set-without-command",
        "context-not-accepted",
        "data-inside-command",
    ],
)
async def test_malformed_dimse_command_aborts(srv, pdvs, reason):
    async with bystander(srv.host, srv.port):
        raw = await raw_associate(srv.host, srv.port)
        assert (await raw.echo()).status == Status.SUCCESS
        raw.writer.write(encode(PDataTF(tuple(pdvs))))
        await expect_abort_and_close(raw.reader, 2, reason)
        raw.close()


async def test_command_set_longer_than_the_limit_aborts(srv):
    async with bystander(srv.host, srv.port):
        raw = await raw_associate(srv.host, srv.port)
        chunk = bytes(MAX_PDU - 6)
        # 64 KiB of command fragments, none of them the last: refused before it grows further.
        for _ in range(5):
            raw.writer.write(encode_pdata(1, True, False, chunk))
        await expect_abort_and_close(raw.reader, 2, 6)
        raw.close()


async def test_unsupported_operation_on_verification_gets_a_response(srv):
    async with bystander(srv.host, srv.port):
        raw = await raw_associate(srv.host, srv.port)
        find = c_find_rq(11, VERIFICATION_SOP_CLASS)
        raw.writer.write(encode_pdata(1, True, True, encode_command(find)))
        raw.writer.write(encode_pdata(1, False, True, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "))
        reply = await read_pdu(raw.reader)
        assert isinstance(reply, PDataTF)
        rsp = decode_command(reply.pdvs[0].data)
        assert rsp.message_id_being_responded_to == 11
        assert rsp.status == Status.UNRECOGNIZED_OPERATION
        # The association goes on.
        assert (await raw.echo(12)).status == Status.SUCCESS
        raw.writer.write(encode(ReleaseRQ()))
        assert await read_pdu(raw.reader) == ReleaseRP()
        raw.close()


# ---------------------------------------------------------------- A-ASSOCIATE-RQ the server rejects


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"protocol_version": 2}, AssociateRJ(1, 2, 2)),
        ({"application_context": "1.2.3.4"}, AssociateRJ(1, 1, 2)),
        ({"calling_ae_title": "BAD\\AE"}, AssociateRJ(1, 1, 3)),
    ],
    ids=["protocol-version", "application-context", "calling-ae-backslash"],
)
async def test_associate_rq_rejected(srv, change, expected):
    rq = decode_bytes(associate_rq())
    assert isinstance(rq, AssociateRQ)
    async with bystander(srv.host, srv.port):
        reader, writer = await raw_connect(srv.host, srv.port)
        writer.write(encode(dataclasses.replace(rq, **change)))
        assert await read_pdu(reader) == expected
        writer.close()


# ---------------------------------------------------------------- no slot held after an abort


async def test_connection_closed_right_after_a_provider_abort(make_server) -> None:
    # With ARTIM at a minute, the close must come from the abort itself, not the timer.
    srv = await make_server(network=SMALL_TIMERS.model_copy(update={"artim_timeout": 60.0}))
    reader, writer = await open_stream(srv, associated=True)
    writer.write(associate_rq())  # a second A-ASSOCIATE-RQ: unexpected in Sta6
    await expect_abort_and_close(reader, 2, 2)
    writer.close()
    await srv.wait_idle()
    assert srv.server.active == 0
