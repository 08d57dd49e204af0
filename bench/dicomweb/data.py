"""The DICOMweb benchmark's data: small studies of several patients, and one CT study of 512x512 slices.

The small studies are the first studies of the query benchmark's corpus (``bench/query/corpus.py``:
names, dates, modalities, about a third of the studies belonging to a patient met before), each cut
down to a fixed number of instances of 64 x 64 x 16 bits spread over its 4 series.  The CT study is
the ingest benchmark's ``ct`` set (``bench/ingest/data.py``), generated into this benchmark's cache.
Both are written once, as Part 10 files (Explicit VR Little Endian), and reused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread

from bench.ingest.data import DataSet, ct_spec, generate
from bench.query.corpus import PER_STUDY, Study, study_list
from bench.query.fill import instance_bytes, series_template

DEFAULT_CACHE = Path(__file__).resolve().parent / ".data"
# Bumped whenever the content of the small set changes, so that stale caches are regenerated.
SMALL_VERSION = 1
ROWS = COLUMNS = 64

Say = Callable[[str], None]


@dataclass(frozen=True)
class SmallSet:
    """The small studies on disk: one folder per study, and how many instances each series holds."""

    root: Path
    studies: list[Study]
    # SeriesInstanceUID -> instances in that series (the corpus' own counts are not used)
    series_counts: dict[str, int]
    count: int
    bytes: int

    def files(self) -> Iterator[Path]:
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            yield from sorted(folder.iterdir())


@dataclass(frozen=True)
class CtStudy:
    """The CT study: its files and UIDs."""

    dataset: DataSet
    study_uid: str
    series_uid: str
    patient_id: str


def _split(total: int, n: int) -> list[int]:
    """``total`` as n near-equal counts, the larger ones first."""
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def small_set(studies: int, instances: int, cache: Path, say: Say | None = None) -> SmallSet:
    """``instances`` small instances over ``studies`` studies of the corpus, from the cache or generated."""
    corpus = study_list(studies * PER_STUDY)
    counts: dict[str, int] = {}
    for study, in_study in zip(corpus, _split(instances, studies), strict=True):
        for series, n in zip(study.series, _split(in_study, len(study.series)), strict=True):
            counts[series.uid] = n
    key = f"small-{studies}x{instances}x{ROWS}x{COLUMNS}-v{SMALL_VERSION}"
    root = cache / key
    manifest = root / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        return SmallSet(root, corpus, counts, int(info["count"]), int(info["bytes"]))
    if say is not None:
        say(f"generating {instances} {ROWS}x{COLUMNS} instances in {studies} studies into {root}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{key}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(20240401)
    total = 0
    t0 = time.monotonic()
    for study in corpus:
        folder = tmp / f"study{study.number:04d}"
        folder.mkdir(parents=True)
        for series in study.series:
            template = series_template(study, series)
            template.SamplesPerPixel = 1
            template.PhotometricInterpretation = "MONOCHROME2"
            template.Rows = ROWS
            template.Columns = COLUMNS
            template.BitsAllocated = 16
            template.BitsStored = 16
            template.HighBit = 15
            template.PixelRepresentation = 1
            for k in range(counts[series.uid]):
                template.PixelData = rng.integers(-1024, 1024, size=ROWS * COLUMNS, dtype="<i2").tobytes()
                template["PixelData"].VR = "OW"
                data = instance_bytes(template, series, k)
                (folder / f"{series.number}-{k + 1:04d}.dcm").write_bytes(data)
                total += len(data)
    (tmp / "manifest.json").write_text(
        json.dumps({"studies": studies, "count": instances, "bytes": total, "version": SMALL_VERSION})
    )
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    os.sync()
    if say is not None:
        say(f"  {instances} files, {total / 1e6:,.0f} MB in {time.monotonic() - t0:.0f} s")
    return SmallSet(root, corpus, counts, instances, total)


def ct_study(slices: int, cache: Path, say: Say | None = None) -> CtStudy:
    """The CT study of ``slices`` 512 x 512 x 16-bit slices, from the cache or generated."""
    dataset = generate(ct_spec(slices), cache, say)
    first = dcmread(next(dataset.files()), stop_before_pixels=True)
    return CtStudy(dataset, str(first.StudyInstanceUID), str(first.SeriesInstanceUID), str(first.PatientID))
