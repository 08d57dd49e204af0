"""The byte-level path of file de-identification: Table E.1-1 applied to the encoded data set itself.

``Deidentifier.deidentify_bytes`` and ``deidentify_file`` used to spend most of their time in
pydicom's reader and writer (a 0.5 MB CT slice: ~2.5 ms of CPU, 40 % writing, 23 % reading),
although only a few dozen short values change.  This path parses the element headers of the
whole data set (PS3.5 7.1, 7.5), nested sequences included, decides each element with the rules
of ``Deidentifier._walk`` (decisions cached per tag, VR, position and IOD), encodes only the
values that change, and returns the output as a list of buffers: slices of the input for what
is kept (consecutive elements as one slice; Pixel Data, native or encapsulated, is never copied)
and new bytes in between.  The same slice costs ~0.6 ms, most of it reading and writing the file.

It gives the data set the pydicom path gives, for the common case only: Little Endian data sets
(explicit or implicit VR) that are well formed, in tag order, and ASCII wherever a value has to
be read.  Anything else raises ``Fallback`` before any output exists, and the caller takes the
pydicom path: big endian and deflate, a data set encoded otherwise than its transfer syntax says,
UN-encoded sequences, text to clean that is not ASCII, a pixel rule that applies, and whatever
is refused (the pydicom path gives the reason).  ``tests/deid/test_deid_fast.py`` runs both
paths over the corpus, a table of every attribute and damaged files, and compares the results.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.values import convert_string

from pacsnode.data.part10 import file_meta
from pacsnode.deid.actions import BINARY_VRS, DUMMY, DUMMY_TEXT, Act, attribute_type, iod_of, resolve
from pacsnode.deid.dates import shift_date, shift_datetime, shift_days
from pacsnode.deid.options import Option
from pacsnode.deid.pixels import BURNED_IN_ANNOTATION, PIXEL_DATA
from pacsnode.deid.tags import (
    CODE_ATTRIBUTES,
    CURVE_GROUPS,
    DATE_VRS,
    DEVICE_TERMS,
    DICOMDIR_CLASS,
    INSTITUTION_TERMS,
    OVERLAY_DATA_GROUPS,
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    PATIENT_TERMS,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    SPECIFIC_CHARACTER_SET,
    TEXT_VRS,
)

if TYPE_CHECKING:
    from pacsnode.deid.engine import Deidentifier, FileResult

Buffer = bytes | memoryview
_Item = tuple[int, int, int, int, list["_Element"]]  # start, content start, content end, end, elements
# tag, VR, start, value start, value end, end (past a delimiter), items (a sequence's) or None
_Element = tuple[int, str, int, int, int, int, list[_Item] | None]


class Fallback(Exception):
    """The byte-level path does not handle this object exactly as the pydicom path: use that one."""


# PS3.5 7.1.2: explicit VR element header: tag, VR, 16-bit length; or tag, VR, 2 reserved bytes,
# 32-bit length for the VRs of Table 7.1-1.  PS3.5 7.1.3: implicit VR: tag, 32-bit length.
_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_SHORT_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST"}
    | {"TM", "UI", "UL", "US"}
)
_VRS = {vr.encode("ascii"): vr for vr in _LONG_VRS | _SHORT_VRS}
_UNDEFINED = 0xFFFFFFFF
_ESC = 0x1B  # PS3.5 6.1.2.5.3: the escape sequence of an ISO 2022 code element
_ITEM = 0xFFFEE000  # PS3.5 7.5: Item, Item Delimitation Item, Sequence Delimitation Item
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_ITEM_BYTES = b"\xfe\xff\x00\xe0"
_ITEM_END_BYTES = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_END_BYTES = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_MAX_DEPTH = 32

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
# pydicom reads these otherwise (big endian, deflate: a different byte stream) or not at all.
_NOT_HANDLED = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})

_SPLIT_TEXT = frozenset({"LO", "SH", "UC"})  # multi-valued, each value's trailing spaces dropped
_SINGLE_TEXT = frozenset({"LT", "ST", "UT", "UR"})  # one value, backslash included
_NUMBER_BYTES = {"AT": 4, "FL": 4, "FD": 8, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}

# What an element becomes (the decision of Deidentifier._walk / _unlisted / _apply, without values).
_DROP = 0
_KEEP = 1
_SEQUENCE = 2  # walk the items (op[2]: the mode inside)
_EMPTY_SEQUENCE = 3
_REPLACE = 4  # op[1]: the Act, op[2]: the VR, op[3]: at top level
_Op = tuple[int, Act | None, str | None, bool]  # kind, act, the VR (a replacement) or the mode (a sequence)
_DROP_OP: _Op = (_DROP, None, None, False)
_KEEP_OP: _Op = (_KEEP, None, None, False)

MANUFACTURER = 0x00080070
MODEL = 0x00081090
ROWS = 0x00280010
COLUMNS = 0x00280011
PRIVATE_CHARACTERISTICS = 0x00080300  # PS3.3 C.12.1.1.7
PRIVATE_GROUP = 0x00080301
PRIVATE_CREATOR = 0x00080302
STATUS = 0x00080303
NONIDENTIFYING = 0x00080304


@dataclass(slots=True)
class _Call:
    """One object's walk: its bytes, encoding, patient and what the walk found out."""

    data: bytes
    view: memoryview
    explicit: bool
    iod: str | None
    pseudonym: str
    days: int | None
    scrub: re.Pattern[str] | None = None
    sop_instance_uid: str | None = None


