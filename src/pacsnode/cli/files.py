"""PS3.10 files as found on disk: folders, DICOMDIR file-sets (PS3.10 8, PS3.3 F), and header-only reads.

Shared by `pacsnode store` and `pacsnode import`.  A file is taken for what its
bytes say, never for its name: with a preamble and File Meta Information
(PS3.10 7.1), with the meta but no preamble, with "DICM" and no preamble, or a
bare data set (as some tools write), in any of the three uncompressed encodings.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom.config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from pacsnode.data.part10 import LONG_LENGTH_VRS, meta_values, read_layout
from pacsnode.data.transcode import (
    VR_CODES,
    Encoding,
    decode,
    encoding_of,
    first_line,
    guess_encoding,
    is_encapsulated,
    transcode,
    uncompressed_for,
)
from pacsnode.data.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # PS3.4 Annex F: the DICOMDIR's SOP class
_SOP_INSTANCE_UID_TAG = 0x00080018
_HEAD = 4096  # bytes read to recognise a file (and, nearly always, its whole File Meta Information)


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Keep pydicom's per-value warnings (invalid UI, VR lookups) out of a command's output.

    A sender reads values only to find the UIDs; what is wrong with a file is
    reported once per file instead, as its result.
    """
    logger = logging.getLogger("pydicom")
    level = logger.level
    mode = pydicom.config.settings.reading_validation_mode
    logger.setLevel(logging.CRITICAL)  # decoders log a traceback per failed frame
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom.config.settings.reading_validation_mode = mode
        logger.setLevel(level)


# ---------------------------------------------------------------- what a file is


@dataclass(frozen=True, slots=True)
class DicomFile:
    """A file holding one data set we can send: where its bytes are and what they are."""

    path: Path
    size: int
    offset: int  # the data set's first byte
    transfer_syntax: str  # of the bytes from `offset` on
    sop_class_uid: str  # from the data set (PS3.4 B.2: the command carries these)
    sop_instance_uid: str
    meta_complete: bool  # preamble-or-not, File Meta with TS and both Media Storage UIDs
    must_convert: bool = False  # the meta's transfer syntax does not describe the bytes

    @property
    def dataset_size(self) -> int:
        """Bytes of the data set."""
        return self.size - self.offset


@dataclass(frozen=True, slots=True)
class NotSendable:
    """A path that yields no data set to send, and why; `failure` unless it is simply not DICOM."""

    path: Path
    reason: str  # short, the summary groups by it
    detail: str = ""
    failure: bool = True
    size: int = 0


@dataclass(frozen=True, slots=True)
class DicomDir:
    """A DICOMDIR (PS3.10 8.6): the files of its file-set, as paths."""

    path: Path
    referenced: tuple[Path, ...]
    size: int = 0


Inspected = DicomFile | NotSendable | DicomDir


@dataclass(frozen=True, slots=True)
class _Located:
    offset: int
    transfer_syntax: str
    meta_sop_class: str
    meta_sop_instance: str
    layout_ok: bool  # read_layout on the path would find the same meta


def locate(fp: BinaryIO, size: int) -> _Located | None:
    """Find the data set in an open file: after the meta, or from byte 0; None when it is not DICOM."""
    head = fp.read(_HEAD)
    if len(head) >= 134 and head[128:132] == b"DICM" and head[132:134] == b"\x02\x00":
        start, layout_ok = 0, True  # PS3.10 7.1: preamble, DICM, meta
    elif head[:4] == b"DICM" and head[4:6] == b"\x02\x00":
        start, layout_ok = 4, False  # the prefix without the preamble
    elif head[:2] == b"\x02\x00":
        start, layout_ok = 0, True  # the meta without preamble or prefix
    else:
        # A bare data set; "DICM" at 128 may be data, as in any data set long enough.
        enc = guess_encoding(head, size)
        if enc is not None:
            return _Located(0, uncompressed_for(enc), "", "", False)
        if len(head) >= 136 and head[128:132] == b"DICM":
            enc = guess_encoding(head[132:], size)
            if enc is not None:  # preamble and prefix, then no meta at all
                return _Located(132, uncompressed_for(enc), "", "", False)
        return None
    meta = meta_values(head, start + 132 if start == 0 and head[128:132] == b"DICM" else start)
    if meta is None:  # not in the first block, or unusual: pydicom's reader decides
        fp.seek(start)
        layout = read_layout(fp)
        meta = (
            layout.dataset_offset,
            layout.transfer_syntax_uid,
            layout.sop_class_uid,
            layout.sop_instance_uid,
        )
    offset, ts, sop_class, sop_instance = (meta[0], *(v.strip("\0 ") for v in meta[1:]))
    if not ts:
        # PS3.10 7.1 makes it Type 1; guess from the data set's first element.
        fp.seek(offset)
        # PS3.5 10.1: Implicit VR Little Endian is the default when nothing else says.
        enc = guess_encoding(fp.read(16), size) or Encoding.IMPLICIT_LE
        ts, layout_ok = uncompressed_for(enc), False
    return _Located(offset, ts, sop_class, sop_instance, layout_ok and bool(sop_instance))


