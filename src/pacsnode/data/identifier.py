"""PS3.4 C.2.2 and C.4.1.1.3: query/retrieve Identifiers built from KEY=VALUE texts, as DCMTK's `-k`.

A key is a keyword (``PatientName``) or a tag (``0010,0010`` or ``(0010,0010)``),
optionally a path into sequences (``ReferencedStudySequence[0].ReferencedSOPClassUID``);
``KEY=`` or a bare ``KEY`` asks for the attribute to be returned (universal matching,
PS3.4 C.2.2.2.3), ``KEY=VALUE`` matches on VALUE (values of a multi-valued attribute
separated by backslashes, PS3.5 6.4).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

_STEP = re.compile(
    r"^\(?(?:(?P<group>[0-9A-Fa-f]{4}),(?P<element>[0-9A-Fa-f]{4})|(?P<kw>[A-Za-z][A-Za-z0-9]*))\)?"
    r"(?:\[(?P<index>\d+)\])?$"
)
_INTS = frozenset(("US", "SS", "UL", "SL", "UV", "SV"))
_FLOATS = frozenset(("FL", "FD"))
_MAX_ITEM = 1000


class IdentifierError(ValueError):
    """A key text names no attribute of the DICOM dictionary, or its value does not fit the VR."""


@dataclass(frozen=True, slots=True)
class _Step:
    tag: BaseTag
    vr: str
    index: int | None  # the item of a sequence the path goes into


def _step(text: str, key: str) -> _Step:
    match = _STEP.match(text.strip())
    if match is None:
        raise IdentifierError(f"{key!r}: {text!r} is neither a keyword nor a gggg,eeee tag")
    if match["kw"]:
        number = tag_for_keyword(match["kw"])
        if number is None:
            raise IdentifierError(f"{key!r}: unknown keyword {match['kw']!r} (PS3.6 Table 6-1)")
        tag = Tag(number)
    else:
        tag = Tag(int(match["group"], 16), int(match["element"], 16))
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise IdentifierError(
            f"{key!r}: {tag} is not in the DICOM dictionary (private tags need a VR)"
        ) from None
    vr = vr.split(" or ")[0]  # PS3.6: "US or SS", "OB or OW": take the first
    index = int(match["index"]) if match["index"] is not None else None
    if index is not None and vr != "SQ":
        raise IdentifierError(f"{key!r}: {keyword_for_tag(tag) or tag} is not a sequence, it has no items")
    if index is not None and index > _MAX_ITEM:
        raise IdentifierError(f"{key!r}: item index {index} is too large")
    return _Step(tag, vr, index)


def _value(vr: str, text: str, key: str) -> object:
    """The pydicom value of `text` for an element of this VR; None for empty (universal matching)."""
    if text == "":
        return None
    if vr == "SQ":
        raise IdentifierError(f"{key!r}: a sequence takes no value; give keys of its items instead")
    parts = text.split("\\")  # PS3.5 6.4: multiple values separated by backslash
    try:
        if vr in _INTS:
            numbers: list[object] = [int(p, 0) for p in parts]
        elif vr in _FLOATS:
            numbers = [float(p) for p in parts]
        elif vr == "AT":
            numbers = [_step(p, key).tag for p in parts]
        else:
            return text
    except ValueError:
        raise IdentifierError(f"{key!r}: {text!r} is not a valid {vr} value") from None
    return numbers[0] if len(numbers) == 1 else numbers


def set_key(ds: Dataset, key: str) -> None:
    """Apply one ``KEY[=VALUE]`` text to an Identifier, creating sequence items on the way."""
    path, sep, value = key.partition("=")
    if not path.strip():
        raise IdentifierError(f"{key!r}: no attribute before '='")
    steps = [_step(part, key) for part in path.split(".")]
    target = ds
    for step in steps[:-1]:
        if step.vr != "SQ":
            raise IdentifierError(f"{key!r}: {keyword_for_tag(step.tag) or step.tag} is not a sequence")
        if step.tag not in target or not isinstance(target[step.tag].value, Sequence):
            target.add_new(step.tag, "SQ", Sequence())
        items = target[step.tag].value
        index = step.index or 0
        while len(items) <= index:
            items.append(Dataset())
        target = items[index]
    last = steps[-1]
    if last.vr == "SQ":
        if sep and value:
            raise IdentifierError(f"{key!r}: a sequence takes no value; give keys of its items instead")
        # PS3.4 C.2.2.2.6: an empty sequence (or one with an empty item) matches any.
        if last.tag not in target:
            target.add_new(last.tag, "SQ", Sequence())
        items = target[last.tag].value
        if last.index is not None:
            while len(items) <= last.index:
                items.append(Dataset())
        return
    target.add_new(last.tag, last.vr, _value(last.vr, value, key))


def build_identifier(keys: Iterable[str], base: Dataset | None = None) -> Dataset:
    """An Identifier from `keys` applied in order over a copy of `base` (a query file, say)."""
    ds = Dataset() if base is None else copy.deepcopy(base)
    texts = []
    for key in keys:
        set_key(ds, key)
        texts.append(key)
    if "SpecificCharacterSet" not in ds and not all(t.isascii() for t in texts):
        # PS3.5 6.1.2.3: text beyond ASCII needs a declared character set; UTF-8 holds any.
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds
