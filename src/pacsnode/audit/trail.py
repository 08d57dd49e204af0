"""PS3.15 A.5 / A.6: the node's audit trail: every event kept in the index, then sent by syslog, in order.

``emit`` only queues the event (any thread, never blocks, never raises). A writer thread
renders each event as a DICOM audit message and appends it to ``audit_messages`` in the
index database, batch by batch; that table is the durable queue and the search index at
once. A sender thread drains the rows not yet sent, oldest first, to the [audit] collector
and marks them sent; while the collector cannot be reached it waits (1 s, doubling up to
60 s) and tries again, so nothing is lost to an outage, and rows left unsent at a stop are
sent after the next start. Delivery is at least once: TCP and TLS syslog have no
acknowledgement, so a message written into a connection the collector had just dropped is
sent again on the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from queue import Empty, SimpleQueue
from typing import Any

from sqlalchemy import Engine

from pacsnode.archive.index import make_engine
from pacsnode.audit.message import AuditSource, render
from pacsnode.audit.store import AuditStore, row_of
from pacsnode.audit.syslog import MessageTooLarge, SyslogSender, syslog_message
from pacsnode.config.logsafe import WHOLE
from pacsnode.config.settings import Settings
from pacsnode.security.events import AuditEvent

log = logging.getLogger("pacsnode.audit")

_BATCH = 500  # events written per transaction, at most
_SEND_BATCH = 100  # rows read per round of the sender
_PRUNE_EVERY = 24 * 3600.0

_Item = AuditEvent | threading.Event | None  # an event, a flush marker, or the end


class AuditTrail:
    """An AuditSink that keeps every event in the index and sends it to the [audit] syslog collector."""

    def __init__(
        self,
        settings: Settings,
        *,
        send: bool = True,
        retry_min: float = 1.0,
        retry_max: float = 60.0,
        poll: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        """``send`` False: keep only (a command-line tool; the serving node sends what it kept).

        The sender retries after ``retry_min`` seconds, doubling up to ``retry_max``; with
        nothing to send it looks for rows other processes kept every ``poll`` seconds.
        """
        self.settings = settings
        audit = settings.audit
        self.source = AuditSource(audit.source_id or settings.node.aet, audit.enterprise_site_id)
        self.sending = send and bool(audit.syslog_host)
        self.retry_min, self.retry_max, self.poll, self.timeout = retry_min, retry_max, poll, timeout
        self.store: AuditStore | None = None
        # Counters for logs and tests, each written by one thread only.
        self.written = 0
        self.sent = 0
        self.send_failures = 0
        self._queue: SimpleQueue[_Item] = SimpleQueue()
        self._engine: Engine | None = None
        self._writer: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        self._wake = threading.Event()  # rows were written (or the trail stops)
        self._retry = threading.Event()  # end a wait for the collector now
        self._stopping = threading.Event()
        self._closing = threading.Event()  # close() began: a failing database is not waited for
        self._stop_by = float("inf")
        self._changed = threading.Condition()
        self._closed = False

    # ------------------------------------------------------------ AuditSink

    def emit(self, event: AuditEvent) -> None:
        """Queue the event for the writer (never blocks, never raises)."""
        if self._closed:
            log.warning("audit trail closed: %s event not kept", event.kind.meaning)
            return
        try:
            self._queue.put(event)
        except Exception:  # pragma: no cover - SimpleQueue.put does not fail
            log.exception("audit event lost")

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the writer (and the sender, with a collector); the index must be migrated already."""
        self._engine = make_engine(self.settings.index_url())
        self.store = AuditStore(self._engine)
        self._writer = threading.Thread(target=self._write_loop, name="pacsnode-audit-writer", daemon=True)
        self._writer.start()
        if self.sending:
            self._sender = threading.Thread(target=self._send_loop, name="pacsnode-audit-sender", daemon=True)
            self._sender.start()

    def close(self, timeout: float = 5.0) -> None:
        """Keep every event emitted so far, try once more to send (``timeout`` at most), stop (blocking)."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout)
            if self._writer.is_alive():
                log.error("audit: the index database did not take the last messages within %.0f s", timeout)
        self._stop_by = time.monotonic() + timeout  # the sender's last round ends by then
        self._stopping.set()
        self._wake.set()
        self._retry.set()
        if self._sender is not None:
            self._sender.join(timeout)
            if self._sender.is_alive():
                log.warning(
                    "audit: the collector did not answer within %.0f s; unsent messages stay queued", timeout
                )
                return  # the daemon thread ends with its connect or send timeout
        if self._engine is not None:
            self._engine.dispose()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far is kept in the index (True) or ``timeout`` passed."""
        if self._writer is None or not self._writer.is_alive():
            return False
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def retry_now(self) -> None:
        """End a wait for the collector: try to send at once (the collector is known to be back)."""
        self._retry.set()
        self._wake.set()

    def wait_until(self, condition: Callable[[AuditTrail], bool], timeout: float | None = None) -> bool:
        """Wait until ``condition(self)`` holds, checked after each write and send attempt."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self), timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------ writer thread

    def _write_loop(self) -> None:
        assert self.store is not None
        self._prune()
        next_prune = time.monotonic() + _PRUNE_EVERY
        done = False
        while not done:
            try:
                first = self._queue.get(timeout=max(0.0, next_prune - time.monotonic()))
            except Empty:
                self._prune()
                next_prune = time.monotonic() + _PRUNE_EVERY
                continue
            items = [first]
            while len(items) < _BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except Empty:
                    break
            rows: list[dict[str, Any]] = []
            markers: list[threading.Event] = []
            for item in items:
                if item is None:
                    done = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    try:
                        rows.append(row_of(item, render(item, self.source)))
                    except Exception:  # a bad event costs itself only
                        log.exception("audit: cannot render a %s event", item.kind.meaning)
            self._append(rows, stopping=done)
            for marker in markers:
                marker.set()
            self._wake.set()
            self._notify()

    def _append(self, rows: list[dict[str, Any]], *, stopping: bool) -> None:
        assert self.store is not None
        delay = self.retry_min
        while rows:
            try:
                self.store.append(rows)
            except Exception as exc:
                if stopping or self._closing.is_set():
                    # The node stops and the database is gone: the log is the last place left.
                    log.error(
                        "audit: the index database failed (%s); %d message(s) only logged", exc, len(rows)
                    )
                    for row in rows:
                        log.error("audit message not kept: %s", row["xml"], extra=WHOLE)  # not cut
                    return
                # The database is down: the events wait here (and newer ones in the queue).
                log.error("audit: cannot keep %d message(s), trying again: %s", len(rows), exc)
                self._closing.wait(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            self.written += len(rows)
            return

    def _prune(self) -> None:
        keep_days = self.settings.audit.keep_days
        if not keep_days or self.store is None:
            return
        before = datetime.now(UTC) - timedelta(days=keep_days)
        try:
            # Messages still to send stay until sent (unless no collector is configured).
            dropped = self.store.prune(before, unsent_too=not self.settings.audit.syslog_host)
        except Exception as exc:
            log.warning("audit: pruning failed: %s", exc)
            return
        if dropped:
            log.info("audit: %d message(s) older than %d day(s) dropped", dropped, keep_days)

    # ------------------------------------------------------------ sender thread

    def _send_loop(self) -> None:
        assert self.store is not None
        store = self.store
        sender = SyslogSender(self.settings.audit, timeout=self.timeout)
        where = f"{self.settings.audit.syslog_transport}://{self.settings.audit.syslog_host}:" + str(
            self.settings.audit.syslog_port
        )
        delay = self.retry_min
        down_since: float | None = None
        try:
            while True:
                if self._stopping.is_set() and time.monotonic() > self._stop_by:
                    return  # what is left is sent after the next start
                self._wake.clear()
                # close() says stop only once the writer has kept everything: a read that
                # began after that sees every row, an earlier one may have missed the last.
                final = self._stopping.is_set()
                try:
                    pending = store.unsent(_SEND_BATCH)
                except Exception as exc:
                    log.warning("audit: cannot read the messages to send: %s", exc)
                    pending = []
                    if not self._stopping.is_set():
                        self._retry.wait(delay)
                        self._retry.clear()
                        continue
                if not pending:
                    if final:
                        return
                    self._wake.wait(self.poll)
                    continue
                sent: list[int] = []
                error: OSError | None = None
                for message in pending:
                    data = syslog_message(message.xml, at=message.at, failure=message.failure)
                    try:
                        sender.send(data)
                    except MessageTooLarge as exc:
                        log.error("audit: message %d not sent (%s); it is kept locally", message.id, exc)
                        store.mark_failed(message.id, str(exc), give_up=True)
                        continue
                    except OSError as exc:
                        error = exc
                        store.mark_sent(sent, datetime.now(UTC))
                        store.mark_failed(message.id, f"{type(exc).__name__}: {exc}")
                        break
                    sent.append(message.id)
                if error is None:
                    store.mark_sent(sent, datetime.now(UTC))
                self.sent += len(sent)
                if error is None:
                    if down_since is not None:
                        log.warning("audit: collector %s reachable again", where)
                    down_since, delay = None, self.retry_min
                    self._notify()
                    continue
                self.send_failures += 1
                self._notify()
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "audit: collector %s unreachable (%s); messages wait in the index", where, error
                    )
                if self._stopping.is_set():
                    return
                self._retry.wait(delay)
                self._retry.clear()
                delay = min(delay * 2, self.retry_max)
        except Exception:
            log.exception("audit: the sender stopped; unsent messages stay in the index")
        finally:
            sender.close()
