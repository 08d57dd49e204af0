"""PS3.15 E.3.1 Clean Pixel Data: rules blank burned-in rectangles; flagged ones with no rule are refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from deid_helpers import KEY, TESTDATA, read
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacsnode.deid import DeidConfig, Deidentifier, Option, Refused
from pacsnode.deid.pixels import PixelRule, PixelRuleError, load_rules


def _image(burned: str = "YES", rgb: bool = False) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "P1"
    ds.PatientName = "Doe^Jane"
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "Scope 1"
    ds.BurnedInAnnotation = burned
    ds.Rows, ds.Columns = 32, 48
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8 if rgb else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    shape = (32, 48, 3) if rgb else (32, 48)
    ds.PixelData = np.full(shape, 200, dtype=np.uint8 if rgb else np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


RULE = PixelRule(((4, 2, 10, 5),), manufacturer="acme", model="Scope 1", rows=32, columns=48)


@pytest.mark.parametrize("rgb", [False, True])
def test_rule_blanks_the_rectangle_in_place(rgb: bool) -> None:
    deidentifier = Deidentifier(DeidConfig(key=KEY, pixel_rules=(RULE,)))
    data, result = deidentifier.deidentify_bytes(_image(rgb=rgb))
    ds = read(data)
    pixels = ds.pixel_array
    assert result.pixels_cleaned and ds.BurnedInAnnotation == "NO"
    assert (pixels[2:7, 4:14] == 0).all()
    assert (pixels[7:, :] == 200).all() and (pixels[:, 14:] == 200).all()
    assert "113101" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]


def test_flagged_without_rule_is_refused() -> None:
    with pytest.raises(Refused, match="Burned In Annotation"):
        Deidentifier(DeidConfig(key=KEY)).deidentify_bytes(_image())
    other = PixelRule(((0, 0, 1, 1),), manufacturer="OTHER")
    with pytest.raises(Refused):
        Deidentifier(DeidConfig(key=KEY, pixel_rules=(other,))).deidentify_bytes(_image())
    data, result = Deidentifier(DeidConfig(key=KEY, allow_burned_in=True)).deidentify_bytes(_image())
    assert not result.pixels_cleaned and read(data).BurnedInAnnotation == "YES"


def test_clean_pixel_data_option_refuses_unknown_flag() -> None:
    deidentifier = Deidentifier(DeidConfig(key=KEY, options=frozenset({Option.CLEAN_PIXEL_DATA})))
    with pytest.raises(Refused, match="Clean Pixel Data"):
        deidentifier.deidentify_bytes(_image(burned=""))
    data, _ = deidentifier.deidentify_bytes(_image(burned="NO"))
    assert "113101" not in [i.CodeValue for i in read(data).DeidentificationMethodCodeSequence]


def test_compressed_pixels_are_decoded_only_when_a_rule_applies() -> None:
    path = TESTDATA / "transfer_syntaxes" / "CT_1.2.840.10008.1.2.5_rle.dcm"
    original = read(path)
    untouched, result = Deidentifier(DeidConfig(key=KEY)).deidentify_bytes(path.read_bytes())
    assert result.transfer_syntax == original.file_meta.TransferSyntaxUID
    assert read(untouched).PixelData == original.PixelData  # the encapsulated bytes as they were
    rule = PixelRule(((0, 0, 16, 8),), rows=int(original.Rows), columns=int(original.Columns))
    data, result = Deidentifier(DeidConfig(key=KEY, pixel_rules=(rule,))).deidentify_bytes(path.read_bytes())
    ds = read(data)
    assert result.transfer_syntax == ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    pixels, before = ds.pixel_array, original.pixel_array
    assert (pixels[:8, :16] == pixels[:8, :16].min()).all()
    assert (pixels[8:, :] == before[8:, :]).all()


def test_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nmanufacturer = "ACME"\nrows = 32\nrectangles = [[0, 0, 48, 4]]\n')
    (rule,) = load_rules(path)
    assert rule.matches("acme ", "anything", 32, 48) and not rule.matches("acme", "x", 64, 48)
    path.write_text("[[rule]]\nrectangles = [[0, 0, -1, 4]]\n")
    with pytest.raises(PixelRuleError):
        load_rules(path)
