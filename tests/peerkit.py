"""Test helpers shared by tests/net, tests/interop and tests/cli: servers, peer processes, raw PDUs.

The fixtures that use these live in tests/conftest.py.  Nothing here sleeps: waits are
on futures, sockets, process exits or pipes, each bounded by ``WAIT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.archive.folder_lock import LOCK_FILE
from pacsnode.archive.ownership import FOLDER_ID_FILE
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


# ---------------------------------------------------------------- archive nodes (storage tests)
#
# Used by tests/archive, tests/interop/test_storage_scp.py and tests/e2e through the
# ``index_url`` / ``make_storage_node`` / ``storage_node`` fixtures of tests/conftest.py.

PG_ADMIN_URL = os.environ.get("PACSNODE_TEST_PG_URL", "postgresql://postgres@127.0.0.1/postgres")
OBJECT_NAME = re.compile(r"objects/\d{8}/\d{2}/[0-9a-f]{32}\.dcm")


def _pg_admin_connect() -> Any:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(PG_ADMIN_URL)
    try:
        return psycopg.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            user=url.username or "postgres",
            password=url.password,
            dbname=url.database or "postgres",
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {url.render_as_string(hide_password=True)}: {exc}")


def pg_database_url(name: str) -> str:
    """The URL of database ``name`` on the test PostgreSQL server."""
    from sqlalchemy.engine import make_url

    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def create_pg_database() -> tuple[str, str]:
    """CREATE DATABASE pacsnode_t_<random>; returns (name, url). Skips when PostgreSQL is down."""
    name = f"pacsnode_t_{uuid.uuid4().hex[:12]}"
    with _pg_admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, pg_database_url(name)


def drop_pg_database(name: str) -> None:
    """DROP DATABASE ... WITH (FORCE): also ends sessions a test left open (PostgreSQL 13+)."""
    with _pg_admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the block, dropped afterwards."""
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


def storage_settings(
    data: Path,
    index_url: str = "",
    *,
    aet: str = AE_TITLE,
    network: dict[str, Any] | None = None,
    peers: dict[str, tuple[str, int] | dict[str, Any]] | None = None,
    query: dict[str, Any] | None = None,
    web: dict[str, Any] | None = None,
    mpps: dict[str, Any] | None = None,
    ian: dict[str, Any] | None = None,
    commitment: dict[str, Any] | None = None,
    node: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    **storage: Any,
) -> Settings:
    """Node settings for tests: port 0, this data folder and index, short shutdown.

    ``peers`` are the node's remote AEs (C-MOVE destinations): {AE title: (host, port)};
    ``query`` is the [query] table (case_insensitive_names, max_results, move_timeout).
    A peer may also be a whole [peers.X] table ({"host": ..., "allow": [...], "tls": ...});
    ``node`` adds [node] keys (accept_unknown_peers), ``auth`` is the [auth] table.
    """
    from pacsnode.config.settings import load_settings

    overrides: dict[str, dict[str, Any]] = {
        "node": {"data": data, "dicom_port": 0, "http_port": 0, "aet": aet, **(node or {})},
        "network": {"shutdown_timeout": 2.0, **(network or {})},
        "storage": {"index_url": index_url, **storage},
    }
    if peers:
        overrides["peers"] = {
            ae: dict(peer) if isinstance(peer, dict) else {"host": peer[0], "port": peer[1]}
            for ae, peer in peers.items()
        }
    if query:
        overrides["query"] = dict(query)
    if web:
        overrides["web"] = dict(web)
    if mpps:
        overrides["mpps"] = dict(mpps)
    if ian:
        overrides["ian"] = dict(ian)
    if commitment:
        overrides["commitment"] = dict(commitment)
    if auth:
        overrides["auth"] = dict(auth)
    return load_settings(None, overrides, environ={})


