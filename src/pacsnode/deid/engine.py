"""PS3.15 E.1.1 de-identifier: one walk of a data set applying Table E.1-1, then what E.1.1 asks to record."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pydicom.config
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from pacsnode import __version__
from pacsnode.data.header import truncation
from pacsnode.data.part10 import PREAMBLE, file_meta
from pacsnode.data.transcode import encoding_of, guess_encoding, uncompressed_for
from pacsnode.data.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
from pacsnode.deid.actions import BINARY_VRS, DUMMY, DUMMY_TEXT, Act, attribute_type, iod_of, resolve
from pacsnode.deid.dates import shift_date, shift_datetime, shift_days
from pacsnode.deid.fast import Buffer, ByteLevel, Fallback
from pacsnode.deid.options import Option, action_for, method_codes
from pacsnode.deid.pixels import BURNED_IN_ANNOTATION, PIXEL_DATA, PixelError, PixelRule, blank, rule_for
from pacsnode.deid.profile_table import ATTRIBUTES, MASKED, PRIVATE
from pacsnode.deid.pseudonyms import Pseudonyms
from pacsnode.deid.safe_private import SAFE_PRIVATE, declared_safe
from pacsnode.deid.tags import (
    CODE_ATTRIBUTES,
    CURVE_GROUPS,
    DATE_VRS,
    DEIDENTIFICATION_METHOD,
    DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
    DEVICE_TERMS,
    DICOMDIR_CLASS,
    INSTITUTION_TERMS,
    LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
    OVERLAY_DATA_GROUPS,
    PATIENT_ID,
    PATIENT_IDENTITY_REMOVED,
    PATIENT_NAME,
    PATIENT_TERMS,
    SOP_INSTANCE_UID,
    TEXT_VRS,
)
from pacsnode.deid.uids import UidMap

log = logging.getLogger("pacsnode.deid")


class Refused(Exception):
    """An instance that is not de-identified (and must not be passed on): why, in one line."""


@dataclass(frozen=True, slots=True)
class DeidConfig:
    """Everything a de-identification depends on; built once, passed explicitly.

    ``key`` keys the UID mapping, the date shift and the pseudonyms: the same key
    gives the same output for the same input, batch after batch.
    """

    key: bytes
    options: frozenset[Option] = frozenset()
    pseudonyms: Mapping[str, str] = field(default_factory=dict)
    pixel_rules: tuple[PixelRule, ...] = ()
    allow_burned_in: bool = False  # pass objects flagged Burned In Annotation YES that no rule cleans
    safe_private: frozenset[tuple[str, int, int]] = SAFE_PRIVATE


@dataclass(slots=True)
class _Instance:
    """What one instance's walk needs to know about it."""

    iod: str | None
    patient: str
    pseudonym: str
    days: int | None  # the date shift (Modified Dates only)
    scrub: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class FileResult:
    """What became of one file."""

    sop_instance_uid: str
    transfer_syntax: str
    pixels_cleaned: bool


