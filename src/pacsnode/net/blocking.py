"""A blocking wrapper of the asyncio requestor, for scripts: ``with connect(...) as assoc:``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pacsnode.net.client import Association, EchoResult, StoreResponse, open_association

T = TypeVar("T")


class BlockingAssociation:
    """An association driven from synchronous code through a private event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, association: Association) -> None:
        self._loop = loop
        self.association = association

    def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return self._loop.run_until_complete(make())

    def echo(self) -> EchoResult:
        """C-ECHO; returns its status."""
        return self._run(self.association.echo)

    def store(
        self, dataset: bytes, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str
    ) -> StoreResponse:
        """C-STORE of a data set already encoded in ``transfer_syntax``."""
        return self._run(
            lambda: self.association.store(dataset, sop_class_uid, sop_instance_uid, transfer_syntax)
        )

    def release(self) -> None:
        """A-RELEASE."""
        self._run(self.association.release)

    def abort(self) -> None:
        """A-ABORT."""
        self.association.abort()
        self._loop.run_until_complete(self.association.protocol.closed)


@contextmanager
def connect(host: str, port: int, **options: Any) -> Iterator[BlockingAssociation]:
    """Open an association (same options as ``pacsnode.net.client.associate``), release on exit."""
    loop = asyncio.new_event_loop()
    try:
        assoc = loop.run_until_complete(open_association(host, port, **options))
        wrapper = BlockingAssociation(loop, assoc)
        try:
            yield wrapper
        except BaseException:
            wrapper.abort()
            raise
        wrapper.release()
    finally:
        loop.close()
