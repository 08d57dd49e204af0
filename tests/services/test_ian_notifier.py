"""The Instance Availability Notification SCU (pacsnode.services.ian) against a scripted subscriber:
what the N-CREATE holds (PS3.4 Table R.3.2-1), retries with back-off, permanent refusals, the
notifications left PENDING by a restart, and the MPPS it references."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from pacsnode.archive.ingest import Archive
from pacsnode.archive.schema import changes
from pacsnode.archive.stability import FAILED, PENDING, SENT, Notification, StabilityStore
from pacsnode.services.ian import (
    IAN_SOP_CLASS,
    MPPS_SOP_CLASS,
    InstanceAvailabilityNotifier,
    notification_datasets,
)
from peerkit import HOST, WAIT, make_instance, new_uid, received_sink, storage_settings

# ---------------------------------------------------------------- the attribute lists (pure)


def _step(*series: str) -> Dataset:
    ds = Dataset()
    items = []
    for uid in series:
        item = Dataset()
        item.SeriesInstanceUID = uid
        items.append(item)
    ds.PerformedSeriesSequence = items
    return ds


CONTENT = {
    "1.1": [("1.2.840.10008.5.1.4.1.1.2", "1.1.1"), ("1.2.840.10008.5.1.4.1.1.2", "1.1.2")],
    "1.2": [("1.2.840.10008.5.1.4.1.1.4", "1.2.1")],
    "1.3": [("1.2.840.10008.5.1.4.1.1.7", "1.3.1")],
}


def _refs(ds: Dataset) -> dict[str, list[tuple[str, str, str, str]]]:
    return {
        s.SeriesInstanceUID: [
            (i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID, i.InstanceAvailability, i.RetrieveAETitle)
            for i in s.ReferencedSOPSequence
        ]
        for s in ds.ReferencedSeriesSequence
    }


def test_without_a_procedure_step_one_notification_covers_the_study():
    (ds,) = notification_datasets("1", CONTENT, [], "ARCHIVE")
    assert ds.StudyInstanceUID == "1"
    assert (
        "ReferencedPerformedProcedureStepSequence" in ds and ds.ReferencedPerformedProcedureStepSequence == []
    )
    assert _refs(ds) == {s: [(c, i, "ONLINE", "ARCHIVE") for c, i in m] for s, m in CONTENT.items()}
    # PS3.4 R.3.2.1.2: nothing but the module's attributes (no patient or procedure identifiers).
    assert {e.keyword for e in ds} == {
        "ReferencedPerformedProcedureStepSequence",
        "StudyInstanceUID",
        "ReferencedSeriesSequence",
    }


def test_with_one_procedure_step_it_is_referenced():
    (ds,) = notification_datasets("1", CONTENT, [("9.9", _step("1.1"))], "ARCHIVE")
    (ref,) = ds.ReferencedPerformedProcedureStepSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (MPPS_SOP_CLASS, "9.9")
    assert ref.PerformedWorkitemCodeSequence == []
    assert set(_refs(ds)) == set(CONTENT)


def test_with_several_procedure_steps_each_gets_its_series():
    steps = [("9.1", _step("1.1")), ("9.2", _step("1.2", "1.1")), ("9.3", _step("8.8"))]
    out = notification_datasets("1", CONTENT, steps, "ARCHIVE")
    summary = [
        (
            [r.ReferencedSOPInstanceUID for r in ds.ReferencedPerformedProcedureStepSequence],
            sorted(_refs(ds)),
        )
        for ds in out
    ]
    assert summary == [(["9.1"], ["1.1"]), (["9.2"], ["1.2"]), ([], ["1.3"])]


# ---------------------------------------------------------------- delivery against a scripted peer


@dataclass
class Subscriber:
    """A scripted IAN SCP: each N-CREATE answers the next status of ``script`` (then Success);
    an exception in the script is raised by the connection instead."""

    script: list[Any] = field(default_factory=list)
    received: list[tuple[str, Dataset]] = field(default_factory=list)
    connects: int = 0


class ScriptedPeers:
    """The injected AssociationOpener: one scripted subscriber per port."""

    def __init__(self, **subscribers: Subscriber) -> None:
        self.by_title = subscribers

    async def __call__(self, host: str, port: int, **kw: Any) -> Any:
        peer = self.by_title[kw["called_ae_title"]]
        peer.connects += 1
        assert [c.abstract_syntax for c in kw["contexts"]] == [IAN_SOP_CLASS]
        step = peer.script.pop(0) if peer.script else 0x0000
        if isinstance(step, Exception):
            raise step
        return _Association(peer, step)


class _Association:
    def __init__(self, peer: Subscriber, status: int) -> None:
        self.peer, self.status = peer, status

    async def n_create(self, sop_class_uid: str, sop_instance_uid: str | None, dataset: Dataset) -> Any:
        assert sop_class_uid == IAN_SOP_CLASS and sop_instance_uid
        self.peer.received.append((sop_instance_uid, dataset))
        return SimpleNamespace(status=self.status, error_comment=None), None

    async def release(self, timeout: float | None = 30.0) -> None:
        return None

    def abort(self) -> None:
        return None


class Outcomes:
    """The notifier's on_settled calls; ``await outcomes.final(n)`` until n are SENT or FAILED."""

    def __init__(self) -> None:
        self.items: list[tuple[Notification, str, str]] = []
        self._new = asyncio.Event()

    def __call__(self, note: Notification, status: str, detail: str) -> None:
        self.items.append((note, status, detail))
        self._new.set()

    async def final(self, n: int) -> dict[tuple[str, str], tuple[str, str]]:
        while len(self.finals()) < n:
            self._new.clear()
            await asyncio.wait_for(self._new.wait(), WAIT)
        return self.finals()

    def finals(self) -> dict[tuple[str, str], tuple[str, str]]:
        return {
            (n.study_instance_uid, n.subscriber): (status, detail)
            for n, status, detail in self.items
            if status != PENDING
        }


