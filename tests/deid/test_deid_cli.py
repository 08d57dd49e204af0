"""`pacsnode deid`: folders mirrored, the Basic Profile by default, exit 1 when a file is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

from deid_helpers import TESTDATA, read
from typer.testing import CliRunner

from pacsnode.cli.main import app

runner = CliRunner()


def _tree(tmp_path: Path) -> Path:
    source = tmp_path / "in"
    (source / "a" / "b").mkdir(parents=True)
    shutil.copy(TESTDATA / "modalities" / "CT_small.dcm", source / "a" / "ct.dcm")
    shutil.copy(TESTDATA / "hierarchy" / "ct_series_with_seg" / "IMG0001.dcm", source / "a" / "b" / "img")
    (source / "notes.txt").write_text("not DICOM")
    return source


def test_folder_tree_mirrored(tmp_path: Path) -> None:
    source = _tree(tmp_path)
    key = tmp_path / "k.key"
    result = runner.invoke(app, ["deid", str(source), str(tmp_path / "out"), "--key-file", str(key)])
    assert result.exit_code == 0, result.output
    assert sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    ) == [
        "a/b/img",
        "a/ct.dcm",
    ]
    ds = read(tmp_path / "out" / "a" / "ct.dcm")
    assert ds.PatientIdentityRemoved == "YES"
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100"]  # Basic Profile alone
    assert key.exists() and len(bytes.fromhex(key.read_text().strip())) == 32
    again = runner.invoke(app, ["deid", str(source), str(tmp_path / "out2"), "--key-file", str(key)])
    assert again.exit_code == 0
    assert read(tmp_path / "out2" / "a" / "ct.dcm").SOPInstanceUID == ds.SOPInstanceUID  # same key, same UIDs


def test_options_and_refusal(tmp_path: Path) -> None:
    source = _tree(tmp_path)
    shutil.copy(TESTDATA / "malformed" / "RTPLAN_truncated.dcm", source / "bad.dcm")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["deid", str(source), str(out), "--key-file", str(tmp_path / "k"), "-o", "retain-modified-dates"],
    )
    assert result.exit_code == 1
    assert "truncated" in result.output and "1 refused" in result.output
    assert not (out / "bad.dcm").exists()  # never passed on
    assert read(out / "a" / "ct.dcm").LongitudinalTemporalInformationModified == "MODIFIED"


def test_bad_option(tmp_path: Path) -> None:
    result = runner.invoke(app, ["deid", str(_tree(tmp_path)), str(tmp_path / "o"), "-o", "nope"])
    assert result.exit_code == 1 and "unknown option" in result.output
