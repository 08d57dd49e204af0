"""PS3.7 DIMSE message exchange, sans-IO: command sets, fragmentation, reassembly, status."""

from pacsnode.dimse.assembler import CommandReceived, DataSetFragment, Event, MessageAssembler
from pacsnode.dimse.commands import (
    Command,
    CommandField,
    CommandTag,
    Priority,
    decode_command,
    encode_command,
)
from pacsnode.dimse.fragmentation import encode_message, fragment, fragment_dataset_stream
from pacsnode.dimse.messages import MESSAGES, response_to, validate
from pacsnode.dimse.status import Status, StatusCategory, category, describe

__all__ = [
    "MESSAGES",
    "Command",
    "CommandField",
    "CommandReceived",
    "CommandTag",
    "DataSetFragment",
    "Event",
    "MessageAssembler",
    "Priority",
    "Status",
    "StatusCategory",
    "category",
    "decode_command",
    "describe",
    "encode_command",
    "encode_message",
    "fragment",
    "fragment_dataset_stream",
    "response_to",
    "validate",
]
