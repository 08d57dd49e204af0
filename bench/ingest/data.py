"""Synthetic CT data sets for the ingest benchmark, generated once into a cache folder and reused."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# Multi-frame Grayscale Word Secondary Capture: 16-bit frames with the fewest required modules.
MF_GRAY_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
# Bumped whenever the content of a generated set changes, so that stale caches are regenerated.
FORMAT_VERSION = 2
# Every set is split into this many parts (folders), one per parallel association.
PARTS = 4
# Our own UID root (PS3.5 B.2: 2.25 + a UUID as an integer); generate_uid appends a hash.
UID_PREFIX = "2.25.211739425094741178120939232104193.1."
DEFAULT_CACHE = Path(__file__).resolve().parent / ".data"


@dataclass(frozen=True)
class DataSet:
    """A generated set on disk: PARTS folders of Part 10 files and its totals."""

    name: str
    root: Path
    count: int
    bytes: int

    def parts(self) -> list[Path]:
        """The part folders, in order; their union is the whole set."""
        return [p for p in (self.root / f"part{i}" for i in range(PARTS)) if p.is_dir()]

    def files(self) -> Iterator[Path]:
        """Every file of the set."""
        for part in self.parts():
            yield from sorted(part.iterdir())


@dataclass(frozen=True)
class Spec:
    """What to generate: ``count`` single-frame CT images of rows x columns, 16 bits allocated."""

    name: str
    count: int
    rows: int
    columns: int
    # Instances per series and series per study (each study has its own patient).
    per_series: int
    series_per_study: int

    @property
    def key(self) -> str:
        return f"{self.name}-{self.count}x{self.rows}x{self.columns}-v{FORMAT_VERSION}"


def ct_spec(count: int = 500) -> Spec:
    """(a) CT slices of 512 x 512 x 16 bits: one volume (one series) per 500 slices."""
    return Spec("ct", count, 512, 512, per_series=500, series_per_study=1)


def small_spec(count: int = 5000) -> Spec:
    """(b) small 64 x 64 x 16-bit CT images: studies of 2 series x 50 instances, one patient each."""
    return Spec("small", count, 64, 64, per_series=50, series_per_study=2)


def _uid() -> str:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[uuid.uuid4().hex])


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(UID_PREFIX + "0")
    meta.ImplementationVersionName = "PACSNODE_BENCH"
    return meta


def _patient_study(ds: Dataset, study: int, study_uid: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"BENCH^INGEST{study:04d}"
    ds.PatientID = f"BENCH{study:06d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"ACC{study:06d}"
    ds.StudyID = str(study + 1)
    ds.StudyDescription = "pacsnode ingest benchmark"
    ds.ReferringPhysicianName = ""


def _image_pixel(ds: Dataset, rows: int, columns: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1


def ct_instance(
    spec: Spec,
    index: int,
    study_uid: str,
    frame_of_reference_uid: str,
    series_uid: str,
    series_number: int,
    pixels: bytes,
) -> Dataset:
    """One CT Image Storage instance (PS3.3 A.3), Explicit VR Little Endian."""
    sop_uid = _uid()
    ds = Dataset()
    ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uid)
    study = index // (spec.per_series * spec.series_per_study)
    number = index % spec.per_series + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.ContentDate = "20240101"
    ds.ContentTime = "120000"
    ds.Modality = "CT"
    ds.Manufacturer = "pacsnode bench"
    ds.StationName = "BENCH"
    _patient_study(ds, study, study_uid)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"synthetic {spec.rows}x{spec.columns}"
    ds.BodyPartExamined = "CHEST"
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [-250.0, -250.0, -1.25 * number]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [500.0 / spec.rows, 500.0 / spec.columns]
    ds.SliceThickness = 1.25
    ds.SliceLocation = -1.25 * number
    ds.KVP = 120
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    _image_pixel(ds, spec.rows, spec.columns)
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    return ds


def _random_frames(rng: np.random.Generator, n: int, rows: int, columns: int) -> npt.NDArray[np.int16]:
    # Random-ish HU values: noise over a smooth ramp, so frames differ and nothing is constant.
    ramp = np.add.outer(np.arange(rows, dtype=np.int32), np.arange(columns, dtype=np.int32))
    noise = rng.integers(-1024, 1024, size=(n, rows, columns), dtype=np.int32)
    frames: npt.NDArray[np.int16] = (noise + ramp * 2 % 2048).astype("<i2")
    return frames


def generate(spec: Spec, cache: Path, say: Callable[[str], None] | None = None) -> DataSet:
    """The set for ``spec`` from the cache, generated (into a temporary folder, then renamed) if absent."""
    root = cache / spec.key
    manifest = root / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        return DataSet(spec.name, root, int(info["count"]), int(info["bytes"]))
    if say is not None:
        say(f"generating {spec.count} {spec.rows}x{spec.columns} CT instances into {root}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{spec.key}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    parts = [tmp / f"part{i}" for i in range(PARTS)]
    for part in parts:
        part.mkdir(parents=True)
    rng = np.random.default_rng(20240101)
    per_study = spec.per_series * spec.series_per_study
    # Contiguous quarters: each association sends whole studies, as parallel senders usually do.
    quarter = -(-spec.count // PARTS)
    total = 0
    batch = 64
    study_uid = frame_uid = series_uid = ""
    t0 = time.monotonic()
    for start in range(0, spec.count, batch):
        frames = _random_frames(rng, min(batch, spec.count - start), spec.rows, spec.columns)
        for k, frame in enumerate(frames):
            index = start + k
            if index % per_study == 0:
                study_uid, frame_uid = _uid(), _uid()
            if index % spec.per_series == 0:
                series_uid = _uid()
            series_number = (index % per_study) // spec.per_series + 1
            ds = ct_instance(spec, index, study_uid, frame_uid, series_uid, series_number, frame.tobytes())
            path = parts[index // quarter] / f"{index:06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            total += path.stat().st_size
    (tmp / "manifest.json").write_text(
        json.dumps({"spec": vars(spec), "count": spec.count, "bytes": total, "version": FORMAT_VERSION})
    )
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    os.sync()  # so that the first measured run does not pay for writing the cache back
    if say is not None:
        say(f"  {spec.count} files, {total / 1e6:,.0f} MB in {time.monotonic() - t0:.0f} s")
    return DataSet(spec.name, root, spec.count, total)


def generate_big(cache: Path, frames: int = 4000, say: Callable[[str], None] | None = None) -> DataSet:
    """One multi-frame instance of ``frames`` x 512 x 512 x 16 bits (4000: ~2.1 GB), written streaming.

    The header is written by pydicom; the Pixel Data element header and the frames are appended
    one at a time, so memory stays at a few frames whatever the size.
    """
    rows = columns = 512
    frame_bytes = rows * columns * 2
    length = frames * frame_bytes
    if length > 0xFFFFFFFE:
        raise ValueError("Pixel Data longer than a 32-bit length allows")
    key = f"big-{frames}x{rows}x{columns}-v{FORMAT_VERSION}"
    root = cache / key
    manifest = root / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        return DataSet("big", root, 1, int(info["bytes"]))
    if say is not None:
        say(f"generating one {frames}-frame instance ({length / 1e9:.1f} GB) into {root}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{key}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "part0").mkdir(parents=True)
    sop_uid, study_uid = _uid(), _uid()
    ds = Dataset()
    ds.file_meta = _file_meta(MF_GRAY_WORD_SC, sop_uid)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = MF_GRAY_WORD_SC
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "OT"
    ds.ConversionType = "SYN"
    _patient_study(ds, 9999, study_uid)
    ds.SeriesInstanceUID = _uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 33.3
    _image_pixel(ds, rows, columns)
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    path = tmp / "part0" / "big.dcm"
    ds.save_as(path, enforce_file_format=True)  # everything but Pixel Data, the last element
    rng = np.random.default_rng(7)
    pool = _random_frames(rng, 16, rows, columns)
    t0 = time.monotonic()
    with path.open("ab") as fp:
        # (7FE0,0010) OW, Explicit VR Little Endian: tag, VR, 2 reserved bytes, 32-bit length.
        fp.write(struct.pack("<HH2sxxI", 0x7FE0, 0x0010, b"OW", length))
        for i in range(frames):
            frame = pool[i % len(pool)].copy()
            frame.flat[0] = i % 32768  # every frame differs
            fp.write(frame.tobytes())
    total = path.stat().st_size
    (tmp / "manifest.json").write_text(json.dumps({"frames": frames, "bytes": total}))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    os.sync()
    if say is not None:
        say(f"  {total / 1e6:,.0f} MB in {time.monotonic() - t0:.0f} s")
    return DataSet("big", root, 1, total)