@dataclass
class ThreadedNode:
    """A started pacsnode Node (archive + DICOM server) on its own event loop in a thread."""

    node: Any  # pacsnode.net.node.Node
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    host: str
    port: int
    ae_title: str
    _index: Any = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def settings(self) -> Settings:
        return self.node.settings  # type: ignore[no-any-return]

    @property
    def data(self) -> Path:
        return Path(self.settings.node.data)

    @property
    def http_url(self) -> str:
        """The node's HTTP root (started with ``web=True``), e.g. http://127.0.0.1:PORT."""
        port = next(c.port for c in self.node.companions if hasattr(c, "port"))
        return f"http://{self.host}:{port}"

    @property
    def dicomweb_url(self) -> str:
        """The node's DICOMweb root (PS3.18 service root)."""
        return self.http_url + self.settings.web.base_path

    @property
    def index(self) -> Any:
        """An ArchiveIndex of the node's database, for the test to read (its own engine)."""
        if self._index is None:
            from pacsnode.archive.index import ArchiveIndex

            self._index = ArchiveIndex(self.settings.index_url())
        return self._index

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)

    def wait_idle(self, timeout: float = WAIT) -> None:
        """Block until the node's server has no connection left (every sink closed or discarded)."""
        self.call(lambda: wait_idle(self.node.server, timeout), timeout + 1)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.call(self.node.close, WAIT + 5)

            async def check() -> None:
                assert_no_leak(self.node.server)

            self.call(check)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            if not self.thread.is_alive():
                self.loop.close()
            if self._index is not None:
                self._index.dispose()


def start_threaded_node(settings: Settings, *, http: bool = False, audit: Any = None) -> ThreadedNode:
    """Start a Node with these settings on a fresh (uv)loop in a daemon thread; ``http``: with its
    HTTP server (DICOMweb) on a port of its own; ``audit``: the AuditSink its events go to."""
    from pacsnode.net.node import Node

    loop = new_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name="pacsnode-test-node", daemon=True)
    thread.start()
    if not ready.wait(WAIT):
        raise AssertionError("node event loop did not start")

    async def create() -> Any:
        node = Node(settings, audit=audit)
        if http:
            from pacsnode.web.server import HttpServer

            server = HttpServer(settings, node.archive, audit=node.audit, authenticator=node.authenticator)
            node.companions.append(server)
        await node.start()
        return node

    try:
        node = asyncio.run_coroutine_threadsafe(create(), loop).result(WAIT + 20)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        raise
    return ThreadedNode(node, loop, thread, HOST, node.server.port, settings.node.aet)


def data_files(data: Path) -> list[str]:
    """Every file under a data folder, relative, except the SQLite index files and the
    pre-made object files (empty files a running node keeps ready, see `premade_files`).

    One walk, each file judged as it is met: the node's pool may add empty files meanwhile."""
    out = []
    for p in data.rglob("*"):
        if not p.is_file() or p.name.startswith("index.sqlite") or p.name in (LOCK_FILE, FOLDER_ID_FILE):
            continue
        rel = p.relative_to(data).as_posix()
        if rel.startswith("objects/") and _size_or_none(p) in (0, None):
            continue  # pre-made (empty), or gone since the walk met it
        out.append(rel)
    return sorted(out)


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def premade_files(data: Path) -> list[str]:
    """The empty object files of a data folder: the pool of pre-made names of a running node
    (FileStore.start_pool), removed when it stops and swept at start-up after a crash."""
    objects = data / "objects"
    if not objects.exists():
        return []
    return sorted(p.relative_to(data).as_posix() for p in objects.rglob("*.dcm") if _size_or_none(p) == 0)


def assert_consistent(data: Path, index: Any) -> list[str]:
    """The durability invariants at rest: no row without its file, no spool leftover,
    no object file without its row, and every name server-generated. Returns the indexed paths."""
    paths = index.all_paths()
    missing = [p for p in paths if not (data / p).is_file()]
    assert not missing, f"index rows without their file: {missing}"
    files = data_files(data)
    spool = [f for f in files if f.startswith("spool/")]
    assert not spool, f"spool not empty: {spool}"
    bad_names = [f for f in files if not OBJECT_NAME.fullmatch(f)]
    assert not bad_names, f"files not named by the server: {bad_names}"
    orphans = sorted(set(files) - set(paths))
    assert not orphans, f"object files no index row references: {orphans}"
    return list(paths)