class ByteLevel:
    """The byte-level path of one ``Deidentifier`` (its tables, UID map, pseudonyms and options)."""

    def __init__(self, owner: Deidentifier) -> None:
        self._owner = owner
        self._plans: dict[tuple[int, str, int, str | None, str | None], _Op] = {}
        self._charsets: dict[bytes, bool] = {}
        self._records = {explicit: _record_elements(owner, explicit) for explicit in (True, False)}
        self._retain_private = owner._private == "C"
        self._scrub = owner._needs_scrub
        self._modified_dates = Option.RETAIN_MODIFIED_DATES in owner.options
        self._full_dates = Option.RETAIN_FULL_DATES in owner.options
        self._clean_pixels = Option.CLEAN_PIXEL_DATA in owner.options

    # ------------------------------------------------------------------ the object

    def run(self, data: bytes) -> tuple[list[Buffer], FileResult]:
        """The de-identified Part 10 file as buffers to write in order; ``data`` has preamble and meta.

        Raises Fallback when the pydicom path must do it (it also gives the reason of a refusal).
        """
        try:
            return self._run(data)
        except (struct.error, IndexError, UnicodeError) as exc:  # not expected: every bound is checked
            raise Fallback(f"{type(exc).__name__}: {exc}") from None

    def _run(self, data: bytes) -> tuple[list[Buffer], FileResult]:
        from pacsnode.deid.engine import FileResult  # the engine imports this module

        transfer_syntax, media_class, start = _meta(data)
        if media_class == DICOMDIR_CLASS:
            raise Fallback("a DICOMDIR")
        if not transfer_syntax or transfer_syntax in _NOT_HANDLED:
            raise Fallback(f"transfer syntax {transfer_syntax or '(none)'}")
        explicit = transfer_syntax != IMPLICIT_VR_LITTLE_ENDIAN
        if start + 8 <= len(data):
            letters = 0x41 <= data[start + 4] <= 0x5A and 0x41 <= data[start + 5] <= 0x5A
            if letters != explicit:  # pydicom reads such a data set in the encoding it finds
                raise Fallback("the data set is not encoded as its transfer syntax says")
        elements, _ = self._dataset(data, start, len(data), explicit, 0, delimited=False)
        top = {element[0]: element for element in elements}

        sop_class = self._single(data, top.get(SOP_CLASS_UID))
        sop_instance = self._single(data, top.get(SOP_INSTANCE_UID))
        if not sop_class or not sop_instance or sop_class == DICOMDIR_CLASS:
            raise Fallback("refused")
        owner = self._owner
        if PIXEL_DATA in top:
            if owner.config.pixel_rules:
                manufacturer = self._single(data, top.get(MANUFACTURER))
                model = self._single(data, top.get(MODEL))
                rows, columns = _us(data, top.get(ROWS)), _us(data, top.get(COLUMNS))
                if any(r.matches(manufacturer, model, rows, columns) for r in owner.config.pixel_rules):
                    raise Fallback("a pixel rule applies")  # PS3.15 E.3.1: the pydicom path blanks
            if not owner.config.allow_burned_in:
                flagged = self._single(data, top.get(BURNED_IN_ANNOTATION)).strip().upper()
                if flagged == "YES" or (self._clean_pixels and flagged != "NO"):
                    raise Fallback("refused")
        patient = self._single(data, top.get(PATIENT_ID)).strip()
        if not patient:
            name, birth = (self._single(data, top.get(t)) for t in (PATIENT_NAME, PATIENT_BIRTH_DATE))
            patient = f"{name}|{birth}"
        call = _Call(
            data=data,
            view=memoryview(data),
            explicit=explicit,
            iod=iod_of(sop_class),
            pseudonym=owner._pseudonyms(patient),
            days=shift_days(owner.config.key, patient) if self._modified_dates else None,
        )
        if not call.pseudonym.isascii():
            raise Fallback("a pseudonym that is not ASCII")
        if self._scrub:
            call.scrub = self._scrub_pattern(data, top)
        body: list[Buffer] = []
        self._emit(call, elements, 0, None, body, self._records[explicit])
        new_instance = call.sop_instance_uid if call.sop_instance_uid is not None else sop_instance
        meta = file_meta(sop_class, new_instance, transfer_syntax)
        return [meta, *body], FileResult(new_instance, transfer_syntax, False)

    # ------------------------------------------------------------------ parsing (PS3.5 7.1, 7.5)

    def _dataset(
        self, data: bytes, pos: int, limit: int, explicit: bool, depth: int, *, delimited: bool
    ) -> tuple[list[_Element], int]:
        """The elements from ``pos`` to ``limit`` (or to an Item Delimitation Item when ``delimited``)."""
        if depth > _MAX_DEPTH:
            raise Fallback("sequences nested too deep")
        elements: list[_Element] = []
        last = -1
        vr_of = self._owner._dictionary_vr
        while True:
            if pos + 8 > limit:
                if pos == limit and not delimited:
                    return elements, pos
                raise Fallback("a data set cut short")
            if explicit:
                group, number, code, length = _EXPLICIT.unpack_from(data, pos)
                tag = group << 16 | number
                if group == 0xFFFE:
                    if tag == _ITEM_END and delimited:
                        return elements, pos + 8
                    raise Fallback(f"a delimiter ({tag:08X}) where an element was expected")
                found = _VRS.get(code)
                if found is None:
                    raise Fallback(f"VR {code!r} is not one this path knows")
                vr = found
                if vr in _LONG_VRS:  # PS3.5 Table 7.1-1: 2 reserved bytes, 32-bit length
                    if pos + 12 > limit:
                        raise Fallback("an element header cut short")
                    length = _U32.unpack_from(data, pos + 8)[0]
                    start = pos + 12
                else:  # PS3.5 Table 7.1-2: 16-bit length
                    start = pos + 8
                if vr == "UN" and tag >> 16 & 1 == 0 and vr_of(tag) == "SQ":
                    raise Fallback("a sequence encoded as UN")  # pydicom reads it as an implicit SQ
            else:
                group, number, length = _IMPLICIT.unpack_from(data, pos)
                tag = group << 16 | number
                if group == 0xFFFE:
                    if tag == _ITEM_END and delimited:
                        return elements, pos + 8
                    raise Fallback(f"a delimiter ({tag:08X}) where an element was expected")
                vr = (vr_of(tag) or "UN") if not group & 1 else "UN"
                start = pos + 8
            if tag <= last or group < 0x0008:
                raise Fallback("elements out of order, or groups 0000-0007 in the data set")
            last = tag
            if tag == SPECIFIC_CHARACTER_SET:
                self._charset(data[start : start + length] if length != _UNDEFINED else b"")
            items: list[_Item] | None = None
            if length == _UNDEFINED:
                # pydicom: explicit SQ, or implicit VR with the dictionary's SQ (or an unknown tag whose
                # value starts with an item); explicit UN it takes for a sequence of implicit VR items.
                if explicit and vr == "UN":
                    raise Fallback("an undefined length UN value")
                sequence = vr == "SQ" or (
                    not explicit and vr == "UN" and data[start : start + 4] == _ITEM_BYTES
                )
                if sequence:  # PS3.5 7.5.2: items up to a Sequence Delimitation Item
                    items, end = self._items(data, start, limit, explicit, depth + 1, delimited=True)
                elif tag == PIXEL_DATA:  # PS3.5 A.4: fragments up to a Sequence Delimitation Item
                    end = _fragments(data, start, limit)
                else:
                    raise Fallback("an undefined length value that is not a sequence")
                elements.append((tag, "SQ" if sequence else vr, pos, start, end - 8, end, items))
            else:
                end = start + length
                if end > limit:
                    raise Fallback("a value runs past its data set")
                if vr == "SQ":
                    items, _ = self._items(data, start, end, explicit, depth + 1, delimited=False)
                elements.append((tag, vr, pos, start, end, end, items))
            pos = end

    def _charset(self, raw: bytes) -> None:
        """Fallback for a Specific Character Set that pydicom's reader does not take (it reads them all)."""
        known = self._charsets.get(raw)
        if known is None:
            from pacsnode.deid.engine import quiet

            try:
                with quiet():
                    convert_encodings(convert_string(raw, True))
                known = True
            except Exception:  # whatever pydicom raises there, its reader would raise as well
                known = False
            if len(self._charsets) < 256:
                self._charsets[raw] = known
        if not known:
            raise Fallback("a Specific Character Set that pydicom does not read")

    def _items(
        self, data: bytes, pos: int, limit: int, explicit: bool, depth: int, *, delimited: bool
    ) -> tuple[list[_Item], int]:
        """A sequence's items (PS3.5 7.5.1): up to ``limit``, or past the Sequence Delimitation Item."""
        items: list[_Item] = []
        while True:
            if not delimited and pos == limit:
                return items, pos
            if pos + 8 > limit:
                raise Fallback("a sequence cut short")
            group, number, length = _IMPLICIT.unpack_from(data, pos)
            tag = group << 16 | number
            if tag == _SEQUENCE_END and delimited:
                return items, pos + 8
            if tag != _ITEM:
                raise Fallback(f"({tag:08X}) where an item was expected")
            if length == _UNDEFINED:
                elements, end = self._dataset(data, pos + 8, limit, explicit, depth, delimited=True)
                items.append((pos, pos + 8, end - 8, end, elements))
            else:
                end = pos + 8 + length
                if end > limit:
                    raise Fallback("an item runs past its sequence")
                elements, _ = self._dataset(data, pos + 8, end, explicit, depth, delimited=False)
                items.append((pos, pos + 8, end, end, elements))
            pos = end

    # ------------------------------------------------------------------ decisions

    def _plan(self, tag: int, vr: str, parent: int, mode: str | None, iod: str | None) -> _Op:
        """What ``Deidentifier._walk`` does to a (non-private) element, cached: its branches, in order."""
        key = (tag, vr, parent, mode, iod)
        found = self._plans.get(key)
        if found is not None:
            return found
        owner = self._owner
        group = tag >> 16
        op: _Op
        code = owner._codes.get(tag)
        if tag & 0xFFFF == 0 and group > 0x0002:
            op = _DROP_OP  # PS3.5 7.2: group lengths
        elif (
            code is None
            and 0x5000 <= group <= 0x60FF
            and owner._drop_overlays
            and group in OVERLAY_DATA_GROUPS
        ):
            op = _DROP_OP  # the overlay plane goes with its Overlay Data
        else:
            if code is None and 0x5000 <= group <= 0x60FF:
                code = owner._masked_code(tag)
            op = (
                self._unlisted(tag, vr, mode)
                if code is None
                else self._apply(tag, vr, code, parent, mode, iod)
            )
        self._plans[key] = op
        return op

    def _single(self, data: bytes, element: _Element | None) -> str:
        """``str(ds.get(keyword, "") or "")`` for a single-valued string element ('' when absent)."""
        if element is None:
            return ""
        vr = self._vr(element[0], element[1])
        value = _only(_strings(data[element[3] : element[4]], vr))
        return _person_name(value) if vr == "PN" else value

    def _vr(self, tag: int, vr: str) -> str:
        """``Deidentifier._vr``: as encoded, or from the dictionary for implicit VR and UN."""
        if vr != "UN":
            return vr
        return self._owner._dictionary_vr(tag) or vr

    def _unlisted(self, tag: int, vr: str, mode: str | None) -> _Op:
        if self._owner._dictionary_vr(tag) is None:
            return _DROP_OP  # unknown to the data dictionary
        vr = self._vr(tag, vr)
        if vr == "SQ":
            return (_SEQUENCE, None, mode, False)
        if vr == "UR":
            return _DROP_OP
        if mode is not None and tag not in CODE_ATTRIBUTES and (vr in TEXT_VRS or vr in DATE_VRS):
            return (_REPLACE, Act.DUMMY if mode == "D" else Act.CLEAN, vr, False)
        if self._modified_dates and vr in ("DA", "DT"):
            return (_REPLACE, Act.CLEAN, vr, False)
        return _KEEP_OP

    def _apply(self, tag: int, vr: str, code: str, parent: int, mode: str | None, iod: str | None) -> _Op:
        act = resolve(code, attribute_type(iod, parent, tag) if "/" in code else "3")
        if act is Act.REMOVE:
            return _DROP_OP
        vr = self._vr(tag, vr)
        if vr == "SQ":
            if act is Act.EMPTY:
                return (_EMPTY_SEQUENCE, None, None, False)
            if act is Act.DUMMY or act is Act.CLEAN:
                return (_SEQUENCE, None, "D" if act is Act.DUMMY else "C", False)
            return (_SEQUENCE, None, mode, False)
        if act is Act.KEEP:
            return _KEEP_OP
        return (_REPLACE, act, vr, parent == 0)

    # ------------------------------------------------------------------ output

    def _emit(
        self,
        call: _Call,
        elements: list[_Element],
        parent: int,
        mode: str | None,
        out: list[Buffer],
        inserts: list[tuple[int, bytes]],
    ) -> bool:
        """Append the de-identified encoding of a data set to ``out``; whether it differs from the input.

        Unchanged elements are appended as slices of the input, consecutive ones as one slice;
        ``inserts`` (tag, encoded element) are put in tag order, replacing an element of that tag.
        """
        view = call.view
        explicit = call.explicit
        changed = bool(inserts)
        safe: set[int] | None = None
        if self._retain_private and any(element[0] >> 16 & 1 for element in elements):
            safe = self._safe_private(call, elements)
        run = -1  # where the current stretch of unchanged elements starts
        pending = 0  # the next insert
        for element in elements:
            tag, vr, start = element[0], element[1], element[2]
            while pending < len(inserts) and inserts[pending][0] <= tag:
                if run >= 0:
                    out.append(view[run:start])
                    run = -1
                replaced = inserts[pending][0] == tag
                out.append(inserts[pending][1])
                pending += 1
                if replaced:
                    break
            else:
                replaced = False
            if replaced:
                continue  # what Deidentifier._record sets replaces the element
            new: list[Buffer] | None = None
            if tag >> 16 & 1:
                # PS3.15 E.1-1 private attributes: X; E.3.10 keeps the safe ones as they are.
                op: _Op = _KEEP_OP if safe is not None and tag in safe else _DROP_OP
            else:
                op = self._plan(tag, vr, parent, mode, call.iod)
            kind, act, text, top_level = op
            if kind == _KEEP:
                if run < 0:
                    run = start
                continue
            if kind == _SEQUENCE:
                items = element[6]
                if items is None:
                    raise Fallback("a sequence that was not parsed as one")
                new = self._sequence(call, element, items, text)
                if new is None:
                    if run < 0:
                        run = start
                    continue
            elif kind == _EMPTY_SEQUENCE:
                new = [_header(tag, "SQ", 0, explicit)]  # an empty sequence, defined length
            elif kind == _REPLACE and act is not None and text is not None:
                value = self._replacement(call, element, act, text, top_level)
                if value is None:
                    if run < 0:
                        run = start
                    continue
                if explicit and text not in _LONG_VRS and len(value) > 0xFFFF:
                    raise Fallback("a new value too long for its VR")
                new = [_header(tag, text, len(value), explicit), value]
                if parent == 0 and tag == SOP_INSTANCE_UID:
                    call.sop_instance_uid = value.rstrip(b"\0 ").decode("ascii")
            changed = True
            if run >= 0:
                out.append(view[run:start])
                run = -1
            if new is not None:
                out.extend(new)
        if run >= 0:
            out.append(view[run : elements[-1][5]])
        for _tag, encoded in inserts[pending:]:
            out.append(encoded)
        return changed

    def _safe_private(self, call: _Call, elements: list[_Element]) -> set[int]:
        """``Deidentifier._safe_private``: the private tags of this data set that E.3.10 keeps."""
        data = call.data
        declared = self._declared(data, next((e for e in elements if e[0] == PRIVATE_CHARACTERISTICS), None))
        creators: dict[tuple[int, int], str] = {}
        for element in elements:
            tag = element[0]
            if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF:  # PS3.5 7.8.1: a Private Creator
                vr = "LO" if element[1] == "UN" else element[1]
                creators[(tag >> 16, tag & 0xFF)] = _only(_strings(data[element[3] : element[4]], vr)).strip()
        keep: set[int] = set()
        listed = self._owner.config.safe_private
        for element in elements:
            tag = element[0]
            group, number = tag >> 16, tag & 0xFFFF
            if not group & 1 or number < 0x1000:
                continue
            creator = creators.get((group, number >> 8))
            if creator is None:
                continue
            entry = (creator, group, number & 0xFF)
            if entry in listed or entry in declared or (creator, group, -1) in declared:
                keep.add(tag)
                keep.add((group << 16) | (number >> 8))
        return keep

    def _declared(self, data: bytes, element: _Element | None) -> set[tuple[str, int, int]]:
        """``safe_private.declared_safe``: what the Private Data Element Characteristics Sequence says."""
        safe: set[tuple[str, int, int]] = set()
        if element is None:
            return safe
        if element[6] is None:
            raise Fallback("Private Data Element Characteristics that is not a sequence")
        for item in element[6]:
            found = {e[0]: e for e in item[4]}
            group_ref, creator_ref, status_ref = (
                found.get(t) for t in (PRIVATE_GROUP, PRIVATE_CREATOR, STATUS)
            )
            if group_ref is None or creator_ref is None or status_ref is None:
                continue
            groups = self._numbers(data, group_ref)
            if len(groups) != 1:
                continue  # pydicom: int() of None or of several values fails, and the item is skipped
            creator = self._single(data, creator_ref).strip()
            status = self._single(data, status_ref).strip()
            if status == "SAFE":
                safe.add((creator, groups[0], -1))
            elif status == "MIXED" and NONIDENTIFYING in found:
                safe.update(
                    (creator, groups[0], n & 0xFF) for n in self._numbers(data, found[NONIDENTIFYING])
                )
        return safe

    def _numbers(self, data: bytes, element: _Element) -> list[int]:
        """The values of a US element."""
        size = element[4] - element[3]
        if self._vr(element[0], element[1]) != "US" or size % 2:
            raise Fallback("a US element that is not")
        return [v for (v,) in _U16.iter_unpack(data[element[3] : element[4]])]

    def _sequence(
        self, call: _Call, element: _Element, items: list[_Item], mode: str | None
    ) -> list[Buffer] | None:
        """A sequence with its items walked (PS3.5 7.5); None when nothing in it changes."""
        tag, _vr, _start, _value, value_end, end, _items = element
        view = call.view
        encoded: list[list[Buffer] | None] = []
        changed = False
        for item in items:
            parts: list[Buffer] = []
            if self._emit(call, item[4], tag, mode, parts, []):
                changed = True
                encoded.append(parts)
            else:
                encoded.append(None)
        if not changed:
            return None
        out: list[Buffer] = []
        total = 0
        for item, walked in zip(items, encoded, strict=True):
            item_start, _content, content_end, item_end, _elements = item
            if walked is None:
                out.append(view[item_start:item_end])
                total += item_end - item_start
                continue
            parts = walked
            size = sum(len(p) for p in parts)
            undefined = item_end != content_end
            out.append(_ITEM_BYTES + _U32.pack(_UNDEFINED if undefined else size))  # PS3.5 7.5.2
            out.extend(parts)
            total += 8 + size
            if undefined:
                out.append(_ITEM_END_BYTES)
                total += 8
        undefined = end != value_end
        head = _header(tag, "SQ", _UNDEFINED if undefined else total, call.explicit)
        return [head, *out, _SEQUENCE_END_BYTES] if undefined else [head, *out]

    def _replacement(
        self, call: _Call, element: _Element, act: Act, vr: str, top_level: bool
    ) -> bytes | None:
        """``Deidentifier._replace``: the new value's bytes, or None when it stays as it is."""
        tag = element[0]
        raw = call.data[element[3] : element[4]]
        owner = self._owner
        if tag in (PATIENT_ID, PATIENT_NAME) and (act is Act.EMPTY or act is Act.DUMMY):
            if tag == PATIENT_ID:
                original = _only(_strings(raw, vr))
                value = call.pseudonym if top_level else owner._pseudonyms(original) if original else ""
            else:
                value = call.pseudonym if top_level else ""
            return _text([value], vr)
        if act is Act.EMPTY:
            return b""  # PS3.15 E.1-1 Z
        if act is Act.UID:
            return self._mapped(raw, vr)  # PS3.15 E.1-1 U
        if act is Act.CLEAN:
            return self._clean(call, element, raw, vr)
        return self._dummy(raw, vr)

    def _dummy(self, raw: bytes, vr: str) -> bytes:
        """PS3.15 E.1-1 D: a dummy value consistent with the VR (a UID mapped)."""
        if vr == "UI":
            return self._mapped(raw, vr)
        if vr in BINARY_VRS:
            return bytes(max(len(raw), 2) + len(raw) % 2)
        size = _NUMBER_BYTES.get(vr)
        if size is not None:
            return bytes(size)  # 0, 0.0 and tag (0000,0000) are all zero bytes
        return _text([str(DUMMY.get(vr, DUMMY_TEXT))], vr)

    def _mapped(self, raw: bytes, vr: str) -> bytes:
        values = _strings(raw, vr)
        uids = self._owner._uids
        if len(values) > 1:
            return _text([uids(v) for v in values], vr)
        return _text([uids(values[0]) if values[0] else values[0]], vr)

    def _clean(self, call: _Call, element: _Element, raw: bytes, vr: str) -> bytes | None:
        """``Deidentifier._clean``: dates moved, text scrubbed, names and the rest dummied."""
        if vr == "DA" or vr == "DT":
            if call.days is None:
                return None if self._full_dates else _text([str(DUMMY[vr])], vr)
            moved = []
            for v in _strings(raw, vr):
                if not v:
                    moved.append("")
                    continue
                shifted = shift_date(v, call.days) if vr == "DA" else shift_datetime(v, call.days)
                moved.append(shifted if shifted is not None else str(DUMMY[vr]))
            return _text(moved, vr)
        if vr == "TM":
            if call.days is None and not self._full_dates:
                return _text([str(DUMMY[vr])], vr)
            return None
        if vr in TEXT_VRS:
            if call.scrub is None:
                return None
            if vr == "PN":
                return _text([DUMMY_TEXT], vr)
            return _text([call.scrub.sub("XXXX", v) for v in _strings(raw, vr)], vr)
        group = element[0] >> 16
        if vr in BINARY_VRS and (group in OVERLAY_DATA_GROUPS or group in CURVE_GROUPS):
            return None  # E.3.3 Clean Graphics keeps overlay and curve data
        return self._replacement(call, element, Act.DUMMY, vr, False)

    def _scrub_pattern(self, data: bytes, top: dict[int, _Element]) -> re.Pattern[str] | None:
        """``Deidentifier.prepare_scrub`` on the raw values (ASCII only, else Fallback)."""
        tags = list(PATIENT_TERMS)
        options = self._owner.options
        if Option.RETAIN_INSTITUTION_IDENTITY not in options:
            tags += INSTITUTION_TERMS
        if Option.RETAIN_DEVICE_IDENTITY not in options:
            tags += DEVICE_TERMS
        words: set[str] = set()
        for tag in tags:
            element = top.get(tag)
            if element is None:
                continue
            vr = self._vr(tag, element[1])
            if vr in _NUMBER_BYTES or vr in BINARY_VRS or vr == "SQ":
                raise Fallback("an identifying attribute with an unusual VR")
            for v in _strings(data[element[3] : element[4]], vr):
                if vr == "PN":
                    words.update(p.strip() for p in re.split(r"[\^=]", v))
                    v = _person_name(v)
                words.add(v.strip())
        birth = self._single(data, top.get(PATIENT_BIRTH_DATE)).strip()
        if len(birth) == 8 and birth.isdigit():
            words.update(
                {birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}", f"{birth[6:]}/{birth[4:6]}/{birth[:4]}"}
            )
            words.add(f"{birth[4:6]}/{birth[6:]}/{birth[:4]}")
        words = {w for w in words if len(w) >= 2}
        if not words:
            return None
        return re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)), re.IGNORECASE)


