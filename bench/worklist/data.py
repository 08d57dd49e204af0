"""Synthetic Modality Worklist items for the worklist benchmark, described in memory and written as
DCMTK-style ``.wl`` files (one per scheduled procedure step) into a cache folder.

The items are one seeded sequence: a pool of patients (names from bench/query/corpus.py), each
item a requested procedure with one Scheduled Procedure Step on one of 40 stations (AE titles
like CT01; the modality mix below), on a day of one year between 07:00 and 19:00.  The same seed
and count always give the same items, so the expected matches of a query are computed from the
description, never from the files.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from bench.query.corpus import FAMILY_NAMES, GIVEN_NAMES

# Bumped whenever the generated attributes change, so that cached files are rewritten.
FORMAT_VERSION = 1
SEED = 20250101
# Our own UID root (PS3.5 B.2: 2.25 + a UUID as an integer), then .3 for this corpus.
UID_ROOT = "2.25.211739425094741178120939232104193.3"
# What DCMTK's dump2dcm writes into .wl files as Media Storage SOP Class (wlmscpfs ignores it).
WL_MEDIA_CLASS = "1.2.276.0.7230010.3.1.0.1"
# Modality -> number of stations; 40 stations in all.
STATIONS_PER_MODALITY = {
    "CT": 8,
    "MR": 6,
    "US": 6,
    "CR": 5,
    "DX": 5,
    "MG": 3,
    "NM": 2,
    "XA": 2,
    "RF": 2,
    "PT": 1,
}
MODALITY_WEIGHTS = {
    "CT": 25,
    "MR": 18,
    "US": 15,
    "CR": 12,
    "DX": 12,
    "MG": 6,
    "NM": 4,
    "XA": 3,
    "RF": 3,
    "PT": 2,
}
FIRST_DAY = dt.date(2025, 1, 1)
DAYS = 365
ITEMS_PER_PATIENT = 2.5  # on average
PROCEDURES = {
    "CT": ("CT HEAD", "CT CHEST", "CT ABDOMEN PELVIS"),
    "MR": ("MR BRAIN", "MR KNEE", "MR SPINE"),
    "US": ("US ABDOMEN", "US THYROID", "US OBSTETRIC"),
    "CR": ("CR CHEST", "CR HAND"),
    "DX": ("DX CHEST", "DX PELVIS"),
    "MG": ("MG SCREENING",),
    "NM": ("NM BONE SCAN",),
    "XA": ("XA CORONARY",),
    "RF": ("RF SWALLOW",),
    "PT": ("PT WHOLE BODY",),
}
PHYSICIANS = ("SMITH^ANNA", "NGUYEN^BAO", "MUELLER^KLAUS", "ROSSI^LUCA", "DUBOIS^CLAIRE", "TANAKA^KEN")


@dataclass(frozen=True)
class Item:
    """One worklist item: a requested procedure with its one Scheduled Procedure Step."""

    index: int
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    accession: str
    study_uid: str
    procedure: str
    modality: str
    station: str  # Scheduled Station AE Title
    station_name: str
    date: str  # Scheduled Procedure Step Start Date
    time: str
    physician: str

    @property
    def file_name(self) -> str:
        return f"item{self.index:06d}.wl"

    def dataset(self) -> Dataset:
        """The item as a worklist data set (the attributes of DCMTK's sample .wl files)."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.AccessionNumber = self.accession
        ds.PatientName = self.patient_name
        ds.PatientID = self.patient_id
        ds.PatientBirthDate = self.birth_date
        ds.PatientSex = self.sex
        ds.MedicalAlerts = ""
        ds.Allergies = ""
        ds.StudyInstanceUID = self.study_uid
        ds.RequestingPhysician = self.physician
        ds.RequestedProcedureDescription = self.procedure
        step = Dataset()
        step.Modality = self.modality
        step.RequestedContrastAgent = ""
        step.ScheduledStationAETitle = self.station
        step.ScheduledProcedureStepStartDate = self.date
        step.ScheduledProcedureStepStartTime = self.time
        step.ScheduledPerformingPhysicianName = self.physician
        step.ScheduledProcedureStepDescription = self.procedure
        step.ScheduledProcedureStepID = f"SPS{self.index:07d}"
        step.ScheduledStationName = self.station_name
        step.ScheduledProcedureStepLocation = f"ROOM {self.station}"
        step.PreMedication = ""
        step.CommentsOnTheScheduledProcedureStep = ""
        ds.ScheduledProcedureStepSequence = [step]
        ds.RequestedProcedureID = f"RP{self.index:07d}"
        ds.RequestedProcedurePriority = "ROUTINE"
        return ds


def stations() -> dict[str, list[str]]:
    """Modality -> its stations' AE titles (CT01, CT02, ...)."""
    return {m: [f"{m}{k:02d}" for k in range(1, n + 1)] for m, n in STATIONS_PER_MODALITY.items()}


def items(count: int, seed: int = SEED) -> list[Item]:
    """The first ``count`` items of the seeded sequence."""
    rng = random.Random(seed)
    by_modality = stations()
    modalities = list(MODALITY_WEIGHTS)
    weights = list(MODALITY_WEIGHTS.values())
    patients: list[tuple[str, str, str, str]] = []
    out = []
    for i in range(count):
        if not patients or rng.random() < 1 / ITEMS_PER_PATIENT:
            n = len(patients)
            name = f"{rng.choice(FAMILY_NAMES)}^{rng.choice(GIVEN_NAMES)}"
            born = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(90 * 365))
            patients.append((f"P{n:07d}", name, born.strftime("%Y%m%d"), rng.choice("FM")))
            patient = patients[-1]
        else:
            patient = rng.choice(patients)
        modality = rng.choices(modalities, weights)[0]
        station = rng.choice(by_modality[modality])
        day = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS))
        minutes = 7 * 60 + 5 * rng.randrange(12 * 12)
        out.append(
            Item(
                index=i,
                patient_id=patient[0],
                patient_name=patient[1],
                birth_date=patient[2],
                sex=patient[3],
                accession=f"A{seed % 1000:03d}{i:07d}",
                study_uid=f"{UID_ROOT}.{seed}.{i}",
                procedure=rng.choice(PROCEDURES[modality]),
                modality=modality,
                station=station,
                station_name=f"{station} ROOM",
                date=day.strftime("%Y%m%d"),
                time=f"{minutes // 60:02d}{minutes % 60:02d}00",
                physician=rng.choice(PHYSICIANS),
            )
        )
    return out


