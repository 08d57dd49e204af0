"""PS3.18 Annex F: the DICOM JSON model: data sets and query answers as application/dicom+json."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

# PS3.18 F.2.7: binary values at least this long are sent as a BulkDataURI, not inline.
BULK_THRESHOLD = 1024
_BINARY = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN"))

BulkURI = Callable[[str], str]  # an element's path ("7FE00010", "00540016/0/00181072") -> its URI


def _paths(ds: Dataset, prefix: str, out: dict[int, str]) -> None:
    """Map each binary element object of a data set (sequences included) to its bulk data path."""
    for elem in ds:
        path = f"{prefix}{elem.tag:08X}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                _paths(item, f"{path}/{i}/", out)
        elif elem.VR in _BINARY:
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


def dumps(objects: list[dict[str, Any]]) -> bytes:
    """A DICOM JSON array, compact, UTF-8 (PS3.18 F.2: one object per data set)."""
    return json.dumps(objects, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
