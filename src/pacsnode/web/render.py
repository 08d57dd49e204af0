"""PS3.18 8.3.5, 10.4 and 9: rendered, thumbnail and WADO-URI image/jpeg resources from a stored image.

The pipeline is the standard's (PS3.3 C.11, PS4 N.2.1.1), built on pydicom's own functions:

* Decoding: one frame at a time, ``pydicom.pixels.get_decoder(...).as_array(ds, index=...)`` (what
  ``pydicom.pixels.pixel_array(ds, index=...)`` does, but it also returns the photometric
  interpretation of the decoded array).  Encapsulated data only has the asked frame decompressed;
  native data has only that frame's bytes viewed.
* Colour spaces, as pydicom 3.0 hands them over: YBR_FULL and YBR_FULL_422 come back RGB whatever
  the transfer syntax (native YBR_FULL_422 is upsampled, then pydicom's ``convert_color_space`` runs;
  JPEG baseline is decoded without the codec's colour transform and converted the same way; a JPEG
  whose component IDs say "RGB" is reported RGB and left alone); JPEG 2000 YBR_ICT / YBR_RCT come
  back RGB from the codec.  The reported interpretation is checked, never guessed from the header.
* Grey: Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence, per frame from the functional
  groups of an enhanced image) -> VOI LUT (the caller's window, else the first Window Center/Width,
  else the VOI LUT Sequence, else the frame's own min..max) -> 8 bits -> MONOCHROME1 inverted.
  Presentation LUT Shape is not applied: in the DX family INVERSE only restates MONOCHROME1.
* PALETTE COLOR: ``apply_color_lut`` (normal or segmented LUTs), entries scaled to 8 bits.
* RGB with more than 8 bits stored: scaled to 8 bits.

Encoding is Pillow's: JPEG (quality 1..100, default 90), PNG, GIF (animated for several frames).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    convert_color_space,
)
from pydicom.pixels.utils import as_pixel_options

RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")
"""Media types of the rendered resources (PS3.18 8.7.4, Table 8.7.4-1 single-frame and multi-frame images)."""

WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
"""VOI LUT Function (0028,1056) values (PS3.3 C.11.2.1.3)."""

DEFAULT_QUALITY = 90
"""JPEG quality when the request has no ``quality`` parameter (PS3.18 8.3.5.1.2)."""

DEFAULT_FRAME_TIME_MS = 100.0
"""How long each frame of an animated GIF shows when the image has no Frame Time (0018,1063)."""

_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Elements of the Modality LUT and VOI LUT modules that shape one frame's grey values.
_TRANSFORM_KEYWORDS = (
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)
# PS3.3 C.7.6.16.2.9 Pixel Value Transformation, C.7.6.16.2.10 Frame VOI LUT functional groups.
_FRAME_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
_GREY = ("MONOCHROME1", "MONOCHROME2")
_YBR = ("YBR_FULL", "YBR_FULL_422")


class RenderError(ValueError):
    """The image cannot be rendered as asked; ``str(error)`` is meant for the HTTP response body.

    ``status`` is the HTTP status the caller should answer with: 400 (not an image, bad parameter),
    404 (no such frame) or 406 (media type not offered, pixel data that cannot be decoded).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and VOI LUT Function."""

    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        if self.function not in WINDOW_FUNCTIONS:
            raise RenderError(f"window function must be one of {', '.join(WINDOW_FUNCTIONS)}")
        if self.function == "LINEAR" and not self.width >= 1:  # PS3.3 C.11.2.1.2.1
            raise RenderError("window width must be at least 1 for the LINEAR function")
        if not self.width > 0:  # PS3.3 C.11.2.1.3.1, C.11.2.1.3.2
            raise RenderError("window width must be greater than 0")
        if not np.isfinite(self.center) or not np.isfinite(self.width):
            raise RenderError("window center and width must be finite numbers")


@dataclass(frozen=True)
class Viewport:
    """PS3.18 8.3.5.1.3: the region (sx, sy, sw, sh) of the source, scaled to fit width x height.

    The region defaults to the whole image (sx, sy = 0; sw, sh = the rest of the image) and is
    clipped to it; a negative sw or sh flips the region horizontally or vertically.  The aspect ratio
    is kept, so the output is width x height at most, one of the two reached (no letterboxing).
    """

    width: int
    height: int
    sx: int | None = None
    sy: int | None = None
    sw: int | None = None
    sh: int | None = None

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise RenderError("viewport width and height must be positive")
        if (self.sx or 0) < 0 or (self.sy or 0) < 0:
            raise RenderError("viewport sx and sy must not be negative")
        if self.sw == 0 or self.sh == 0:
            raise RenderError("viewport sw and sh must not be zero")


def render(
    ds: Dataset,
    *,
    frames: Sequence[int] | None = None,
    media_type: str = "image/jpeg",
    window: Window | None = None,
    viewport: Viewport | None = None,
    quality: int | None = None,
) -> bytes:
    """The rendered image (PS3.18 8.3.5) of `ds` in `media_type`, one of `RENDERED_TYPES`.

    `frames` are 1-based frame numbers.  image/jpeg and image/png hold one frame: frame 1 by default,
    a RenderError (406) for several.  image/gif renders all frames by default and animates several,
    each shown for Frame Time (0018,1063) or 100 ms.  `window` replaces the data set's VOI for grey
    images (colour images ignore it), `quality` (1..100, default 90) applies to image/jpeg only.
    `ds` must carry its file meta (the Transfer Syntax UID says how to decode the pixel data).
    """
    media = _media_type(media_type)
    if quality is not None and not 1 <= quality <= 100:
        raise RenderError("quality must be between 1 and 100")
    count = _frame_count(ds)
    if frames is None:
        wanted = list(range(1, count + 1)) if media == "image/gif" else [1]
    else:
        wanted = list(frames)
        if not wanted:
            raise RenderError("no frame asked for")
        for frame in wanted:
            _check_frame(frame, count)
    if len(wanted) > 1 and media != "image/gif":
        raise RenderError(f"{media} holds a single frame; ask for one frame or image/gif", 406)

    images = (_to_image(rendered_frame(ds, frame, window), viewport) for frame in wanted)
    if media == "image/gif":
        return _encode_gif(images, _frame_time(ds))
    return _encode(next(images), media, DEFAULT_QUALITY if quality is None else quality)


def thumbnail(ds: Dataset, *, media_type: str = "image/jpeg", size: int = 128) -> bytes:
    """The thumbnail (PS3.18 10.4): frame 1 rendered with the data set's own VOI, longest side `size`."""
    if size < 1:
        raise RenderError("thumbnail size must be positive")
    return render(ds, frames=[1], media_type=media_type, viewport=Viewport(size, size))


