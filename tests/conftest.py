"""Shared fixtures: a pacsnode DICOM server on port 0, in the test's event loop or in a thread of its own.

* ``make_server`` (async tests): ``srv = await make_server(network=NetworkSettings(...))`` starts a
  `DicomServer` in the running loop and returns a `RunningServer` (``host``, ``port``, ``server``).
* ``server``: the same with the default settings.
* ``make_threaded_server`` / ``threaded_server`` (sync tests that block: DCMTK tools, pynetdicom,
  the blocking client): the server runs on its own event loop (uvloop, as `pacsnode serve` does)
  in a background thread; returns a `ThreadedServer` (``host``, ``port``, ``server``, ``call``).

On teardown every server is closed and the fixture asserts that no association leaked:
``server.active == 0`` and no connection objects are left.  ``wait_idle`` waits (on the
connections' ``closed`` futures, no sleeping) until a server has no connection left.

The helpers live in tests/peerkit.py, imported inside the fixtures so that collecting the
layers' own tests (tests/ul, tests/dimse) never depends on the asyncio shell.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# Same fallback as tests/ul/conftest.py: the venv may not have pacsnode installed.
if importlib.util.find_spec("pacsnode") is None:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

if TYPE_CHECKING:
    from peerkit import RunningServer, ThreadedServer


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    """Factory: ``await make_server(network=..., registry=..., ae_title=...)``; closed on teardown."""
    from peerkit import HOST, WAIT, RunningServer, assert_no_leak, build_server

    started: list[RunningServer] = []

    async def start(**options: Any) -> RunningServer:
        server = build_server(**options)
        await server.start(HOST, 0)
        running = RunningServer(server, HOST, options.get("ae_title", "PACSNODE"))
        started.append(running)
        return running

    yield start
    for running in started:
        await asyncio.wait_for(running.server.close(timeout=2.0), WAIT)
        assert_no_leak(running.server)


@pytest.fixture
async def server(make_server: Callable[..., Awaitable[RunningServer]]) -> RunningServer:
    """A default pacsnode server (Verification SCP, AE title PACSNODE) on 127.0.0.1, port 0."""
    return await make_server()


@pytest.fixture
def make_threaded_server() -> Iterator[Callable[..., ThreadedServer]]:
    """Factory: ``make_threaded_server(network=..., registry=...)``; closed and leak-checked on teardown."""
    from peerkit import start_threaded_server

    started: list[ThreadedServer] = []

    def start(**options: Any) -> ThreadedServer:
        handle = start_threaded_server(**options)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.close()


@pytest.fixture
def threaded_server(make_threaded_server: Callable[..., ThreadedServer]) -> ThreadedServer:
    """A default pacsnode server on its own loop in a background thread."""
    return make_threaded_server()


# ---------------------------------------------------------------- storage: nodes with an archive
#
# ``index_url`` is parametrised over both index back ends: "sqlite" (the default: SQLite in the
# node's data folder) and "postgresql" (a database created once per test module on
# $PACSNODE_TEST_PG_URL, default postgresql://postgres@127.0.0.1/postgres, dropped after the
# module; its tables are dropped after each test so that every test starts empty).
# ``make_storage_node(**storage)`` starts a Node (archive + DICOM server, port 0) on its own
# loop in a thread and returns a `ThreadedNode` (host, port, ae_title, data, index, node);
# ``storage_node`` is one with the default settings (duplicate_policy reject).


@pytest.fixture(scope="module")
def pg_module_database() -> Iterator[str]:
    """A fresh PostgreSQL database ``pacsnode_t_<random>`` for this test module."""
    from peerkit import pg_database

    with pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The index database URL of the node under test ('' = SQLite in its data folder)."""
    if request.param == "sqlite":
        yield ""
        return
    url: str = request.getfixturevalue("pg_module_database")
    yield url
    from pacsnode.archive.index import ArchiveIndex

    index = ArchiveIndex(url)
    try:
        index.drop_all()
    finally:
        index.dispose()


@pytest.fixture
def make_storage_node(tmp_path: Path, index_url: str) -> Iterator[Callable[..., Any]]:
    """Factory: ``make_storage_node(data=..., index_url=..., aet=..., network={...}, **storage)``."""
    from peerkit import start_threaded_node, storage_settings

    default_url = index_url
    started: list[Any] = []

    def start(
        *,
        data: Path | None = None,
        index_url: str | None = None,
        http: bool = False,
        audit: Any = None,
        **options: Any,
    ) -> Any:
        folder = data if data is not None else tmp_path / f"data{len(started)}"
        url = index_url if index_url is not None else default_url
        node = start_threaded_node(storage_settings(folder, url, **options), http=http, audit=audit)
        started.append(node)
        return node

    yield start
    for node in reversed(started):
        node.close()


@pytest.fixture
def storage_node(make_storage_node: Callable[..., Any]) -> Any:
    """A started Node with an archive (duplicate_policy reject) on 127.0.0.1, port 0."""
    return make_storage_node()


# ---------------------------------------------------------------- module-scoped nodes
#
# Loading a node with test data costs seconds; tests that only read from it (Query/Retrieve)
# share one per module: ``make_module_storage_node(**options)`` is the module-scoped twin of
# ``make_storage_node``, parametrised over both index back ends by ``module_index_url`` (each
# PostgreSQL parameter gets a database of its own, dropped after the module, so function-scoped
# nodes in the same module never wipe its tables).


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_index_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The index database URL of a module-scoped node ('' = SQLite in its data folder)."""
    if request.param == "sqlite":
        yield ""
        return
    from peerkit import pg_database

    with pg_database() as url:
        yield url


@pytest.fixture(scope="module")
def make_module_storage_node(
    tmp_path_factory: pytest.TempPathFactory, module_index_url: str
) -> Iterator[Callable[..., Any]]:
    """Factory: ``make_module_storage_node(**storage_settings options)``; nodes live for the module."""
    from peerkit import start_threaded_node, storage_settings

    started: list[Any] = []

    def start(*, data: Path | None = None, http: bool = False, **options: Any) -> Any:
        folder = data if data is not None else tmp_path_factory.mktemp("node")
        node = start_threaded_node(storage_settings(folder, module_index_url, **options), http=http)
        started.append(node)
        return node

    yield start
    for node in reversed(started):
        node.close()
