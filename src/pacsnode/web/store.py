"""PS3.18 10.5: STOW-RS: multipart/related bodies of Part 10 instances into the one ingest pipeline."""

from __future__ import annotations

import io
import json
import logging
import tempfile
import warnings
from collections.abc import AsyncIterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pacsnode.archive.ingest import SpoolSink, StoreResult
from pacsnode.data.part10 import read_layout
from pacsnode.data.transcode import TranscodeError, encode
from pacsnode.data.uids import EXPLICIT_VR_LITTLE_ENDIAN
from pacsnode.dimse.status import Status
from pacsnode.web.auditing import audit_stored
from pacsnode.web.context import WebContext, check_uid
from pacsnode.web.dicomjson import dumps
from pacsnode.web.media import DICOM, DICOM_JSON, MULTIPART, OCTET_STREAM
from pacsnode.web.multipart import MultipartError, MultipartReader, Part, parse_media_type

log = logging.getLogger("pacsnode.web.stow")

_META_MAX = 1 << 20  # a File Meta Information longer than this is not a DICOM file
_JSON_MAX = 64 << 20  # one metadata part
_BULK_MEMORY = 8 << 20  # bulk data parts spill to disk past this
# PS3.18 Table 8.7.3-2: the default transfer syntax of a compressed pixel data media type.
_SYNTAX_OF_MEDIA = {
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}
# PS3.18 Table 10.5.3-1 / PS3.4 B.2.3: Failure Reason (0008,1197) values.
_PROCESSING_FAILURE = 0x0110
_NOT_SUPPORTED = 0x0122
_UNDERSTAND = 0xC000
_MISMATCH = 0xA900
_OUT_OF_RESOURCES = 0xA700


class BodyTooLarge(Exception):
    """The request body passed the configured cap."""


async def _capped(request: Request, cap: int) -> AsyncIterator[bytes]:
    # PS3.18 8.6 / RFC 9110 15.5.14: refuse past the cap, without reading the rest.
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > cap:
            raise BodyTooLarge
        yield chunk


async def _spool_part(ctx: WebContext, part: Part, study: str | None) -> SpoolSink | StoreResult:
    """One application/dicom part into a spool sink behind our File Meta Information."""
    head = bytearray()
    stream = part.__aiter__()
    layout = None
    async for chunk in stream:
        head += chunk
        if len(head) < 132 + 12:
            continue
        try:
            buf = io.BytesIO(bytes(head))
            layout = read_layout(buf)
            break
        except Exception:
            if len(head) > _META_MAX:
                break
            continue  # the meta goes on in the next chunk
    if layout is None:
        try:
            layout = read_layout(io.BytesIO(bytes(head)))
        except Exception as exc:
            return StoreResult(_UNDERSTAND, f"not a DICOM file: {str(exc)[:60]}")
    if not layout.transfer_syntax_uid or not layout.sop_instance_uid or not layout.sop_class_uid:
        return StoreResult(_UNDERSTAND, "no DICOM File Meta Information")
    sink = ctx.archive.open_sink(
        layout.sop_class_uid, layout.sop_instance_uid, layout.transfer_syntax_uid, ""
    )
    sink.expected_study = study
    try:
        sink.write(bytes(head[layout.dataset_offset :]))
        async for chunk in stream:
            sink.write(chunk)
    except BaseException:
        sink.discard()
        raise
    sink.finish()
    return sink


def _failure_reason(result: StoreResult) -> int:
    if result.status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS and "Study" in result.comment:
        return _MISMATCH
    return result.status