def write_file(item: Item, path: Path) -> None:
    """One .wl file as DCMTK writes them: File Meta Information, then the data set, Explicit VR LE."""
    ds = item.dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(WL_MEDIA_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(f"{item.study_uid}.1")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def prepare(
    cache: Path, ae_title: str, worklist: Sequence[Item], seed: int, say: Callable[[str], None]
) -> Path:
    """The wlmscpfs database folder holding one .wl file per item (written once, then reused).

    Returns the folder to pass as ``wlmscpfs -dfp``: it holds ``<ae_title>/`` with the files and
    the ``lockfile`` wlmscpfs needs.  A ``complete`` marker is written last, so an interrupted
    run is redone.
    """
    root = cache / f"worklist-{len(worklist)}-s{seed}-v{FORMAT_VERSION}"
    folder = root / ae_title
    marker = root / "complete"
    if marker.is_file() and folder.is_dir():
        say(f"  worklist files: {len(worklist)} items in {folder} (cached)")
        return root
    shutil.rmtree(root, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.monotonic()
    for item in worklist:
        write_file(item, folder / item.file_name)
    (folder / "lockfile").touch()
    marker.touch()
    say(f"  worklist files: wrote {len(worklist)} items into {folder} in {time.monotonic() - t0:.1f} s")
    return root
