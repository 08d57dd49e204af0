"""MLLP framing (sans-IO): blocks, bytes outside blocks, a block over the limit, any split of the stream."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pacsnode.hl7.mllp import HEAD, Frame, Junk, MllpDecoder, Oversize, frame

MSG = b"MSH|^~\\&|RIS|HOSP|PACS|RAD|20240611||ORM^O01|1|P|2.3.1\rPID|1||X\r"


def feed_all(decoder: MllpDecoder, data: bytes, step: int | None = None) -> list[object]:
    if step is None:
        return list(decoder.feed(data))
    events: list[object] = []
    for i in range(0, len(data), step):
        events += decoder.feed(data[i : i + step])
    return events


def test_frame_is_sb_payload_eb_cr() -> None:
    assert frame(b"abc") == b"\x0babc\x1c\x0d"


def test_one_block() -> None:
    assert MllpDecoder(1024).feed(frame(MSG)) == [Frame(MSG)]


def test_blocks_fed_one_byte_at_a_time() -> None:
    stream = frame(MSG) + frame(b"second") + frame(b"")
    assert feed_all(MllpDecoder(1024), stream, 1) == [Frame(MSG), Frame(b"second"), Frame(b"")]


def test_several_blocks_in_one_chunk() -> None:
    assert MllpDecoder(1024).feed(frame(b"a") + frame(b"b")) == [Frame(b"a"), Frame(b"b")]


def test_bytes_outside_blocks_are_reported_and_ignored() -> None:
    events = MllpDecoder(1024).feed(b"junk\r\n" + frame(b"a") + b"xy" + frame(b"b"))
    assert events == [Junk(6), Frame(b"a"), Junk(2), Frame(b"b")]


def test_end_block_without_carriage_return_still_ends_the_block() -> None:
    assert MllpDecoder(1024).feed(b"\x0ba\x1c\x0bb\x1c\x0d") == [Frame(b"a"), Frame(b"b")]


def test_a_new_start_block_inside_a_block_starts_over() -> None:
    assert MllpDecoder(1024).feed(b"\x0babandoned\x0bkept\x1c\x0d") == [Junk(10), Frame(b"kept")]


def test_block_of_exactly_the_limit_passes() -> None:
    assert MllpDecoder(10).feed(frame(b"0123456789")) == [Frame(b"0123456789")]


def test_block_over_the_limit_is_oversize_and_nothing_more_is_taken() -> None:
    decoder = MllpDecoder(4096)
    big = MSG + b"X" * 10_000
    events = feed_all(decoder, frame(big) + frame(MSG), 1000)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, Oversize)
    assert event.limit == 4096
    assert event.head == big[:HEAD]
    assert decoder.feed(frame(MSG)) == []


def test_close_reports_an_unfinished_block() -> None:
    decoder = MllpDecoder(1024)
    assert decoder.feed(b"\x0bhalf") == []
    assert decoder.pending == 4
    assert decoder.close() == [Junk(5)]


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_any_stream_decodes_without_error_and_within_the_limit(data: bytes, step: int) -> None:
    decoder = MllpDecoder(128)
    events = feed_all(decoder, data, step) + decoder.close()
    for event in events:
        assert isinstance(event, Frame | Junk | Oversize)
        if isinstance(event, Frame):
            assert len(event.payload) <= 128 and b"\x1c" not in event.payload


@given(st.lists(st.binary(max_size=50).filter(lambda b: b"\x0b" not in b and b"\x1c" not in b), max_size=5))
def test_any_split_gives_the_same_blocks(payloads: list[bytes]) -> None:
    stream = b"".join(frame(p) for p in payloads)
    whole = MllpDecoder(64).feed(stream)
    assert whole == [Frame(p) for p in payloads]
    for step in (1, 2, 7):
        assert feed_all(MllpDecoder(64), stream, step) == whole