# ---------------------------------------------------------------------- values


def _meta(data: bytes) -> tuple[str, str, int]:
    """(Transfer Syntax UID, Media Storage SOP Class UID, where the data set starts): PS3.10 7.1.

    The File Meta Information is explicit VR little endian, group 0002, after the preamble.
    """
    pos = 132
    syntax = media = ""
    end = len(data)
    while pos + 8 <= end and data[pos : pos + 2] == b"\x02\x00":
        _group, number, code, length = _EXPLICIT.unpack_from(data, pos)
        vr = _VRS.get(code)
        if vr is None:
            raise Fallback("File Meta Information that is not explicit VR")
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise Fallback("File Meta Information cut short")
            length = _U32.unpack_from(data, pos + 8)[0]
            pos += 12
        else:
            pos += 8
        if length == _UNDEFINED or pos + length > end:
            raise Fallback("File Meta Information cut short")
        if number == 0x0010:
            syntax = _only(_strings(data[pos : pos + length], "UI"))
        elif number == 0x0002:
            media = _only(_strings(data[pos : pos + length], "UI"))
        pos += length
    return syntax, media, pos


def _fragments(data: bytes, pos: int, limit: int) -> int:
    """Past the Sequence Delimitation Item of encapsulated pixel data (PS3.5 A.4): items of fragments."""
    while True:
        if pos + 8 > limit:
            raise Fallback("encapsulated pixel data cut short")
        group, number, length = _IMPLICIT.unpack_from(data, pos)
        tag = group << 16 | number
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM or length == _UNDEFINED or pos + 8 + length > limit:
            raise Fallback("encapsulated pixel data that is not a list of fragments")
        pos += 8 + length


