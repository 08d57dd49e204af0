"""Test helpers shared by tests/net, tests/interop and tests/cli: servers, peer processes, raw PDUs.

The fixtures that use these live in tests/conftest.py.  Nothing here sleeps: waits are
on futures, sockets, process exits or pipes, each bounded by ``WAIT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.config.settings import NetworkSettings, Settings
from pacsnode.data.uids import UNCOMPRESSED_TRANSFER_SYNTAXES, VERIFICATION_SOP_CLASS
from pacsnode.dimse.commands import Command, decode_command, encode_command
from pacsnode.dimse.messages import c_echo_rq, response_to
from pacsnode.dimse.status import Status
from pacsnode.net.client import Association, associate
from pacsnode.net.server import DicomServer
from pacsnode.services.base import (
    DataSetSink,
    DimseRequest,
    Responder,
    ServiceRegistration,
    ServiceRegistry,
    SOPClass,
)
from pacsnode.services.catalog import default_registry
from pacsnode.ul.negotiation import Negotiated, NegotiatedContext, ProposedContext, build_request
from pacsnode.ul.pdu import PDU, AssociateAC, PDataTF, decode_bytes, encode, encode_pdata

T = TypeVar("T")

HOST = "127.0.0.1"
AE_TITLE = "PACSNODE"
ROOT = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("PACSNODE_TESTDATA", str(ROOT.parent / "shared" / "testdata")))
BIN = Path(sys.executable).parent
PACSNODE = str(BIN / "pacsnode")

# Generous bounds for waiting on events; a healthy run is far below them.
WAIT = 10.0


def need_tool(name: str) -> str:
    """The path of a DCMTK tool, or skip the test."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (DCMTK) is not installed")
    return path


def need_testdata(*parts: str) -> Path:
    """A path under the shared test data, or skip the test."""
    path = TESTDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data not found: {path}")
    return path


# ---------------------------------------------------------------- servers


def build_server(
    *,
    network: NetworkSettings | None = None,
    registry: ServiceRegistry | None = None,
    ae_title: str = AE_TITLE,
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME,
) -> DicomServer:
    """A DicomServer with the default services (Verification) unless ``registry`` is given."""
    return DicomServer(
        ae_title=ae_title,
        registry=registry if registry is not None else default_registry(Settings()),
        network=network if network is not None else NetworkSettings(),
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=implementation_version_name,
    )


async def wait_idle(server: DicomServer, timeout: float = WAIT) -> None:
    """Wait until the server has no connection left (on each connection's ``closed`` future)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while server.connections:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"{len(server.connections)} connection(s) still open after {timeout} s")
        # connection_lost resolves ``closed`` and drops the connection in one callback,
        # so once these futures are done the set no longer holds them.
        await asyncio.wait([c.closed for c in server.connections], timeout=remaining)


def assert_no_leak(server: DicomServer) -> None:
    """The server's bookkeeping after close: no association counted, no connection object kept."""
    assert server.active == 0, f"{server.active} association(s) still counted as active"
    assert not server.connections, f"{len(server.connections)} connection(s) left: {server.connections}"


@dataclass
class RunningServer:
    """A server started in the test's own event loop."""

    server: DicomServer
    host: str = HOST
    ae_title: str = AE_TITLE
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.port = self.server.port  # remembered: the server forgets it once closed

    async def wait_idle(self, timeout: float = WAIT) -> None:
        await wait_idle(self.server, timeout)


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop (what `pacsnode serve` runs on), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass
class ThreadedServer:
    """A server running on its own event loop in a background thread."""

    server: DicomServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    host: str = HOST
    ae_title: str = AE_TITLE
    port: int = 0
    _closed: bool = field(default=False, repr=False)

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = WAIT) -> T:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)

    def wait_idle(self, timeout: float = WAIT) -> None:
        """Block until the server has no connection left."""
        self.call(lambda: wait_idle(self.server, timeout), timeout + 1)

    def stats(self) -> tuple[int, int]:
        """(active associations, open connections), read on the server's loop."""

        async def read() -> tuple[int, int]:
            return self.server.active, len(self.server.connections)

        return self.call(read)

    def close(self) -> None:
        """Close the server (draining for up to 2 s), check for leaks, stop the loop."""
        if self._closed:
            return
        self._closed = True
        try:
            self.call(lambda: self.server.close(timeout=2.0))

            async def check() -> None:
                assert_no_leak(self.server)

            self.call(check)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            if not self.thread.is_alive():
                self.loop.close()


