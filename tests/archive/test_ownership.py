"""An index belongs to one data folder: an archive of another folder given the same index URL is
refused before it repairs anything; a moved folder opens where it lands; a lost identity file is
named with the way to restore it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from pacsnode.archive.index import ArchiveIndex
from pacsnode.archive.ingest import Archive
from pacsnode.archive.ownership import FOLDER_ID_FILE, IndexOfAnotherFolder, claim, read_folder_id
from pacsnode.archive.schema import archive_owner
from peerkit import need_testdata, storage_settings


@pytest.fixture
def shared_url(tmp_path: Path, index_url: str) -> str:
    """An index URL outside every data folder: the PostgreSQL database, or a SQLite file beside them."""
    return index_url or f"sqlite:///{tmp_path / 'shared.sqlite'}"


def _index(url: str) -> ArchiveIndex:
    index = ArchiveIndex(url)
    index.migrate()
    return index


def _rows(url: str) -> list[tuple[str, str]]:
    index = ArchiveIndex(url)
    try:
        with index.engine.connect() as conn:
            return [
                (str(a), str(b))
                for a, b in conn.execute(select(archive_owner.c.folder_id, archive_owner.c.folder))
            ]
    finally:
        index.dispose()


async def test_a_folder_claims_a_new_index_and_opens_it_again(tmp_path: Path, shared_url: str) -> None:
    data = tmp_path / "a"
    archive = Archive(storage_settings(data, shared_url))
    await archive.start()
    await archive.close()
    own = read_folder_id(data)
    assert own is not None and str(uuid.UUID(own)) == own
    assert (data / FOLDER_ID_FILE).read_text() == f"{own}\n"
    assert _rows(shared_url) == [(own, str(data.resolve()))]
    again = Archive(storage_settings(data, shared_url))
    await again.start()
    await again.close()
    assert read_folder_id(data) == own
    assert _rows(shared_url) == [(own, str(data.resolve()))]


async def test_another_folder_on_the_same_index_is_refused_and_repairs_nothing(
    tmp_path: Path, shared_url: str
) -> None:
    first_data, second_data = tmp_path / "a", tmp_path / "b"
    first = Archive(storage_settings(first_data, shared_url))
    await first.start()
    image = need_testdata("modalities", "CT_small.dcm")
    [stored] = first.import_files([image])
    assert stored.ok, stored
    await first.close()
    owner_id = read_folder_id(first_data)
    # What open() would act on in the second folder: a spool file (it would be deleted), and
    # then an object file without a row (it would be indexed into the first folder's index).
    spool = second_data / "spool" / "leftover"
    spool.parent.mkdir(parents=True)
    spool.write_bytes(b"partial")
    second = Archive(storage_settings(second_data, shared_url))
    with pytest.raises(IndexOfAnotherFolder) as refused:
        await second.start()
    message = str(refused.value)
    assert f"belongs to the data folder {first_data.resolve()} (id {owner_id})" in message
    assert f"not to {second_data.resolve()}" in message
    assert "give each data folder its own index database" in message
    assert not second.lock.held  # a refused archive lets the folder go
    assert spool.read_bytes() == b"partial"
    second.index.dispose()
    orphan = second_data / "objects" / "20260101" / "00" / "0123456789abcdef.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(image.read_bytes())
    third = Archive(storage_settings(second_data, shared_url))
    with pytest.raises(IndexOfAnotherFolder, match="give each data folder its own index database"):
        await third.start()
    assert orphan.read_bytes() == image.read_bytes() and spool.read_bytes() == b"partial"
    third.index.dispose()
    # The second folder got its own identity; the index still names the first.
    assert read_folder_id(second_data) not in (None, owner_id)
    assert _rows(shared_url) == [(owner_id, str(first_data.resolve()))]
    index = ArchiveIndex(shared_url)
    try:
        assert index.counts()["instances"] == 1
    finally:
        index.dispose()


async def test_a_moved_folder_opens_and_the_index_learns_where_it_is(tmp_path: Path, shared_url: str) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    archive = Archive(storage_settings(old, shared_url))
    await archive.start()
    [stored] = archive.import_files([need_testdata("modalities", "CT_small.dcm")])
    await archive.close()
    own = read_folder_id(old)
    old.rename(new)
    moved = Archive(storage_settings(new, shared_url))
    await moved.start()
    try:
        assert moved.index.instance(stored.sop_instance_uid) is not None
    finally:
        await moved.close()
    assert _rows(shared_url) == [(own, str(new.resolve()))]


async def test_a_lost_identity_file_is_named_with_the_way_back(tmp_path: Path, shared_url: str) -> None:
    data = tmp_path / "a"
    archive = Archive(storage_settings(data, shared_url))
    await archive.start()
    [stored] = archive.import_files([need_testdata("modalities", "CT_small.dcm")])
    assert stored.ok, stored
    await archive.close()
    own = read_folder_id(data)
    (data / FOLDER_ID_FILE).unlink()
    refused_archive = Archive(storage_settings(data, shared_url))
    with pytest.raises(IndexOfAnotherFolder) as refused:
        await refused_archive.start()
    refused_archive.index.dispose()
    assert f"this folder holds objects but no {FOLDER_ID_FILE}" in str(refused.value)
    assert f"echo {own} > {data.resolve() / FOLDER_ID_FILE}" in str(refused.value)
    assert not (data / FOLDER_ID_FILE).exists()  # not claimed anew: the index keeps its owner
    (data / FOLDER_ID_FILE).write_text(f"{own}\n")  # what the message says to do
    again = Archive(storage_settings(data, shared_url))
    await again.start()
    await again.close()


def test_a_malformed_identity_file_is_an_error_naming_it(tmp_path: Path, shared_url: str) -> None:
    (tmp_path / FOLDER_ID_FILE).write_text("not a uuid\n")
    index = _index(shared_url)
    try:
        with pytest.raises(OSError, match=rf"{FOLDER_ID_FILE} does not hold a folder id: 'not a uuid'"):
            claim(index, tmp_path)
        assert index.owner() is None
    finally:
        index.dispose()


def test_the_first_of_two_claims_wins(tmp_path: Path, shared_url: str) -> None:
    # Two archives opening one new index at once: both insert the one row, one insert fails,
    # and that archive finds the other's claim, not its own.
    index = _index(shared_url)
    try:
        first = str(uuid.uuid4())
        assert index.claim_owner(first, "/a") == (first, "/a")
        assert index.claim_owner(str(uuid.uuid4()), "/b") == (first, "/a")
    finally:
        index.dispose()


def test_the_password_of_the_index_url_is_not_shown(tmp_path: Path) -> None:
    refused = IndexOfAnotherFolder(
        tmp_path, "postgresql://pacs:s3cret@db.example/pacs", str(uuid.uuid4()), "/srv/a", str(uuid.uuid4())
    )
    assert "s3cret" not in str(refused)
    assert "postgresql://pacs:***@db.example/pacs" in str(refused)


def test_the_identity_file_is_written_whole(tmp_path: Path, shared_url: str) -> None:
    index = _index(shared_url)
    try:
        own = claim(index, tmp_path)
    finally:
        index.dispose()
    assert read_folder_id(tmp_path) == own
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(f".{FOLDER_ID_FILE}")
    ] == []  # no temporary
