"""PS3.7 6.3.1 and PS3.8 E.2: DIMSE messages reassembled from PDVs, the data set streamed as it arrives."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from pacsnode.dimse.commands import Command, decode_command
from pacsnode.ul.errors import AbortReason, RemoteProtocolError
from pacsnode.ul.pdu import PDV

DEFAULT_MAX_COMMAND_LENGTH = 64 * 1024


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A whole command set arrived; if ``command.has_dataset`` its data set follows."""

    context_id: int
    command: Command


@dataclass(frozen=True, slots=True)
class DataSetFragment:
    """One fragment of the data set of the last command, in order; ``is_last`` ends the message."""

    context_id: int
    data: bytes
    is_last: bool


Event = CommandReceived | DataSetFragment

_IDLE, _COMMAND, _DATASET = 0, 1, 2


def _unexpected(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, AbortReason.UNEXPECTED_PDU_PARAMETER)


class MessageAssembler:
    """Turn the PDVs of one association into DIMSE events (sans-IO; one per association).

    After it raises `RemoteProtocolError` the association must be aborted and the
    assembler dropped.
    """

    __slots__ = ("_accepted", "_buffer", "_context_id", "_state", "max_command_length")

    def __init__(
        self,
        max_command_length: int = DEFAULT_MAX_COMMAND_LENGTH,
        accepted_context_ids: Collection[int] | None = None,
    ) -> None:
        self.max_command_length = max_command_length
        self._accepted = accepted_context_ids
        self._state = _IDLE
        self._context_id = 0
        self._buffer = bytearray()

    @property
    def in_message(self) -> bool:
        """True between the first fragment of a message and its last."""
        return self._state != _IDLE

    def receive(self, pdv: PDV) -> list[Event]:
        """Take one PDV; return the events it completes (possibly none)."""
        context_id = pdv.context_id
        if self._accepted is not None and context_id not in self._accepted:
            # PS3.8 9.3.5.1: a PDV must use an accepted presentation context.
            raise RemoteProtocolError(
                f"PDV on presentation context {context_id}, which was not accepted",
                AbortReason.INVALID_PDU_PARAMETER_VALUE,
            )
        state = self._state
        if state == _DATASET:
            if context_id != self._context_id:
                # PS3.8 E.2 / PS3.7 6.3.1: a message's fragments are sent without interleaving.
                raise _unexpected(
                    f"PDV on context {context_id} during a data set on context {self._context_id}"
                )
            if pdv.is_command:
                raise _unexpected("command fragment while a data set is in progress")  # PS3.7 6.3.1
            if pdv.is_last:
                self._state = _IDLE
            return [DataSetFragment(context_id, pdv.data, pdv.is_last)]
        if not pdv.is_command:
            raise _unexpected(
                "data set fragment before its command set was complete"
                if state == _COMMAND
                # PS3.7 E.1: none yet, or the last one said 0101H (no data set)
                else "data set fragment with no command announcing a data set"
            )
        if state == _IDLE:
            if pdv.is_last:  # the usual case: the whole command set in one PDV
                return self._command(context_id, pdv.data)
            self._state = _COMMAND
            self._context_id = context_id
        elif context_id != self._context_id:
            raise _unexpected(
                f"command fragment on context {context_id} during a command on context {self._context_id}"
            )
        buffer = self._buffer
        if len(buffer) + len(pdv.data) > self.max_command_length:
            raise self._too_long()
        buffer += pdv.data
        if not pdv.is_last:
            return []
        data = bytes(buffer)
        buffer.clear()
        return self._command(context_id, data)

    def _too_long(self) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"command set longer than {self.max_command_length} bytes",
            AbortReason.INVALID_PDU_PARAMETER_VALUE,
        )

    def _command(self, context_id: int, data: bytes) -> list[Event]:
        if len(data) > self.max_command_length:
            raise self._too_long()
        command = decode_command(data)
        if command.has_dataset:
            self._state = _DATASET
            self._context_id = context_id
        else:
            self._state = _IDLE
        return [CommandReceived(context_id, command)]