def dataset_bytes_of_stored(path: Path) -> bytes:
    """The data set bytes of a stored Part 10 file (everything after its File Meta Information)."""
    from pacsnode.data.part10 import read_layout

    with path.open("rb") as fp:
        read_layout(fp)
        return fp.read()


def part10_dataset(path: Path) -> tuple[str, str, str, bytes]:
    """(SOP class, SOP instance, transfer syntax, data set bytes) of a Part 10 file, as on disk."""
    from pacsnode.data.part10 import read_layout

    with path.open("rb") as fp:
        layout = read_layout(fp)
        return layout.sop_class_uid, layout.sop_instance_uid, layout.transfer_syntax_uid, fp.read()


# ---------------------------------------------------------------- C-STORE senders


@dataclass(frozen=True)
class StoreStatus:
    """What a C-STORE-RSP said (status None: no response, the association failed)."""

    status: int | None
    comment: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0


def pynetdicom_associate(ae: Any, host: str, port: int, **kwargs: Any) -> tuple[Any, list[Any]]:
    """``ae.associate(host, port, **kwargs)``, with the PDUs pynetdicom received as it decoded them.

    Why: when the acceptor answers A-ASSOCIATE-RJ and the connection closes at once,
    pynetdicom's calling thread may look at the socket only after its DUL thread has read
    the answer and closed it; it then aborts without reading the answer (neither
    ``is_rejected`` nor ``is_aborted`` set: seen twice in CI under load). The PDU events
    come from the DUL thread itself, before it closes, so an A-ASSOCIATE-RJ is always there.
    """
    from pynetdicom import evt

    received: list[Any] = []
    handlers = [*kwargs.pop("evt_handlers", []), (evt.EVT_PDU_RECV, lambda event: received.append(event.pdu))]
    return ae.associate(host, port, evt_handlers=handlers, **kwargs), received


def rejection_of(assoc: Any, received: list[Any]) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ pynetdicom received (``pynetdicom_associate``)."""
    from pynetdicom.pdu import A_ASSOCIATE_RJ

    assert not assoc.is_established
    answers = [pdu for pdu in received if isinstance(pdu, A_ASSOCIATE_RJ)]
    names = [type(pdu).__name__ for pdu in received]
    assert answers, f"no A-ASSOCIATE-RJ; received {names}, aborted={assoc.is_aborted}"
    return int(answers[0].result), int(answers[0].source), int(answers[0].reason_diagnostic)


def pynetdicom_store(
    host: str,
    port: int,
    datasets: Sequence[Any],
    *,
    called: str = AE_TITLE,
    calling: str = "PYNETDICOM",
    dimse_timeout: float = 30.0,
) -> list[StoreStatus]:
    """Send pydicom Datasets (each with file_meta.TransferSyntaxUID) on one pynetdicom association."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.dimse_timeout = dimse_timeout
    ae.acse_timeout = WAIT
    ae.network_timeout = WAIT
    pairs: list[tuple[str, str]] = []
    for ds in datasets:
        pair = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        if pair not in pairs:
            pairs.append(pair)
    for sop_class, ts in pairs:
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate(host, port, ae_title=called)
    assert assoc.is_established, "pynetdicom could not associate"
    out: list[StoreStatus] = []
    try:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            status = rsp.get("Status") if rsp is not None else None
            out.append(StoreStatus(status, str(rsp.get("ErrorComment", "")) if rsp else ""))
    finally:
        if assoc.is_established:
            assoc.release()
    return out


