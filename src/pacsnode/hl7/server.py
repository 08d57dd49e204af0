"""The node's MLLP listener (HL7 v2 transport, MLLP over TCP): an asyncio companion of the DICOM listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pacsnode.archive.ingest import Archive
from pacsnode.archive.patients import PatientRecords
from pacsnode.audit.builders import node_actor
from pacsnode.config.settings import Settings
from pacsnode.hl7.feed import Hl7Feed, Reply
from pacsnode.hl7.mllp import Frame, Junk, MllpDecoder, Oversize, frame
from pacsnode.security.events import AuditSink

log = logging.getLogger("pacsnode.hl7")

_READ = 65536
_LINGER = 5.0  # after a NAK for an oversized block: seconds to read (and drop) what the sender still sends


@dataclass(eq=False)
class _Connection:
    peer: str
    task: asyncio.Task[None] | None
    decoder: MllpDecoder
    busy: bool = False  # a message is being processed: let it finish and answer on close


class Hl7Server:
    """HL7 v2 over MLLP beside the DICOM listener: orders into the worklist, ADT into the index.

    Messages are processed one at a time, in the order they arrive (over all connections),
    on a thread of their own; the event loop only frames and answers.
    """

    def __init__(self, settings: Settings, archive: Archive, *, audit: AuditSink | None = None) -> None:
        self.settings = settings
        self.config = settings.hl7
        node = node_actor(settings.node.aet, settings.node.host)
        self.feed = Hl7Feed(
            self.config, archive.worklist, PatientRecords(archive), settings.node.aet, audit, node
        )
        self.host = self.config.host or settings.node.host
        self.port = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacsnode-hl7")
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self) -> None:
        """Bind [hl7] host:port and accept connections (raises OSError naming host:port when taken)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.config.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, exc.strerror or str(exc), f"{self.host}:{self.config.port}") from exc
        sock.listen(64)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock)
        log.info("pacsnode receiving HL7 v2 over MLLP on %s:%d", self.host, self.port)

    async def close(self) -> None:
        """Stop accepting; idle connections close, a message being processed is answered first (bounded)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._connections):
            if not conn.busy and conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.settings.network.shutdown_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        conn = _Connection(peer, asyncio.current_task(), MllpDecoder(self.config.max_message))
        self._connections.add(conn)
        log.debug("HL7 connection from %s", peer)
        try:
            await self._converse(conn, reader, writer)
        except TimeoutError:
            log.info("HL7 connection from %s idle for %.0f s: closed", peer, self.config.idle_timeout)
        except (ConnectionError, OSError) as exc:
            log.info("HL7 connection from %s lost: %s", peer, exc)
        finally:
            self._connections.discard(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await asyncio.wait_for(reader.read(_READ), self.config.idle_timeout)
            events = conn.decoder.feed(data) if data else conn.decoder.close()
            for event in events:
                if isinstance(event, Frame):
                    conn.busy = True
                    try:
                        reply = await loop.run_in_executor(
                            self._pool, self.feed.handle, event.payload, conn.peer
                        )
                        await self._answer(conn, writer, reply)
                    finally:
                        conn.busy = False
                elif isinstance(event, Oversize):
                    reply = self.feed.oversize(event.head, event.limit)
                    await self._answer(conn, writer, reply)
                    await self._linger(reader, writer)
                    return
                elif isinstance(event, Junk):
                    log.warning(
                        "HL7 from %s: %d byte(s) outside an MLLP block ignored", conn.peer, event.size
                    )
            if not data or self._server is None:  # the peer closed, or the node stops
                return

    @staticmethod
    async def _answer(conn: _Connection, writer: asyncio.StreamWriter, reply: Reply) -> None:
        writer.write(frame(reply.ack))
        await writer.drain()
        level = logging.INFO if reply.code == "AA" else logging.WARNING
        log.log(level, "HL7 from %s: %s", conn.peer, reply.summary)

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then drop what the sender still sends (bounded): the NAK is not lost to a reset."""
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            async with asyncio.timeout(_LINGER):
                while await reader.read(_READ):
                    pass
