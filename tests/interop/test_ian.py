"""Instance Availability Notification (PS3.4 Annex R) with pynetdicom as the subscriber (IAN SCP):
a study stored with DCMTK storescu into a running node is announced once stable, again after a
second batch; a subscriber that is down gets it when it comes up (also across a node restart),
and a refusing subscriber is logged and does not stop the others. Both index back ends."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from pacsnode.archive.schema import changes
from peerkit import HOST, WAIT, corpus_files, free_port, store_files

pynetdicom = pytest.importorskip("pynetdicom")
pytestmark = pytest.mark.interop

IAN = "1.2.840.10008.5.1.4.33"
STUDY_FOLDER = "dicomdir/pydicom_fileset/98892003"
# An MR study of that folder: 11 instances in 3 series; MR1 and MR2 hold 4 of them, MR700 7.
STUDY = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.1"
FIRST_BATCH = ("MR1", "MR2")


class IanSubscriber:
    """A pynetdicom AE that accepts the IAN SOP class and records each N-CREATE it gets."""

    def __init__(self, ae_title: str, port: int | None = None, status: int = 0x0000) -> None:
        self.ae_title = ae_title
        self.port = port or free_port()
        self.status = status
        self.received: list[tuple[str, Dataset]] = []
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._server: Any = None

    def start(self) -> IanSubscriber:
        ae = pynetdicom.AE(ae_title=self.ae_title)
        ae.add_supported_context(IAN, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self._server = ae.start_server(
            (HOST, self.port), block=False, evt_handlers=[(pynetdicom.evt.EVT_N_CREATE, self._on_create)]
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_create(self, event: Any) -> tuple[int, Dataset | None]:
        ds = event.attribute_list
        with self._lock:
            self.received.append((str(event.request.AffectedSOPInstanceUID), ds))
        self.changed.set()
        return self.status, (ds if self.status == 0x0000 else None)

    def wait_for(self, done: Callable[[list[tuple[str, Dataset]]], bool]) -> list[tuple[str, Dataset]]:
        """Wait until ``done(received)``; return what was received."""
        while True:
            with self._lock:
                received = list(self.received)
                if done(received):
                    return received
                self.changed.clear()
            assert self.changed.wait(WAIT), f"{self.ae_title}: no matching notification, got {len(received)}"


class Settled:
    """The node notifier's on_settled calls, seen from the test thread."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str, str]] = []  # (study, subscriber, status, detail)
        self.changed = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, note: Any, status: str, detail: str) -> None:
        with self._lock:
            self.items.append((note.study_instance_uid, note.subscriber, status, detail))
        self.changed.set()

    def wait_for(self, subscriber: str, status: str) -> tuple[str, str, str, str]:
        while True:
            with self._lock:
                for item in self.items:
                    if item[1] == subscriber and item[2] == status:
                        return item
                self.changed.clear()
            assert self.changed.wait(WAIT), f"no {status} outcome for {subscriber}: {self.items}"


def watch(node: Any) -> Settled:
    settled = Settled()

    async def add() -> None:
        node.node.notifier.on_settled.append(settled)

    node.call(add)
    return settled


@pytest.fixture
def subscribers() -> Iterator[Callable[..., IanSubscriber]]:
    made: list[IanSubscriber] = []

    def make(ae_title: str, **kw: Any) -> IanSubscriber:
        sub = IanSubscriber(ae_title, **kw)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.stop()


def start_node(make_storage_node: Any, subs: list[IanSubscriber], *, node: Any = None, **ian: Any) -> Any:
    """A node whose [ian] subscribers are these pynetdicom AEs (its [peers])."""
    ian.setdefault("stable_after", 0.3)
    ian.setdefault("retry_interval", 0.2)
    return make_storage_node(
        aet="ARCHIVE",
        peers={s.ae_title: (HOST, s.port) for s in subs},
        ian={"subscribers": [s.ae_title for s in subs], **ian},
        **(node or {}),
    )


def study_files(*series: str) -> list[Any]:
    files = [f for f in corpus_files(STUDY_FOLDER) if f.get("StudyInstanceUID") == STUDY]
    return [f for f in files if not series or f.path.parent.name in series]


