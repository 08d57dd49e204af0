"""Shared helpers of the de-identification tests: walking data sets, the corpus, the table."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
KEY = bytes(range(32))
NOT_DICOM = {".tsv", ".md", ".dump", ".png", ".txt"}


def corpus_files() -> list[Path]:
    """Every file of the shared corpus that may be DICOM."""
    return sorted(
        p for p in TESTDATA.rglob("*") if p.is_file() and p.suffix not in NOT_DICOM and p.name != "lockfile"
    )


def elements(ds: Dataset, depth: int = 0) -> Iterator[tuple[int, DataElement]]:
    """Every element at any depth (depth 0: top level), sequences' items included."""
    for element in ds:
        yield depth, element
        if element.VR == "SQ" and element.value:
            for item in element.value:
                yield from elements(item, depth + 1)


def read(path: Path | bytes) -> Dataset:
    import io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(path) if isinstance(path, bytes) else path, force=True)
