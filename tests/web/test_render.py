"""Rendered resources (PS3.18 8.3.5, 10.4, 9): every photometric interpretation and bit depth of the shared
corpus rendered to PNG and compared, grey level by grey level, with a reference computed here from pydicom's
own LUT functions and numpy; windows, viewports, JPEG, animated GIF, thumbnails and the errors.

All files come from ../shared/testdata (see its MANIFEST.tsv); pydicom's bundled test files are not needed.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
    pixel_array,
)
from pydicom.pixels.decoders.base import Decoder

from pacsnode.web.render import (
    RENDERED_TYPES,
    RenderError,
    Viewport,
    Window,
    render,
    rendered_frame,
    thumbnail,
)
from peerkit import need_testdata

# ---------------------------------------------------------------- helpers


@cache
def _read(relative: str) -> Dataset:
    return pydicom.dcmread(need_testdata(*relative.split("/")))


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _png(ds: Dataset, **options: Any) -> np.ndarray:
    return np.asarray(_decoded(render(ds, media_type="image/png", **options)))


def _stored(ds: Dataset, frame: int) -> np.ndarray:
    """The stored values of a frame, decoded the plain way: the whole pixel data at once."""
    arr = ds.pixel_array
    return arr[frame - 1] if int(ds.get("NumberOfFrames") or 1) > 1 else arr


def _voi_range(ds: Dataset) -> tuple[float, float]:
    """The output range of pydicom's ``apply_windowing`` for `ds`: the stored range after rescale."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1)
    bits = ds.BitsStored
    low, high = (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        low, high = low * ds.RescaleSlope + ds.RescaleIntercept, high * ds.RescaleSlope + ds.RescaleIntercept
    return float(low), float(high)


def _grey_reference(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Modality LUT -> the file's VOI (window, else VOI LUT, else min..max) -> 0..255; MONOCHROME1 inverts."""
    values = apply_modality_lut(stored, ds).astype(np.float64)
    if "WindowCenter" in ds:
        low, high = _voi_range(ds)
        out = (apply_voi_lut(values, ds) - low) / (high - low) * 255
    elif "VOILUTSequence" in ds:
        bits = ds.VOILUTSequence[0].LUTDescriptor[2]
        out = apply_voi_lut(stored, ds).astype(np.float64) / (2**bits - 1) * 255
    else:
        out = (values - values.min()) / (values.max() - values.min()) * 255
    out = np.clip(np.rint(out), 0, 255)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 255 - out
    return out


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(np.int32) - expected.astype(np.int32)).max() <= 1


def _linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 onto 0..255, written out."""
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    out[values <= center - 0.5 - (width - 1) / 2] = 0
    out[values > center - 0.5 + (width - 1) / 2] = 255
    return np.clip(np.rint(out), 0, 255)


# ---------------------------------------------------------------- grey: every depth and VOI source

GREY_CASES = [
    # (file, frame): what it covers
    ("modalities/DX_for_presentation.dcm", 1),  # MONOCHROME1, 8-bit, rescale 1/0, window 128/256
    ("modalities/CR_RG3_j2k_lossy.dcm", 1),  # MONOCHROME1, 10-bit stored in 16, J2K lossy, window
    ("modalities/CT_small.dcm", 1),  # MONOCHROME2, 16-bit signed, rescale, no VOI: min..max
    ("modalities/MR_small.dcm", 1),  # 16-bit signed, window 600/1600, no rescale
    ("transfer_syntaxes/CT_1.2.840.10008.1.2.4.51_jpeg_extended.dcm", 1),  # 12-bit JPEG, rescale 2.0002
    ("modalities/MR_j2k_lossless_fo.dcm", 1),  # 12-bit unsigned J2K, fractional window
    ("transfer_syntaxes/NM_1.2.840.10008.1.2.4.51_jpeg_extended_12bit.dcm", 1),  # 12-bit, no VOI
    ("modalities/SC_16bit_utf8.dcm", 1),  # 16-bit unsigned, rescale, narrow window 40/85
    ("transfer_syntaxes/SC_jpegls_signed_16bit.dcm", 1),  # 15-bit signed JPEG-LS, no VOI
    ("transfer_syntaxes/SC_1.2.840.10008.1.2.4.81_jpegls_near_lossless_8bit.dcm", 1),  # 8-bit, no VOI
    ("modalities/SC_modality_lut_sequence.dcm", 1),  # Modality LUT Sequence, 12-bit signed
    ("modalities/SC_voi_lut_sequence.dcm", 1),  # VOI LUT Sequence, 8-bit stored, 16-bit entries
    ("modalities/NM_multiframe_13f.dcm", 7),  # multi-frame native, window 70/141
    ("modalities/XA_multiframe_jpeg_96f.dcm", 50),  # multi-frame JPEG baseline, 8-bit, no VOI
]


@pytest.mark.parametrize(("name", "frame"), GREY_CASES, ids=[name for name, _ in GREY_CASES])
def test_grey_matches_reference(name: str, frame: int) -> None:
    ds = _read(name)
    rendered = _png(ds, frames=[frame])
    assert rendered.dtype == np.uint8 and rendered.ndim == 2
    _assert_close(rendered, _grey_reference(ds, _stored(ds, frame)))


def test_enhanced_image_takes_rescale_and_window_from_the_functional_groups() -> None:
    # PS3.3 C.7.6.16.2.9 / C.7.6.16.2.10: Pixel Value Transformation and Frame VOI LUT in the shared groups.
    ds = _read("transfer_syntaxes/CT_enhanced_jpegls_bot_2f.dcm")
    shared = ds.SharedFunctionalGroupsSequence[0]
    flat = Dataset()
    for keyword in ("PhotometricInterpretation", "BitsStored", "PixelRepresentation"):
        setattr(flat, keyword, ds[keyword].value)
    for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
        for element in shared[macro][0]:
            flat.add(element)
    assert "WindowCenter" not in ds and "WindowCenter" in flat
    _assert_close(_png(ds, frames=[2]), _grey_reference(flat, ds.pixel_array[1]))


def test_float_pixel_data_renders() -> None:
    ds = _read("modalities/PMAP_float.dcm")
    assert _png(ds).shape == (ds.Rows, ds.Columns)


# ---------------------------------------------------------------- colour

COLOUR_CASES = [
    ("modalities/SC_rgb.dcm", 1),  # RGB 8-bit native
    ("transfer_syntaxes/SC_rgb_16bit.dcm", 1),  # RGB 16-bit: scaled to 8
    ("modalities/SC_jpeg_with_icon.dcm", 1),  # YBR_FULL_422 JPEG baseline
    ("transfer_syntaxes/SC_rgb_jpeg_ybr420_dcmtk.dcm", 1),  # YBR_FULL JPEG baseline, 4:2:0 subsampled
    ("transfer_syntaxes/SC_ybr_full_422_uncompressed.dcm", 1),  # YBR_FULL_422 native
    ("transfer_syntaxes/SC_j2k_jp2_header_rct.dcm", 1),  # YBR_RCT JPEG 2000
    ("modalities/US_multiframe_jpeg_ybr422_30f.dcm", 5),  # multi-frame YBR_FULL_422 JPEG baseline
]


def _colour_reference(ds: Dataset, frame: int) -> np.ndarray:
    photometric = ds.PhotometricInterpretation
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        # Decoded without pydicom's own colour conversion, converted here (PS3.3 C.7.6.3.1.2).
        raw = pixel_array(ds, raw=True)
        raw = raw[frame - 1] if raw.ndim == 4 else raw
        return convert_color_space(raw, "YBR_FULL", "RGB")
    rgb = _stored(ds, frame)  # RGB, or YBR_RCT/YBR_ICT which the JPEG 2000 codec returns as RGB
    return np.rint(rgb.astype(np.float64) * 255 / (2**ds.BitsStored - 1))


@pytest.mark.parametrize(("name", "frame"), COLOUR_CASES, ids=[name for name, _ in COLOUR_CASES])
def test_colour_matches_reference(name: str, frame: int) -> None:
    ds = _read(name)
    rendered = _png(ds, frames=[frame])
    assert rendered.dtype == np.uint8 and rendered.shape == (ds.Rows, ds.Columns, 3)
    _assert_close(rendered, _colour_reference(ds, frame))


PALETTE_CASES = [
    ("modalities/US_palette_philips.dcm", 1),  # 8-bit stored, 16-bit LUT entries
    ("modalities/SC_palette_16bit_testpattern.dcm", 1),  # 8-bit stored, 16-bit entries, test pattern
    ("modalities/US_palette16_segmented_implicit.dcm", 1),  # 16-bit stored, segmented LUTs
    ("modalities/US_multiframe_palette_rle_10f.dcm", 3),  # multi-frame RLE
]


@pytest.mark.parametrize(("name", "frame"), PALETTE_CASES, ids=[name for name, _ in PALETTE_CASES])
def test_palette_colour_matches_reference(name: str, frame: int) -> None:
    ds = _read(name)
    bits = ds.RedPaletteColorLookupTableDescriptor[2]
    expected = np.rint(apply_color_lut(_stored(ds, frame), ds).astype(np.float64) * 255 / (2**bits - 1))
    _assert_close(_png(ds, frames=[frame]), expected)


def test_window_is_ignored_for_colour() -> None:
    ds = _read("modalities/SC_rgb.dcm")
    np.testing.assert_array_equal(_png(ds, window=Window(10, 20)), _png(ds))


# ---------------------------------------------------------------- explicit windows


def test_explicit_window_replaces_the_data_set_window() -> None:
    ds = _read("modalities/MR_small.dcm")
    values = ds.pixel_array.astype(np.float64)
    _assert_close(_png(ds, window=Window(300, 500)), _linear(values, 300, 500))
    assert not np.array_equal(_png(ds, window=Window(300, 500)), _png(ds))


def test_explicit_window_on_rescaled_monochrome1() -> None:
    ds = _read("modalities/DX_for_presentation.dcm")
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    _assert_close(rendered_frame(ds, 1, Window(100, 60)), 255 - _linear(values, 100, 60))


def test_window_functions() -> None:
    ds = _read("modalities/CT_small.dcm")
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    exact = np.clip(np.rint((values - 40) / 400 * 255 + 127.5), 0, 255)  # PS3.3 C.11.2.1.3.2
    _assert_close(rendered_frame(ds, 1, Window(40, 400, "LINEAR_EXACT")), exact)
    sigmoid = np.rint(255 / (1 + np.exp(-4 * (values - 40) / 400)))  # PS3.3 C.11.2.1.3.1
    _assert_close(rendered_frame(ds, 1, Window(40, 400, "SIGMOID")), sigmoid)


@pytest.mark.parametrize(
    "arguments", [(40, 0.5, "LINEAR"), (40, 0, "LINEAR_EXACT"), (40, -1, "SIGMOID"), (40, 100, "CUBIC")]
)
def test_invalid_window_is_refused(arguments: tuple[float, float, str]) -> None:
    with pytest.raises(RenderError) as info:
        Window(*arguments)
    assert info.value.status == 400


# ---------------------------------------------------------------- viewport


@pytest.mark.parametrize(
    ("viewport", "size"),
    [
        (Viewport(64, 64), (64, 64)),  # downscale
        (Viewport(300, 200), (200, 200)),  # upscale to fit, aspect kept
        (Viewport(64, 32), (32, 32)),  # the narrower side decides
        (Viewport(100, 100, sx=10, sy=20, sw=50, sh=25), (100, 50)),  # region 50x25 scaled x2
        (Viewport(50, 50, sx=100, sy=100), (50, 50)),  # region to the image's edge: 28x28 scaled up
        (Viewport(40, 40, sx=120, sy=0, sw=40, sh=40), (8, 40)),  # region clipped to the image
    ],
)
def test_viewport_output_size(viewport: Viewport, size: tuple[int, int]) -> None:
    ds = _read("modalities/CT_small.dcm")  # 128 x 128
    assert _decoded(render(ds, media_type="image/png", viewport=viewport)).size == size


def test_viewport_crop_and_flip() -> None:
    ds = _read("modalities/CT_small.dcm")
    full = rendered_frame(ds, 1)
    crop = _png(ds, viewport=Viewport(40, 20, sx=10, sy=30, sw=40, sh=20))
    np.testing.assert_array_equal(crop, full[30:50, 10:50])
    flipped = _png(ds, viewport=Viewport(40, 20, sx=10, sy=30, sw=-40, sh=-20))
    np.testing.assert_array_equal(flipped, full[30:50, 10:50][::-1, ::-1])


@pytest.mark.parametrize(
    "make",
    [
        lambda: Viewport(0, 10),
        lambda: Viewport(10, 10, sx=-1),
        lambda: Viewport(10, 10, sw=0),
        lambda: render(_read("modalities/CT_small.dcm"), viewport=Viewport(10, 10, sx=128)),
    ],
)
def test_invalid_viewport_is_refused(make: Callable[[], object]) -> None:
    with pytest.raises(RenderError) as info:
        make()
    assert info.value.status == 400


# ---------------------------------------------------------------- encodings


def test_jpeg_is_the_default_and_decodes() -> None:
    ds = _read("modalities/CT_small.dcm")
    image = _decoded(render(ds))
    assert (image.format, image.mode, image.size) == ("JPEG", "L", (128, 128))
    assert np.abs(np.asarray(image).astype(int) - rendered_frame(ds, 1)).mean() < 2


def test_jpeg_colour_and_quality() -> None:
    ds = _read("modalities/SC_jpeg_with_icon.dcm")
    best = render(ds, quality=95)
    worst = render(ds, quality=5)
    assert len(worst) < len(best)
    image = _decoded(worst)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (600, 600))
    with pytest.raises(RenderError):
        render(ds, quality=0)


def test_gif_of_a_multi_frame_image_is_animated() -> None:
    ds = _read("modalities/NM_multiframe_13f.dcm")  # no Frame Time: 100 ms a frame
    image = _decoded(render(ds, media_type="image/gif"))
    assert (image.format, image.n_frames, image.size) == ("GIF", 13, (64, 64))
    assert image.info["duration"] == 100
    image.seek(6)
    np.testing.assert_array_equal(np.asarray(image.convert("L")), rendered_frame(ds, 7))
    two = _decoded(render(ds, media_type="image/gif", frames=[2, 9]))
    assert two.n_frames == 2


def test_gif_frame_time_and_colour() -> None:
    ds = copy.deepcopy(_read("modalities/US_multiframe_palette_rle_10f.dcm"))
    assert ds.FrameTime == 76
    ds.FrameTime = 40  # (0018,1063) in ms; GIF counts in 10 ms units
    image = _decoded(render(ds, media_type="image/gif", frames=[1, 2, 3], viewport=Viewport(120, 120)))
    assert (image.n_frames, image.info["duration"], image.size) == (3, 40, (120, 86))
    assert image.convert("RGB").getpixel((60, 43)) is not None


def test_single_frame_types_render_frame_one_of_a_multi_frame_image() -> None:
    ds = _read("modalities/NM_multiframe_13f.dcm")
    np.testing.assert_array_equal(_png(ds), rendered_frame(ds, 1))
    with pytest.raises(RenderError) as info:
        render(ds, frames=[1, 2])
    assert info.value.status == 406


def test_only_the_asked_frame_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _read("modalities/US_multiframe_jpeg_ybr422_30f.dcm")
    indices: list[int | None] = []
    as_array = Decoder.as_array

    def spy(self: Decoder, src: Any, **kwargs: Any) -> Any:
        indices.append(kwargs.get("index"))
        return as_array(self, src, **kwargs)

    monkeypatch.setattr(Decoder, "as_array", spy)
    render(ds, frames=[17])
    assert indices == [16]


def test_media_types() -> None:
    ds = _read("modalities/MR_small.dcm")
    for media_type, pillow_format in zip(RENDERED_TYPES, ("JPEG", "PNG", "GIF"), strict=True):
        assert _decoded(render(ds, media_type=media_type)).format == pillow_format
    assert _decoded(render(ds, media_type="Image/PNG")).format == "PNG"
    with pytest.raises(RenderError) as info:
        render(ds, media_type="image/bmp")
    assert info.value.status == 406


# ---------------------------------------------------------------- thumbnails


@pytest.mark.parametrize(
    "name",
    ["modalities/DX_for_presentation.dcm", "modalities/US_palette_philips.dcm", "modalities/MR_small.dcm"],
)
def test_thumbnail_longest_side_is_size(name: str) -> None:
    ds = _read(name)
    image = _decoded(thumbnail(ds))
    assert image.format == "JPEG" and max(image.size) == 128
    assert max(_decoded(thumbnail(ds, media_type="image/png", size=50)).size) == 50
    rows, columns = ds.Rows, ds.Columns
    assert abs(image.size[0] / image.size[1] - columns / rows) < 0.02


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("frame", [0, 14, -1])
def test_frame_out_of_range(frame: int) -> None:
    ds = _read("modalities/NM_multiframe_13f.dcm")
    with pytest.raises(RenderError) as info:
        render(ds, frames=[frame], media_type="image/png")
    assert info.value.status == 404
    with pytest.raises(RenderError):
        rendered_frame(ds, frame)


def test_frame_two_of_a_single_frame_image() -> None:
    with pytest.raises(RenderError) as info:
        rendered_frame(_read("modalities/CT_small.dcm"), 2)
    assert info.value.status == 404


@pytest.mark.parametrize(
    "name",
    ["modalities/SR_basic_text.dcm", "modalities/DOC_encapsulated_pdf.dcm", "modalities/PR_gsps_small.dcm"],
)
def test_non_image_is_refused(name: str) -> None:
    with pytest.raises(RenderError) as info:
        render(_read(name))
    assert info.value.status == 400
    with pytest.raises(RenderError):
        thumbnail(_read(name))


def test_header_only_data_set_is_refused() -> None:
    ds = pydicom.dcmread(need_testdata("modalities", "CT_small.dcm"), stop_before_pixels=True)
    with pytest.raises(RenderError, match="not an image"):
        render(ds)


def test_undecodable_transfer_syntax_is_refused() -> None:
    ds = _read("transfer_syntaxes/CT_1.2.840.10008.1.2.4.53_jpeg_retired_p6_8.dcm")
    with pytest.raises(RenderError) as info:
        render(ds)
    assert info.value.status == 406


def test_corrupt_pixel_data_is_refused() -> None:
    ds = pydicom.dcmread(need_testdata("malformed", "MR_truncated_pixeldata.dcm"), force=True)
    with pytest.raises(RenderError) as info:
        render(ds)
    assert info.value.status == 406