class Deidentifier:
    """The Basic Application Level Confidentiality Profile with options (PS3.15 E.1.1, E.2, E.3).

    Call it on a data set (the hook for routing rules: ``deidentifier(ds)`` changes ``ds``
    in place and returns it) or use ``deidentify_file`` / ``deidentify_bytes`` for Part 10
    files. Thread-safe apart from the UID cache, whose races only repeat work.
    """

    def __init__(self, config: DeidConfig) -> None:
        self.config = config
        options = config.options
        self.options = options
        self._codes = {tag: action_for(row, options) for tag, row in ATTRIBUTES.items()}
        self._masked = tuple((value, mask, action_for(row, options)) for value, mask, row in MASKED)
        self._private = action_for(PRIVATE, options)
        self._drop_overlays = self._masked_code(0x60003000) == "X"
        self._uids = UidMap(config.key)
        self._pseudonyms = Pseudonyms(config.key, config.pseudonyms)
        self._vr_cache: dict[int, str | None] = {}
        self._modified_dates = Option.RETAIN_MODIFIED_DATES in options
        self._full_dates = Option.RETAIN_FULL_DATES in options
        self._needs_scrub = "C" in self._codes.values() or self._private == "C"
        self._byte_level = ByteLevel(self)

    # ------------------------------------------------------------------ data sets

    def __call__(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place (pixels only where a rule says so); returns it. Raises Refused."""
        meta = getattr(ds, "file_meta", None)
        with quiet():
            self.deidentify(ds, str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else "")
        return ds

    def deidentify(self, ds: Dataset, transfer_syntax: str) -> FileResult:
        """De-identify ``ds`` in place; ``transfer_syntax`` is that of its pixel data (native if empty)."""
        sop_class = str(ds.get("SOPClassUID", "") or "")
        if not sop_class or not str(ds.get("SOPInstanceUID", "") or ""):
            raise Refused("not a composite instance: no SOP Class UID or SOP Instance UID")
        if sop_class == DICOMDIR_CLASS:
            raise Refused(
                "a DICOMDIR is not de-identified (its record offsets would break): rebuild the file-set"
            )
        pixels_cleaned = False
        rule = rule_for(ds, self.config.pixel_rules)
        flagged = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        if rule is not None:
            try:
                transfer_syntax = blank(ds, rule, transfer_syntax or "1.2.840.10008.1.2.1")  # PS3.15 E.3.1
            except PixelError as exc:
                raise Refused(str(exc)) from None
            pixels_cleaned = True
        elif PIXEL_DATA in ds and not self.config.allow_burned_in:
            if flagged == "YES":
                raise Refused("Burned In Annotation is YES and no pixel rule matches this device and size")
            if Option.CLEAN_PIXEL_DATA in self.options and flagged != "NO":
                raise Refused(
                    "Clean Pixel Data asked, Burned In Annotation is not NO and no pixel rule matches"
                )
        patient = str(ds.get("PatientID", "") or "").strip()
        if not patient:
            patient = f"{ds.get('PatientName', '')}|{ds.get('PatientBirthDate', '')}"
        inst = _Instance(
            iod=iod_of(sop_class),
            patient=patient,
            pseudonym=self._pseudonyms(patient),
            days=shift_days(self.config.key, patient) if self._modified_dates else None,
        )
        if self._needs_scrub:
            self.prepare_scrub(ds, inst)
        self._walk(ds, inst, 0, None, ds)
        self._record(ds, pixels_cleaned)
        return FileResult(str(ds.SOPInstanceUID), transfer_syntax, pixels_cleaned)

    def map_uid(self, uid: str) -> str:
        """The UID a Study/Series/SOP Instance UID becomes (itself under Retain UIDs, PS3.15 E.3.9)."""
        return uid if self._codes.get(SOP_INSTANCE_UID) == "K" else self._uids(uid)

    def _masked_code(self, tag: int) -> str | None:
        for value, mask, code in self._masked:
            if tag & mask == value:
                return code
        return None

    def _dictionary_vr(self, tag: int) -> str | None:
        """The VR the data dictionary gives (None: a tag it does not know), cached per tag."""
        if tag in self._vr_cache:
            return self._vr_cache[tag]
        try:
            known: str | None = dictionary_VR(tag).split(" or ")[0]  # "OB or OW": either encodes a dummy
        except KeyError:
            known = None
        self._vr_cache[tag] = known
        return known

    def _vr(self, ds: Dataset, tag: int) -> str | None:
        """The element's VR: as encoded, or from the dictionary (implicit VR, UN); None if unknown."""
        raw = ds.get_item(tag)
        vr = raw.VR if raw is not None else None
        if vr and vr != "UN":
            return str(vr)
        return self._dictionary_vr(tag) or vr

    def _walk(self, ds: Dataset, inst: _Instance, parent: int, mode: str | None, top: Dataset) -> None:
        """Apply the table to every element of ``ds`` (an item when ``parent`` is its sequence's tag).

        ``mode`` is "D" or "C" inside a sequence that is dummied or cleaned as a whole.
        """
        safe = (
            self._safe_private(ds) if self._private == "C" and any(t >> 16 & 1 for t in ds.keys()) else None  # noqa: SIM118
        )
        for key in list(ds.keys()):
            tag = int(key)
            group = tag >> 16
            if group & 1:
                if safe is None or tag not in safe:
                    del ds[tag]  # PS3.15 E.1-1 private attributes: X (E.3.10: C keeps the safe ones)
                continue
            if tag & 0xFFFF == 0 and group > 0x0002:
                del ds[tag]  # PS3.5 7.2: group lengths are retired and would be wrong after the changes
                continue
            code = self._codes.get(tag)
            if code is None and 0x5000 <= group <= 0x60FF:
                if self._drop_overlays and group in OVERLAY_DATA_GROUPS:
                    # PS3.15 E.1-1 Overlay Data X: the rest of the overlay plane goes with it.
                    del ds[tag]
                    continue
                code = self._masked_code(tag)
            if code is None:
                self._unlisted(ds, tag, inst, parent, mode, top)
            else:
                self._apply(ds, tag, code, inst, parent, mode, top)

    def _unlisted(
        self, ds: Dataset, tag: int, inst: _Instance, parent: int, mode: str | None, top: Dataset
    ) -> None:
        if self._dictionary_vr(tag) is None:
            del ds[tag]  # an attribute unknown to the data dictionary cannot be judged safe: removed
            return
        vr = self._vr(ds, tag)
        if vr == "SQ":
            self._items(ds, tag, inst, mode, top)
        elif vr == "UR":
            # Not in Table E.1-1, but a URL (Retrieve URL, 0008,1190) names hosts and embeds the
            # original Study/Series UIDs, which E.1-1 U replaces: removed, as E.1.1 item 3 asks.
            del ds[tag]
        elif mode is not None and tag not in CODE_ATTRIBUTES and (vr in TEXT_VRS or vr in DATE_VRS):
            self._replace(ds, tag, vr, Act.DUMMY if mode == "D" else Act.CLEAN, inst)
        elif inst.days is not None and vr in ("DA", "DT"):
            self._replace(ds, tag, vr, Act.CLEAN, inst)  # PS3.15 E.3.6.2: every date moves together

    def _items(self, ds: Dataset, tag: int, inst: _Instance, mode: str | None, top: Dataset) -> None:
        element = ds[tag]
        if element.VR != "SQ" or not isinstance(element.value, Sequence):
            del ds[tag]  # a sequence pydicom could not read as one (UN it cannot parse): removed
            return
        for item in element.value:
            self._walk(item, inst, tag, mode, top)

    def _apply(
        self, ds: Dataset, tag: int, code: str, inst: _Instance, parent: int, mode: str | None, top: Dataset
    ) -> None:
        act = resolve(code, attribute_type(inst.iod, parent, tag) if "/" in code else "3")
        if act is Act.REMOVE:
            del ds[tag]  # PS3.15 E.1-1 X
            return
        vr = self._vr(ds, tag) or "UN"
        if vr == "SQ":
            if act is Act.EMPTY:
                ds[tag] = DataElement(tag, "SQ", Sequence())  # Z: an empty sequence
            elif act is Act.DUMMY or act is Act.CLEAN:
                self._items(
                    ds, tag, inst, "D" if act is Act.DUMMY else "C", top
                )  # items kept, values replaced
            else:
                self._items(ds, tag, inst, mode, top)  # K, U: items kept and de-identified (E.1-1 K, X/Z/U*)
            return
        if act is Act.KEEP:
            return
        self._replace(ds, tag, vr, act, inst, top_level=parent == 0)

    def _replace(
        self, ds: Dataset, tag: int, vr: str, act: Act, inst: _Instance, *, top_level: bool = False
    ) -> None:
        if tag in (PATIENT_ID, PATIENT_NAME) and act in (Act.EMPTY, Act.DUMMY):
            # Z allows a dummy value: Patient ID and Name become the patient's pseudonym.
            if tag == PATIENT_ID:
                original = str(ds[tag].value or "")
                value = inst.pseudonym if top_level else self._pseudonyms(original) if original else ""
            else:
                value = inst.pseudonym if top_level else ""
            ds[tag] = DataElement(tag, vr, value)
            return
        if act is Act.EMPTY:
            ds[tag] = DataElement(tag, vr, b"" if vr in BINARY_VRS else None)  # PS3.15 E.1-1 Z
            return
        if act is Act.UID:
            ds[tag] = DataElement(tag, vr, self._mapped(ds[tag].value))  # PS3.15 E.1-1 U
            return
        if act is Act.CLEAN:
            self._clean(ds, tag, vr, inst)
            return
        # PS3.15 E.1-1 D (and C where nothing of similar meaning can be known)
        if vr == "UI":
            ds[tag] = DataElement(tag, vr, self._mapped(ds[tag].value))
        elif vr in BINARY_VRS:
            raw = ds.get_item(tag)
            length = len(raw.value or b"") if raw is not None and isinstance(raw.value, bytes) else 0
            ds[tag] = DataElement(tag, vr, bytes(max(length, 2) + (length % 2)))
        else:
            ds[tag] = DataElement(tag, vr, DUMMY.get(vr, DUMMY_TEXT))

    def _mapped(self, value: object) -> object:
        if isinstance(value, MultiValue | list | tuple):
            return [self._uids(str(v)) for v in value]
        return self._uids(str(value)) if value else value

    def _clean(self, ds: Dataset, tag: int, vr: str, inst: _Instance) -> None:
        """PS3.15 E.1-1 C: dates moved (E.3.6.2), text scrubbed of the patient's identifiers (E.3.5)."""
        if vr in ("DA", "DT"):
            if inst.days is None:
                if not self._full_dates:
                    ds[tag] = DataElement(tag, vr, DUMMY[vr])
                return
            value = ds[tag].value
            values = list(value) if isinstance(value, MultiValue | list) else [value]
            moved: list[str] = []
            for v in values:
                if not v:
                    moved.append("")
                    continue
                text = str(v)
                shifted = shift_date(text, inst.days) if vr == "DA" else shift_datetime(text, inst.days)
                moved.append(shifted if shifted is not None else str(DUMMY[vr]))
            ds[tag] = DataElement(tag, vr, moved if len(moved) > 1 else moved[0])
            return
        if vr == "TM":
            if inst.days is None and not self._full_dates:
                ds[tag] = DataElement(tag, vr, DUMMY[vr])
            return  # a shift by whole days leaves times of day as they are
        if vr in TEXT_VRS:
            pattern = inst.scrub
            value = ds[tag].value
            if pattern is None or value is None:
                return
            if vr == "PN":
                ds[tag] = DataElement(tag, vr, DUMMY_TEXT)  # a name is identifying as a whole
                return
            values = list(value) if isinstance(value, MultiValue | list) else [value]
            cleaned = [pattern.sub("XXXX", str(v)) for v in values]
            ds[tag] = DataElement(tag, vr, cleaned if len(cleaned) > 1 else cleaned[0])
            return
        if vr in BINARY_VRS and (tag >> 16 in OVERLAY_DATA_GROUPS or tag >> 16 in CURVE_GROUPS):
            return  # E.3.3 Clean Graphics: overlay and curve data kept (no text in them can be found here)
        self._replace(ds, tag, vr, Act.DUMMY, inst)

    def prepare_scrub(self, ds: Dataset, inst: _Instance) -> None:
        """Collect the identifying words of the instance (before any is removed) for cleaning text."""
        tags = list(PATIENT_TERMS)
        if Option.RETAIN_INSTITUTION_IDENTITY not in self.options:
            tags += INSTITUTION_TERMS
        if Option.RETAIN_DEVICE_IDENTITY not in self.options:
            tags += DEVICE_TERMS
        words: set[str] = set()
        for tag in tags:
            if tag not in ds:
                continue
            value = ds[tag].value
            for v in value if isinstance(value, MultiValue | list) else [value]:
                if v is None:
                    continue
                if isinstance(v, PersonName):
                    parts = [p for comp in v.components for p in re.split(r"[\^=]", comp)]
                    words.update(p.strip() for p in parts)
                words.add(str(v).strip())
        birth = str(ds.get("PatientBirthDate", "") or "").strip()
        if len(birth) == 8 and birth.isdigit():
            words.update(
                {birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}", f"{birth[6:]}/{birth[4:6]}/{birth[:4]}"}
            )
            words.add(f"{birth[4:6]}/{birth[6:]}/{birth[:4]}")
        words = {w for w in words if len(w) >= 2}
        if words:
            alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
            inst.scrub = re.compile(alternatives, re.IGNORECASE)

    def _safe_private(self, ds: Dataset) -> set[int]:
        """The private tags of this item that E.3.10 keeps: listed safe, or declared safe by the object."""
        declared = declared_safe(ds)
        creators: dict[tuple[int, int], str] = {}
        for key in ds.keys():  # noqa: SIM118
            tag = int(key)
            if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF:
                creators[(tag >> 16, tag & 0xFF)] = str(ds[tag].value or "").strip()
        keep: set[int] = set()
        for key in ds.keys():  # noqa: SIM118
            tag = int(key)
            group, element = tag >> 16, tag & 0xFFFF
            if not group & 1 or element < 0x1000:
                continue
            creator = creators.get((group, element >> 8))
            if creator is None:
                continue
            entry = (creator, group, element & 0xFF)
            if entry in self.config.safe_private or entry in declared or (creator, group, -1) in declared:
                keep.add(tag)
                keep.add((group << 16) | (element >> 8))  # its Private Creator stays with it
        return keep

    def _record(self, ds: Dataset, pixels_cleaned: bool) -> None:
        """PS3.15 E.1.1 items 5-7 and E.3.6: what was done, recorded in the object."""
        ds[PATIENT_IDENTITY_REMOVED] = DataElement(PATIENT_IDENTITY_REMOVED, "CS", "YES")
        codes = method_codes(self.options, pixels_cleaned=pixels_cleaned)
        ds[DEIDENTIFICATION_METHOD] = DataElement(
            DEIDENTIFICATION_METHOD,
            "LO",
            f"pacsnode {__version__} PS3.15 E: " + ", ".join(c.value for c in codes),
        )
        items = []
        for code in codes:
            item = Dataset()
            item.CodeValue = code.value
            item.CodingSchemeDesignator = code.scheme
            item.CodeMeaning = code.meaning
            items.append(item)
        ds[DEIDENTIFICATION_METHOD_CODE_SEQUENCE] = DataElement(
            DEIDENTIFICATION_METHOD_CODE_SEQUENCE, "SQ", Sequence(items)
        )
        temporal = "MODIFIED" if self._modified_dates else "UNMODIFIED" if self._full_dates else "REMOVED"
        ds[LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED] = DataElement(
            LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, "CS", temporal
        )
        if pixels_cleaned:
            ds[BURNED_IN_ANNOTATION] = DataElement(BURNED_IN_ANNOTATION, "CS", "NO")

    # ------------------------------------------------------------------ files

    def deidentify_bytes(self, data: bytes, name: str = "data set") -> tuple[bytes, FileResult]:
        """A Part 10 file's bytes in, the de-identified Part 10 file's bytes out. Raises Refused."""
        parts, result = self._encode(data, name)
        return b"".join(parts), result  # one bytes object is returned as it is

    def deidentify_file(self, source: Path, target: Path) -> FileResult:
        """De-identify one file into ``target`` (written whole or not at all). Raises Refused, OSError."""
        parts, result = self._encode(_read(source), str(source))
        _write(target, parts)
        return result

    def byte_level(self, data: bytes) -> tuple[list[Buffer], FileResult]:
        """The byte-level path alone (``deid/fast.py``): the output as buffers. Raises Fallback, Refused."""
        return self._byte_level.run(_normalised(data))

    def deidentify_bytes_pydicom(self, data: bytes, name: str = "data set") -> tuple[bytes, FileResult]:
        """The pydicom path alone: the whole data set read, de-identified in place and written by pydicom."""
        ds, transfer_syntax = read_instance(data, name)
        with quiet():
            result = self.deidentify(ds, transfer_syntax)
            return write_instance(ds, result.transfer_syntax), result

    def _encode(self, data: bytes, name: str) -> tuple[list[Buffer], FileResult]:
        """The byte-level path when it handles the object (nearly always), else the pydicom path."""
        data = _normalised(data)
        try:
            return self._byte_level.run(data)
        except Fallback as exc:
            log.debug("%s: de-identified by the pydicom path (%s)", name, exc)
        out, result = self.deidentify_bytes_pydicom(data, name)
        return [out], result


def _read(path: Path) -> bytes:
    """A file's bytes: one read of the size fstat gives, then to the end (it may grow, or exceed 2 GB)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        data = os.read(fd, os.fstat(fd).st_size)
        more = os.read(fd, 1 << 20)
        if not more:
            return data
        chunks = [data, more]
        while more:
            more = os.read(fd, 1 << 20)
            chunks.append(more)
        return b"".join(chunks)
    finally:
        os.close(fd)


_IOV_MAX = 512  # buffers per writev (POSIX guarantees at least 16; Linux allows 1024)


def _write(target: Path, parts: list[Buffer]) -> None:
    """Write ``parts`` in order as ``target``: into a temporary name by writev, then renamed over it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        try:
            pending: list[Buffer] = list(parts) if hasattr(os, "writev") else [b"".join(parts)]
            while pending:
                batch = pending[:_IOV_MAX]
                written = os.writev(fd, batch) if len(batch) > 1 else os.write(fd, batch[0])
                done = 0
                while done < len(batch) and written >= len(batch[done]):
                    written -= len(batch[done])
                    done += 1
                del pending[:done]
                if written:  # a short write ended inside this buffer
                    pending[0] = memoryview(pending[0])[written:]
        finally:
            os.close(fd)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def _normalised(data: bytes) -> bytes:
    """The file with a preamble and File Meta Information, however it came (PS3.10 7.1).

    "DICM" without preamble, or the meta group without either, get the preamble;
    a bare data set gets meta with the transfer syntax its first bytes show.
    """
    if data[128:132] == b"DICM" and data[132:134] == b"\x02\x00":
        return data
    if data[:4] == b"DICM" and data[4:6] == b"\x02\x00":
        return bytes(128) + data
    if data[:2] == b"\x02\x00":
        return PREAMBLE + data
    encoding = guess_encoding(data[:256], len(data))
    if encoding is None:
        raise Refused("not a DICOM file: no preamble, no File Meta Information, no recognisable data set")
    return file_meta("", "", uncompressed_for(encoding)) + data


def read_instance(data: bytes, name: str = "data set") -> tuple[Dataset, str]:
    """Parse a Part 10 file (or a bare data set) for de-identification; Refused when it is malformed."""
    with quiet():
        data = _normalised(data)
        try:
            ds = dcmread(io.BytesIO(data), force=True)
        except Exception as exc:
            raise Refused(f"not a readable DICOM file: {_line(exc)}") from None
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
        if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_CLASS:
            raise Refused(
                "a DICOMDIR is not de-identified (its record offsets would break): rebuild the file-set"
            )
        if not transfer_syntax:
            raw = ds.get_item(PIXEL_DATA) if PIXEL_DATA in ds else None
            if isinstance(raw, RawDataElement) and raw.length == 0xFFFFFFFF:
                raise Refused("encapsulated pixel data but no Transfer Syntax UID in the file meta")
            transfer_syntax = uncompressed_for((bool(ds.is_implicit_VR), bool(ds.is_little_endian)))
        cut = None
        if transfer_syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            cut = truncation(data, _meta_end(data), transfer_syntax)
        if cut is not None:
            raise Refused(f"truncated: {cut}")
        try:
            _touch_all(ds)
        except Exception as exc:
            raise Refused(f"malformed data set: {_line(exc)}") from None
    return ds, transfer_syntax


def _meta_end(data: bytes) -> int:
    """Where the data set starts in a file with preamble and meta: past the last group 0002 element."""
    pos = 132
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            if pos + 12 > len(data):
                break
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    return pos


def _touch_all(ds: Dataset) -> None:
    """Parse every sequence (lazily parsed by pydicom) so a malformed one is found before any write."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        vr = raw.VR if raw is not None else None
        if vr == "SQ" or (
            isinstance(raw, RawDataElement) and raw.length == 0xFFFFFFFF and int(tag) != PIXEL_DATA
        ):
            element = ds[tag]
            if isinstance(element.value, Sequence):
                for item in element.value:
                    _touch_all(item)


def write_instance(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` as a Part 10 file with new File Meta Information (PS3.10 7.1) for its new UIDs.

    The data set is encoded by pydicom's writer (elements never touched are written from
    their raw bytes, pixel data included); the meta is the node's own (data.part10), so a
    transfer syntax newer than pydicom's list (JPEG XL, Deflated Image Frame) is kept.
    """
    implicit, little = encoding_of(transfer_syntax)
    body = DicomBytesIO()
    body.is_implicit_VR = implicit
    body.is_little_endian = little
    ds.pop(0x00020000, None)
    try:
        write_dataset(body, ds)
    except Exception as exc:
        raise Refused(f"cannot be written after de-identification: {_line(exc)}") from None
    encoded = body.getvalue()
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)  # PS3.5 A.5: raw deflate
        encoded = packer.compress(encoded) + packer.flush()
        encoded += b"\0" * (len(encoded) % 2)
    meta = file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), transfer_syntax)
    return meta + encoded


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep pydicom's per-value warnings (an invalid UI being replaced) out of the output."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    mode = pydicom.config.settings.reading_validation_mode
    logger.setLevel(logging.CRITICAL)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom.config.settings.reading_validation_mode = mode
        logger.setLevel(level)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:240]