async def raw_store_async(
    host: str,
    port: int,
    items: Sequence[tuple[str, str, str, bytes]],
    *,
    called: str = AE_TITLE,
    calling: str = "RAWSTORE",
    command_uids: Sequence[str | None] | None = None,
    dimse_timeout: float = 30.0,
) -> list[Command]:
    """C-STORE pre-encoded data sets on one association of our own client, byte for byte.

    ``items`` are (SOP class, SOP instance, transfer syntax, data set bytes); ``command_uids``
    may give another Affected SOP Instance UID per item (to send a command that lies).
    """
    from pacsnode.dimse.messages import c_store_rq

    pairs: dict[tuple[str, str], None] = {}
    for sop_class, _, ts, _ in items:
        pairs[(sop_class, ts)] = None
    contexts = [ProposedContext(sop_class, (ts,)) for sop_class, ts in pairs]
    contexts.append(ProposedContext(VERIFICATION_SOP_CLASS, UNCOMPRESSED_TRANSFER_SYNTAXES))
    out: list[Command] = []
    async with associate(
        host,
        port,
        called_ae_title=called,
        calling_ae_title=calling,
        contexts=contexts,
        dimse_timeout=dimse_timeout,
    ) as assoc:
        for i, (sop_class, sop_instance, ts, data) in enumerate(items):
            ctx = assoc.negotiated.context_for(sop_class, ts)
            assert ctx is not None, f"{sop_class} / {ts} not accepted"
            lie = command_uids[i] if command_uids is not None else None
            uid = lie if lie is not None else sop_instance
            rq = c_store_rq(assoc.next_message_id(), sop_class, uid)
            final: Command | None = None
            async for rsp, _ in assoc.request(ctx.context_id, rq, data):
                final = rsp
            assert final is not None
            out.append(final)
    return out


def raw_store(host: str, port: int, items: Sequence[tuple[str, str, str, bytes]], **kw: Any) -> list[Command]:
    """`raw_store_async` from blocking code (its own event loop in this thread)."""
    return asyncio.run(raw_store_async(host, port, items, **kw))


def encode_dataset(ds: Any, transfer_syntax: str) -> bytes:
    """The data set encoded in a transfer syntax, as pynetdicom puts it on the wire."""
    from pydicom.uid import UID
    from pynetdicom.dsutils import encode

    ts = UID(transfer_syntax)
    data = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    assert data is not None
    return bytes(data)


def received_sink(archive: Any, ds: Any) -> tuple[Any, bytes]:
    """A spool sink of the archive holding ``ds`` as a C-STORE would have delivered it, and its bytes."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    data = encode_dataset(ds, ts)
    sink = archive.open_sink(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, "MODALITY")
    sink.write(data)
    sink.finish()
    return sink, data


def index_rows(index: Any) -> dict[str, list[dict[str, Any]]]:
    """Every row of the index tables, as dicts (for assertions)."""
    from sqlalchemy import select

    from pacsnode.archive.schema import changes, instances, patients, series, studies

    out: dict[str, list[dict[str, Any]]] = {}
    with index.engine.connect() as conn:
        for table, order in (
            (patients, patients.c.id),
            (studies, studies.c.id),
            (series, series.c.id),
            (instances, instances.c.id),
            (changes, changes.c.seq),
        ):
            out[table.name] = [dict(r._mapping) for r in conn.execute(select(table).order_by(order))]
    return out


def assert_computed_attributes(index: Any) -> dict[str, list[dict[str, Any]]]:
    """The computed attributes (PS3.4 C.6.1.1.3, C.6.2.1.2) agree with a recount from the rows."""
    rows = index_rows(index)
    per_series: dict[int, list[dict[str, Any]]] = {s["id"]: [] for s in rows["series"]}
    for inst in rows["instances"]:
        per_series[inst["series_fk"]].append(inst)
    problems = []
    for s in rows["series"]:
        n, stored = len(per_series[s["id"]]), s["number_of_series_related_instances"]
        if stored != n:
            problems.append(f"series {s['series_instance_uid']}: {stored} instances, recount {n}")
    for st in rows["studies"]:
        mine = [s for s in rows["series"] if s["study_fk"] == st["id"]]
        filled = [s for s in mine if per_series[s["id"]]]
        insts = [i for s in mine for i in per_series[s["id"]]]
        expected = {
            "number_of_study_related_series": len(filled),
            "number_of_study_related_instances": len(insts),
            "modalities_in_study": "\\".join(sorted({s["modality"] for s in filled if s["modality"]})),
            "sop_classes_in_study": "\\".join(sorted({i["sop_class_uid"] for i in insts})),
        }
        for key, value in expected.items():
            if st[key] != value:
                problems.append(f"study {st['study_instance_uid']}: {key} = {st[key]!r}, recount {value!r}")
    assert not problems, "\n".join(problems)
    return rows


# ---------------------------------------------------------------- generated instances

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def new_uid() -> str:
    """A fresh UUID-derived UID (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid4().int}"