def start_threaded_server(
    *,
    network: NetworkSettings | None = None,
    registry: ServiceRegistry | None = None,
    ae_title: str = AE_TITLE,
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME,
) -> ThreadedServer:
    """Start a server on a fresh event loop in a daemon thread."""
    loop = new_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name="pacsnode-test-server", daemon=True)
    thread.start()
    if not ready.wait(WAIT):
        raise AssertionError("server event loop did not start")

    async def create() -> DicomServer:
        server = build_server(
            network=network,
            registry=registry,
            ae_title=ae_title,
            implementation_version_name=implementation_version_name,
        )
        await server.start(HOST, 0)
        return server

    server = asyncio.run_coroutine_threadsafe(create(), loop).result(WAIT)
    return ThreadedServer(server, loop, thread, HOST, ae_title, server.port)


# ---------------------------------------------------------------- a C-STORE SCP for tests


@dataclass
class Received:
    """One C-STORE as the test storage service saw it."""

    command: Command
    context: NegotiatedContext
    association: Negotiated
    dataset: bytes


class MemoryStorageSCP:
    """A Storage SCP (PS3.4 Annex B) that keeps what it receives in a list and answers Success."""

    def __init__(self) -> None:
        self.received: list[Received] = []

    def handle(self, request: DimseRequest, responder: Responder) -> None:
        assert request.dataset is not None
        self.received.append(Received(request.command, request.context, request.association, request.dataset))
        responder.send(response_to(request.command, Status.SUCCESS))

    def sink_for(
        self, command: Command, context: NegotiatedContext, association: object
    ) -> DataSetSink | None:
        return None  # in memory


def storage_sop_classes() -> list[SOPClass]:
    """Every SOP class pydicom's UID dictionary names '... Storage' (or '... Storage - For Processing')."""
    from pydicom.uid import UID_dictionary

    storage = re.compile(r" Storage( - For (Presentation|Processing))?$")
    return [
        SOPClass(uid, name)
        for uid, (name, kind, *_rest) in UID_dictionary.items()
        if kind == "SOP Class" and storage.search(name)
    ]


def storage_registration(
    handler: MemoryStorageSCP,
    sop_classes: Sequence[SOPClass],
    transfer_syntaxes: Sequence[str] = UNCOMPRESSED_TRANSFER_SYNTAXES,
    *,
    name: str = "Test storage",
    requestor_may_be_scp: bool = False,
) -> ServiceRegistration:
    """A test-only Storage service registration."""
    return ServiceRegistration(
        name=name,
        standard="PS3.4 Annex B",
        sop_classes=tuple(sop_classes),
        transfer_syntaxes=tuple(transfer_syntaxes),
        handler=handler,
        requestor_may_be_scp=requestor_may_be_scp,
    )


# ---------------------------------------------------------------- our own client, as a bystander


@contextlib.asynccontextmanager
async def bystander(host: str, port: int, ae_title: str = AE_TITLE) -> AsyncIterator[Association]:
    """A well-behaved association that must get C-ECHO Success before and after the block."""
    async with associate(host, port, called_ae_title=ae_title, calling_ae_title="BYSTANDER") as assoc:
        assert (await assoc.echo()).ok
        yield assoc
        assert (await assoc.echo()).ok, "the well-behaved association stopped being served"


# ---------------------------------------------------------------- raw PDUs on a socket


