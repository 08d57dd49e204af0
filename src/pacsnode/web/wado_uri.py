"""PS3.18 9: WADO-URI: one instance by its UIDs in the query string, as DICOM or a rendered image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pacsnode.archive.query import InstanceRef
from pacsnode.data.transcode import TranscodeError
from pacsnode.data.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from pacsnode.web import render
from pacsnode.web.auditing import audited_retrieve, note_sent
from pacsnode.web.context import WebContext, check_uid
from pacsnode.web.media import DICOM
from pacsnode.web.retrieve import _read_part10

_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif")
# PS3.18 9.1.2.1: the parameters this resource knows; others are refused.
_KNOWN = frozenset(
    (
        "requestType",
        "studyUID",
        "seriesUID",
        "objectUID",
        "contentType",
        "charset",
        "transferSyntax",
        "frameNumber",
        "rows",
        "columns",
        "windowCenter",
        "windowWidth",
        "imageQuality",
        "anonymize",
        "annotation",
        "region",
        "presentationUID",
        "presentationSeriesUID",
    )
)


def _number(query: Any, name: str, kind: type[float] | type[int]) -> Any:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a number") from None


def _image(path: Path, frame: int, media_type: str, params: dict[str, Any]) -> bytes:
    ds = dcmread(path, force=True)
    return render.render(ds, frames=[frame], media_type=media_type, **params)


@audited_retrieve  # PS3.15 A.5.3.7
async def wado(ctx: WebContext, request: Request) -> Response:
    """GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=.. (PS3.18 9.1, 9.2)."""
    query = request.query_params
    unknown = [k for k in query if k not in _KNOWN]
    if unknown:
        raise HTTPException(400, f"unknown parameter {unknown[0][:40]!r}")
    if query.get("requestType") != "WADO":
        raise HTTPException(400, "requestType=WADO is required")
    uids = []
    for name in ("studyUID", "seriesUID", "objectUID"):
        if not query.get(name):
            raise HTTPException(400, f"{name} is required")
        uids.append(check_uid(query[name]))
    if query.get("anonymize") == "yes":
        raise HTTPException(400, "anonymize=yes is not supported")
    refs: list[InstanceRef] = await ctx.run(ctx.find_instances, *uids)
    if not refs:
        raise HTTPException(404, "no such instance")
    ref = refs[0]
    note_sent([ref])
    path = ctx.archive.store.absolute(ref.path)
    wanted = [t.strip().split(";")[0] for t in query.get("contentType", "").split(",") if t.strip()]
    if not wanted:
        # PS3.18 9.1.2.1.5: an image by default (JPEG), other objects as DICOM.
        wanted = ["image/jpeg", DICOM]
    for content_type in wanted:
        if content_type == DICOM:
            syntax = query.get("transferSyntax") or ref.transfer_syntax_uid
            if syntax not in (ref.transfer_syntax_uid, EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
                raise HTTPException(406, f"cannot convert to transfer syntax {syntax[:64]}")
            try:
                data = await ctx.run(_read_part10, path, ref, syntax)
            except TranscodeError as exc:
                raise HTTPException(406, f"cannot convert: {exc}") from None
            return Response(data, media_type=DICOM)
        if content_type in _IMAGE_TYPES:
            params: dict[str, Any] = {}
            center = _number(query, "windowCenter", float)
            width = _number(query, "windowWidth", float)
            if (center is None) != (width is None):
                raise HTTPException(400, "windowCenter and windowWidth go together")
            if center is not None:
                params["window"] = render.Window(center, width)
            rows, columns = _number(query, "rows", int), _number(query, "columns", int)
            if rows is not None or columns is not None:
                if (rows or 1) < 1 or (columns or 1) < 1 or max(rows or 0, columns or 0) > 8192:
                    raise HTTPException(400, "rows and columns are 1 to 8192")
                params["viewport"] = render.Viewport(columns or rows or 1, rows or columns or 1)
            quality = _number(query, "imageQuality", int)
            if quality is not None:
                if not 1 <= quality <= 100:
                    raise HTTPException(400, "imageQuality is 1 to 100")
                params["quality"] = quality
            frame = _number(query, "frameNumber", int) or 1
            try:
                body = await ctx.run(_image, path, frame, content_type, params)
            except render.RenderError as exc:
                if DICOM in wanted:
                    continue  # not an image: the next content type (DICOM) instead
                raise HTTPException(exc.status, str(exc)) from None
            return Response(body, media_type=content_type)
    raise HTTPException(406, "contentType must be application/dicom, image/jpeg, image/png or image/gif")