_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class Truncated(Exception):
    """The data set ends before an element it declares does."""


class _NoVerdict(Exception):
    """Something the walker does not understand: it says nothing about the file."""


_MAX_DEPTH = 64


class _Walker:
    """Checks that every element of a data set fits in the file, reading element headers only.

    pydicom reads a truncated file without complaint (the last value is just short);
    a sender must not pass such a data set on.  Values of defined length are skipped,
    undefined-length ones (PS3.5 7.5) are walked item by item.  Anything it does not
    understand ends the check without a verdict: only a sure truncation is reported.
    It works on a buffer (the file mapped in memory): only the pages holding
    element headers are ever read.
    """

    def __init__(self, buf: bytes | mmap.mmap, encoding: tuple[bool, bool]) -> None:
        self.buf = buf
        self.uids: dict[int, bytes] = {}  # SOP Class and Instance UID, seen on the way
        self.end = len(buf)
        self.implicit = encoding[0]
        order = "<" if encoding[1] else ">"
        self.tag = struct.Struct(order + "HH")
        self.u16 = struct.Struct(order + "H")
        self.u32 = struct.Struct(order + "I")
        self.item = struct.Struct(order + "HHI")

    def _need(self, pos: int, n: int) -> None:
        if pos + n > self.end:
            raise Truncated(f"the file ends inside an element header at byte {self.end}")

    def dataset(self, pos: int, nested: bool, depth: int = 0) -> int:
        """Walk elements to the end of the file, or to an Item Delimitation Item when nested."""
        if depth > _MAX_DEPTH:
            raise _NoVerdict
        buf, end = self.buf, self.end
        unpack_tag, u16, u32 = self.tag.unpack_from, self.u16.unpack_from, self.u32.unpack_from
        implicit = self.implicit
        while True:
            if pos >= end:
                if nested:
                    raise Truncated("the file ends inside a sequence item")
                return pos
            if pos + 8 > end:
                raise Truncated(f"the file ends inside an element header at byte {end}")
            group, element = unpack_tag(buf, pos)
            if group == 0xFFFE:
                # Item and delimitation tags are always followed by a 32-bit length (PS3.5 7.5).
                if element == 0xE00D and nested:
                    return pos + 8
                raise _NoVerdict  # a stray item tag: not ours to judge
            if implicit:
                (length,) = u32(buf, pos + 4)
                pos += 8
            else:
                vr = buf[pos + 4 : pos + 6]
                if vr not in VR_CODES:
                    raise _NoVerdict
                if vr in LONG_LENGTH_VRS:
                    if pos + 12 > end:
                        raise Truncated(f"the file ends inside an element header at byte {end}")
                    (length,) = u32(buf, pos + 8)
                    pos += 12
                else:
                    (length,) = u16(buf, pos + 6)
                    pos += 8
            if length == _UNDEFINED:
                pos = self.items(pos, depth)
                continue
            if not nested and group == 0x0008 and element in (0x0016, 0x0018):
                self.uids[element] = bytes(buf[pos : pos + length])
            if pos + length > end:
                left = end - pos
                raise Truncated(
                    f"element ({group:04X},{element:04X}) declares {length} bytes, the file has {left} left"
                )
            else:
                pos += length

    def items(self, pos: int, depth: int) -> int:
        """An undefined-length value: items (data sets or fragments) up to the Sequence Delimitation Item."""
        while True:
            self._need(pos, 8)
            group, element, length = self.item.unpack_from(self.buf, pos)
            pos += 8
            tag = group << 16 | element
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise _NoVerdict
            if length == _UNDEFINED:
                pos = self.dataset(pos, nested=True, depth=depth + 1)
            elif pos + length > self.end:
                raise Truncated(f"an item declares {length} bytes, the file has {self.end - pos} left")
            else:
                pos += length


