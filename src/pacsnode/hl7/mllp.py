"""MLLP framing (HL7 v2 transport, MLLP release 1, HL7 v2.5.1 Appendix C.4): sans-IO, bounded.

A block is <SB> payload <EB><CR> with SB = 0x0B, EB = 0x1C, CR = 0x0D.  Bytes in, events
out; no sockets here.  Written by hand rather than taken from ``hl7.mllp``: that reader
decodes every block with one fixed encoding before MSH-18 can say which, and a block
over its limit raises without leaving a way to answer it with a NAK.
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = 0x0B
END_BLOCK = 0x1C
CARRIAGE_RETURN = 0x0D
_SB, _EB = bytes([START_BLOCK]), bytes([END_BLOCK])
HEAD = 4096  # what an Oversize event keeps of its block: enough for the MSH segment


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete block: the message bytes between SB and EB."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Oversize:
    """A block grew past the limit; the decoder takes nothing more (the connection is to be closed)."""

    head: bytes  # the first bytes of the block
    limit: int


@dataclass(frozen=True, slots=True)
class Junk:
    """Bytes outside any block (or a block the sender abandoned by starting another), ignored."""

    size: int


Event = Frame | Oversize | Junk


def frame(payload: bytes) -> bytes:
    """A message in its MLLP block."""
    return _SB + payload + _EB + bytes([CARRIAGE_RETURN])


class MllpDecoder:
    """Splits a byte stream into MLLP blocks of at most ``max_message`` bytes each."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._in_block = False
        self._after_end = False  # the CR that must follow EB
        self._junk = 0
        self._broken = False

    @property
    def pending(self) -> int:
        """Bytes of a block begun and not ended."""
        return len(self._buf) if self._in_block else 0

    def feed(self, data: bytes) -> list[Event]:
        """The events these bytes complete."""
        events: list[Event] = []
        pos, size = 0, len(data)
        while pos < size and not self._broken:
            if self._after_end:
                self._after_end = False
                if data[pos] == CARRIAGE_RETURN:
                    pos += 1
                    continue
                # MLLP: <EB> is followed by <CR>; anything else is outside a block.
            if not self._in_block:
                start = data.find(_SB, pos)
                if start < 0:
                    self._junk += size - pos
                    break
                self._junk += start - pos
                if self._junk:
                    events.append(Junk(self._junk))
                    self._junk = 0
                self._in_block, pos = True, start + 1
                continue
            end = data.find(_EB, pos)
            stop = size if end < 0 else end
            restart = data.rfind(_SB, pos, stop)
            if restart >= 0:  # a new <SB> inside a block: the sender started over
                events.append(Junk(len(self._buf) + restart - pos + 1))
                self._buf.clear()
                pos = restart + 1
            if len(self._buf) + stop - pos > self.max_message:
                self._broken = True
                head = bytes(self._buf[:HEAD]) + data[pos : pos + max(0, HEAD - len(self._buf))]
                events.append(Oversize(head, self.max_message))
                self._buf.clear()
                break
            self._buf += data[pos:stop]
            if end < 0:
                break
            events.append(Frame(bytes(self._buf)))
            self._buf.clear()
            self._in_block, self._after_end, pos = False, True, end + 1
        return events

    def close(self) -> list[Event]:
        """The end of the stream: what is left over (bytes outside blocks, an unfinished block)."""
        left = self._junk + (len(self._buf) + 1 if self._in_block else 0)
        self._junk, self._in_block = 0, False
        self._buf.clear()
        return [Junk(left)] if left else []