def make_instance(
    *,
    study: str | None = None,
    series: str | None = None,
    sop_instance: str | None = None,
    sop_class: str = CT_IMAGE_STORAGE,
    modality: str = "CT",
    patient_id: str = "PAT1",
    pixels: bytes | None = None,
    size: int = 16,
    **attributes: Any,
) -> Any:
    """A small, valid image instance (Explicit VR LE) with its own or the given UIDs."""
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance or new_uid()
    ds.StudyInstanceUID = study or new_uid()
    ds.SeriesInstanceUID = series or new_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.Modality = modality
    ds.StudyDate = "20240102"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels if pixels is not None else os.urandom(size * size)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def item_of(ds: Any) -> tuple[str, str, str, bytes]:
    """A generated instance as a `raw_store` item (Explicit VR LE bytes)."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, encode_dataset(ds, ts)


def object_files(data: Path) -> list[str]:
    """The archived object files of a data folder (relative paths)."""
    return [f for f in data_files(data) if f.startswith("objects/")]


def echo_ok(host: str, port: int, ae_title: str = AE_TITLE) -> bool:
    """One C-ECHO on a fresh association of our own client: did it succeed?"""
    from pacsnode.net.blocking import connect

    with connect(host, port, called_ae_title=ae_title, calling_ae_title="ECHOSCU", dimse_timeout=WAIT) as a:
        return bool(a.echo().ok)


class TcpProxy:
    """A loopback TCP forwarder that the test can cut (closed port) and bring back on the same port.

    Stands between a node and its PostgreSQL index: ``stop()`` closes the listening socket and
    every forwarded connection, so the database looks gone; ``start()`` listens again.
    ``freeze()`` keeps every connection open but forwards nothing: a database that stops
    answering (a stalled server or middlebox); ``thaw()`` ends that.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.frozen = threading.Event()

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), name="tcp-proxy", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stop() shut the listener down
            try:
                upstream = socket.create_connection(self.target, timeout=WAIT)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                if not self.frozen.is_set():
                    dst.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        """Close the port and cut every forwarded connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(WAIT)
        self._threads = [t for t in self._threads if t.is_alive()]


# ---------------------------------------------------------------- `pacsnode serve` as a process

LISTENING = re.compile(r"pacsnode (\S+) listening for DICOM on ([0-9.]+):(\d+)")


class ServeProcess:
    """`pacsnode serve` on port 0 in a subprocess; a thread drains its log and spots 'listening'."""

    def __init__(self, data: Path, *, index_url: str = "", config: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
        env["COLUMNS"] = "250"
        env["PACSNODE_HTTP_PORT"] = "0"  # never the default 8042, which another server may hold
        if index_url:
            env["PACSNODE_INDEX_URL"] = index_url
        args = [PACSNODE, "serve", "--data", str(data), "--dicom-port", "0"]
        if config is not None:
            args += ["--config", str(config)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.lines: list[str] = []
        self.port = 0
        self.web_url = ""
        self._ready = threading.Event()
        self._web = threading.Event()
        self._reader = threading.Thread(target=self._read, name="serve-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            m = LISTENING.search(line)
            if m and not self.port:
                self.port = int(m.group(3))
                self._ready.set()
            web = re.search(r"serving DICOMweb on (http://\S+)", line)
            if web and not self.web_url:
                self.web_url = web.group(1)
                self._web.set()
        self._ready.set()  # EOF: the process is gone; wait_ready reports it
        self._web.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_dicomweb(self, timeout: float = WAIT + 20) -> str:
        """Block until the server logs its DICOMweb root; returns it."""
        if not self._web.wait(timeout) or not self.web_url:
            exit_code = self.proc.poll()
            raise AssertionError(f"`pacsnode serve` serves no DICOMweb (exit {exit_code}):\n{self.output}")
        return self.web_url

    def wait_ready(self, timeout: float = WAIT + 20) -> int:
        """Block until the 'listening' log line; returns the port."""
        if not self._ready.wait(timeout) or not self.port:
            raise AssertionError(f"`pacsnode serve` not listening (exit {self.proc.poll()}):\n{self.output}")
        return self.port

    def kill9(self) -> None:
        """SIGKILL, by the process's own id (no clean-up in the server can run)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
        self.proc.wait(WAIT)
        self._reader.join(WAIT)

    def stop(self) -> int:
        """SIGTERM (graceful) and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(WAIT + 15)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise
        self._reader.join(WAIT)
        return code

    def memory_kb(self, field_name: str = "VmHWM") -> int:
        """A memory figure of /proc/<pid>/status (VmHWM: peak resident set size), in kB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
        assert m, status
        return int(m.group(1))