def _ascii(raw: bytes) -> str:
    if not raw.isascii() or _ESC in raw:  # an int operand: no TypeError formatted and dropped
        raise Fallback("a value that is not ASCII")  # its character set is for pydicom to apply
    return raw.decode("ascii")


def _strings(raw: bytes, vr: str) -> list[str]:
    """The values of a string element as pydicom has them (pydicom.values), for ASCII bytes."""
    if vr == "PN":
        text = _ascii(raw.rstrip(b"\0 "))
        return text.split("\\")
    text = _ascii(raw)
    if vr == "AE":
        return [v.strip() for v in text.split("\\")]
    if vr in _SPLIT_TEXT:
        return [v.rstrip("\0 ") for v in text.split("\\")]
    if vr in _SINGLE_TEXT:
        return [text.rstrip("\0 ")]
    if vr in _NUMBER_BYTES or vr in BINARY_VRS or vr == "SQ":
        raise Fallback(f"a {vr} value read as text")
    values = text.rstrip(" \0").split("\\")  # AS, CS, DA, DS, DT, IS, TM, UI: pydicom's multi_string
    return [v.strip() for v in values] if vr == "UI" else values  # pydicom's UID() strips whitespace


def _only(values: list[str]) -> str:
    if len(values) != 1:
        raise Fallback("a multi-valued attribute where one value is read")
    return values[0]


