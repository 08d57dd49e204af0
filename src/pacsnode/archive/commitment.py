"""PS3.4 Annex J: what the archive commits to: each referenced instance is indexed and its file intact."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import select

from pacsnode.archive.blobs import FileStore
from pacsnode.archive.index import ArchiveIndex
from pacsnode.archive.schema import instances, non_patient_objects
from pacsnode.data.part10 import dataset_offset

log = logging.getLogger("pacsnode.commitment")

# PS3.4 J.3.2.1.1 (Table J.3-2): the Failure Reasons of a Failed SOP Sequence item.
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119

_CHUNK = 1 << 20
_IN_BATCH = 500  # UIDs per IN (...) query
_PARALLEL_FROM = 8  # references from which files are checked by several threads
_HASHERS = 4


@dataclass(frozen=True, slots=True)
class Reference:
    """One item of a Referenced SOP Sequence: a SOP class and instance."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the archive answers for one reference: committed, or the Failure Reason."""

    reference: Reference
    failure_reason: int | None = None
    detail: str = ""

    @property
    def committed(self) -> bool:
        """True when the archive takes responsibility for the instance."""
        return self.failure_reason is None


def _rows(index: ArchiveIndex, uids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """SOP Instance UID -> (SOP Class UID, path, sha256) for those of ``uids`` that are indexed."""
    found: dict[str, tuple[str, str, str]] = {}
    with index.engine.connect() as conn:
        for start in range(0, len(uids), _IN_BATCH):
            chunk = list(uids[start : start + _IN_BATCH])
            for table in (instances, non_patient_objects):
                query = select(
                    table.c.sop_instance_uid, table.c.sop_class_uid, table.c.path, table.c.sha256
                ).where(table.c.sop_instance_uid.in_(chunk))
                for uid, sop_class, path, digest in conn.execute(query):
                    found[uid] = (sop_class, path, digest)
    return found


def _intact(store: FileStore, relative: str, expected: str) -> str:
    """An empty string when the stored file's data set still hashes to ``expected``, else why not."""
    path = store.absolute(relative)
    try:
        with path.open("rb") as fp:
            head = fp.read(1024)
            fp.seek(dataset_offset(head, path))
            digest = hashlib.sha256()
            while chunk := fp.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        return f"stored file {relative} is missing"
    except Exception as exc:  # unreadable file or meta: the archive cannot vouch for it
        return f"stored file {relative} is unreadable: {exc}"
    if digest.hexdigest() != expected:
        return f"stored file {relative} does not match the hash recorded when it was received"
    return ""


def verify(index: ArchiveIndex, store: FileStore, references: Sequence[Reference]) -> list[Verdict]:
    """Check each reference against the index and re-hash its file (blocking: run it off the loop).

    PS3.4 J.3.2.1.1: 0112 when the instance is unknown, 0119 when it is known under
    another SOP class, 0110 when its file is gone or no longer what was received.
    """
    rows = _rows(index, list(dict.fromkeys(ref.sop_instance_uid for ref in references)))

    def judge(ref: Reference) -> Verdict:
        row = rows.get(ref.sop_instance_uid)
        if row is None:
            return Verdict(ref, NO_SUCH_OBJECT_INSTANCE, "not in the archive")
        sop_class, path, digest = row
        if sop_class != ref.sop_class_uid:
            return Verdict(ref, CLASS_INSTANCE_CONFLICT, f"stored as SOP class {sop_class}")
        problem = _intact(store, path, digest)
        if problem:
            log.error("storage commitment: %s (SOP instance %s)", problem, ref.sop_instance_uid)
            return Verdict(ref, PROCESSING_FAILURE, problem)
        return Verdict(ref)

    if len(references) < _PARALLEL_FROM:
        return [judge(ref) for ref in references]
    # hashlib releases the GIL on large buffers: files are read and hashed on every core.
    with ThreadPoolExecutor(max_workers=min(_HASHERS, os.cpu_count() or 1)) as pool:
        return list(pool.map(judge, references))
