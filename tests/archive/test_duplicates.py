"""Duplicate SOP Instance UIDs (PS3.4 B.2.3, PS3.7 C.5 0111H) under each duplicate_policy, and
C-STORE-RQs whose command disagrees with their data set (0xA900): what is answered, what stays
on disk, what the index and its change log say."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from pacsnode.dimse.status import Status
from peerkit import (
    assert_computed_attributes,
    assert_consistent,
    index_rows,
    item_of,
    make_instance,
    new_uid,
    object_files,
    part10_dataset,
    pynetdicom_store,
    raw_store,
)

POLICIES = ["reject", "keep-first", "replace"]


def send(node: Any, *datasets: Any, calling: str = "SENDER") -> list[Any]:
    return pynetdicom_store(node.host, node.port, list(datasets), called=node.ae_title, calling=calling)


def stored_bytes(node: Any, uid: str) -> bytes:
    row = node.index.instance(uid)
    assert row is not None, f"{uid} not indexed"
    return part10_dataset(node.data / row["path"])[3]


def kinds(node: Any) -> list[tuple[str, str]]:
    return [(c["kind"], c["sop_instance_uid"]) for c in index_rows(node.index)["changes"]]


@pytest.mark.parametrize("policy", POLICIES)
def test_identical_resend_is_success_and_kept_once(make_storage_node, policy):
    node = make_storage_node(duplicate_policy=policy)
    ds = make_instance()
    (first,) = send(node, ds)
    path = node.index.instance(ds.SOPInstanceUID)["path"]
    # Again on the same association, and again on another one.
    assert [s.status for s in send(node, ds, ds)] == [0, 0]
    (again,) = send(node, ds, calling="OTHER")
    assert first.ok and again.ok
    assert node.index.counts()["instances"] == 1
    assert node.index.instance(ds.SOPInstanceUID)["path"] == path
    assert object_files(node.data) == [path]
    assert kinds(node) == [("created", ds.SOPInstanceUID)]
    assert_consistent(node.data, node.index)


def test_reject_answers_0111_and_keeps_the_first(make_storage_node):
    node = make_storage_node(duplicate_policy="reject")
    first = make_instance()
    send(node, first)
    row = node.index.instance(first.SOPInstanceUID)
    original = (node.data / row["path"]).read_bytes()
    other = make_instance(
        study=first.StudyInstanceUID, series=first.SeriesInstanceUID, sop_instance=first.SOPInstanceUID
    )
    (status,) = send(node, other)
    assert status.status == Status.DUPLICATE_SOP_INSTANCE
    assert status.comment, "a refused duplicate carries an Error Comment"
    assert node.index.instance(first.SOPInstanceUID) == row
    assert (node.data / row["path"]).read_bytes() == original
    assert object_files(node.data) == [row["path"]]
    assert kinds(node) == [("created", first.SOPInstanceUID)]
    assert_consistent(node.data, node.index)


def test_keep_first_answers_success_and_logs_the_ignored_copy(make_storage_node):
    node = make_storage_node(duplicate_policy="keep-first")
    first = make_instance()
    send(node, first)
    row = node.index.instance(first.SOPInstanceUID)
    original = (node.data / row["path"]).read_bytes()
    other = make_instance(sop_instance=first.SOPInstanceUID)  # even in another study
    (status,) = send(node, other)
    assert status.ok
    assert node.index.instance(first.SOPInstanceUID) == row
    assert (node.data / row["path"]).read_bytes() == original
    assert object_files(node.data) == [row["path"]]
    assert kinds(node) == [("created", first.SOPInstanceUID), ("duplicate-ignored", first.SOPInstanceUID)]
    assert node.index.counts() == {
        "patients": 1,
        "studies": 1,
        "series": 1,
        "instances": 1,
        "non_patient_objects": 0,
    }
    assert_computed_attributes(node.index)
    assert_consistent(node.data, node.index)


def test_replace_stores_the_new_object_and_deletes_the_old_file(make_storage_node):
    node = make_storage_node(duplicate_policy="replace")
    first = make_instance()
    send(node, first)
    old_path = node.index.instance(first.SOPInstanceUID)["path"]
    other = make_instance(
        study=first.StudyInstanceUID, series=first.SeriesInstanceUID, sop_instance=first.SOPInstanceUID
    )
    (status,) = send(node, other)
    assert status.ok
    row = node.index.instance(first.SOPInstanceUID)
    new_bytes = item_of(other)[3]
    assert stored_bytes(node, first.SOPInstanceUID) == new_bytes
    assert row["sha256"] == hashlib.sha256(new_bytes).hexdigest()
    assert row["path"] != old_path and not (node.data / old_path).exists()
    assert object_files(node.data) == [row["path"]]
    assert kinds(node) == [("created", first.SOPInstanceUID), ("replaced", first.SOPInstanceUID)]
    assert node.index.counts()["instances"] == 1
    assert_computed_attributes(node.index)
    assert_consistent(node.data, node.index)


def test_replace_keeps_counts_right_when_the_object_moves(make_storage_node):
    """A replacement filed under another series and study: both sides are recounted."""
    node = make_storage_node(duplicate_policy="replace")
    s1, x, y = new_uid(), new_uid(), new_uid()
    a = make_instance(study=s1, series=x, modality="CT")
    b = make_instance(study=s1, series=x, modality="CT")
    c = make_instance(study=s1, series=y, modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4")
    assert all(s.ok for s in send(node, a, b, c))
    rows = assert_computed_attributes(node.index)
    (study1,) = rows["studies"]
    assert (study1["number_of_study_related_series"], study1["number_of_study_related_instances"]) == (2, 3)
    assert study1["modalities_in_study"] == "CT\\MR"

    # a moves to a new study and series (another modality).
    s2, z = new_uid(), new_uid()
    a2 = make_instance(study=s2, series=z, modality="US", sop_instance=a.SOPInstanceUID)
    assert send(node, a2)[0].ok
    rows = assert_computed_attributes(node.index)
    studies = {s["study_instance_uid"]: s for s in rows["studies"]}
    assert studies[s1]["number_of_study_related_instances"] == 2
    assert studies[s1]["modalities_in_study"] == "CT\\MR"
    assert studies[s2]["number_of_study_related_series"] == 1
    assert studies[s2]["number_of_study_related_instances"] == 1
    assert studies[s2]["modalities_in_study"] == "US"
    series = {s["series_instance_uid"]: s for s in rows["series"]}
    assert series[x]["number_of_series_related_instances"] == 1
    assert series[z]["number_of_series_related_instances"] == 1

    # c, the only instance of series y, moves into series x: y is empty, MR leaves the study.
    c2 = make_instance(study=s1, series=x, modality="CT", sop_instance=c.SOPInstanceUID)
    assert send(node, c2)[0].ok
    rows = assert_computed_attributes(node.index)
    studies = {s["study_instance_uid"]: s for s in rows["studies"]}
    s1_row = studies[s1]
    assert (s1_row["number_of_study_related_series"], s1_row["number_of_study_related_instances"]) == (1, 2)
    assert s1_row["modalities_in_study"] == "CT"
    assert s1_row["sop_classes_in_study"] == "1.2.840.10008.5.1.4.1.1.2"
    assert node.index.counts()["instances"] == 3
    assert [k for k, _ in kinds(node)] == ["created"] * 3 + ["replaced"] * 2
    assert len(object_files(node.data)) == 3
    assert_consistent(node.data, node.index)


@pytest.mark.parametrize("policy", POLICIES)
def test_same_uid_twice_in_one_commit_group(make_storage_node, tmp_path, policy):
    """Two different objects with one UID in the same group commit (local import does that)."""
    node = make_storage_node(duplicate_policy=policy)
    first = make_instance()
    second = make_instance(sop_instance=first.SOPInstanceUID)
    paths = []
    for i, ds in enumerate((first, second)):
        path = tmp_path / f"in{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    results = node.node.archive.import_files(paths)
    expected = {
        "reject": [Status.SUCCESS, Status.DUPLICATE_SOP_INSTANCE],
        "keep-first": [Status.SUCCESS, Status.SUCCESS],
        "replace": [Status.SUCCESS, Status.SUCCESS],
    }[policy]
    assert [r.status for r in results] == expected
    winner = second if policy == "replace" else first
    assert stored_bytes(node, first.SOPInstanceUID) == item_of(winner)[3]
    assert node.index.counts()["instances"] == 1
    assert len(object_files(node.data)) == 1
    assert_computed_attributes(node.index)
    assert_consistent(node.data, node.index)


@pytest.mark.parametrize("what", ["instance", "class"])
def test_command_and_data_set_disagree(storage_node, what):
    """PS3.4 B.2.3: Affected SOP Instance/Class UID differs from the data set's -> 0xA900."""
    ds = make_instance()
    sop_class, sop_instance, ts, data = item_of(ds)
    if what == "instance":
        (rsp,) = raw_store(storage_node.host, storage_node.port, [item_of(ds)], command_uids=[new_uid()])
    else:
        # The data set says CT; the command (and its context) say MR.
        mr = "1.2.840.10008.5.1.4.1.1.4"
        (rsp,) = raw_store(storage_node.host, storage_node.port, [(mr, sop_instance, ts, data)])
    assert rsp.status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert rsp.error_comment
    assert storage_node.index.counts()["instances"] == 0
    assert object_files(storage_node.data) == []
    assert_consistent(storage_node.data, storage_node.index)
    # The association and the node are fine afterwards: the same instance, told right, is stored.
    (ok,) = raw_store(storage_node.host, storage_node.port, [(sop_class, sop_instance, ts, data)])
    assert ok.status == Status.SUCCESS
    assert stored_bytes(storage_node, sop_instance) == data