@dataclass(frozen=True, slots=True)
class _Walked:
    problem: str | None  # why the data set is cut short
    uids: dict[int, bytes] | None  # (0008,0016) and (0008,0018) raw values; None: no verdict


def walk(fp: BinaryIO, offset: int, size: int, encoding: tuple[bool, bool]) -> _Walked:
    """Check the data set from `offset` is whole, and pick up its SOP Class and Instance UIDs."""
    if size <= offset:
        return _Walked(None, {})
    with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        walker = _Walker(mapped, encoding)
        try:
            walker.dataset(offset, nested=False)
        except Truncated as exc:
            return _Walked(str(exc), None)
        except (_NoVerdict, struct.error):
            return _Walked(None, None)
    return _Walked(None, walker.uids)


def _uid_text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip("\0 ")


def _stop_after_sop_instance_uid(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return int(tag) > _SOP_INSTANCE_UID_TAG


def inspect(path: Path) -> Inspected:
    """Recognise one file and read the UIDs of its data set (header only: stops after SOP Instance UID)."""
    try:
        with path.open("rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            found = locate(fp, size)
            if found is None:
                return NotSendable(path, "not DICOM", failure=False, size=size)
            if found.meta_sop_class == MEDIA_STORAGE_DIRECTORY:
                return DicomDir(path, tuple(_referenced_files(path)), size)
            fp.seek(found.offset)
            declared = encoding_of(found.transfer_syntax)
            actual = (
                guess_encoding(fp.read(16), size)
                if found.transfer_syntax != (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
                else declared
            )
            fp.seek(found.offset)
            ts = found.transfer_syntax
            must_convert = False
            if actual is not None and actual != declared:
                # The meta's transfer syntax does not describe the data set: read what is there,
                # and never send these bytes under the wrong syntax (convert instead).
                if is_encapsulated(ts):
                    must_convert = True
                else:
                    ts = uncompressed_for(actual)
                declared = actual
            uids: dict[int, bytes] | None = None
            if ts != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
                # One pass over the element headers: whole or cut short, and the two UIDs.
                walked = walk(fp, found.offset, size, declared)
                if walked.problem is not None:
                    return NotSendable(path, "truncated data set", walked.problem, size=size)
                uids = walked.uids
                if (size - found.offset) % 2:
                    # PS3.5 7.1.1: every value has an even length, so a data set does too
                    # (DCMTK aborts on an odd last fragment): re-encode it, which pads.
                    must_convert = True
            if uids is None:  # deflated, or a header the walker could not judge: ask pydicom
                fp.seek(found.offset)
                ds = decode(fp, ts, encoding=declared, stop_when=_stop_after_sop_instance_uid)
                sop_class = str(ds.get("SOPClassUID", "") or "").strip("\0 ")
                sop_instance = str(ds.get("SOPInstanceUID", "") or "").strip("\0 ")
            else:
                sop_class = _uid_text(uids.get(0x0016, b""))
                sop_instance = _uid_text(uids.get(0x0018, b""))
    except OSError as exc:
        return NotSendable(path, "cannot read file", exc.strerror or str(exc))
    except Exception as exc:
        return NotSendable(path, "unreadable data set", first_line(exc), size=_size(path))
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        return DicomDir(path, tuple(_referenced_files(path)), size)
    # PS3.7 9.3.1.1: the C-STORE-RQ must name both; like DCMTK's storescu, take them
    # from the data set only, the File Meta Information may disagree with it.
    if not sop_class:
        return NotSendable(path, "no SOP Class UID in the data set", "(0008,0016) is missing", size=size)
    if not sop_instance:
        return NotSendable(path, "no SOP Instance UID in the data set", "(0008,0018) is missing", size=size)
    return DicomFile(
        path,
        size,
        found.offset,
        ts,
        sop_class,
        sop_instance,
        found.layout_ok and bool(found.meta_sop_class) and not must_convert,
        must_convert,
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------- DICOMDIR and folders


def _resolve_case_insensitive(root: Path, parts: Sequence[str]) -> Path:
    """PS3.10 8.5: File IDs are upper case, but file-sets copied to other systems often are not."""
    exact = root.joinpath(*parts)
    if exact.exists():
        return exact
    current = root
    for part in parts:
        try:
            names = {p.name.upper(): p for p in current.iterdir()}
        except OSError:
            return exact
        found = names.get(part.upper())
        if found is None:
            return exact
        current = found
    return current


def _referenced_files(dicomdir: Path) -> Iterator[Path]:
    """The Referenced File IDs (0004,1500) of every directory record, as paths (PS3.3 F.3.2.2)."""
    ds = dcmread(dicomdir, force=True)
    root = dicomdir.parent
    for record in ds.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [str(p) for p in file_id] if not isinstance(file_id, str) else [file_id]
        # A single value may hold the path with backslashes (the VM>1 form is the standard one).
        parts = [q for p in parts for q in p.replace("\\", "/").split("/") if q]
        if parts:
            yield _resolve_case_insensitive(root, parts)


def _walk(folder: Path, recursive: bool, visited: set[Path] | None = None) -> Iterator[Path]:
    visited = set() if visited is None else visited
    real = folder.resolve()
    if real in visited:  # a symbolic link back up the tree
        return
    visited.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    subfolders = []
    for entry in entries:
        try:
            if entry.is_dir():
                subfolders.append(Path(entry.path))
            elif entry.is_file():
                yield Path(entry.path)
        except OSError:
            continue
    if recursive:
        for sub in subfolders:
            yield from _walk(sub, recursive, visited)


def candidate_files(paths: Iterable[Path], *, recursive: bool = True) -> Iterator[Path]:
    """Every file under `paths` (folders walked in name order); the caller drops repeats."""
    for given in paths:
        yield from _walk(given, recursive) if given.is_dir() else iter((given,))


def inspect_all(
    paths: Iterable[Path], *, recursive: bool = True, on_file: Callable[[Inspected], None] | None = None
) -> list[Inspected]:
    """Inspect every file under `paths`; a DICOMDIR adds the files it references that were not found yet.

    A DICOMDIR itself is kept in the result (it is not sent); a file it references
    that does not exist becomes a `NotSendable` failure.
    """
    out: list[Inspected] = []
    seen: set[Path] = set()

    def visit(path: Path) -> None:
        key = path.resolve()
        if key in seen:
            return
        seen.add(key)
        if not path.exists():
            item: Inspected = NotSendable(path, "missing file referenced by a DICOMDIR")
        else:
            item = inspect(path)
        out.append(item)
        if on_file is not None:
            on_file(item)
        if isinstance(item, DicomDir):
            for ref in item.referenced:
                visit(ref)

    for path in candidate_files(paths, recursive=recursive):
        visit(path)
    return out


# ---------------------------------------------------------------- reading and converting a data set


def read_dataset_bytes(item: DicomFile) -> bytes:
    """The data set's bytes as they are in the file (everything after the File Meta Information)."""
    with item.path.open("rb") as fp:
        fp.seek(item.offset)
        return fp.read()


def read_full(item: DicomFile) -> Dataset:
    """The whole data set, with a file_meta holding its transfer syntax (for pydicom's pixel decoders)."""
    with item.path.open("rb") as fp:
        fp.seek(item.offset)
        return decode(fp, item.transfer_syntax)


def convert(item: DicomFile, target: str) -> bytes:
    """The file's data set re-encoded in `target` (see `transcode`); raises `TranscodeError`."""
    return transcode(read_dataset_bytes(item), item.transfer_syntax, target)