# ---------------------------------------------------------------- DCMTK and Orthanc as Query/Retrieve peers


def free_port_all_interfaces() -> int:
    """A port free on every interface: DCMTK's SCPs and Orthanc cannot bind one address (PEERS.md)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


# A move destination as a Q/R SCP's configuration names it: (AE title, host, port).
Destination = tuple[str, str, int]


@dataclass(frozen=True)
class PeerSCP:
    """A DICOM peer process we started: where it listens, its AE title, and its folder."""

    port: int
    ae_title: str
    folder: Path
    proc: subprocess.Popen[str]
    http_port: int = 0


@contextlib.contextmanager
def orthanc_peer(
    folder: Path,
    *,
    ae_title: str = "ORTHANC",
    modalities: dict[str, Destination] | None = None,
    **settings: Any,
) -> Iterator[PeerSCP]:
    """Orthanc (PEERS.md) on free ports, storing under `folder`; `modalities` are its C-MOVE destinations."""
    import json

    exe = need_tool("/usr/sbin/Orthanc")
    port = free_port_all_interfaces()
    http_port = free_port_all_interfaces()
    config = {
        "Name": "pacsnode-test",
        "StorageDirectory": str(folder / "orthanc-storage"),
        "IndexDirectory": str(folder / "orthanc-index"),
        "Plugins": [],
        "DicomAet": ae_title,
        "DicomPort": port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "OverwriteInstances": True,
        "StorageCompression": False,
        "DicomModalities": {name: list(dest) for name, dest in (modalities or {}).items()},
        **settings,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config))
    with running([exe, str(path)]) as proc:
        wait_for_port(port, proc, timeout=30)
        yield PeerSCP(port, ae_title, folder / "orthanc-storage", proc, http_port)


@contextlib.contextmanager
def dcmqrscp_peer(
    folder: Path,
    *,
    ae_title: str = "QRSCP",
    destinations: dict[str, Destination] | None = None,
    args: Sequence[str] = (),
) -> Iterator[PeerSCP]:
    """DCMTK's dcmqrscp (PEERS.md) on a free port, its database under `folder`.

    `destinations` go into its HostTable: the AE titles it may C-MOVE to.  Load it
    with `storescu` (it accepts any calling AE title, read and write).
    """
    exe = need_tool("dcmqrscp")
    port = free_port_all_interfaces()
    db = folder / "qrdb"
    db.mkdir(parents=True, exist_ok=True)
    hosts = "\n".join(f"{name} = ({ae}, {host}, {p})" for name, (ae, host, p) in (destinations or {}).items())
    config = folder / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        f"HostTable BEGIN\n{hosts}\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\n{ae_title} {db} RW (200, 1024mb) ANY\nAETable END\n"
    )
    with running([exe, "-c", str(config), *args]) as proc:
        wait_for_port(port, proc)
        yield PeerSCP(port, ae_title, db, proc)


@contextlib.contextmanager
def storescp_peer(folder: Path, *, ae_title: str = "STORESCP", args: Sequence[str] = ()) -> Iterator[PeerSCP]:
    """DCMTK's storescp on a free port, writing every instance it receives into `folder`."""
    need_tool("storescp")
    port = free_port_all_interfaces()
    folder.mkdir(parents=True, exist_ok=True)
    with running(["storescp", "-aet", ae_title, *args, "-od", str(folder), str(port)]) as proc:
        wait_for_port(port, proc)
        yield PeerSCP(port, ae_title, folder, proc)


