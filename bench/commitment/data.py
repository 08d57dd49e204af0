"""The commitment benchmark's study: N CT slices with fixed UIDs and pixels, generated once and cached."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import UID

from bench.ingest.data import CT_IMAGE_STORAGE, Spec, ct_instance

# Bumped whenever the content of a generated study changes, so that stale caches are regenerated.
FORMAT_VERSION = 1
DEFAULT_CACHE = Path(__file__).resolve().parent / ".data"
ROWS = COLUMNS = 512
SEED = 20240101


@dataclass(frozen=True)
class Study:
    """A generated study on disk: one folder of Part 10 files, its totals and its references."""

    root: Path
    count: int
    bytes: int
    # (SOP Class UID, SOP Instance UID) of every file, in file order: what the N-ACTION asks for.
    references: tuple[tuple[str, str], ...]

    @property
    def folder(self) -> Path:
        """The folder holding the instances (and nothing else)."""
        return self.root / "files"

    def files(self) -> list[Path]:
        """Every file of the study, in order."""
        return sorted(self.folder.iterdir())


def _uid(count: int, what: str) -> str:
    """A UID fixed by the study size and its role (PS3.5 B.2: 2.25 + a UUID as an integer)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'pacsnode/bench/commitment/{count}/{what}').int}"


def _frame(index: int) -> bytes:
    """One 512 x 512 slice of signed 16-bit values: noise (seeded by the index) over a ramp."""
    rng = np.random.default_rng([SEED, index])
    ramp = np.add.outer(np.arange(ROWS, dtype=np.int32), np.arange(COLUMNS, dtype=np.int32))
    noise = rng.integers(-1024, 1024, size=(ROWS, COLUMNS), dtype=np.int32)
    return bytes((noise + ramp * 2 % 2048).astype("<i2").tobytes())


def generate(count: int, cache: Path, say: Callable[[str], None] | None = None) -> Study:
    """The study of ``count`` slices from the cache, generated (in a temporary folder, renamed) if absent.

    Every UID and pixel follows from ``count`` alone, so two runs (or two machines) send the same
    files: one patient, one study, one series of CT Image Storage, Explicit VR Little Endian.
    """
    key = f"ct-{count}x{ROWS}x{COLUMNS}-v{FORMAT_VERSION}"
    root = cache / key
    manifest = root / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        refs = tuple((str(c), str(i)) for c, i in info["references"])
        return Study(root, int(info["count"]), int(info["bytes"]), refs)
    if say is not None:
        say(f"generating {count} {ROWS}x{COLUMNS} CT instances into {root}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{key}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "files").mkdir(parents=True)
    spec = Spec("commitment", count, ROWS, COLUMNS, per_series=count, series_per_study=1)
    study_uid, frame_uid, series_uid = (_uid(count, what) for what in ("study", "frame", "series"))
    references: list[tuple[str, str]] = []
    total = 0
    t0 = time.monotonic()
    for index in range(count):
        ds = ct_instance(spec, index, study_uid, frame_uid, series_uid, 1, _frame(index))
        sop_uid = _uid(count, f"instance/{index}")
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.PatientName = "BENCH^COMMITMENT"
        ds.PatientID = "BENCHCOMMIT"
        ds.StudyDescription = "pacsnode storage commitment benchmark"
        path = tmp / "files" / f"{index:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
        references.append((CT_IMAGE_STORAGE, sop_uid))
    (tmp / "manifest.json").write_text(
        json.dumps({"count": count, "bytes": total, "version": FORMAT_VERSION, "references": references})
    )
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    os.sync()  # so that the first measured run does not pay for writing the cache back
    if say is not None:
        say(f"  {count} files, {total / 1e6:,.0f} MB in {time.monotonic() - t0:.0f} s")
    return Study(root, count, total, tuple(references))
