"""The node's HTTP listener (PS3.18 8.1: HTTP/1.1 over TCP): uvicorn on the node's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn

from pacsnode.archive.ingest import Archive
from pacsnode.config.settings import Settings
from pacsnode.security.credentials import Authenticator
from pacsnode.security.events import AuditSink
from pacsnode.security.tls import https_context
from pacsnode.web.app import create_app
from pacsnode.web.context import WebContext

log = logging.getLogger("pacsnode.web")


class HttpServer:
    """DICOMweb and the admin API of one node, served beside its DICOM listener in the same process."""

    def __init__(
        self,
        settings: Settings,
        archive: Archive,
        *,
        audit: AuditSink | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.settings = settings
        self.context = WebContext(settings, archive, audit=audit, authenticator=authenticator)
        self.app = create_app(self.context)
        self.port = 0
        # PS3.18 8.1 / PS3.15 B.9: HTTPS with the node's certificate ([web] tls); files read now.
        self.ssl = https_context(settings) if settings.web.tls else None
        self._server: uvicorn.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind [node] host:http_port and serve (raises OSError when the port is taken)."""
        node = self.settings.node
        # The socket is ours: a bind error is an OSError here, not uvicorn's sys.exit.
        family = socket.AF_INET6 if ":" in node.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((node.host, node.http_port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, exc.strerror or str(exc), f"{node.host}:{node.http_port}") from exc
        sock.listen(512)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            http="httptools",
            loop="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            # The client address is the socket's: X-Forwarded-For from anyone (uvicorn trusts it
            # with FORWARDED_ALLOW_IPS=*) would make a remote client "loopback" (docs/security.md).
            proxy_headers=False,
        )
        config.load()
        config.ssl = self.ssl  # our BCP 195 context (uvicorn's own options would not restrict ciphers)
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        self._ticker = asyncio.get_running_loop().create_task(server.main_loop())
        log.info(
            "pacsnode serving DICOMweb on %s://%s:%d%s",
            "https" if self.ssl is not None else "http",
            node.host,
            self.port,
            self.settings.web.base_path,
        )

    async def close(self) -> None:
        """Stop accepting, let running requests finish (bounded), stop."""
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        if self._ticker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await server.shutdown()
        self.context.close()