# ---------------------------------------------------------------- Query/Retrieve SCP tests
#
# Used by tests/interop/test_qr_scp.py and tests/services/test_qr_bad_input.py: a node loaded
# with test data (the expected answers are computed from the same files' headers), and the
# DCMTK findscu run with its responses extracted to files (-X) for pydicom to read.

UNCOMPRESSED_TS = frozenset(("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"))


@dataclass(frozen=True)
class CorpusFile:
    """A test data file and its header (pydicom, no pixel data), to compute expected answers from."""

    path: Path
    transfer_syntax: str
    header: Any  # pydicom Dataset

    def get(self, keyword: str, default: str = "") -> str:
        """An attribute as text ('' when absent or empty); multi-valued ones joined by backslashes."""
        value = self.header.get(keyword)
        if value is None or value == "":
            return default
        if isinstance(value, str | bytes):
            return str(value)
        try:
            return "\\".join(str(v) for v in value)
        except TypeError:
            return str(value)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.header.SOPInstanceUID)


def corpus_files(*folders: str) -> list[CorpusFile]:
    """The DICOM files under these folders of the shared test data, one per SOP Instance UID
    (the first in path order: the corpus repeats UIDs on purpose), without DICOMDIRs and
    without files that lack the SOP Class / Instance UIDs a C-STORE needs."""
    import warnings

    from pydicom import dcmread

    out: list[CorpusFile] = []
    seen: set[str] = set()
    for folder in folders:
        for path in sorted(need_testdata(folder).rglob("*")):
            if not path.is_file() or path.name.startswith("DICOMDIR") or path.suffix in (".png", ".txt"):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    ds = dcmread(path, stop_before_pixels=True, force=True)
                except Exception:
                    continue
            uid = ds.get("SOPInstanceUID")
            ts = ds.get("file_meta", {}).get("TransferSyntaxUID")
            if not uid or not ds.get("SOPClassUID") or ts is None or uid in seen:
                continue
            seen.add(str(uid))
            out.append(CorpusFile(path, str(ts), ds))
    return out


def store_files(
    host: str, port: int, files: Sequence[CorpusFile], *, called: str = AE_TITLE, parallel: int = 4
) -> None:
    """C-STORE files to an SCP: uncompressed ones with DCMTK storescu (``parallel`` associations
    at once, each proposing only the SOP class / transfer syntax pairs its files need: an SCP that
    fsyncs each instance, like Orthanc, takes them ~4x faster so), compressed ones -- which
    storescu 3.6.7 cannot send once the SCP accepts an uncompressed context too -- with
    pynetdicom. Asserts every store succeeded."""
    import warnings

    from pydicom import dcmread

    need_tool("storescu")
    plain = [f for f in files if f.transfer_syntax in UNCOMPRESSED_TS]
    other = [f for f in files if f.transfer_syntax not in UNCOMPRESSED_TS]
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", called, "-R", "-nh", host, str(port), *(str(f.path) for f in chunk)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        for chunk in (plain[i :: max(1, parallel)] for i in range(max(1, parallel)))
        if chunk
    ]
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            errors = [line for line in out.splitlines() if line.startswith(("E:", "F:"))]
            assert proc.returncode == 0 and not errors, out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)
    if other:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            datasets = [dcmread(f.path, force=True) for f in other]
        statuses = pynetdicom_store(host, port, datasets, called=called)
        assert all(s.ok for s in statuses), [(f.path.name, s) for f, s in zip(other, statuses, strict=True)]