@pytest.fixture
async def make_notifier(
    tmp_path: Path, index_url: str
) -> AsyncIterator[Callable[..., tuple[Archive, InstanceAvailabilityNotifier, Outcomes]]]:
    archives: list[Archive] = []
    notifiers: list[InstanceAvailabilityNotifier] = []

    async def make(
        peers: ScriptedPeers, **ian: Any
    ) -> tuple[Archive, InstanceAvailabilityNotifier, Outcomes]:
        ian.setdefault("subscribers", list(peers.by_title))
        ian.setdefault("retry_interval", 0.001)
        settings = storage_settings(
            tmp_path / "data",
            index_url,
            aet="ARCHIVE",
            peers={title: (HOST, 1 + i) for i, title in enumerate(peers.by_title)},
            ian=ian,
        )
        archive = Archive(settings)
        await archive.start()
        archives.append(archive)
        notifier = InstanceAvailabilityNotifier(StabilityStore(archive.index), settings, peers)
        outcomes = Outcomes()
        notifier.on_settled.append(outcomes)
        notifiers.append(notifier)
        return archive, notifier, outcomes

    yield make
    for notifier in notifiers:
        await notifier.close()
    for archive in archives:
        await archive.close()


async def store(archive: Archive, *datasets: Any) -> None:
    for ds in datasets:
        assert (await archive.ingest(received_sink(archive, ds)[0])).ok


def declare(archive: Archive, study: str, subscribers: list[str]) -> Any:
    return StabilityStore(archive.index).declare(study, subscribers, new_uid)


def log_rows(archive: Archive, *kinds: str) -> list[tuple[str, str]]:
    with archive.index.engine.connect() as conn:
        rows = conn.execute(
            select(changes.c.kind, changes.c.detail).where(changes.c.kind.in_(kinds)).order_by(changes.c.seq)
        ).all()
    return [(r[0], r[1]) for r in rows]


