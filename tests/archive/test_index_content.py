"""What the index holds after ingest (PS3.4 C.6): patient/study/series/instance rows, the computed
attributes (Number of Study/Series Related Series/Instances, Modalities and SOP Classes in Study)
and the change log, for the hierarchy/ test data, over C-STORE and over local import."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from pacsnode.archive.ingest import Archive
from pacsnode.dimse.status import Status
from peerkit import (
    OBJECT_NAME,
    assert_computed_attributes,
    assert_consistent,
    need_testdata,
    part10_dataset,
    pynetdicom_store,
    storage_settings,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
LEGACY_CT = "1.2.840.10008.5.1.4.1.1.2.2"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
MR = "1.2.840.10008.5.1.4.1.1.4"

# Sent in this order, in these associations (so counts are built up across commits).
BATCHES = [
    ["ct_series_with_seg/IMG0001.dcm", "ct_series_with_seg/IMG0002.dcm"],
    ["ct_series_with_seg/label_seg.dcm", "ct_series_with_seg/IMG0003.dcm"],
    ["ct_series_with_seg/legacy_enhanced_mf.dcm", "patient_id_collision/Image1.dcm"],
    [
        "patient_id_collision/Image2.dcm",
        "patient_id_collision/Image3.dcm",
        "patient_id_collision/Issue131-a.dcm",
        "patient_id_collision/Issue131-b.dcm",
    ],
    ["patient_with_2_studies/study_1234.dcm", "patient_with_2_studies/study_2345.dcm"],
]
ORDER = [name for batch in BATCHES for name in batch]


@pytest.fixture
def hierarchy() -> Path:
    return need_testdata("hierarchy")


def ingest_by_c_store(make_storage_node, hierarchy: Path) -> Any:
    node = make_storage_node()
    for batch in BATCHES:
        datasets = [dcmread(hierarchy / name) for name in batch]
        statuses = pynetdicom_store(node.host, node.port, datasets, called=node.ae_title, calling="MODALITY1")
        assert [s.status for s in statuses] == [0] * len(batch), statuses
    return node


class Imported:
    """An Archive used without a network: what `pacsnode import` will run."""

    def __init__(self, data: Path, index_url: str) -> None:
        self.data = data
        self.archive = Archive(storage_settings(data, index_url))
        self.archive.open()
        self.index = self.archive.index

    def close(self) -> None:
        asyncio.run(self.archive.close())


@pytest.fixture
def importer(tmp_path, index_url) -> Iterator[Any]:
    made: list[Imported] = []

    def make() -> Imported:
        imp = Imported(tmp_path / "imported", index_url)
        made.append(imp)
        return imp

    yield make
    for imp in made:
        imp.close()


def ingest_by_import(importer, hierarchy: Path) -> Any:
    imp = importer()
    for batch in BATCHES:
        results = imp.archive.import_files([hierarchy / name for name in batch], source_ae_title="IMPORT")
        assert [r.status for r in results] == [Status.SUCCESS] * len(batch), results
    return imp


@pytest.fixture(params=["c-store", "import"])
def ingested(request, make_storage_node, importer, hierarchy) -> tuple[Any, str]:
    if request.param == "c-store":
        return ingest_by_c_store(make_storage_node, hierarchy), "MODALITY1"
    return ingest_by_import(importer, hierarchy), "IMPORT"


def test_hierarchy_rows_and_computed_attributes(ingested, hierarchy):
    target, source_ae = ingested
    rows = assert_computed_attributes(target.index)
    assert_consistent(target.data, target.index)
    assert target.index.counts() == {
        "patients": 4,
        "studies": 7,
        "series": 10,
        "instances": 12,
        "non_patient_objects": 0,
    }

    patients = {(p["patient_id"], p["issuer_of_patient_id"]): p for p in rows["patients"]}
    # B's only instance belongs to A's study (2.25.123, below): B gets no patient record
    # of its own, which would be a patient without studies.
    assert set(patients) == {("123456", ""), ("COMMON", ""), ("A", ""), ("TEST_1", "")}
    # Same Patient ID, three names: the first instance's name stays (no silent merge of names).
    assert patients[("COMMON", "")]["patient_name"] == "HELLO"
    assert patients[("TEST_1", "")]["patient_name"] == "Test"

    studies = {s["study_instance_uid"]: s for s in rows["studies"]}
    by_pk = {p["id"]: key for key, p in patients.items()}
    ct = next(s for uid, s in studies.items() if uid.endswith("030292472423"))
    assert (ct["number_of_study_related_series"], ct["number_of_study_related_instances"]) == (3, 5)
    assert ct["modalities_in_study"] == "CT\\SEG"
    assert ct["sop_classes_in_study"] == "\\".join(sorted([CT, LEGACY_CT, SEG]))
    assert (ct["study_date"], ct["accession_number"]) == ("20060101", "1")
    assert by_pk[ct["patient_fk"]] == ("123456", "")

    # Two patients (A, B) sent the same Study Instance UID: the study stays with the first.
    shared = studies["2.25.123"]
    assert (shared["number_of_study_related_series"], shared["number_of_study_related_instances"]) == (2, 2)
    assert shared["modalities_in_study"] == ""  # these MR images have no Modality
    assert shared["sop_classes_in_study"] == MR
    assert by_pk[shared["patient_fk"]] == ("A", "")

    two = [studies["1.2.3"], studies["2.3.4"]]
    assert {by_pk[s["patient_fk"]] for s in two} == {("TEST_1", "")}
    assert [(s["study_date"], s["accession_number"]) for s in two] == [
        ("20100630", "1234"),
        ("20150101", "2345"),
    ]
    assert all(s["number_of_study_related_instances"] == 1 for s in two)
    common = [s for s in rows["studies"] if by_pk[s["patient_fk"]] == ("COMMON", "")]
    assert len(common) == 3

    ct_series = [s for s in rows["series"] if s["study_fk"] == ct["id"]]
    assert sorted((s["modality"], s["number_of_series_related_instances"]) for s in ct_series) == [
        ("CT", 1),
        ("CT", 3),
        ("SEG", 1),
    ]

    # Instance rows: what the file says, and the storage facts of the archived copy.
    instances = {i["sop_instance_uid"]: i for i in rows["instances"]}
    for name in ORDER:
        src = hierarchy / name
        sop_class, sop_instance, ts, data = part10_dataset(src)
        ds = dcmread(src, stop_before_pixels=True)
        row = instances[sop_instance]
        assert row["sop_class_uid"] == sop_class
        assert row["transfer_syntax_uid"] == ts
        assert row["source_ae_title"] == source_ae
        assert OBJECT_NAME.fullmatch(row["path"])
        stored = target.data / row["path"]
        assert row["size"] == stored.stat().st_size
        stored_data = part10_dataset(stored)[3]
        assert row["sha256"] == hashlib.sha256(stored_data).hexdigest()
        if source_ae == "IMPORT":
            assert stored_data == data  # imported files keep their data set bytes exactly
        assert row["instance_number"] == (int(ds.InstanceNumber) if "InstanceNumber" in ds else None)
        assert row["rows"] == ds.get("Rows")
        assert row["columns"] == ds.get("Columns")

    # Change log: one 'created' per instance, in arrival order.
    log = rows["changes"]
    assert [c["kind"] for c in log] == ["created"] * 12
    expected_uids = [part10_dataset(hierarchy / name)[1] for name in ORDER]
    assert [c["sop_instance_uid"] for c in log] == expected_uids
    assert [c["seq"] for c in log] == sorted(c["seq"] for c in log)
    for c in log:
        inst = instances[c["sop_instance_uid"]]
        ser = next(s for s in rows["series"] if s["id"] == inst["series_fk"])
        assert c["series_instance_uid"] == ser["series_instance_uid"]


def test_resending_everything_changes_nothing(ingested, hierarchy):
    """Identical instances again: Success, and rows, counts and files stay as they were."""
    target, _ = ingested
    before = assert_computed_attributes(target.index)
    files_before = assert_consistent(target.data, target.index)
    if isinstance(target, Imported):
        results = target.archive.import_files([hierarchy / name for name in ORDER])
        assert all(r.ok for r in results), results
    else:
        datasets = [dcmread(hierarchy / name) for name in ORDER]
        statuses = pynetdicom_store(target.host, target.port, datasets, called=target.ae_title)
        assert all(s.ok for s in statuses), statuses
    after = assert_computed_attributes(target.index)
    assert sorted(assert_consistent(target.data, target.index)) == sorted(files_before)
    for table in ("patients", "series", "instances", "changes"):
        assert after[table] == before[table], table
    strip = [{k: v for k, v in s.items() if k != "updated_at"} for s in before["studies"]]
    assert [{k: v for k, v in s.items() if k != "updated_at"} for s in after["studies"]] == strip