@pytest.mark.parametrize("policy", ["reject", "keep-first", "replace"])
def test_non_patient_object_duplicates_follow_the_policy(make_storage_node, policy) -> None:
    from pydicom import dcmread

    from peerkit import need_testdata, part10_dataset

    path = need_testdata("modalities", "PAL_hotiron_color_palette.dcm")
    node = make_storage_node(duplicate_policy=policy)
    first = dcmread(path)
    assert pynetdicom_store(node.host, node.port, [first])[0].ok
    old = node.index.instance(first.SOPInstanceUID)
    assert pynetdicom_store(node.host, node.port, [first])[0].ok  # identical: one copy
    assert node.index.instance(first.SOPInstanceUID) == old
    second = dcmread(path)
    second.ContentLabel = "CHANGED"
    (status,) = pynetdicom_store(node.host, node.port, [second])
    row = node.index.instance(first.SOPInstanceUID)
    if policy == "reject":
        assert status.status == 0x0111 and row == old
    elif policy == "keep-first":
        assert status.ok and row == old
    else:
        assert status.ok and row["sha256"] != old["sha256"]
        assert not (node.data / old["path"]).exists()
        assert dcmread(node.data / row["path"]).ContentLabel == "CHANGED"
    assert part10_dataset(node.data / row["path"])[1] == first.SOPInstanceUID
    assert_consistent(node.data, node.index)
