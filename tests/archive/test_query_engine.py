"""The query engine (PS3.4 C.2.2.2 matching, C.4.1.2 levels) against a real index: SQLite and PostgreSQL.

Table-driven: each case is a level, the keys of an identifier and the names of the
entities of the fixture below that PS3.4 says must match.  The fixture stores
real files (some keys are read from them) in several character sets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import text

from pacsnode.archive.index import ArchiveIndex
from pacsnode.archive.qr_model import QueryOptions
from pacsnode.archive.query import QueryEngine, QueryError, build_select, prepare
from pacsnode.archive.records import instance_record
from pacsnode.data.transcode import decode, encode
from pacsnode.data.uids import EXPLICIT_VR_LITTLE_ENDIAN
from pacsnode.services.query_retrieve import decode_identifier, encode_answer
from peerkit import make_instance, new_uid


@dataclass(frozen=True)
class Study:
    name: str  # the fixture's own label, used by the cases
    patient: str
    patient_id: str
    charset: str | list[str] | None
    date: str
    time: str
    accession: str
    modalities: tuple[str, ...]
    extra: dict[str, Any]


STUDIES = [
    Study(
        "S1",
        "Doe^John",
        "PID1",
        None,
        "20200105",
        "101500",
        "ACC1",
        ("CT", "SR"),
        {"PatientComments": "smoker"},
    ),
    Study("S2", "DOE^JANE", "PID2", None, "20200107", "093000", "ACC2", ("MR",), {}),
    Study("S3", "Müller^Jürgen", "P%3_", "ISO_IR 100", "20210310", "180030", "A'3", ("CT",), {}),
    Study(
        "S4",
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "JP1",
        ["", "ISO 2022 IR 87"],
        "20190101",
        "",
        "",
        ("CR",),
        {},
    ),
    Study("S5", "山田^花子", "JP2", "ISO_IR 192", "20190102", "120000", "", ("CR",), {}),
    Study(
        "S6", "Hong^Gildong=洪^吉洞=홍^길동", "KR1", ["", "ISO 2022 IR 149"], "20190103", "", "", ("DX",), {}
    ),
    Study("S7", "Wang^XiaoDong=王^小东", "CN1", "GB18030", "20190104", "", "", ("MG",), {}),
    Study("S8", "Doe^John", "PID1", None, "20220202", "000000", "ACC8", ("CT",), {}),
]


@dataclass
class Archive:
    engine: QueryEngine
    index: ArchiveIndex
    uids: dict[str, str]  # study label -> StudyInstanceUID; "S1/CT" -> SeriesInstanceUID; ...


def _build(root: Path, url: str) -> Archive:
    index = ArchiveIndex(url or f"sqlite:///{root / 'index.sqlite'}")
    index.migrate()
    uids: dict[str, str] = {}
    records = []
    for study in STUDIES:
        study_uid = new_uid()
        uids[study.name] = study_uid
        for number, modality in enumerate(study.modalities, start=1):
            series_uid = new_uid()
            uids[f"{study.name}/{modality}"] = series_uid
            for instance_number in (1, 2):
                attributes: dict[str, Any] = {
                    "PatientName": study.patient,
                    "StudyDate": study.date,
                    "StudyTime": study.time,
                    "AccessionNumber": study.accession,
                    "SeriesNumber": number,
                    "InstanceNumber": instance_number,
                    **study.extra,
                }
                if study.charset is not None:
                    attributes["SpecificCharacterSet"] = study.charset
                ds = make_instance(
                    study=study_uid,
                    series=series_uid,
                    modality=modality,
                    patient_id=study.patient_id,
                    **attributes,
                )
                if study.name == "S1":
                    item = Dataset()
                    item.CodeValue = "CT123" if modality == "CT" else "SR9"
                    item.CodingSchemeDesignator = "LOCAL"
                    ds.ProcedureCodeSequence = Sequence([item])
                uids[f"{study.name}/{modality}/{instance_number}"] = str(ds.SOPInstanceUID)
                relative = f"objects/{ds.SOPInstanceUID}.dcm"
                path = root / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
                records.append(
                    instance_record(
                        ds,
                        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
                        path=relative,
                        size=path.stat().st_size,
                        sha256="0" * 64,
                        source_ae_title="TEST",
                        received_at=datetime.now(UTC),
                    )
                )
    index.store(records, "reject")
    return Archive(QueryEngine(index, lambda rel: root / rel, "PACSNODE"), index, uids)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("qarchive")
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_module_database")
    built = _build(root, url)
    yield built
    if url:
        built.index.drop_all()
    built.index.dispose()


def find(
    archive: Archive, level: str, root: str = "STUDY", options: QueryOptions | None = None, **keys: Any
) -> list[Dataset]:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    if level != "PATIENT" and "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = ""  # a return key, for the labels
    query = prepare(ds, root, options or QueryOptions())
    return [answer.dataset() for answer in archive.engine.find(query)]


def labels(archive: Archive, answers: list[Dataset], tag: str = "StudyInstanceUID") -> set[str]:
    by_uid = {uid: label for label, uid in archive.uids.items()}
    return {by_uid[str(a[tag].value)] for a in answers}


_ALL = {s.name for s in STUDIES}
_INSENSITIVE = QueryOptions()
_SENSITIVE = QueryOptions(case_insensitive_names=False)

# (keys at STUDY level of Study Root, options, the studies that must match, the rule of PS3.4 C.2.2.2)
STUDY_CASES: list[tuple[dict[str, Any], QueryOptions, set[str], str]] = [
    ({"PatientID": "PID1"}, _INSENSITIVE, {"S1", "S8"}, "single value"),
    ({"PatientID": ""}, _INSENSITIVE, _ALL, "universal"),
    ({"PatientID": "*"}, _INSENSITIVE, _ALL, "a lone * is universal"),
    ({"PatientID": "P%3_"}, _INSENSITIVE, {"S3"}, "SQL metacharacters are literal"),
    ({"PatientID": "P%*"}, _INSENSITIVE, {"S3"}, "wildcard after a literal %"),
    ({"PatientID": "P?3?"}, _INSENSITIVE, {"S3"}, "? is one character"),
    ({"PatientID": "PID?"}, _INSENSITIVE, {"S1", "S2", "S8"}, "? wildcard"),
    ({"PatientID": "x' OR '1'='1"}, _INSENSITIVE, set(), "quotes are data"),
    ({"PatientID": "%"}, _INSENSITIVE, set(), "a bare % matches only '%'"),
    ({"PatientName": "DOE*"}, _INSENSITIVE, {"S1", "S2", "S8"}, "wildcard, case-insensitive"),
    ({"PatientName": "Doe*"}, _SENSITIVE, {"S1", "S8"}, "wildcard, case-sensitive"),
    ({"PatientName": "doe^john"}, _INSENSITIVE, {"S1", "S8"}, "single value, case-insensitive"),
    ({"PatientName": "doe^john"}, _SENSITIVE, set(), "single value, case-sensitive"),
    ({"PatientName": "M?ller*"}, _INSENSITIVE, {"S3"}, "? matches a non-ASCII letter"),
    ({"PatientName": "MULLER^JURGEN"}, _INSENSITIVE, {"S3"}, "accents ignored when insensitive"),
    ({"PatientName": "山田*"}, _INSENSITIVE, {"S4", "S5"}, "any component group, IR 87 and UTF-8"),
    ({"PatientName": "山田^太郎"}, _INSENSITIVE, {"S4"}, "the ideographic group alone"),
    ({"PatientName": "=山田*"}, _INSENSITIVE, {"S4"}, "group by group: the ideographic group"),
    ({"PatientName": "やまだ*"}, _INSENSITIVE, {"S4"}, "the phonetic group"),
    ({"PatientName": "홍*"}, _INSENSITIVE, {"S6"}, "Korean, IR 149"),
    ({"PatientName": "王*"}, _INSENSITIVE, {"S7"}, "Chinese, GB18030"),
    ({"PatientName": "*ROU"}, _INSENSITIVE, {"S4"}, "leading wildcard"),
    ({"StudyDate": "20200101-20201231"}, _INSENSITIVE, {"S1", "S2"}, "date range"),
    ({"StudyDate": "-20190102"}, _INSENSITIVE, {"S4", "S5"}, "open start"),
    ({"StudyDate": "20210101-"}, _INSENSITIVE, {"S3", "S8"}, "open end"),
    ({"StudyDate": "20210310"}, _INSENSITIVE, {"S3"}, "single date"),
    ({"StudyTime": "1000-1100"}, _INSENSITIVE, {"S1"}, "time range"),
    (
        {"StudyTime": "-1800"},
        _INSENSITIVE,
        {"S1", "S2", "S3", "S5", "S8"},
        "a partial bound covers its minute",
    ),
    ({"StudyTime": "-175959"}, _INSENSITIVE, {"S1", "S2", "S5", "S8"}, "a full upper bound"),
    ({"StudyTime": "1800"}, _INSENSITIVE, {"S3"}, "a partial single time covers its span"),
    ({"AccessionNumber": "ACC1"}, _INSENSITIVE, {"S1"}, "single value"),
    ({"AccessionNumber": "\\ACC1"}, _INSENSITIVE, {"S1"}, "an empty member of a list matches nothing"),
    ({"AccessionNumber": "A'3"}, _INSENSITIVE, {"S3"}, "a quote in a value"),
    ({"ModalitiesInStudy": "MR"}, _INSENSITIVE, {"S2"}, "modalities in study"),
    (
        {"ModalitiesInStudy": ["CT", "MR"]},
        _INSENSITIVE,
        {"S1", "S2", "S3", "S8"},
        "any of several modalities",
    ),
    ({"ModalitiesInStudy": "S*"}, _INSENSITIVE, {"S1"}, "wildcard modality"),
    ({"ProcedureCodeSequence": [{"CodeValue": "CT123"}]}, _INSENSITIVE, {"S1"}, "sequence matching"),
    ({"ProcedureCodeSequence": [{"CodeValue": "NONE"}]}, _INSENSITIVE, set(), "sequence matching, no item"),
    ({"PatientComments": "*smok*"}, _INSENSITIVE, {"S1"}, "a key read from the stored file"),
    ({"PatientID": "PID1", "StudyDate": "2022*"}, _INSENSITIVE, {"S8"}, "no wildcard on dates: literal"),
]


def _identifier_value(value: Any) -> Any:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        items = []
        for keys in value:
            item = Dataset()
            for k, v in keys.items():
                setattr(item, k, v)
            items.append(item)
        return Sequence(items)
    return value


@pytest.mark.parametrize(
    ("keys", "options", "expected", "rule"), STUDY_CASES, ids=[c[3] for c in STUDY_CASES]
)
def test_study_level_matching(
    archive: Archive, keys: dict[str, Any], options: QueryOptions, expected: set[str], rule: str
) -> None:
    if "2022*" in keys.values():
        # PS3.4 C.2.2.2.4: DA takes no wildcard; '2022*' is not a date at all.
        with pytest.raises(QueryError) as err:
            find(archive, "STUDY", options=options, **keys)
        assert err.value.status == 0xC000
        return
    answers = find(archive, "STUDY", options=options, **{k: _identifier_value(v) for k, v in keys.items()})
    assert labels(archive, answers) == expected, rule


def test_combined_date_time_range(archive: Archive) -> None:
    # PS3.4 C.2.2.2.5.2: one range from the 5th at 10:30 to the 7th at 09:45.
    combined = QueryOptions(combined_datetime=True)
    answers = find(archive, "STUDY", options=combined, StudyDate="20200105-20200107", StudyTime="1030-0945")
    assert labels(archive, answers) == {"S2"}
    # Without it, the same keys are two independent ranges: 10:30..09:45 matches no time.
    assert find(archive, "STUDY", StudyDate="20200105-20200107", StudyTime="1030-0945") == []


def test_fuzzy_names_when_negotiated(archive: Archive) -> None:
    fuzzy = QueryOptions(fuzzy_names=True)
    assert labels(archive, find(archive, "STUDY", options=fuzzy, PatientName="john doe")) == {"S1", "S8"}
    assert find(archive, "STUDY", PatientName="john doe") == []


def test_uid_list_and_levels(archive: Archive) -> None:
    uids = archive.uids
    answers = find(archive, "STUDY", StudyInstanceUID=[uids["S1"], uids["S3"]])
    assert labels(archive, answers) == {"S1", "S3"}
    series = find(archive, "SERIES", StudyInstanceUID=uids["S1"], SeriesInstanceUID="", Modality="")
    assert labels(archive, series, "SeriesInstanceUID") == {"S1/CT", "S1/SR"}
    ct = find(archive, "SERIES", StudyInstanceUID=uids["S1"], Modality="C?", SeriesInstanceUID="")
    assert labels(archive, ct, "SeriesInstanceUID") == {"S1/CT"}
    images = find(
        archive,
        "IMAGE",
        StudyInstanceUID=uids["S1"],
        SeriesInstanceUID=uids["S1/CT"],
        SOPInstanceUID="",
        InstanceNumber="2",
    )
    assert labels(archive, images, "SOPInstanceUID") == {"S1/CT/2"}


def test_returned_values_and_computed_attributes(archive: Archive) -> None:
    (s1,) = find(
        archive,
        "STUDY",
        StudyInstanceUID=archive.uids["S1"],
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        PatientName="",
        PatientComments="",
        InstanceAvailability="",
    )
    assert set(s1.ModalitiesInStudy) == {"CT", "SR"}
    assert int(s1.NumberOfStudyRelatedSeries) == 2
    assert int(s1.NumberOfStudyRelatedInstances) == 4
    assert str(s1.PatientName) == "Doe^John"
    assert s1.PatientComments == "smoker"
    assert s1.InstanceAvailability == "ONLINE"
    assert s1.RetrieveAETitle == "PACSNODE"
    patients = find(
        archive,
        "PATIENT",
        root="PATIENT",
        PatientID="PID1",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedSeries="",
        NumberOfPatientRelatedInstances="",
    )
    (p1,) = patients
    expected_studies = [s for s in STUDIES if s.patient_id == "PID1"]
    assert int(p1.NumberOfPatientRelatedStudies) == len(expected_studies)
    assert int(p1.NumberOfPatientRelatedSeries) == sum(len(s.modalities) for s in expected_studies)
    assert int(p1.NumberOfPatientRelatedInstances) == 2 * sum(len(s.modalities) for s in expected_studies)


def test_relational_key_below_the_level(archive: Archive) -> None:
    relational = QueryOptions(relational=True)
    answers = find(archive, "STUDY", options=relational, Modality="MR", StudyInstanceUID="")
    assert labels(archive, answers) == {"S2"}
    with pytest.raises(QueryError) as err:
        find(archive, "STUDY", Modality="MR")
    assert err.value.status == 0xA900 and err.value.offending == (0x00080060,)


@pytest.mark.parametrize(
    ("keys", "status"),
    [
        ({}, 0xA900),
        ({"QueryRetrieveLevel": "FOO"}, 0xA900),
        ({"QueryRetrieveLevel": "PATIENT"}, 0xA900),  # no PATIENT level in Study Root
        ({"QueryRetrieveLevel": "STUDY", "SOPInstanceUID": "1.2"}, 0xA900),
        ({"QueryRetrieveLevel": "STUDY", "PatientID": "x" * 10_000}, 0xC000),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2020-2019"}, 0xC000),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "20201301x"}, 0xC000),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.abc"}, 0xC000),
    ],
)
def test_refused_identifiers(keys: dict[str, Any], status: int) -> None:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    with pytest.raises(QueryError) as err:
        prepare(ds, "STUDY", QueryOptions())
    assert err.value.status == status
    assert err.value.comment


def test_thousands_of_keys_are_answered(archive: Archive) -> None:
    from pydicom.datadict import DicomDictionary, dictionary_VR

    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = archive.uids["S2"]
    ds.SeriesInstanceUID = archive.uids["S2/MR"]
    ds.SOPInstanceUID = ""
    count = 0
    for tag in DicomDictionary:
        vr = dictionary_VR(tag)
        wanted = tag >> 16 in (0x0008, 0x0018, 0x0020, 0x0028) and vr not in ("SQ", "OB", "OW", "UN")
        if wanted and tag not in ds and " or " not in vr:
            ds.add_new(tag, vr, None)
            count += 1
    assert count > 1000
    query = prepare(ds, "STUDY", QueryOptions())
    answers = [answer.dataset() for answer in archive.engine.find(query)]
    assert labels(archive, answers, "SOPInstanceUID") == {"S2/MR/1", "S2/MR/2"}
    assert all(len(a) >= count for a in answers)


def test_cancel_stops_the_rows(archive: Archive) -> None:
    import threading

    stop = threading.Event()
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    rows = archive.engine.find(prepare(ds, "STUDY", QueryOptions()), stop)
    first = next(rows).dataset()
    assert first.StudyInstanceUID
    stop.set()
    assert list(rows) == []


def test_answers_keep_the_query_character_set(archive: Archive) -> None:
    # PS3.4 C.4.1.1.3.1: the answer comes in the request's character set when it holds the
    # values (a query in ISO 2022 IR 87 gets IR 87), otherwise in UTF-8.
    cases = (
        (["", "ISO 2022 IR 87"], "山田^太郎", ["", "ISO 2022 IR 87"]),
        ("ISO_IR 100", "YAMADA^TAROU", ["ISO_IR 192"]),
    )
    for charset, name, expected in cases:
        ds = Dataset()
        ds.SpecificCharacterSet = charset
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientName = name
        request = decode_identifier(encode(ds, EXPLICIT_VR_LITTLE_ENDIAN), EXPLICIT_VR_LITTLE_ENDIAN)
        assert [v for tag, _, v in request if tag == 0x00100010] == [name]
        query = prepare(request, "STUDY", QueryOptions())
        (answer,) = archive.engine.find(query)
        wanted = [str(v) for v in (charset if isinstance(charset, list) else [charset])]
        data = encode_answer(answer, EXPLICIT_VR_LITTLE_ENDIAN, wanted)
        back = decode(data, EXPLICIT_VR_LITTLE_ENDIAN)
        got = back.SpecificCharacterSet
        assert (list(got) if not isinstance(got, str) else [got]) == expected
        assert str(back.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"


@pytest.mark.parametrize(
    "keys",
    [
        {"PatientID": "PID1"},
        {"PatientName": "DOE*"},
        {"StudyDate": "20200101-20201231"},
        {"AccessionNumber": "ACC1"},
        {"StudyInstanceUID": "1.2.3"},
        {"ModalitiesInStudy": "CT"},
    ],
    ids=lambda k: next(iter(k)),
)
def test_common_keys_never_scan_a_table(archive: Archive, keys: dict[str, str]) -> None:
    # Issue 4: common keys use an index on SQLite and PostgreSQL (PostgreSQL is told that
    # sequential scans are expensive, so a plan that still has one has no index to use).
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = ""
    ds.StudyDate = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    stmt = build_select(prepare(ds, "STUDY", QueryOptions()))
    engine = archive.index.engine
    sql = str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = [row[-1] for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql))]
            scans = [step for step in plan if step.startswith("SCAN")]
        else:
            conn.execute(text("SET enable_seqscan = off"))
            plan = [row[0] for row in conn.execute(text("EXPLAIN " + sql))]
            scans = [step for step in plan if "Seq Scan" in step]
    assert not scans, plan


def test_paged_reading_returns_every_row(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    # On PostgreSQL a streamed answer is read in pages by entity id: pages of 3 rows must
    # still give every study once (SQLite reads its cursor lazily instead).
    import pacsnode.archive.query as engine_module

    monkeypatch.setattr(engine_module, "_PAGE", 3)
    answers = find(archive, "STUDY", StudyDate="")
    assert sorted(labels(archive, answers)) == sorted(_ALL)
    assert len(answers) == len(_ALL)
    images = find(archive, "IMAGE", SOPInstanceUID="", StudyInstanceUID="")
    expected = 2 * sum(len(s.modalities) for s in STUDIES)
    assert len(images) == len({a.SOPInstanceUID for a in images}) == expected


@pytest.mark.parametrize(
    ("charset", "name", "expected"),
    [
        (["", "ISO 2022 IR 87"], "山田*", {"S4", "S5"}),
        ("ISO_IR 192", "山田*", {"S4", "S5"}),
        (["", "ISO 2022 IR 149"], "홍*", {"S6"}),
        ("GB18030", "王*", {"S7"}),
        ("ISO_IR 100", "müller*", {"S3"}),
    ],
    ids=["IR87", "UTF-8", "IR149", "GB18030", "Latin-1"],
)
def test_queries_encoded_in_each_character_set(
    archive: Archive, charset: str | list[str], name: str, expected: set[str]
) -> None:
    # Issue 4: a query in ISO 2022 IR 87, IR 149, GB18030 or UTF-8 matches names stored in
    # any of them. The Identifier travels encoded; the node decodes it with its own
    # Specific Character Set before matching.
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name
    ds.StudyInstanceUID = ""
    data = encode(ds, EXPLICIT_VR_LITTLE_ENDIAN)
    assert name.encode("utf-8") not in data or charset == "ISO_IR 192"  # really encoded
    request = decode_identifier(data, EXPLICIT_VR_LITTLE_ENDIAN)
    answers = [a.dataset() for a in archive.engine.find(prepare(request, "STUDY", QueryOptions()))]
    assert labels(archive, answers) == expected
