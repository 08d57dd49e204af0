"""Worklist C-FIND clients over one open association: bench/query's raw-socket and pynetdicom clients,
proposing the Modality Worklist Information Model - FIND SOP class (PS3.4 K.6.1.3) instead of Study Root.

Both keep a Verification context too, for the C-ECHO floor.
"""

from __future__ import annotations

from collections import deque

from bench.common import VERIFICATION, RawAssociation
from bench.query.client import (
    ECHO_CONTEXT,
    FIND_CONTEXT,
    IO_TIMEOUT,
    PENDING,
    PynetdicomClient,
    QueryFailure,
    RawClient,
    _command,
    _command_us,
    _element_ui,
    _element_us,
    _p_data,
)

MWL_FIND = "1.2.840.10008.5.1.4.31"  # PS3.4 K.6.1.3 Modality Worklist Information Model - FIND


def c_find_rq(message_id: int, identifier: bytes) -> bytes:
    """A worklist C-FIND-RQ (PS3.7 9.3.2.1): the command and the identifier, each in its own P-DATA-TF."""
    elements = (
        _element_ui(0x00000002, MWL_FIND)
        + _element_us(0x00000100, 0x0020)
        + _element_us(0x00000110, message_id & 0xFFFF)
        + _element_us(0x00000700, 0x0000)  # Priority MEDIUM
        + _element_us(0x00000800, 0x0000)  # a data set follows
    )
    return _p_data(FIND_CONTEXT, 0x03, _command(elements)) + _p_data(FIND_CONTEXT, 0x02, identifier)


class WorklistRawClient(RawClient):
    """bench/query's raw requestor with the worklist SOP class: pre-encoded PDUs, one request at a time."""

    def __init__(self, port: int, called: str, calling: str = "BENCHMWL") -> None:
        RawAssociation.__init__(
            self,
            port,
            called,
            nodelay=True,
            calling=calling,
            contexts=((ECHO_CONTEXT, VERIFICATION), (FIND_CONTEXT, MWL_FIND)),
            max_pdu=65536,
            timeout=IO_TIMEOUT,
        )
        self._pdvs = deque()
        if FIND_CONTEXT not in self._accepted_contexts(self.accept):
            self.sock.close()
            raise QueryFailure("the server did not accept Modality Worklist Information Model - FIND")

    def find(self, identifier: bytes) -> int:
        """One worklist C-FIND; the number of matches (pending responses) once the final one arrived."""
        self.message_id += 1
        self.sock.sendall(c_find_rq(self.message_id, identifier))
        matches = 0
        while True:
            command, _ = self._message()
            status = _command_us(command, 0x00000900)
            if status in PENDING:
                matches += 1
                continue
            if status != 0:
                raise QueryFailure(f"C-FIND status 0x{status or 0:04X} after {matches} matches")
            return matches


class WorklistPynetdicomClient(PynetdicomClient):
    """bench/query's pynetdicom requestor (send_c_find) with the worklist SOP class."""

    def __init__(self, port: int, called: str, calling: str = "BENCHMWL") -> None:
        super().__init__(port, called, calling, model=MWL_FIND)