@dataclass
class FindResult:
    """What a findscu run got: the final status as findscu words it ('Success', 'Cancel',
    'Error: DataSetDoesNotMatchSOPClass', ...; None: none came), the identifiers, the log."""

    status: str | None
    responses: list[Any]  # pydicom Datasets, in the order received
    output: str

    def values(self, keyword: str) -> set[str]:
        """The values of one key over all responses."""
        return {str(r.get(keyword, "")) for r in self.responses}


FINAL_FIND_RESPONSE = re.compile(r"Received Final Find Response \((.*)\)")


def dcmtk_find(
    host: str,
    port: int,
    keys: Sequence[str | bytes],
    *,
    model: str = "-S",
    called: str = AE_TITLE,
    args: Sequence[str] = (),
) -> FindResult:
    """DCMTK findscu with ``-k`` keys (bytes pass non-ASCII values through untouched); the
    responses are extracted to files (-X) and read back with pydicom."""
    import tempfile
    import warnings

    from pydicom import dcmread

    need_tool("findscu")
    with tempfile.TemporaryDirectory(prefix="findscu-") as out:
        argv: list[str | bytes] = ["findscu", "-v", "-aec", called, model, "-X", "-od", out, *args]
        for key in keys:
            argv += ["-k", key]
        argv += [host, str(port)]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, check=False)
        output = proc.stdout.decode("utf-8", errors="replace")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            responses = [dcmread(p) for p in sorted(Path(out).glob("rsp*.dcm"))]
    m = FINAL_FIND_RESPONSE.search(output)
    return FindResult(m.group(1) if m else None, responses, output)


# ---------------------------------------------------------------- `pacsnode serve` as a process


class ServeOutput:
    """A `pacsnode serve` process whose merged output we read as it comes (HTTP on a free port)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
        base["COLUMNS"] = "250"  # one log record per line
        base["PACSNODE_HTTP_PORT"] = "0"  # never the default 8042, which another server may hold
        self.proc = subprocess.Popen(
            [PACSNODE, "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**base, **(env or {})},
            cwd=cwd,
        )
        self.output = ""

    def wait_for(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Read output until ``pattern`` appears (waiting on the pipe, bounded by ``timeout``)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                m = re.search(pattern, self.output)
                if m:
                    return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output}")
                if not sel.select(remaining):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.proc.wait(WAIT)
                    raise AssertionError(f"exited with {code} before {pattern!r}:\n{self.output}")
                self.output += chunk.decode(errors="replace")

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Send ``sig`` and wait for the exit code; the rest of the output is kept."""
        self.proc.send_signal(sig)
        rest, _ = self.proc.communicate(timeout=WAIT + 15)
        self.output += rest.decode(errors="replace")
        return self.proc.returncode

    def wait(self) -> int:
        """Wait for the process to exit by itself."""
        rest, _ = self.proc.communicate(timeout=WAIT + 15)
        self.output += rest.decode(errors="replace")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=WAIT)


def gate_commitment_reports(node: ThreadedNode) -> tuple[threading.Event, threading.Event]:
    """Hold a node's Storage Commitment checks (so its reports) until the second event is set.

    The first event is set when a check starts (the N-ACTION was accepted). A test uses
    this to end the requesting association before the report is ready, so that the
    report must take a new association (otherwise the two race, and either is right).
    """
    scp = node.node.server.handlers["1.2.840.10008.1.20.1"]
    started, gate = threading.Event(), threading.Event()
    check = scp.verifier

    def gated(references: Any) -> Any:
        started.set()
        if not gate.wait(WAIT * 3):
            raise AssertionError("the test never let the storage commitment check go on")
        return check(references)

    scp.verifier = gated
    return started, gate