def rendered_frame(ds: Dataset, frame: int, window: Window | None = None) -> NDArray[np.uint8]:
    """The 8-bit presentation values of `frame` (1-based): (rows, columns) grey, (rows, columns, 3) RGB.

    This is the image before any viewport and before encoding; only this frame is decoded.
    """
    _check_frame(frame, _frame_count(ds))
    arr, photometric = _decode(ds, frame - 1)
    try:
        if photometric in _GREY and arr.ndim == 2:
            return _grey(arr, _frame_transforms(ds, frame - 1), window, photometric)
        if photometric == "PALETTE COLOR" and arr.ndim == 2:
            return _palette(arr, ds)
        if arr.ndim == 3 and arr.shape[2] == 3:
            return _colour(arr, ds, photometric)
    except RenderError:
        raise
    except Exception as exc:  # malformed LUTs and the like: a clean error, never a crash (DESIGN 7)
        raise RenderError(f"cannot render the pixel data: {exc}", 406) from exc
    raise RenderError(f"cannot render Photometric Interpretation {photometric!r}", 406)


# ---------------------------------------------------------------- frames and decoding


def _media_type(media_type: str) -> str:
    media = media_type.split(";", 1)[0].strip().lower()
    if media not in RENDERED_TYPES:
        raise RenderError(f"cannot render as {media_type!r}; offered: {', '.join(RENDERED_TYPES)}", 406)
    return media


def _frame_count(ds: Dataset) -> int:
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS) or "Rows" not in ds or "Columns" not in ds:
        raise RenderError("the instance is not an image: it has no pixel data")
    try:
        count = int(ds.get("NumberOfFrames") or 1)  # PS3.3 C.7.6.6: absent means one frame
    except (TypeError, ValueError) as exc:
        raise RenderError("the instance has an invalid Number of Frames (0028,0008)") from exc
    if count < 1:
        raise RenderError("the instance has an invalid Number of Frames (0028,0008)")
    return count