async def test_a_stable_study_is_sent_to_each_subscriber(make_notifier):
    ris, pacs = Subscriber(), Subscriber()
    archive, notifier, outcomes = await make_notifier(ScriptedPeers(RIS=ris, PACS2=pacs))
    await notifier.start()
    study, series = new_uid(), new_uid()
    instances = [make_instance(study=study, series=series) for _ in range(2)] + [make_instance(study=study)]
    await store(archive, *instances)
    event = declare(archive, study, ["RIS", "PACS2"])
    notifier.stable(event)
    finals = await outcomes.final(2)
    assert {k: v[0] for k, v in finals.items()} == {(study, "RIS"): SENT, (study, "PACS2"): SENT}
    for peer, note in zip((ris, pacs), event.notifications, strict=True):
        ((uid, ds),) = peer.received
        assert uid == note.sop_instance_uid
        assert ds.StudyInstanceUID == study
        got = {
            (s.SeriesInstanceUID, i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
            for s in ds.ReferencedSeriesSequence
            for i in s.ReferencedSOPSequence
        }
        assert got == {
            (str(d.SeriesInstanceUID), str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in instances
        }
        assert {i.RetrieveAETitle for s in ds.ReferencedSeriesSequence for i in s.ReferencedSOPSequence} == {
            "ARCHIVE"
        }
    rows = StabilityStore(archive.index).notifications(study)
    assert [(r["subscriber"], r["status"], r["attempts"]) for r in rows] == [
        ("RIS", SENT, 1),
        ("PACS2", SENT, 1),
    ]
    assert [k for k, _ in log_rows(archive, "ian-sent", "ian-failed")] == ["ian-sent", "ian-sent"]


async def test_a_subscriber_that_is_down_gets_it_on_a_later_attempt(make_notifier):
    down = Subscriber(script=[ConnectionError("refused"), ConnectionError("refused"), 0x0213])
    archive, notifier, outcomes = await make_notifier(ScriptedPeers(RIS=down), max_attempts=5)
    await notifier.start()
    study = new_uid()
    await store(archive, make_instance(study=study))
    notifier.stable(declare(archive, study, ["RIS"]))
    finals = await outcomes.final(1)
    assert finals[(study, "RIS")][0] == SENT
    assert down.connects == 4 and len(down.received) == 2  # 0213 (resource limitation) is tried again
    assert [s for _, s, _ in outcomes.items] == [PENDING, PENDING, PENDING, SENT]
    ((uid1, _), (uid2, _)) = down.received
    assert uid1 == uid2  # the same notification, the same SOP Instance UID
    assert StabilityStore(archive.index).notifications(study)[0]["attempts"] == 4


async def test_a_refusal_is_final_and_does_not_stop_the_others(make_notifier):
    refusing, fine = Subscriber(script=[0x0124]), Subscriber()
    archive, notifier, outcomes = await make_notifier(ScriptedPeers(RIS=refusing, PACS2=fine))
    await notifier.start()
    first, second = new_uid(), new_uid()
    await store(archive, make_instance(study=first), make_instance(study=second))
    notifier.stable(declare(archive, first, ["RIS", "PACS2"]))
    notifier.stable(declare(archive, second, ["RIS", "PACS2"]))
    finals = await outcomes.final(4)
    assert finals[(first, "RIS")][0] == FAILED and "0x0124" in finals[(first, "RIS")][1]
    assert finals[(second, "RIS")][0] == SENT  # the next one in the refusing peer's queue
    assert finals[(first, "PACS2")][0] == SENT and finals[(second, "PACS2")][0] == SENT
    assert refusing.connects == 2
    failed = [d for k, d in log_rows(archive, "ian-failed")]
    assert len(failed) == 1 and failed[0].startswith("RIS: after 1 attempt(s)")


async def test_attempts_are_bounded(make_notifier):
    down = Subscriber(script=[ConnectionError("refused")] * 10)
    archive, notifier, outcomes = await make_notifier(ScriptedPeers(RIS=down), max_attempts=3)
    await notifier.start()
    study = new_uid()
    await store(archive, make_instance(study=study))
    notifier.stable(declare(archive, study, ["RIS"]))
    finals = await outcomes.final(1)
    assert finals[(study, "RIS")][0] == FAILED and down.connects == 3
    assert StabilityStore(archive.index).notifications(study)[0]["status"] == FAILED


async def test_pending_notifications_are_sent_after_a_restart(make_notifier):
    ris = Subscriber()
    archive, notifier, outcomes = await make_notifier(ScriptedPeers(RIS=ris))
    study = new_uid()
    await store(archive, make_instance(study=study))
    event = declare(archive, study, ["RIS"])  # recorded, then the node stopped before sending
    await notifier.start()
    notifier.stable(event)  # delivered by the event too: sent once all the same
    assert (await outcomes.final(1))[(study, "RIS")][0] == SENT
    assert [uid for uid, _ in ris.received] == [event.notifications[0].sop_instance_uid]


async def test_the_performed_procedure_step_is_referenced(make_notifier):
    ris = Subscriber()
    archive, notifier, outcomes = await make_notifier(ScriptedPeers(RIS=ris))
    await notifier.start()
    study, series = new_uid(), new_uid()
    await store(archive, make_instance(study=study, series=series))
    step = Dataset()
    ref = Dataset()
    ref.StudyInstanceUID = study
    ref.AccessionNumber = "ACC1"
    step.ScheduledStepAttributesSequence = [ref]
    step.PerformedProcedureStepID = "PPS1"
    step.PerformedStationAETitle = "MODALITY"
    step.PerformedProcedureStepStartDate = "20260101"
    step.PerformedProcedureStepStartTime = "101500"
    step.PerformedProcedureStepStatus = "IN PROGRESS"
    step.Modality = "CT"
    step_uid = new_uid()
    archive.performed_steps.create(step_uid, step)
    notifier.stable(declare(archive, study, ["RIS"]))
    await outcomes.final(1)
    ((_, ds),) = ris.received
    (item,) = ds.ReferencedPerformedProcedureStepSequence
    assert (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) == (MPPS_SOP_CLASS, step_uid)


async def test_a_study_deleted_before_sending_is_given_up(make_notifier):
    ris = Subscriber()
    archive, notifier, outcomes = await make_notifier(ScriptedPeers(RIS=ris))
    await notifier.start()
    study = new_uid()
    await store(archive, make_instance(study=study))
    event = declare(archive, study, ["RIS"])
    await archive.delete("STUDY", study)
    notifier.stable(event)
    finals = await outcomes.final(1)
    assert finals[(study, "RIS")][0] == FAILED and ris.connects == 0


async def test_a_notification_for_a_removed_subscriber_is_given_up_at_start(make_notifier):
    ris = Subscriber()
    archive, notifier, outcomes = await make_notifier(ScriptedPeers(RIS=ris))
    study = new_uid()
    await store(archive, make_instance(study=study))
    declare(archive, study, ["OLD", "RIS"])  # OLD was a subscriber before the restart
    await notifier.start()
    finals = await outcomes.final(2)
    assert finals[(study, "OLD")] == (FAILED, "no longer an [ian] subscriber")
    assert finals[(study, "RIS")][0] == SENT


# ---------------------------------------------------------------- settings


def test_a_subscriber_must_be_a_configured_peer():
    from pacsnode.config.settings import ConfigError, load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(None, {"ian": {"subscribers": ["RIS"]}}, environ={})
    assert "[ian] subscribers: RIS not in [peers]; add a [peers.RIS] table" in str(info.value)
    ok = load_settings(
        None, {"ian": {"subscribers": ["RIS"]}, "peers": {"RIS": {"host": HOST, "port": 104}}}, environ={}
    )
    assert ok.ian.subscribers == ["RIS"] and ok.ian.stable_after == 60.0


def test_the_documented_example_is_a_valid_configuration(tmp_path):
    import re

    from pacsnode.config.settings import load_settings

    page = (Path(__file__).resolve().parents[2] / "docs" / "workflow-ian.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"```toml\n(.*?)```", page, re.S)
    config = tmp_path / "pacsnode.toml"
    config.write_text(example)
    settings = load_settings(config, environ={})
    assert settings.ian.subscribers == ["RIS", "WFM"] and set(settings.peers) == {"RIS", "WFM"}
