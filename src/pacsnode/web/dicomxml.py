"""PS3.19 A.1: the Native DICOM Model, data sets as application/dicom+xml (PS3.18 8.7.3.4)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from pacsnode.web.dicomjson import BINARY_VRS

# PS3.19 A.1.5: the components of each person name group.
_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _person_name(parent: ET.Element, number: int, value: Any) -> None:
    name = ET.SubElement(parent, "PersonName", number=str(number))
    for group_name, group in zip(_PN_GROUPS, str(value).split("="), strict=False):
        if not group:
            continue
        node = ET.SubElement(name, group_name)
        for part_name, part in zip(_PN_PARTS, group.split("^"), strict=False):
            if part:
                ET.SubElement(node, part_name).text = part


def _attribute(parent: ET.Element, elem: Any) -> None:
    tag = int(elem.tag)
    vr = str(elem.VR)
    attrs = {"tag": f"{tag:08X}", "vr": vr}
    keyword = keyword_for_tag(tag)
    if keyword:
        attrs["keyword"] = keyword
    node = ET.SubElement(parent, "DicomAttribute", attrs)
    value = elem.value
    if value is None or value == "" or (isinstance(value, list | tuple) and not value):
        return
    if vr == "SQ":
        for i, item in enumerate(value, start=1):
            item_node = ET.SubElement(node, "Item", number=str(i))
            _fill(item_node, item)
        return
    if vr in BINARY_VRS:
        return  # PS3.19 A.1.5: bulk data is referenced or omitted; query answers hold none
    values = list(value) if isinstance(value, list | tuple) or hasattr(value, "__iter__") else [value]
    if isinstance(value, str | bytes | PersonName):
        values = [value]
    for i, v in enumerate(values, start=1):
        if vr == "PN":
            _person_name(node, i, v)
        else:
            ET.SubElement(node, "Value", number=str(i)).text = str(v)


def _fill(parent: ET.Element, ds: Dataset) -> None:
    for elem in ds:
        _attribute(parent, elem)


def dataset_xml(ds: Dataset) -> bytes:
    """One data set as a NativeDicomModel document (UTF-8, with the XML declaration)."""
    root = ET.Element("NativeDicomModel", xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM")
    _fill(root, ds)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
