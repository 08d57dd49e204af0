"""PS3.18 10.5: STOW-RS: multipart/related bodies of Part 10 instances into the one ingest pipeline."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydicom.dataset import Dataset
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pacsnode.archive.ingest import SpoolSink, StoreResult
from pacsnode.data.part10 import read_layout
from pacsnode.dimse.status import Status
from pacsnode.web.context import WebContext, check_uid
from pacsnode.web.dicomjson import dumps
from pacsnode.web.media import DICOM, DICOM_JSON, MULTIPART
from pacsnode.web.multipart import MultipartError, MultipartReader, Part, parse_media_type

log = logging.getLogger("pacsnode.web.stow")

_META_MAX = 1 << 20  # a File Meta Information longer than this is not a DICOM file
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
    if part_type == DICOM_JSON:
        raise HTTPException(415, "STOW-RS of DICOM JSON metadata with bulk data is not supported yet")
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
    except BodyTooLarge:
        raise HTTPException(413, f"the body is over the {cap} byte cap") from None
    except MultipartError as exc:
        if not stored and not failed:
            raise HTTPException(400, f"malformed multipart body: {exc}") from None
        failed.append((StoreResult(_UNDERSTAND, f"malformed multipart body: {exc}"[:64]), ""))
    if not stored and not failed:
        raise HTTPException(400, "the body holds no instance")
    base = ctx.base_url(request)
    body = _response(base, study, stored, failed)
    # PS3.18 10.5.3.1: 200 all stored; 202 some failed; 409 none stored.
    status = 200 if not failed else (202 if stored else 409)
    log.info("STOW-RS: %d stored, %d failed", len(stored), len(failed))
    return Response(dumps([body])[1:-1], status_code=status, media_type=DICOM_JSON)


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
