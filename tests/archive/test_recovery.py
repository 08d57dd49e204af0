"""Start-up recovery after a crash, with the crash states built by hand (deterministic, no kill):
what the window between "index committed" and "old file deleted" can leave must not undo an
acknowledged instance.  The random kill -9 rounds are in tests/e2e/test_kill9.py."""

from __future__ import annotations

import hashlib
import os

import pytest

from peerkit import (
    assert_computed_attributes,
    assert_consistent,
    index_rows,
    item_of,
    make_instance,
    part10_dataset,
    pynetdicom_store,
)


def test_obsolete_file_of_a_replacement_left_by_a_crash_is_not_resurrected(make_storage_node, tmp_path):
    data = tmp_path / "data"
    node = make_storage_node(data=data, duplicate_policy="replace")
    old = make_instance()
    assert pynetdicom_store(node.host, node.port, [old])[0].ok
    old_path = node.index.instance(old.SOPInstanceUID)["path"]
    old_file = (data / old_path).read_bytes()
    old_stat = (data / old_path).stat()
    new = make_instance(
        study=old.StudyInstanceUID, series=old.SeriesInstanceUID, sop_instance=old.SOPInstanceUID
    )
    assert pynetdicom_store(node.host, node.port, [new])[0].ok  # acknowledged
    assert not (data / old_path).exists()
    node.close()
    # The crash state: the replacement's row committed, the old file not yet deleted
    # (as it was: same bytes, same modification time, older than the replacement).
    (data / old_path).write_bytes(old_file)
    os.utime(data / old_path, ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))

    node = make_storage_node(data=data, duplicate_policy="replace")
    row = node.index.instance(old.SOPInstanceUID)
    expected = item_of(new)[3]
    assert row["sha256"] == hashlib.sha256(expected).hexdigest(), "the acknowledged version was undone"
    assert part10_dataset(data / row["path"])[3] == expected
    assert_consistent(data, node.index)
    assert_computed_attributes(node.index)


@pytest.mark.parametrize("policy", ["reject", "keep-first", "replace"])
def test_placed_but_unindexed_file_is_indexed_or_removed(make_storage_node, tmp_path, policy):
    """The crash state "file synced into objects/, index row not committed": after start-up the
    file is either indexed (whole, with its own bytes) or gone; nothing else changes."""
    data = tmp_path / "data"
    node = make_storage_node(data=data, duplicate_policy=policy)
    first = make_instance()
    assert pynetdicom_store(node.host, node.port, [first])[0].ok
    row = node.index.instance(first.SOPInstanceUID)
    stray = make_instance(study=first.StudyInstanceUID)
    # Written as the node writes: our meta, then the data set as received.
    from pacsnode.data.part10 import file_meta

    sop_class, uid, ts, dataset = item_of(stray)
    stray_path = data / row["path"].rsplit("/", 1)[0] / f"{'c' * 32}.dcm"
    stray_path.write_bytes(file_meta(sop_class, uid, ts, "CRASHED") + dataset)
    before = index_rows(node.index)
    node.close()

    node = make_storage_node(data=data, duplicate_policy=policy)
    assert_consistent(data, node.index)
    assert_computed_attributes(node.index)
    after = index_rows(node.index)
    assert [r for r in after["instances"] if r["sop_instance_uid"] == first.SOPInstanceUID] == [
        r for r in before["instances"] if r["sop_instance_uid"] == first.SOPInstanceUID
    ]
    again = node.index.instance(uid)
    if again is not None:
        assert part10_dataset(data / again["path"])[3] == dataset
        assert again["sha256"] == hashlib.sha256(dataset).hexdigest()
    else:
        assert not stray_path.exists()


def test_replacement_whose_row_was_lost_is_restored(make_storage_node, tmp_path):
    """The crash state "replacement file synced (so acknowledged), its row lost with the index's
    unsynced tail": start-up re-indexes the newer file and it replaces the old version."""
    from pacsnode.data.part10 import file_meta

    data = tmp_path / "data"
    node = make_storage_node(data=data, duplicate_policy="replace")
    old = make_instance()
    assert pynetdicom_store(node.host, node.port, [old])[0].ok
    row = node.index.instance(old.SOPInstanceUID)
    node.close()
    new = make_instance(
        study=old.StudyInstanceUID, series=old.SeriesInstanceUID, sop_instance=old.SOPInstanceUID
    )
    sop_class, uid, ts, dataset = item_of(new)
    newer = data / row["path"].rsplit("/", 1)[0] / f"{'d' * 32}.dcm"
    newer.write_bytes(file_meta(sop_class, uid, ts, "SENDER") + dataset)
    stamp = row["received_at"].timestamp() + 5  # written after the old row's commit
    os.utime(newer, (stamp, stamp))

    node = make_storage_node(data=data, duplicate_policy="replace")
    again = node.index.instance(uid)
    assert again["sha256"] == hashlib.sha256(dataset).hexdigest()
    assert not (data / row["path"]).exists()
    assert_consistent(data, node.index)
    assert_computed_attributes(node.index)


def test_obsolete_file_from_an_earlier_hour_is_swept(make_storage_node, tmp_path, monkeypatch):
    """A crash between the replacement's commit and the old file's delete: the trash journal,
    written in the same transaction, makes start-up delete it, whatever hour folder it is in."""
    from pacsnode.archive.blobs import FileStore
    from pacsnode.archive.index import ArchiveIndex

    data = tmp_path / "data"
    node = make_storage_node(data=data, duplicate_policy="replace")
    old = make_instance()
    assert pynetdicom_store(node.host, node.port, [old])[0].ok
    old_path = node.index.instance(old.SOPInstanceUID)["path"]
    # As if the original had arrived long ago: its file in an old hour folder.
    earlier = data / "objects" / "20000101" / "00" / old_path.rsplit("/", 1)[1]
    earlier.parent.mkdir(parents=True)
    (data / old_path).rename(earlier)
    relative = str(earlier.relative_to(data))
    with node.index.engine.begin() as conn:
        from pacsnode.archive.schema import instances

        conn.execute(instances.update().values(path=relative))
    new = make_instance(study=old.StudyInstanceUID, sop_instance=old.SOPInstanceUID)
    real_remove = FileStore.remove
    # The crash: neither the delete of the obsolete file nor the journal's clearing happen.
    monkeypatch.setattr(
        FileStore, "remove", lambda self, path: None if path == earlier else real_remove(self, path)
    )
    monkeypatch.setattr(ArchiveIndex, "empty_trash", lambda self, paths: None)
    assert pynetdicom_store(node.host, node.port, [new])[0].ok
    node.close()
    monkeypatch.undo()
    assert earlier.exists()

    node = make_storage_node(data=data, duplicate_policy="replace")
    row = node.index.instance(old.SOPInstanceUID)
    assert part10_dataset(data / row["path"])[3] == item_of(new)[3]
    assert not earlier.exists(), "the orphan of a crash was not swept at start-up"
    assert_consistent(data, node.index)


def test_an_empty_group_is_a_no_op(make_storage_node, tmp_path):
    # Start-up recovery may find only unreadable orphans: an empty group must index nothing.
    node = make_storage_node(data=tmp_path / "data")
    assert node.index.store([], "reject") == []