async def read_pdu(reader: asyncio.StreamReader, timeout: float = WAIT) -> PDU:
    """Read exactly one PDU and decode it."""
    header = await asyncio.wait_for(reader.readexactly(6), timeout)
    body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header[2:6], "big")), timeout)
    return decode_bytes(header + body)


def split_pdus(data: bytes) -> list[PDU]:
    """Decode a byte stream made of whole PDUs."""
    pdus: list[PDU] = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 6, f"trailing {len(data) - pos} byte(s) are not a PDU"
        end = pos + 6 + int.from_bytes(data[pos + 2 : pos + 6], "big")
        assert end <= len(data), "truncated PDU"
        pdus.append(decode_bytes(data[pos:end]))
        pos = end
    return pdus


async def read_until_eof(reader: asyncio.StreamReader, timeout: float = WAIT) -> list[PDU]:
    """Everything the server sends until it closes the connection, as PDUs."""
    data = await asyncio.wait_for(reader.read(), timeout)
    return split_pdus(data)


def echo_pdata(message_id: int = 1, context_id: int = 1) -> bytes:
    """A C-ECHO-RQ in one P-DATA-TF PDU."""
    return encode_pdata(context_id, True, True, encode_command(c_echo_rq(message_id)))


@dataclass
class RawAssociation:
    """An association driven byte by byte by the test."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    accept: AssociateAC

    async def echo(self, message_id: int = 1) -> Command:
        self.writer.write(echo_pdata(message_id))
        pdu = await read_pdu(self.reader)
        assert isinstance(pdu, PDataTF), pdu
        (pdv,) = pdu.pdvs
        assert pdv.is_command and pdv.is_last
        return decode_command(pdv.data)

    def close(self) -> None:
        self.writer.close()


async def raw_connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(host, port), WAIT)


async def raw_associate(
    host: str,
    port: int,
    *,
    called: str = AE_TITLE,
    calling: str = "RAWPEER",
    max_pdu_length: int = 16384,
    contexts: Sequence[ProposedContext] | None = None,
) -> RawAssociation:
    """Open a TCP connection and negotiate Verification with hand-sent PDUs."""
    reader, writer = await raw_connect(host, port)
    rq = build_request(
        called,
        calling,
        contexts or [ProposedContext(VERIFICATION_SOP_CLASS, UNCOMPRESSED_TRANSFER_SYNTAXES)],
        implementation_class_uid="1.2.3.4",
        max_pdu_length=max_pdu_length,
    )
    writer.write(encode(rq))
    ac = await read_pdu(reader)
    assert isinstance(ac, AssociateAC), ac
    return RawAssociation(reader, writer, ac)


# ---------------------------------------------------------------- peers in subprocesses


def free_port() -> int:
    """A TCP port that was free a moment ago (for peers that cannot bind port 0 themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = WAIT) -> None:
    """Wait until a peer we started accepts TCP connections on 127.0.0.1:port.

    DCMTK's storescp and pynetdicom's echoscp print no "listening" line, so we probe.
    Between probes we wait on the process itself (``proc.wait`` with a short timeout),
    which also notices at once if it exited instead of listening.
    """
    for _ in range(int(timeout / 0.05)):
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1.0):
            return
        try:
            code = proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        out = proc.stdout.read() if proc.stdout else ""
        raise AssertionError(f"peer exited with code {code} before listening on {port}:\n{out}")
    raise AssertionError(f"nothing listening on {HOST}:{port} after {timeout} s")


@contextlib.contextmanager
def running(args: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    """Start a peer process (stdout+stderr piped); on exit terminate it, by its own handle."""
    proc = subprocess.Popen(
        list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", **kwargs
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(WAIT)
        if proc.stdout is not None:
            proc.stdout.close()


def run_tool(args: Sequence[str], timeout: float = 60.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion; stdout and stderr merged into ``.stdout``."""
    return subprocess.run(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
        **kwargs,
    )
