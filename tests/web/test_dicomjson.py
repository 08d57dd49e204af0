"""QIDO-RS answers are written as DICOM JSON straight from the query engine's values: the result
is the same JSON pydicom's own encoder gives for the same answers (PS3.18 Annex F)."""

from __future__ import annotations

import warnings

import pytest

from pacsnode.archive.qr_model import STUDY
from pacsnode.archive.query import QueryEngine, prepare
from pacsnode.web import qido
from pacsnode.web.dicomjson import answer_json, element_json
from peerkit import TESTDATA

CORPUS = [p for p in sorted(TESTDATA.rglob("*.dcm")) if "malformed" not in p.parts][:120]


@pytest.fixture(scope="module")
def node(make_module_storage_node):
    n = make_module_storage_node()
    n.node.archive.import_files(CORPUS)
    return n


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_direct_encoding_equals_pydicoms(node, level):
    engine = QueryEngine(node.index, node.node.archive.store.absolute, "PACSNODE")
    params = [("includefield", "all"), ("includefield", "00080008"), ("includefield", "SeriesDate")]
    search = qido.parse(level, params, {}, max_results=0, case_insensitive_names=True)
    query = prepare(search.identifier, STUDY, search.options)
    answers = list(engine.find(query))
    assert len(answers) > 5
    for answer in answers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = answer.dataset().to_json_dict()
        assert answer_json(answer) == expected


@pytest.mark.parametrize(
    ("vr", "value", "expected"),
    [
        (
            "PN",
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}],
        ),
        ("PN", "=山田", [{"Ideographic": "山田"}]),
        ("IS", "12", [12]),
        ("IS", 3, [3]),
        ("DS", "2.5", [2.5]),
        ("CS", ["CT", "MR"], ["CT", "MR"]),
        ("UI", None, None),
        ("OB", b"\x00\x01", None),
    ],
)
def test_element_values(vr, value, expected):
    out = element_json(vr, value)
    assert out["vr"] == vr
    if vr == "OB":
        assert out["InlineBinary"] == "AAE="
    elif expected is None:
        assert "Value" not in out
    else:
        assert out["Value"] == expected
