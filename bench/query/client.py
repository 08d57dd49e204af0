"""Query clients over one open association: a raw-socket C-FIND/C-ECHO requestor and a pynetdicom one.

The raw client pre-encodes each request and times from its send to the last response,
so it measures the server and the kernel, not the client; pynetdicom's reactor polls
its socket every millisecond, which adds ~1 ms to any round trip (kept as a second,
everyday view: it is what most Python tools use).
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from bench.common import IMPLICIT_VR_LE, LOOPBACK, VERIFICATION, ProtocolFailure, RawAssociation, c_echo_rq

IO_TIMEOUT = 60.0

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # PS3.4 C.6.2.1 Study Root Query/Retrieve - FIND
ECHO_CONTEXT = 1  # as bench.common.c_echo_rq sends it
FIND_CONTEXT = 3
PENDING = (0xFF00, 0xFF01)  # PS3.4 C.4.1.1.4
NO_DATA_SET = 0x0101  # PS3.7 E.1-1 Command Data Set Type


class QueryFailure(ProtocolFailure):
    """The server refused the association, answered a failure status, or broke the protocol."""


@dataclass(frozen=True)
class Query:
    """One C-FIND request: the identifier, and how many matches the corpus says it has."""

    kind: str
    identifier: Dataset
    expected: int


# --------------------------------------------------------------------------- encoding


def _element_us(tag: int, value: int) -> bytes:
    return struct.pack("<HHIH", tag >> 16, tag & 0xFFFF, 2, value)


def _element_ui(tag: int, value: str) -> bytes:
    raw = value.encode()
    if len(raw) % 2:
        raw += b"\0"
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(raw)) + raw


def _command(elements: bytes) -> bytes:
    # PS3.7 E.1: Command Group Length first, Implicit VR Little Endian.
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(elements)) + elements


def _p_data(context_id: int, header: int, payload: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, header) + payload
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def encode_identifier(ds: Dataset) -> bytes:
    """The identifier as Implicit VR Little Endian bytes."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return fp.getvalue()


def c_find_rq(message_id: int, identifier: bytes) -> bytes:
    """C-FIND-RQ (PS3.7 9.3.2.1): the command and the identifier, each in its own P-DATA-TF."""
    elements = (
        _element_ui(0x00000002, STUDY_ROOT_FIND)
        + _element_us(0x00000100, 0x0020)
        + _element_us(0x00000110, message_id & 0xFFFF)
        + _element_us(0x00000700, 0x0000)  # Priority MEDIUM
        + _element_us(0x00000800, 0x0000)  # a data set follows
    )
    return _p_data(FIND_CONTEXT, 0x03, _command(elements)) + _p_data(FIND_CONTEXT, 0x02, identifier)


def _command_us(command: bytes, wanted: int) -> int | None:
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, offset)
        offset += 8
        if (group << 16) | element == wanted and length == 2:
            return int(struct.unpack_from("<H", command, offset)[0])
        offset += length
    return None


# --------------------------------------------------------------------------- raw client


class RawClient(RawAssociation):
    """A blocking requestor on one association; one request in flight at a time."""

    name = "raw"

    def __init__(self, port: int, called: str, calling: str = "BENCHQUERY") -> None:
        super().__init__(
            port,
            called,
            nodelay=True,
            calling=calling,
            contexts=((ECHO_CONTEXT, VERIFICATION), (FIND_CONTEXT, STUDY_ROOT_FIND)),
            max_pdu=65536,
            timeout=IO_TIMEOUT,
        )
        self._pdvs: deque[tuple[int, bytes]] = deque()
        if FIND_CONTEXT not in self._accepted_contexts(self.accept):
            self.sock.close()
            raise QueryFailure("the server did not accept Study Root Query/Retrieve - FIND")

    @staticmethod
    def _accepted_contexts(body: bytes) -> set[int]:
        # A-ASSOCIATE-AC: 68 fixed bytes, then items; 0x21 = presentation context (PS3.8 9.3.3.2).
        accepted = set()
        offset = 68
        while offset + 4 <= len(body):
            item_type, _, length = struct.unpack_from(">BBH", body, offset)
            if item_type == 0x21 and body[offset + 6] == 0:
                accepted.add(body[offset + 4])
            offset += 4 + length
        return accepted

    def _pdv(self) -> tuple[int, bytes]:
        """The next PDV (message control header, fragment), reading a PDU when none is left."""
        while not self._pdvs:
            pdu_type, body = self._read_pdu()
            if pdu_type != 0x04:
                raise QueryFailure(f"expected P-DATA-TF, got PDU type 0x{pdu_type:02X}")
            offset = 0
            while offset < len(body):  # PS3.8 9.3.5: a PDU may hold several PDVs
                (length,) = struct.unpack_from(">I", body, offset)
                self._pdvs.append((body[offset + 5], body[offset + 6 : offset + 4 + length]))
                offset += 4 + length
        return self._pdvs.popleft()

    def _message(self) -> tuple[bytes, bytes | None]:
        """Read one whole response message: its command set and its data set (or None)."""
        command = bytearray()
        while True:
            header, fragment = self._pdv()
            if not header & 0x01:  # PS3.8 E.2: a data set fragment before any command
                raise QueryFailure("data set fragment where a command was expected")
            command += fragment
            if header & 0x02:
                break
        if _command_us(bytes(command), 0x00000800) == NO_DATA_SET:
            return bytes(command), None
        data = bytearray()
        while True:
            header, fragment = self._pdv()
            if header & 0x01:
                raise QueryFailure("command fragment where a data set was expected")
            data += fragment
            if header & 0x02:
                return bytes(command), bytes(data)

    def echo(self) -> None:
        """One C-ECHO, checked for Success."""
        self.message_id += 1
        self.sock.sendall(c_echo_rq(self.message_id))
        command, _ = self._message()
        status = _command_us(command, 0x00000900)
        if status != 0:
            raise QueryFailure(f"C-ECHO status {status}")

    def find(self, identifier: bytes) -> int:
        """One C-FIND; returns the number of matches (pending responses) once the final one arrived."""
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


