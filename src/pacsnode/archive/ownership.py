"""Which data folder an index belongs to (DESIGN.md durability contract: no row without its bytes).

An index row names its file relative to one data folder. Two nodes given the same
index URL (one PostgreSQL database, say) but different data folders would each
find rows whose files are in the other's folder: their retrieves would fail, their
deletions would remove the wrong files or none, and their start-up repair would
act on the other's journal. The folder lock (folder_lock.py) cannot see that: the
folders differ. So each data folder carries a random identity in ``pacsnode.id``,
the index records the identity of the folder it belongs to (table
``archive_owner``, claimed by the first archive that opens it), and an archive
whose folder is not the index's refuses to open, before it repairs anything.
A folder moved or restored elsewhere keeps its identity file, so it opens where it lands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path

from sqlalchemy.engine import make_url

from pacsnode.archive.blobs import OBJECTS, fsync_path
from pacsnode.archive.index import ArchiveIndex

log = logging.getLogger("pacsnode.archive")

FOLDER_ID_FILE = "pacsnode.id"


class IndexOfAnotherFolder(RuntimeError):
    """The index belongs to another data folder than the one this archive was given."""

    def __init__(self, folder: Path, url: str, owner_id: str, owner_folder: str, own_id: str | None) -> None:
        self.folder = folder
        self.owner_id = owner_id
        where = _redacted(url)
        if own_id is None:
            hint = (
                f"this folder holds objects but no {FOLDER_ID_FILE}: if it is that archive's folder "
                f"and only the file was lost, write it back: echo {owner_id} > {folder / FOLDER_ID_FILE}"
            )
        else:
            hint = "give each data folder its own index database ([storage] index_url)"
        super().__init__(
            f"the index {where} belongs to the data folder {owner_folder} (id {owner_id}), "
            f"not to {folder}; {hint}"
        )


def read_folder_id(folder: Path) -> str | None:
    """The identity of a data folder, or None when it has none yet."""
    try:
        text = (folder / FOLDER_ID_FILE).read_text("ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError) as exc:
        raise OSError(f"cannot read {folder / FOLDER_ID_FILE}: {exc}") from exc
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise OSError(f"{folder / FOLDER_ID_FILE} does not hold a folder id: {text[:40]!r}") from None


def _write_folder_id(folder: Path, value: str) -> None:
    """Write the identity file durably (temporary name, fsync, rename, fsync of the folder)."""
    temporary = folder / f".{FOLDER_ID_FILE}.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{value}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, folder / FOLDER_ID_FILE)
    fsync_path(folder)  # the new name


def claim(index: ArchiveIndex, folder: Path) -> str:
    """Check that ``index`` belongs to ``folder`` (claiming an unclaimed one); return the folder id.

    Raises IndexOfAnotherFolder when the index was claimed by another data folder.
    """
    folder = folder.resolve()
    own = read_folder_id(folder)
    owner = index.owner()
    if own is None and (owner is None or not _holds_objects(folder)):
        # A new folder (or one of a pacsnode from before identities) gets its identity. One that
        # holds objects but lost its file is not given a new one: the message says how to put
        # the old one back.
        own = str(uuid.uuid4())
        # The file first: a crash between the two leaves an identified folder and an unclaimed
        # index, which the next start claims again.
        _write_folder_id(folder, own)
    if owner is None:
        assert own is not None
        owner = index.claim_owner(own, str(folder))  # another node may have claimed it meanwhile
    owner_id, owner_folder = owner
    if own != owner_id:
        raise IndexOfAnotherFolder(folder, index.url, owner_id, owner_folder, own)
    if owner_folder != str(folder):
        log.info("the data folder moved from %s to %s", owner_folder, folder)
        with contextlib.suppress(Exception):  # only a hint for messages
            index.set_owner_folder(str(folder))
    return own


def _holds_objects(folder: Path) -> bool:
    """True when an object file with content is stored in the folder (stops at the first)."""
    for directory, _, files in os.walk(folder / OBJECTS):
        for name in files:
            with contextlib.suppress(OSError):
                if os.path.getsize(os.path.join(directory, name)) > 0:
                    return True
    return False


def _redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(the configured index_url)"
