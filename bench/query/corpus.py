"""A synthetic archive for the query benchmark: patients, studies, series, described without any file.

The corpus of N instances is the first N/400 studies of one endless, seeded sequence, so a
smaller corpus is a prefix of a larger one and every server sees the same attributes.  Each
study has 4 series of 100 instances (the last study may be cut short).  About a third of the
studies belong to a patient met before, so some patients have several studies; study dates
are spread uniformly over 20 years; names come from the lists below.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass

SERIES_PER_STUDY = 4
PER_SERIES = 100
PER_STUDY = SERIES_PER_STUDY * PER_SERIES
# Bumped whenever the generated attributes change, so that cached indexes are rebuilt.
CORPUS_VERSION = 1
SEED = 20240401
# Our own UID root (PS3.5 B.2: 2.25 + a UUID as an integer), then .2 for this corpus.
UID_ROOT = "2.25.211739425094741178120939232104193.2"
REUSE_PATIENT = 0.35  # chance that a new study belongs to a patient met before
FIRST_DATE = dt.date(2005, 1, 1)
DAYS = 20 * 365

FAMILY_NAMES = (
    "ADAMS",
    "ALLEN",
    "ANDERSON",
    "BAILEY",
    "BAKER",
    "BARNES",
    "BELL",
    "BENNETT",
    "BROOKS",
    "BROWN",
    "BRYANT",
    "BUTLER",
    "CAMPBELL",
    "CARTER",
    "CLARK",
    "COLEMAN",
    "COLLINS",
    "COOK",
    "COOPER",
    "COX",
    "DAVIS",
    "DIAZ",
    "EDWARDS",
    "EVANS",
    "FISHER",
    "FLORES",
    "FOSTER",
    "GARCIA",
    "GOMEZ",
    "GONZALEZ",
    "GRAY",
    "GREEN",
    "GRIFFIN",
    "HALL",
    "HARRIS",
    "HAYES",
    "HENDERSON",
    "HERNANDEZ",
    "HILL",
    "HOWARD",
    "HUGHES",
    "JACKSON",
    "JAMES",
    "JENKINS",
    "JOHNSON",
    "JONES",
    "KELLY",
    "KING",
    "LEE",
    "LEWIS",
    "LONG",
    "LOPEZ",
    "MARTIN",
    "MARTINEZ",
    "MILLER",
    "MITCHELL",
    "MOORE",
    "MORGAN",
    "MORRIS",
    "MURPHY",
    "NELSON",
    "NGUYEN",
    "PARKER",
    "PATTERSON",
    "PEREZ",
    "PERRY",
    "PETERSON",
    "PHILLIPS",
    "POWELL",
    "PRICE",
    "RAMIREZ",
    "REED",
    "RICHARDSON",
    "RIVERA",
    "ROBERTS",
    "ROBINSON",
    "RODRIGUEZ",
    "ROGERS",
    "ROSS",
    "RUSSELL",
    "SANCHEZ",
    "SANDERS",
    "SCOTT",
    "SIMMONS",
    "SMITH",
    "STEWART",
    "SULLIVAN",
    "TAYLOR",
    "THOMAS",
    "THOMPSON",
    "TORRES",
    "TURNER",
    "WALKER",
    "WARD",
    "WASHINGTON",
    "WATSON",
    "WHITE",
    "WILLIAMS",
    "WILSON",
    "WOOD",
    "WRIGHT",
    "YOUNG",
)
GIVEN_NAMES = (
    "AARON",
    "ALICE",
    "AMY",
    "ANNA",
    "ARTHUR",
    "BEN",
    "BETTY",
    "CARL",
    "CAROL",
    "CHLOE",
    "DANIEL",
    "DIANA",
    "EDWARD",
    "ELENA",
    "EMMA",
    "FRANK",
    "GRACE",
    "HANNAH",
    "HARRY",
    "HELEN",
    "IAN",
    "IRENE",
    "JACK",
    "JANE",
    "JOHN",
    "JULIA",
    "KAREN",
    "KEVIN",
    "LAURA",
    "LEO",
    "LINDA",
    "LUCAS",
    "MARIA",
    "MARK",
    "MIA",
    "NATHAN",
    "NINA",
    "OLIVER",
    "OLGA",
    "PAUL",
    "PETER",
    "QUINN",
    "RACHEL",
    "ROSE",
    "SAM",
    "SARAH",
    "SOFIA",
    "TOM",
    "URSULA",
    "VICTOR",
    "VERA",
    "WALTER",
    "WENDY",
    "XAVIER",
    "YARA",
    "ZOE",
)
# (modalities of the 4 series, weight, study description)
STUDY_KINDS = (
    (("CT", "CT", "CT", "CT"), 40, "CT CHEST ABDOMEN PELVIS"),
    (("MR", "MR", "MR", "MR"), 30, "MR BRAIN"),
    (("PT", "PT", "CT", "CT"), 10, "PET-CT WHOLE BODY"),
    (("US", "US", "US", "US"), 10, "US ABDOMEN"),
    (("DX", "DX", "DX", "DX"), 10, "XR CHEST"),
)
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
}


@dataclass(frozen=True, slots=True)
class Patient:
    number: int
    id: str
    name: str  # FAMILY^GIVEN
    birth_date: str
    sex: str


@dataclass(frozen=True, slots=True)
class Series:
    uid: str
    number: int
    modality: str
    description: str
    instances: int

    @property
    def sop_class_uid(self) -> str:
        return SOP_CLASSES[self.modality]

    def instance_uid(self, k: int) -> str:
        """The SOP Instance UID of the k-th instance (0-based) of this series."""
        return f"{self.uid}.{k + 1}"


@dataclass(frozen=True, slots=True)
class Study:
    number: int
    patient: Patient
    uid: str
    date: str
    time: str
    accession: str
    description: str
    series: tuple[Series, ...]

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.series)

    @property
    def modalities(self) -> str:
        return "\\".join(sorted({s.modality for s in self.series}))


def studies(total_instances: int) -> Iterator[Study]:
    """The studies of the corpus of ``total_instances`` instances, in order."""
    rng = random.Random(SEED)
    patients: list[Patient] = []
    kinds = [k for k in STUDY_KINDS]
    weights = [k[1] for k in STUDY_KINDS]
    left = total_instances
    number = 0
    while left > 0:
        number += 1
        # Draw everything for this study first, so the sequence does not depend on the total.
        reuse = patients and rng.random() < REUSE_PATIENT
        old = rng.randrange(len(patients)) if patients else 0
        family, given = rng.choice(FAMILY_NAMES), rng.choice(GIVEN_NAMES)
        birth = FIRST_DATE - dt.timedelta(days=rng.randrange(365 * 5, 365 * 90))
        sex = rng.choice("MF")
        modalities, _, description = rng.choices(kinds, weights)[0]
        date = FIRST_DATE + dt.timedelta(days=rng.randrange(DAYS))
        seconds = rng.randrange(7 * 3600, 20 * 3600)
        if reuse:
            patient = patients[old]
        else:
            n = len(patients) + 1
            patient = Patient(n, f"PQ{n:07d}", f"{family}^{given}", f"{birth:%Y%m%d}", sex)
            patients.append(patient)
        uid = f"{UID_ROOT}.{number}"
        series = []
        for s, modality in enumerate(modalities):
            count = min(PER_SERIES, left)
            if count <= 0:
                break
            left -= count
            series.append(Series(f"{uid}.{s + 1}", s + 1, modality, f"{modality} series {s + 1}", count))
        yield Study(
            number,
            patient,
            uid,
            f"{date:%Y%m%d}",
            f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
            f"A{number:08d}",
            description,
            tuple(series),
        )


def study_list(total_instances: int) -> list[Study]:
    """All studies of the corpus (2,500 for 1,000,000 instances: small enough to hold)."""
    return list(studies(total_instances))