async def store_instances(ctx: WebContext, request: Request, study: str | None = None) -> Response:
    """POST /studies[/{study}]: store each part, answer what was stored and what failed (10.5.3)."""
    if study is not None:
        check_uid(study)
    try:
        media_type, params = parse_media_type(request.headers.get("content-type", ""))
    except MultipartError:
        raise HTTPException(415, "Content-Type must be multipart/related") from None
    if media_type != MULTIPART:
        raise HTTPException(415, 'Content-Type must be multipart/related; type="application/dicom"')
    part_type = params.get("type", DICOM).lower()
    if part_type not in (DICOM, DICOM_JSON):
        raise HTTPException(415, f"parts of type {part_type[:60]!r} are not supported")
    boundary = params.get("boundary")
    if not boundary:
        raise HTTPException(400, "multipart/related without a boundary")
    declared = request.headers.get("content-length")
    cap = ctx.settings.web.max_body
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise HTTPException(413, f"the body is over the {cap} byte cap")
    try:
        reader = MultipartReader(_capped(request, cap), boundary)
    except MultipartError as exc:
        raise HTTPException(400, f"bad boundary: {exc}") from None
    stored: list[tuple[StoreResult, str]] = []
    failed: list[tuple[StoreResult, str]] = []
    try:
        if part_type == DICOM_JSON:
            await _store_json_parts(ctx, reader, study, stored, failed)
        else:
            await _store_dicom_parts(ctx, reader, study, stored, failed)
    except BodyTooLarge:
        raise HTTPException(413, f"the body is over the {cap} byte cap") from None
    except MultipartError as exc:
        if not stored and not failed:
            raise HTTPException(400, f"malformed multipart body: {exc}") from None
        failed.append((StoreResult(_UNDERSTAND, f"malformed multipart body: {exc}"[:64]), ""))
    finally:
        audit_stored(ctx, request, stored + failed)  # PS3.15 A.5.3.7, even when the body was cut
    if not stored and not failed:
        raise HTTPException(400, "the body holds no instance")
    base = ctx.base_url(request)
    body = _response(base, study, stored, failed)
    # PS3.18 10.5.3.1: 200 all stored; 202 some failed; 409 none stored.
    status = 200 if not failed else (202 if stored else 409)
    log.info("STOW-RS: %d stored, %d failed", len(stored), len(failed))
    return Response(dumps([body])[1:-1], status_code=status, media_type=DICOM_JSON)


Outcomes = list[tuple[StoreResult, str]]


async def _store_dicom_parts(
    ctx: WebContext, reader: MultipartReader, study: str | None, stored: Outcomes, failed: Outcomes
) -> None:
    """PS3.18 10.5.1.1: each part is a Part 10 file, streamed to the spool as it arrives."""
    while (part := await reader.next_part()) is not None:
        if part.content_type not in (DICOM, ""):
            failed.append((StoreResult(_NOT_SUPPORTED, f"part type {part.content_type[:40]}"), ""))
            continue  # the reader skips the rest of the part
        spooled = await _spool_part(ctx, part, study)
        if isinstance(spooled, StoreResult):
            failed.append((spooled, ""))
            continue
        result = await ctx.archive.ingest(spooled)
        (stored if result.ok else failed).append((result, spooled.sop_class_uid))


async def _store_json_parts(
    ctx: WebContext, reader: MultipartReader, study: str | None, stored: Outcomes, failed: Outcomes
) -> None:
    """PS3.18 10.5.1.2: DICOM JSON metadata parts, and bulk data parts named by Content-Location."""
    objects: list[dict[str, Any]] = []
    bulk: dict[str, tuple[str, dict[str, str], Any]] = {}
    try:
        while (part := await reader.next_part()) is not None:
            if part.content_type in (DICOM_JSON, "application/json"):
                try:
                    parsed = json.loads(await part.read(_JSON_MAX))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise HTTPException(400, f"a metadata part is not JSON: {exc}") from None
                if isinstance(parsed, dict):
                    parsed = [parsed]
                if not isinstance(parsed, list) or not all(isinstance(o, dict) for o in parsed):
                    raise HTTPException(400, "a metadata part is not an array of DICOM JSON objects")
                objects.extend(parsed)
                continue
            location = part.headers.get("content-location", "")
            if not location:
                raise HTTPException(400, "a bulk data part has no Content-Location")
            spool = tempfile.SpooledTemporaryFile(max_size=_BULK_MEMORY)  # noqa: SIM115 (closed below)
            async for chunk in part:
                spool.write(chunk)
            bulk[location] = (part.content_type, part.params, spool)
        if not objects:
            raise HTTPException(400, "no DICOM JSON metadata part")
        for obj in objects:
            result, sop_class = await _store_json_instance(ctx, obj, bulk, study)
            (stored if result.ok else failed).append((result, sop_class))
    finally:
        for _type, _params, spool in bulk.values():
            spool.close()


