"""PS3.7 6.3.1 and PS3.8 E.2: a DIMSE message cut into P-DATA-TF PDUs of one PDV each."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pacsnode.dimse.commands import Command, encode_command
from pacsnode.ul.pdu import encode_pdata

PDV_OVERHEAD = 6  # PS3.8 9.3.5.1: 4-byte item length + context ID + message control header
UNLIMITED_PDU_CAP = 1 << 20  # our own cap when the peer announced Maximum Length 0 (PS3.8 D.1: no limit)


def fragment_size(max_pdu_length: int) -> int:
    """The most data one PDV may carry when the peer's Maximum Length is `max_pdu_length`.

    PS3.8 D.1: the maximum length bounds the PDU's variable field, which holds
    our single PDV item: 4 bytes of item length, the context ID, the control
    header, then the fragment.
    """
    if max_pdu_length == 0:
        max_pdu_length = UNLIMITED_PDU_CAP
    if max_pdu_length <= PDV_OVERHEAD:
        raise ValueError(f"maximum PDU length {max_pdu_length} leaves no room for a PDV's data")
    return max_pdu_length - PDV_OVERHEAD


def _last_fragment_start(total: int, size: int) -> int:
    """Where the last fragment of `total` bytes begins: it holds 1..size bytes (0 if there are none)."""
    return total - ((total - 1) % size + 1) if total else 0


def _fragments(context_id: int, is_command: bool, data: bytes | memoryview, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    last_start = _last_fragment_start(len(view), size)
    for start in range(0, last_start, size):
        yield encode_pdata(context_id, is_command, False, bytes(view[start : start + size]))
    yield encode_pdata(context_id, is_command, True, bytes(view[last_start:]))  # PS3.8 E.2


def fragment(
    context_id: int, command: bytes, dataset: bytes | memoryview | None, max_pdu_length: int
) -> Iterator[bytes]:
    """Yield the P-DATA-TF PDUs of one message: command fragments, then data set fragments.

    PS3.7 6.3.1 / PS3.8 E.2: the last fragment of each carries the last-fragment bit.
    """
    size = fragment_size(max_pdu_length)
    yield from _fragments(context_id, True, command, size)
    if dataset is not None:
        yield from _fragments(context_id, False, dataset, size)


def fragment_dataset_stream(context_id: int, chunks: Iterable[bytes], max_pdu_length: int) -> Iterator[bytes]:
    """Yield full-size data set PDUs from chunks of any size, holding at most one PDV plus a chunk.

    A fragment is only sent once more data is known to follow it, so that the
    last one can carry the last-fragment bit (PS3.8 E.2).
    """
    size = fragment_size(max_pdu_length)
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        if len(pending) > size:
            with memoryview(pending) as view:
                cut = _last_fragment_start(len(view), size)
                for start in range(0, cut, size):
                    yield encode_pdata(context_id, False, False, bytes(view[start : start + size]))
            del pending[:cut]
    yield encode_pdata(context_id, False, True, bytes(pending))


def encode_message(
    context_id: int, cmd: Command, dataset: bytes | memoryview | None, max_pdu_length: int
) -> bytes:
    """All the PDUs of one message, joined; `dataset` must be given exactly when ``cmd.has_dataset``."""
    if cmd.has_dataset != (dataset is not None):
        raise ValueError("the command's Command Data Set Type disagrees with the data set given")
    command = encode_command(cmd)
    if dataset is None and len(command) <= fragment_size(max_pdu_length):
        return encode_pdata(context_id, True, True, command)  # the usual response: one PDU
    return b"".join(fragment(context_id, command, dataset, max_pdu_length))
