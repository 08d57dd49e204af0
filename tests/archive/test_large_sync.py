"""A large instance (128 KiB or more) is synced in the syncer thread while it is hashed and its
index rows are written, even alone in its group; a small group syncs where it commits. Either
way the recorded SHA-256 is that of the data set as received, and the row commits only once the
file sync has returned."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any

import pytest

from peerkit import WAIT, encode_dataset, make_instance


@pytest.mark.parametrize(("size", "in_syncer"), [(512, True), (16, False)], ids=["large", "small"])
async def test_where_the_file_syncs_and_what_is_recorded(archive, size, in_syncer):
    events: list[tuple[str, str]] = []
    real_place, real_store = archive.store.place, archive.index.store

    def place(*args: Any, **kwargs: Any) -> None:
        real_place(*args, **kwargs)
        events.append(("synced", threading.current_thread().name))

    def store(records: Any, policy: str, *, before_commit: Any = None) -> Any:
        def committing() -> None:
            if before_commit is not None:
                before_commit()
            events.append(("committing", threading.current_thread().name))

        return real_store(records, policy, before_commit=committing)

    archive.store.place, archive.index.store = place, store
    ds = make_instance(size=size)  # 512: 256 KiB of pixel data, held in memory
    ts = str(ds.file_meta.TransferSyntaxUID)
    data = encode_dataset(ds, ts)
    sink = archive.open_sink(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, "MODALITY")
    sink.write(data)
    sink.finish()
    assert sink.in_memory
    result = await asyncio.wait_for(archive.ingest(sink), WAIT)
    assert result.ok, result
    assert [e[0] for e in events] == ["synced", "committing"]
    assert events[0][1].startswith("pacsnode-sync") is in_syncer, events
    row = archive.index.instance(str(ds.SOPInstanceUID))
    assert row is not None
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert (archive.store.root / row["path"]).read_bytes().endswith(data)
