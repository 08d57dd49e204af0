"""PS3.18 10.4.1.2 / Annex F: WADO-RS metadata, DICOM JSON written from a file's raw elements."""

from __future__ import annotations

import base64
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from pacsnode.archive.qr_model import vr_of
from pacsnode.data.elements import codec_of
from pacsnode.web.dicomjson import BINARY_VRS, dataset_json

# PS3.18 F.2.7: a binary value whose Base64 form would pass 1,024 characters is bulk data
# (pydicom's rule too: more than 768 bytes).
BULK_BYTES = 768
# Float, Double Float and Pixel Data: always bulk data, however small (PS3.18 8.7.3.3).
PIXEL_TAGS = frozenset((0x7FE00008, 0x7FE00009, 0x7FE00010))
_NUMBERS = {
    "US": struct.Struct("<H"),
    "SS": struct.Struct("<h"),
    "UL": struct.Struct("<I"),
    "SL": struct.Struct("<i"),
    "UV": struct.Struct("<Q"),
    "SV": struct.Struct("<q"),
    "FL": struct.Struct("<f"),
    "FD": struct.Struct("<d"),
}
_CHARSET_VRS = frozenset(("SH", "LO", "ST", "LT", "UC", "UT", "PN"))
_SINGLE = frozenset(("LT", "ST", "UT", "UR"))  # PS3.5 6.2: one value, backslash is text
_TEXT = frozenset(("AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "SH", "LO", "ST", "LT", "UC", "UT", "PN"))

BulkURI = Callable[[str], str]


class _Unusual(Exception):
    """An element the raw encoder leaves to pydicom (ambiguous VR, code extensions, ...)."""


def _text(raw: bytes, vr: str, codec: str) -> list[str]:
    text = raw.decode(codec if vr in _CHARSET_VRS else "latin-1")
    if vr in _SINGLE:
        text = text.rstrip("\0 ")
        return [text] if text else []
    text = text.rstrip("\0 ")
    if not text:
        return []
    values = text.split("\\")
    if vr in ("IS", "DS"):
        values = [v.strip(" ") for v in values]
    return values


def _person_names(values: list[str]) -> list[dict[str, str]]:
    out = []
    for value in values:
        groups = value.split("=")
        while len(groups) > 1 and not groups[-1]:
            groups.pop()  # trailing empty groups are not components (pydicom's PersonName too)
        name = {"Alphabetic": groups[0]}
        if len(groups) > 1:
            name["Ideographic"] = groups[1]
        if len(groups) > 2:
            name["Phonetic"] = groups[2]
        out.append(name)
    return out


def _element(raw: RawDataElement, vr: str, codec: str) -> dict[str, Any]:
    value: bytes | None = raw.value
    if value is None:
        raise _Unusual  # deferred: only binary values are, and those are bulk data
    out: dict[str, Any] = {"vr": vr}
    if not value:
        return out
    if vr in BINARY_VRS:
        out["InlineBinary"] = base64.b64encode(value).decode("ascii")
        return out
    number = _NUMBERS.get(vr)
    if number is not None:
        if len(value) % number.size:
            raise _Unusual
        out["Value"] = [v for (v,) in number.iter_unpack(value)]
        return out
    if vr == "AT":
        if len(value) % 4:
            raise _Unusual
        out["Value"] = [f"{g:04X}{e:04X}" for g, e in struct.iter_unpack("<HH", value)]
        return out
    if vr in ("IS", "DS"):
        texts = _text(value, vr, codec)
        if not texts or any(not t for t in texts):
            raise _Unusual  # pydicom's own rules for empty or odd numbers
        try:
            out["Value"] = [int(t) if vr == "IS" else float(t) for t in texts]
        except ValueError:
            raise _Unusual from None
        return out
    if vr not in _TEXT:
        raise _Unusual
    texts = _text(value, vr, codec)
    if texts:
        out["Value"] = _person_names(texts) if vr == "PN" else texts
    return out


_AMBIGUOUS: dict[int, bool] = {}


def _ambiguous(tag: int) -> bool:
    """Whether the dictionary gives the tag several VRs (US or SS, OB or OW...): pydicom decides."""
    known = _AMBIGUOUS.get(tag)
    if known is None:
        try:
            known = " or " in dictionary_VR(tag)
        except KeyError:
            known = False
        _AMBIGUOUS[tag] = known
    return known


def _dataset_json(ds: Dataset, codec: str, prefix: str, bulk_uri: BulkURI) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key_tag in sorted(ds.keys()):
        # keep_deferred: a large value is referenced, never read (Dataset.elements() reads it).
        elem = ds.get_item(key_tag, keep_deferred=True)
        tag = int(elem.tag)
        key = f"{tag:08X}"
        vr = str(elem.VR) if elem.VR else vr_of(tag)
        if tag in PIXEL_TAGS:
            if not elem.VR and tag == 0x7FE00010:
                vr = "OW"  # PS3.5 A.1: Pixel Data of an implicit VR data set is OW
            out[key] = {"vr": vr, "BulkDataURI": bulk_uri(f"{prefix}{key}")}
            continue
        undefined = isinstance(elem, RawDataElement) and elem.length == 0xFFFFFFFF and vr != "SQ"
        # UN with a known VR (pydicom reads it as that VR), ambiguous VRs, private tags of an
        # implicit data set, undefined-length values: pydicom's encoder decides.
        if vr == "UN" or _ambiguous(tag) or ((tag >> 16) & 1 and not elem.VR) or undefined:
            out[key] = _pydicom_element(ds, tag, f"{prefix}{key}", bulk_uri)
            continue
        if vr == "SQ":
            items = ds[tag].value or []
            inner = f"{prefix}{key}/"
            values = [_dataset_json(item, codec, f"{inner}{i}/", bulk_uri) for i, item in enumerate(items)]
            out[key] = {"vr": "SQ", "Value": values}
            continue
        if isinstance(elem, DataElement):  # already converted (Specific Character Set, say)
            out[key] = _pydicom_element(ds, tag, f"{prefix}{key}", bulk_uri)
            continue
        if elem.value is None and elem.length == 0:
            out[key] = {"vr": vr}  # an empty value pydicom left "deferred"
            continue
        if is_bulk(tag, vr, elem.value):
            out[key] = {"vr": vr, "BulkDataURI": bulk_uri(f"{prefix}{key}")}
            continue
        try:
            out[key] = _element(elem, vr, codec)
        except (_Unusual, UnicodeDecodeError, LookupError):
            out[key] = _pydicom_element(ds, tag, f"{prefix}{key}", bulk_uri)
    return out


def _pydicom_element(ds: Dataset, tag: int, path: str, bulk_uri: BulkURI) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elem = ds[tag]
        obj: dict[str, Any] = elem.to_json_dict(lambda _e: bulk_uri(path), BULK_BYTES * 4 // 3 + 1)
        return obj


def is_bulk(tag: int, vr: str, value: bytes | None) -> bool:
    """Whether a value is sent as a BulkDataURI: Pixel Data always, binary values past 768 bytes."""
    return tag in PIXEL_TAGS or (vr in BINARY_VRS and (value is None or len(value) > BULK_BYTES))


def instance_json(path: Path, bulk_uri: BulkURI) -> dict[str, Any]:
    """The DICOM JSON of a stored instance from its raw elements (raises for what it declines).

    Values are read from the raw elements: text decoded in the data set's character set,
    numbers unpacked, nothing converted to pydicom objects.  Big endian data sets and code
    extensions are declined (``is_unusual``); ambiguous VRs and the elements of sequences
    that need it go through pydicom.  Large values are never read (pydicom defers them).
    """
    return _raw_json(_read(path), bulk_uri)


def instance_metadata(path: Path, bulk_uri: BulkURI) -> dict[str, Any]:
    """The DICOM JSON of a stored instance: the raw encoder, or pydicom's where it declines.

    The file is read once, large values deferred (never read), so the metadata of a 2 GB
    multi-frame costs its header, and elements after the pixel data are kept.
    """
    ds = _read(path)
    try:
        return _raw_json(ds, bulk_uri)
    except _Unusual:
        return _pydicom_json(ds, bulk_uri)


def _read(path: Path) -> Dataset:
    return dcmread(path, force=True, defer_size=BULK_BYTES + 1)


def _raw_json(ds: Dataset, bulk_uri: BulkURI) -> dict[str, Any]:
    charset = ds.get("SpecificCharacterSet")
    terms = [str(t) for t in charset] if isinstance(charset, list | tuple) else [str(charset or "")]
    codec = codec_of(terms if any(terms) else [])
    if codec is None or not ds.original_encoding[1]:
        raise _Unusual
    return _dataset_json(ds, codec, "", bulk_uri)


def _pydicom_json(ds: Dataset, bulk_uri: BulkURI) -> dict[str, Any]:
    """The same JSON through pydicom's encoder (big endian, code extensions)."""
    referenced: dict[str, str] = {}
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        vr = str(raw.VR or vr_of(int(tag)))
        if is_bulk(int(tag), vr, raw.value):
            referenced[f"{int(tag):08X}"] = vr
            del ds[tag]
    obj = dataset_json(ds, bulk_uri)
    for key, vr in referenced.items():
        obj[key] = {"vr": vr, "BulkDataURI": bulk_uri(key)}
    return obj


def is_unusual(exc: BaseException) -> bool:
    """Whether ``instance_json`` declined an instance (``instance_metadata`` then uses pydicom)."""
    return isinstance(exc, _Unusual)