# --------------------------------------------------------------------------- pynetdicom client


class PynetdicomClient:
    """The same requests through pynetdicom 3 (its reactor thread and queues included)."""

    name = "pynetdicom"

    def __init__(
        self, port: int, called: str, calling: str = "BENCHQUERY", model: str = STUDY_ROOT_FIND
    ) -> None:
        from pynetdicom import AE, _config

        _config.LOG_RESPONSE_IDENTIFIERS = False
        _config.LOG_REQUEST_IDENTIFIERS = False
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self._model = model  # the C-FIND information model (bench/worklist: Modality Worklist)
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = IO_TIMEOUT
        ae.add_requested_context(VERIFICATION, IMPLICIT_VR_LE)
        ae.add_requested_context(model, IMPLICIT_VR_LE)
        self.assoc: Any = ae.associate(LOOPBACK, port, ae_title=called)
        if not self.assoc.is_established:
            raise QueryFailure("pynetdicom: association not established")
        # pynetdicom leaves Nagle on and sends the command and the identifier as two PDUs: the
        # second waits for the server's delayed ACK (~40 ms) unless the server acknowledges at
        # once.  Measured without this: ~48 ms per C-FIND against Orthanc.  Turned off here so
        # that the column shows the query, not the stall.
        transport = self.assoc.dul.socket
        if transport is not None and transport.socket is not None:
            transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def echo(self) -> None:
        status = self.assoc.send_c_echo()
        if "Status" not in status or status.Status != 0:
            state = (
                "aborted" if self.assoc.is_aborted else "established" if self.assoc.is_established else "?"
            )
            raise QueryFailure(f"pynetdicom C-ECHO: no success status (association {state}): {status}")

    def find(self, identifier: Dataset) -> int:
        matches = 0
        for status, _ in self.assoc.send_c_find(identifier, self._model):
            code = int(getattr(status, "Status", -1))
            if code in PENDING:
                matches += 1
            elif code != 0:
                raise QueryFailure(f"pynetdicom C-FIND status {code:#06x} after {matches} matches")
        return matches

    def release(self) -> None:
        self.assoc.release()

    def abort(self) -> None:
        self.assoc.abort()


# --------------------------------------------------------------------------- timing


@dataclass
class Samples:
    """Latencies (seconds) of one query kind against one server with one client."""

    seconds: list[float]
    wrong: int = 0  # answers whose number of matches differs from the corpus
    matches: int = 0  # total matches returned (for the mean)


def measure(
    client: RawClient | PynetdicomClient,
    queries: Sequence[Query],
    warmup: int,
    samples: Samples,
    on_wrong: Callable[[Query, int], None] | None = None,
) -> None:
    """Send the queries one after the other on the open association; the first ``warmup`` are not kept."""
    raw = isinstance(client, RawClient)
    encoded: list[Any] = [encode_identifier(q.identifier) if raw else q.identifier for q in queries]
    for i, (query, request) in enumerate(zip(queries, encoded, strict=True)):
        t0 = time.perf_counter()
        got = client.find(request)
        elapsed = time.perf_counter() - t0
        if i < warmup:
            continue
        samples.seconds.append(elapsed)
        samples.matches += got
        if got != query.expected:
            samples.wrong += 1
            if on_wrong is not None:
                on_wrong(query, got)


def measure_echo(client: RawClient | PynetdicomClient, n: int, warmup: int, samples: Samples) -> None:
    """C-ECHO round trips on the same association: the floor under every query latency."""
    for i in range(n + warmup):
        t0 = time.perf_counter()
        client.echo()
        elapsed = time.perf_counter() - t0
        if i >= warmup:
            samples.seconds.append(elapsed)