def _dataset_of_json(
    obj: dict[str, Any], bulk: dict[str, tuple[str, dict[str, str], Any]]
) -> tuple[Dataset, str]:
    """A data set from DICOM JSON and its bulk data parts, and the transfer syntax to store it in."""
    syntax = EXPLICIT_VR_LITTLE_ENDIAN
    compressed: list[bytes] = []

    def handler(tag: str, vr: str, uri: str) -> bytes:
        nonlocal syntax
        entry = bulk.get(uri)
        if entry is None:
            raise _MissingBulk(uri)
        media_type, params, spool = entry
        spool.seek(0)
        data: bytes = spool.read()
        if tag.upper() == "7FE00010" and media_type not in (OCTET_STREAM, ""):
            # PS3.18 8.7.3.5: compressed pixel data come as their own media type.
            syntax = params.get("transfer-syntax") or _SYNTAX_OF_MEDIA.get(media_type, "")
            if not syntax:
                raise _MissingBulk(f"{uri}: no transfer syntax for {media_type}")
            compressed.append(data)
            return b""
        return data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = Dataset.from_json(obj, bulk_data_uri_handler=handler)
    if compressed:
        # PS3.5 A.4: one fragment per frame, behind an empty Basic Offset Table.
        ds.PixelData = encapsulate(compressed)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return ds, syntax


async def _store_json_instance(
    ctx: WebContext, obj: dict[str, Any], bulk: dict[str, tuple[str, dict[str, str], Any]], study: str | None
) -> tuple[StoreResult, str]:
    try:
        ds, syntax = await ctx.run(_dataset_of_json, obj, bulk)
    except _MissingBulk as exc:
        return StoreResult(_UNDERSTAND, f"bulk data missing: {exc}"[:64]), ""
    except Exception as exc:
        return StoreResult(_UNDERSTAND, f"not DICOM JSON: {exc}"[:64]), ""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    sop_instance = str(ds.get("SOPInstanceUID", "") or "")
    if not sop_class or not sop_instance:
        return StoreResult(_MISMATCH, "SOP Class UID or SOP Instance UID missing"), sop_class
    try:
        data = await ctx.run(encode, ds, EXPLICIT_VR_LITTLE_ENDIAN)
    except TranscodeError as exc:
        return StoreResult(_UNDERSTAND, f"cannot encode: {exc}"[:64], sop_instance), sop_class
    sink = ctx.archive.open_sink(sop_class, sop_instance, syntax, source_ae_title="")
    sink.expected_study = study
    sink.write(data)
    sink.finish()
    return await ctx.archive.ingest(sink), sop_class


class _MissingBulk(Exception):
    """A BulkDataURI of the metadata names no part of the request."""


def _response(
    base: str, study: str | None, stored: list[tuple[StoreResult, str]], failed: list[tuple[StoreResult, str]]
) -> dict[str, Any]:
    ds = Dataset()
    if study is not None:
        ds.RetrieveURL = f"{base}/studies/{study}"
    ok = []
    for result, sop_class in stored:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = result.sop_instance_uid
        ok.append(item)
    if ok:
        ds.ReferencedSOPSequence = ok
    bad = []
    for result, sop_class in failed:
        item = Dataset()
        if sop_class:
            item.ReferencedSOPClassUID = sop_class
        if result.sop_instance_uid:
            item.ReferencedSOPInstanceUID = result.sop_instance_uid
        item.FailureReason = _failure_reason(result)
        bad.append(item)
    if bad:
        ds.FailedSOPSequence = bad
    obj: dict[str, Any] = ds.to_json_dict()
    return obj
