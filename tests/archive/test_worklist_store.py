"""The Modality Worklist store and its matching (PS3.4 Annex K, C.2.2.2): items kept in the index,
matched on any key and inside the Scheduled Procedure Step Sequence, cancelled, listed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from pacsnode.archive.index import ArchiveIndex
from pacsnode.archive.qr_model import QueryOptions
from pacsnode.archive.query import QueryError, elements_of
from pacsnode.archive.worklist import Worklist, WorklistError
from peerkit import TESTDATA

ITEMS = sorted((TESTDATA / "worklist" / "wlistdb" / "OFFIS").glob("*.wl"))


@pytest.fixture
def worklist(tmp_path: Path, index_url: str):
    index = ArchiveIndex(index_url or f"sqlite:///{tmp_path / 'index.sqlite'}")
    index.migrate()
    wl = Worklist(index)
    ids = [wl.add(dcmread(p)) for p in ITEMS]
    assert len(ids) == len(ITEMS) == len(set(ids))
    yield wl
    index.dispose()


def _query(**keys: object) -> Dataset:
    q = Dataset()
    q.PatientName = ""
    q.PatientID = ""
    step = Dataset()
    step.Modality = keys.pop("Modality", "")
    step.ScheduledStationAETitle = keys.pop("ScheduledStationAETitle", "")
    step.ScheduledProcedureStepStartDate = keys.pop("ScheduledProcedureStepStartDate", "")
    step.ScheduledProcedureStepStartTime = keys.pop("ScheduledProcedureStepStartTime", "")
    step.ScheduledPerformingPhysicianName = keys.pop("ScheduledPerformingPhysicianName", "")
    q.ScheduledProcedureStepSequence = [step]
    for keyword, value in keys.items():
        setattr(q, keyword, value)
    return q


def _expected(predicate) -> set[str]:
    out = set()
    for path in ITEMS:
        ds = dcmread(path)
        if predicate(ds, ds.ScheduledProcedureStepSequence[0]):
            out.add(str(ds.PatientID))
    return out


def _found(wl: Worklist, query: Dataset) -> list:
    return list(wl.find(elements_of(query), QueryOptions()))


def test_universal_query_answers_every_item_with_the_keys_asked(worklist):
    answers = _found(worklist, _query())
    assert len(answers) == len(ITEMS)
    for answer in answers:
        tags = {tag for tag, _, _ in answer.items()}
        assert tags == {0x00100010, 0x00100020, 0x00400100}
        (step,) = answer.elements[0x00400100][1]
        assert {int(e.tag) for e in step} == {0x00080060, 0x00400001, 0x00400002, 0x00400003, 0x00400006}


@pytest.mark.parametrize(
    ("keys", "predicate"),
    [
        ({"Modality": "MR"}, lambda ds, s: s.Modality == "MR"),
        ({"ScheduledStationAETitle": "AA33"}, lambda ds, s: "AA33" in list(s.ScheduledStationAETitle)),
        (
            {"ScheduledProcedureStepStartDate": "19951015-19951016"},
            lambda ds, s: "19951015" <= str(s.ScheduledProcedureStepStartDate) <= "19951016",
        ),
        ({"PatientName": "vivaldi*"}, lambda ds, s: str(ds.PatientName).upper().startswith("VIVALDI")),
        ({"PatientID": "AV35674"}, lambda ds, s: ds.PatientID == "AV35674"),
    ],
)
def test_matching(worklist, keys, predicate):
    found = {str(a.elements[0x00100020][1]) for a in _found(worklist, _query(**keys))}
    assert found == _expected(predicate)
    assert found  # the corpus has matches for each of these


def test_cancelled_items_no_longer_answer(worklist):
    items = worklist.listing()
    first = items[0]
    assert worklist.cancel(first["id"]) is True
    assert worklist.cancel(first["id"]) is False
    assert len(_found(worklist, _query())) == len(ITEMS) - 1
    assert [i["id"] for i in worklist.listing(include_canceled=True) if i["status"] == "CANCELED"] == [
        first["id"]
    ]
    # a fresh store over the same index (a restart) agrees
    assert len(_found(Worklist(worklist.index), _query())) == len(ITEMS) - 1


def test_bad_items_and_bad_keys(worklist):
    with pytest.raises(WorklistError, match="Scheduled Procedure Step"):
        worklist.add(Dataset())
    with pytest.raises(QueryError):
        _found(worklist, _query(ScheduledProcedureStepStartDate="2020-ab"))


def test_a_person_name_is_one_value_not_its_characters():
    # A regression of the matching shared with C-FIND: multi_values() iterated a PersonName
    # into characters, so a name key read from a stored header matched nothing.
    from pydicom.valuerep import PersonName

    from pacsnode.archive.matching import multi_values

    assert multi_values(PersonName("VIVALDI^ANTONIO")) == ["VIVALDI^ANTONIO"]