def references(ds: Dataset) -> set[tuple[str, str, str]]:
    return {
        (str(s.SeriesInstanceUID), str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
        for s in ds.ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    }


def expected(files: list[Any]) -> set[tuple[str, str, str]]:
    return {(f.get("SeriesInstanceUID"), f.get("SOPClassUID"), f.sop_instance_uid) for f in files}


def covering(files: list[Any]) -> Callable[[list[tuple[str, Dataset]]], bool]:
    """A notification that references exactly these instances has come."""
    want = expected(files)
    return lambda received: any(references(ds) == want for _, ds in received)


def log_of(node: Any, study: str) -> list[tuple[str, str]]:
    with node.index.engine.connect() as conn:
        rows = conn.execute(
            select(changes.c.kind, changes.c.detail)
            .where(
                changes.c.study_instance_uid == study,
                changes.c.kind.in_(("study-stable", "ian-sent", "ian-failed")),
            )
            .order_by(changes.c.seq)
        ).all()
    return [(r[0], r[1]) for r in rows]


def test_a_stored_study_is_announced_then_again_after_more_instances(make_storage_node, subscribers):
    ris = subscribers("RIS").start()
    node = start_node(make_storage_node, [ris])
    settled = watch(node)
    first = study_files(*FIRST_BATCH)
    study = first[0].get("StudyInstanceUID")
    store_files(node.host, node.port, first, called="ARCHIVE", parallel=1)
    received = ris.wait_for(covering(first))
    uid, ds = next((u, d) for u, d in received if references(d) == expected(first))
    # PS3.4 Table R.3.2-1: the module's attributes, every instance ONLINE at our AE title.
    assert ds.StudyInstanceUID == study
    assert ds.ReferencedPerformedProcedureStepSequence == []
    items = [i for s in ds.ReferencedSeriesSequence for i in s.ReferencedSOPSequence]
    assert {(i.InstanceAvailability, i.RetrieveAETitle) for i in items} == {("ONLINE", "ARCHIVE")}
    assert len(ds.ReferencedSeriesSequence) == 2 and len(items) == 4
    assert all(len(u) <= 64 and u.replace(".", "").isdigit() for u, _ in received)
    settled.wait_for("RIS", "SENT")
    kinds = log_of(node, study)
    assert ("study-stable", "4 instance(s)") in kinds and any(k == "ian-sent" for k, _ in kinds)

    everything = study_files()
    store_files(node.host, node.port, study_files("MR700"), called="ARCHIVE", parallel=1)
    again = ris.wait_for(covering(everything))
    uid2 = next(u for u, d in again if references(d) == expected(everything))
    assert uid2 != uid  # a new notification, with its own SOP Instance UID
    assert ("study-stable", "11 instance(s)") in log_of(node, study)


def test_a_subscriber_that_is_down_gets_it_once_up(make_storage_node, subscribers):
    late = subscribers("LATE")  # its port is reserved, nothing listens yet
    node = start_node(make_storage_node, [late], max_attempts=50)
    settled = watch(node)
    files = study_files(*FIRST_BATCH)
    store_files(node.host, node.port, files, called="ARCHIVE", parallel=1)
    _, _, _, detail = settled.wait_for("LATE", "PENDING")
    assert "no association" in detail
    late.start()
    late.wait_for(covering(files))
    settled.wait_for("LATE", "SENT")


def test_a_notification_not_delivered_is_sent_after_a_restart(make_storage_node, subscribers, tmp_path):
    late = subscribers("LATE")
    data = tmp_path / "restarted"
    first = start_node(make_storage_node, [late], retry_interval=3600.0, node={"data": data})
    settled = watch(first)
    files = study_files(*FIRST_BATCH)
    store_files(first.host, first.port, files, called="ARCHIVE", parallel=1)
    settled.wait_for("LATE", "PENDING")  # one attempt failed; the next one is an hour away
    first.close()
    late.start()
    start_node(make_storage_node, [late], node={"data": data})
    received = late.wait_for(covering(files))
    # Each notification left PENDING is sent once; the study is not declared stable again.
    assert len({uid for uid, _ in received}) == len(received)


def test_a_refusing_subscriber_is_logged_and_does_not_stop_the_others(make_storage_node, subscribers, caplog):
    caplog.set_level(logging.INFO, logger="pacsnode.ian")
    refuser = subscribers("REFUSER", status=0x0124).start()  # Refused: not authorized
    ris = subscribers("RIS").start()
    node = start_node(make_storage_node, [refuser, ris])
    settled = watch(node)
    files = study_files(*FIRST_BATCH)
    store_files(node.host, node.port, files, called="ARCHIVE", parallel=1)
    ris.wait_for(covering(files))
    _, _, _, detail = settled.wait_for("REFUSER", "FAILED")
    assert "0x0124" in detail
    settled.wait_for("RIS", "SENT")
    assert refuser.received  # it got the N-CREATE, and refused it
    study = files[0].get("StudyInstanceUID")
    kinds = [k for k, _ in log_of(node, study)]
    assert "ian-failed" in kinds and "ian-sent" in kinds
    assert any("REFUSER" in r.getMessage() and "given up" in r.getMessage() for r in caplog.records)
