"""PS3.18 Annex F: the DICOM JSON model: data sets and query answers as application/dicom+json."""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Callable
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsnode.archive.qr_model import vr_of
from pacsnode.archive.query import Answer

# PS3.18 F.2.7: binary values at least this long are sent as a BulkDataURI, not inline.
BULK_THRESHOLD = 1024
# PS3.5 6.2: the VRs whose values are bytes, not text or numbers.
BINARY_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN"))

BulkURI = Callable[[str], str]  # an element's path ("7FE00010", "00540016/0/00181072") -> its URI


def _paths(ds: Dataset, prefix: str, out: dict[int, str]) -> None:
    """Map each binary element object inside the data set's sequences to its bulk data path.

    Top-level elements are named by their tag alone (the handler's default); only
    sequences are converted to look inside them, the other elements stay raw.
    """
    for raw in ds.elements():
        vr = raw.VR or vr_of(int(raw.tag))
        if vr != "SQ":
            continue
        elem = ds[raw.tag]
        for i, item in enumerate(elem.value or []):
            _nested(item, f"{prefix}{int(raw.tag):08X}/{i}/", out)


def _nested(ds: Dataset, prefix: str, out: dict[int, str]) -> None:
    for elem in ds:
        path = f"{prefix}{elem.tag:08X}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                _nested(item, f"{path}/{i}/", out)
        elif elem.VR in BINARY_VRS:
            out[id(elem)] = path


def dataset_json(ds: Dataset, bulk_uri: BulkURI | None = None) -> dict[str, Any]:
    """A stored data set as a DICOM JSON object; large binary values become BulkDataURIs (F.2.7)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if bulk_uri is None:
            return ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=_omit)
        paths: dict[int, str] = {}
        _paths(ds, "", paths)

        def handler(elem: DataElement) -> str:
            return bulk_uri(paths.get(id(elem), f"{elem.tag:08X}"))

        return ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=handler)


def _omit(_elem: DataElement) -> str:
    return ""


_NUMBER_VRS = frozenset(("IS", "DS", "US", "UL", "SS", "SL", "SV", "UV", "FL", "FD"))
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _number(vr: str, value: Any) -> Any:
    # PS3.18 F.2.3.1: IS, DS and the binary numbers are JSON numbers.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value) if vr in ("IS", "US", "UL", "SS", "SL", "SV", "UV") else value
    text = str(value).strip()
    try:
        number = float(text) if vr in ("DS", "FL", "FD") else int(text)
    except ValueError:
        return text  # a malformed stored value goes out as it is rather than not at all
    return int(number) if isinstance(number, float) and number.is_integer() and vr == "DS" else number


def _person_name(value: Any) -> dict[str, str]:
    # PS3.18 F.2.2: one object per name with its component groups.
    groups = str(value).split("=")
    return {group: text for group, text in zip(_PN_GROUPS, groups, strict=False) if text}


def element_json(vr: str, value: Any) -> dict[str, Any]:
    """One attribute of a query answer as DICOM JSON ({"vr": ..., "Value": [...]})."""
    if value is None or value == "" or (isinstance(value, list | tuple) and not value):
        return {"vr": vr}  # PS3.18 F.2.5: an empty attribute has no Value
    if vr == "SQ":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {"vr": vr, "Value": [item.to_json_dict() for item in value]}
    if isinstance(value, bytes | bytearray):
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [_person_name(v) for v in values]}
    if vr in _NUMBER_VRS:
        return {"vr": vr, "Value": [_number(vr, v) for v in values]}
    if vr == "AT":
        return {"vr": vr, "Value": [f"{int(v):08X}" for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}


def answer_json(answer: Answer) -> dict[str, Any]:
    """A query answer as a DICOM JSON object, straight from its values (no pydicom data set)."""
    return {f"{tag:08X}": element_json(vr, value) for tag, vr, value in answer.items()}


def dumps(objects: list[dict[str, Any]]) -> bytes:
    """A DICOM JSON array, compact, UTF-8 (PS3.18 F.2: one object per data set)."""
    return json.dumps(objects, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