def _person_name(value: str) -> str:
    """``str(PersonName)``: the component groups with trailing empty ones dropped."""
    groups = value.split("=")
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _us(data: bytes, element: _Element | None) -> int:
    """``int(ds.get(keyword, 0) or 0)`` for a US element."""
    if element is None or element[4] == element[3]:
        return 0
    if element[1] != "US" or element[4] - element[3] != 2:
        raise Fallback("Rows or Columns not one US value")
    return int(_U16.unpack_from(data, element[3])[0])


def _text(values: list[str], vr: str) -> bytes:
    """PS3.5 6.2: values joined by backslashes, padded to even length (UI with NUL, others with space)."""
    raw = "\\".join(values)
    if not raw.isascii():
        raise Fallback("a new value that is not ASCII")
    encoded = raw.encode("ascii")
    if len(encoded) % 2:
        encoded += b"\0" if vr == "UI" else b" "
    return encoded


def _header(tag: int, vr: str, length: int, explicit: bool) -> bytes:
    """An element header: PS3.5 7.1.2 (explicit VR) or 7.1.3 (implicit VR), little endian."""
    if not explicit:
        return _IMPLICIT.pack(tag >> 16, tag & 0xFFFF, length)
    if vr in _LONG_VRS:
        return _EXPLICIT.pack(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0) + _U32.pack(length)
    return _EXPLICIT.pack(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), length)


def _record_elements(owner: Deidentifier, explicit: bool) -> list[tuple[int, bytes]]:
    """The elements ``Deidentifier._record`` adds (no pixels cleaned), encoded once by pydicom's writer."""
    ds = Dataset()
    owner._record(ds, False)
    encoded = []
    for element in ds:
        one = Dataset()
        one[element.tag] = DataElement(element.tag, element.VR, element.value)
        fp = DicomBytesIO()
        fp.is_implicit_VR = not explicit
        fp.is_little_endian = True
        write_dataset(fp, one)
        encoded.append((int(element.tag), fp.getvalue()))
    return encoded


__all__ = ["Buffer", "ByteLevel", "Fallback"]