def _check_frame(frame: int, count: int) -> None:
    if not 1 <= frame <= count:  # PS3.18 8.3.5: frame numbers start at 1
        raise RenderError(f"frame {frame} does not exist; the image has {count} frame(s)", 404)


def _decode(ds: Dataset, index: int) -> tuple[NDArray[Any], str]:
    """One frame decoded by pydicom, with the photometric interpretation of the decoded array."""
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not syntax:
        raise RenderError("the instance has no Transfer Syntax UID (0002,0010)", 406)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise RenderError(f"cannot decode pixel data in transfer syntax {syntax}", 406) from exc
    try:
        arr, properties = decoder.as_array(ds, index=index, **as_pixel_options(ds))
    except Exception as exc:  # corrupt or unsupported pixel data: a clean error (DESIGN 7)
        raise RenderError(f"cannot decode the pixel data: {exc}", 406) from exc
    photometric = str(properties.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
    return arr, photometric.strip().upper()


def _frame_transforms(ds: Dataset, index: int) -> Dataset:
    """The Modality LUT and VOI LUT elements that apply to one frame, functional groups included.

    Top-level elements first, then the shared functional groups, then the frame's own
    (PS3.3 C.7.6.16: a per-frame macro overrides a shared one).
    """
    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta  # LUT Data in OW: its byte order is the transfer syntax's
    for keyword in _TRANSFORM_KEYWORDS:
        if keyword in ds:
            view.add(ds[keyword])
    groups: list[Dataset] = []
    if shared := ds.get("SharedFunctionalGroupsSequence"):
        groups.append(shared[0])
    if (per_frame := ds.get("PerFrameFunctionalGroupsSequence")) and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for macro in _FRAME_MACROS:
            if items := group.get(macro):
                for element in items[0]:
                    if element.keyword in _TRANSFORM_KEYWORDS:
                        view.add(element)
    return view


def _frame_time(ds: Dataset) -> float:
    try:
        value = float(ds.get("FrameTime") or 0)  # PS3.3 C.7.6.5.1.1: milliseconds between frames
    except (TypeError, ValueError):
        return DEFAULT_FRAME_TIME_MS
    return value if np.isfinite(value) and value > 0 else DEFAULT_FRAME_TIME_MS


# ---------------------------------------------------------------- presentation values


def _grey(arr: NDArray[Any], view: Dataset, window: Window | None, photometric: str) -> NDArray[np.uint8]:
    """Stored values -> modality values -> VOI -> 8-bit P-values, MONOCHROME1 inverted."""
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    values = apply_modality_lut(arr, view)  # PS3.3 C.11.1
    window = window or _data_set_window(view)
    if window is not None:
        out = _windowed(values, window)
    elif (lut := _voi_lut(values, view)) is not None:
        out = lut
    else:
        out = _min_max(values)
    if photometric == "MONOCHROME1":
        np.subtract(255, out, out=out)  # PS3.3 C.7.6.3.1.2: minimum sample value is white
    return out


def _first_number(value: Any) -> float | None:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _data_set_window(view: Dataset) -> Window | None:
    """The first Window Center/Width of the data set (PS3.3 C.11.2.1.2), if any and valid."""
    center = _first_number(view.get("WindowCenter"))
    width = _first_number(view.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(view.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in WINDOW_FUNCTIONS:
        function = "LINEAR"  # PS3.3 C.11.2.1.3: LINEAR when absent
    try:
        return Window(center, width, function)
    except RenderError:
        return None  # an unusable window in the data set: fall back to the next VOI


def _windowed(values: NDArray[Any], window: Window) -> NDArray[np.uint8]:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3 with an output range of 0..255, by pydicom's ``apply_windowing``.

    pydicom maps onto the stored range of the data set it is given, so it is given one whose
    stored range is 8 bits unsigned and which has no rescale: y_min = 0, y_max = 255.
    """
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored = 8
    voi.PixelRepresentation = 0
    voi.WindowCenter = window.center
    voi.WindowWidth = window.width
    voi.VOILUTFunction = window.function
    return _to_uint8(apply_windowing(values, voi))


def _voi_lut(values: NDArray[Any], view: Dataset) -> NDArray[np.uint8] | None:
    """The first VOI LUT of the VOI LUT Sequence (PS3.3 C.11.2.1.1), output scaled to 8 bits."""
    items = view.get("VOILUTSequence")
    if not items or "LUTDescriptor" not in items[0] or "LUTData" not in items[0]:
        return None
    if values.dtype.kind == "f":
        values = np.rint(values).astype(np.int64)  # the LUT maps integer modality values
    out = apply_voi(values, view)
    bits = int(items[0].LUTDescriptor[2])  # PS3.3 C.11.2.1.1: LUT entries are 0 .. 2^bits - 1
    top = float(2**bits - 1)
    if out.size and float(out.max()) > top:
        top = float(np.iinfo(out.dtype).max)  # entries wider than described: trust the data
    return _to_uint8(out.astype(np.float64) * (255.0 / top))


def _min_max(values: NDArray[Any]) -> NDArray[np.uint8]:
    """No VOI in the data set: the frame's own min..max onto 0..255 (LINEAR_EXACT, PS3.3 C.11.2.1.3.2)."""
    low = float(values.min())
    high = float(values.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _windowed(values, Window((low + high) / 2, high - low, "LINEAR_EXACT"))


def _palette(arr: NDArray[Any], ds: Dataset) -> NDArray[np.uint8]:
    """PALETTE COLOR -> RGB by the data set's palette (PS3.3 C.7.6.3.1.5, C.7.9)."""
    rgb = apply_color_lut(arr, ds)[..., :3]
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])  # PS3.3 C.7.6.3.1.5: 8 or 16 bits per entry
    top = float(2**bits - 1)
    if rgb.size and float(rgb.max()) > top:
        top = float(np.iinfo(rgb.dtype).max)  # 16-bit entries described as 8: trust the data
    return _to_uint8(rgb.astype(np.float64) * (255.0 / top))


def _colour(arr: NDArray[Any], ds: Dataset, photometric: str) -> NDArray[np.uint8]:
    """Decoded colour pixels -> 8-bit RGB."""
    if photometric in _YBR:
        if arr.dtype != np.uint8:
            raise RenderError(f"cannot render {photometric} with more than 8 bits", 406)
        arr = convert_color_space(arr, photometric, "RGB")  # PS3.3 C.7.6.3.1.2
    elif photometric != "RGB":
        raise RenderError(f"cannot render Photometric Interpretation {photometric!r}", 406)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
    return _to_uint8(arr.astype(np.float64) * (255.0 / float(2**bits - 1)))


def _to_uint8(values: NDArray[Any]) -> NDArray[np.uint8]:
    out: NDArray[np.uint8] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------- viewport and encoding


def _to_image(pixels: NDArray[np.uint8], viewport: Viewport | None) -> Image.Image:
    image = Image.fromarray(pixels)  # uint8: (rows, columns) is mode L, (rows, columns, 3) is RGB
    return image if viewport is None else _apply_viewport(image, viewport)


def _apply_viewport(image: Image.Image, viewport: Viewport) -> Image.Image:
    """PS3.18 8.3.5.1.3: crop to (sx, sy, |sw|, |sh|), flip for negative sw/sh, scale to fit vw x vh."""
    columns, rows = image.size
    left, top = viewport.sx or 0, viewport.sy or 0
    if left >= columns or top >= rows:
        raise RenderError("the viewport region lies outside the image")
    right = columns if viewport.sw is None else min(columns, left + abs(viewport.sw))
    bottom = rows if viewport.sh is None else min(rows, top + abs(viewport.sh))
    if (left, top, right, bottom) != (0, 0, columns, rows):
        image = image.crop((left, top, right, bottom))
    if viewport.sw is not None and viewport.sw < 0:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if viewport.sh is not None and viewport.sh < 0:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    width, height = image.size
    scale = min(viewport.width / width, viewport.height / height)
    size = (
        max(1, min(viewport.width, round(width * scale))),
        max(1, min(viewport.height, round(height * scale))),
    )
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def _encode(image: Image.Image, media: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if media == "image/jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    elif media == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="GIF")
    return buffer.getvalue()


def _encode_gif(images: Iterator[Image.Image], frame_time_ms: float) -> bytes:
    """One GIF; several frames animate, looping, each shown for `frame_time_ms`."""
    first = next(images)
    rest = list(images)
    buffer = io.BytesIO()
    if not rest:
        first.save(buffer, format="GIF")
    else:
        duration = max(10, round(frame_time_ms))  # GIF delays are in 10 ms units
        first.save(buffer, format="GIF", save_all=True, append_images=rest, duration=duration, loop=0)
    return buffer.getvalue()
