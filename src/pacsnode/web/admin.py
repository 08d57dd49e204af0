"""The node's admin REST API under /api: browse and delete what the archive holds; read the audit trail."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from datetime import datetime
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from pacsnode import __version__
from pacsnode.archive.qr_model import (
    IMAGE,
    PATIENT,
    PATIENT_ID,
    QUERY_RETRIEVE_LEVEL,
    SERIES,
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY,
    STUDY_INSTANCE_UID,
    QueryOptions,
    vr_of,
)
from pacsnode.archive.query import Answer, Element, QueryError, prepare
from pacsnode.archive.worklist import WorklistError
from pacsnode.audit.builders import audit_log_used
from pacsnode.audit.lookup import worklist_item
from pacsnode.audit.store import AuditQuery
from pacsnode.audit.store import SearchError as AuditSearchError
from pacsnode.audit.store import search as search_audit
from pacsnode.web import qido
from pacsnode.web.auditing import audit_order, audited_deletion, audited_read, node, requester, target
from pacsnode.web.context import WebContext, check_uid
from pacsnode.web.deidentify import add_deidentify

_PATIENT_KEYS = (
    0x00100010,
    0x00100020,
    0x00100021,
    0x00100030,
    0x00100040,
    0x00201200,
    0x00201202,
    0x00201204,
)
_PLURAL = {PATIENT: "patients", STUDY: "studies", SERIES: "series", IMAGE: "instances"}
_UNIQUE = {STUDY: STUDY_INSTANCE_UID, SERIES: SERIES_INSTANCE_UID, IMAGE: SOP_INSTANCE_UID}
_PAGE = 100
_MAX_PAGE = 1000

Limit = Annotated[int, Query(ge=1, le=_MAX_PAGE, description="Items per page.")]
Offset = Annotated[int, Query(ge=0, description="Items to skip (paging).")]


def _plain(value: Any, vr: str) -> Any:
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v, vr) for v in value]
    if vr == "IS" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if value is None or isinstance(value, int | float | str):
        return value
    return str(value)


def _item(answer: Answer) -> dict[str, Any]:
    """An answer as {keyword: value}, the hierarchy keys first (JSON for humans and scripts)."""
    out: dict[str, Any] = {}
    for tag, vr, value in answer.items():
        if tag in (QUERY_RETRIEVE_LEVEL, 0x00080054, 0x00080056) or vr == "SQ":
            continue
        out[keyword_for_tag(tag) or f"{tag:08X}"] = _plain(value, vr)
    return out


def _patient_identifier(params: list[tuple[str, str]], key: str | None) -> list[Element]:
    elements: dict[int, Element] = {tag: (tag, vr_of(tag), None) for tag in _PATIENT_KEYS}
    for name, value in params:
        if name in ("limit", "offset"):
            continue
        try:
            tags = qido.attribute_path(name)
        except qido.SearchError as exc:
            raise HTTPException(400, str(exc)) from None
        if len(tags) != 1:
            raise HTTPException(400, "patients are filtered by patient-level keys only")
        elements[tags[0]] = (tags[0], vr_of(tags[0]), value)
    if key is not None:
        elements[PATIENT_ID] = (PATIENT_ID, "LO", key)
    return [(QUERY_RETRIEVE_LEVEL, "CS", PATIENT), *elements.values()]


def _list(
    ctx: WebContext, level: str, params: list[tuple[str, str]], limit: int, offset: int
) -> dict[str, Any]:
    """One page of a level's entities matching the filters (blocking)."""
    options = QueryOptions(case_insensitive_names=ctx.settings.query.case_insensitive_names)
    if level == PATIENT:
        query = prepare(_patient_identifier(params, None), PATIENT, options)
    else:
        filters = [(k, v) for k, v in params if k not in ("limit", "offset")]
        search = qido.parse(
            level, filters, {}, max_results=0, case_insensitive_names=options.case_insensitive_names
        )
        query = prepare(search.identifier, STUDY, search.options)
    items: list[dict[str, Any]] = []
    more = False
    for position, answer in enumerate(ctx.engine.find(query, limit=offset + limit + 1)):
        if position < offset:
            continue
        if len(items) >= limit:
            more = True
            break
        items.append(_item(answer))
    return {"items": items, "limit": limit, "offset": offset, "more": more}


def _one(ctx: WebContext, level: str, key: str) -> dict[str, Any] | None:
    options = QueryOptions(case_insensitive_names=ctx.settings.query.case_insensitive_names)
    if level == PATIENT:
        query = prepare(_patient_identifier([], key), PATIENT, options)
    else:
        search = qido.parse(level, [], {_UNIQUE[level]: key}, max_results=0, case_insensitive_names=True)
        query = prepare(search.identifier, STUDY, search.options)
    for answer in ctx.engine.find(query, limit=1, stream=False):
        return _item(answer)
    return None


def _disk(ctx: WebContext) -> dict[str, Any]:
    counts = ctx.archive.index.counts()
    usage = shutil.disk_usage(ctx.archive.store.root)
    return {
        "version": __version__,
        "aet": ctx.settings.node.aet,
        "counts": {
            "patients": counts["patients"],
            "studies": counts["studies"],
            "series": counts["series"],
            "instances": counts["instances"] + counts["non_patient_objects"],
        },
        "stored_bytes": ctx.archive.index.stored_bytes(),
        "disk": {"total": usage.total, "used": usage.used, "free": usage.free},
    }


def create_admin_app(ctx: WebContext) -> FastAPI:
    """The /api application; its OpenAPI description is served at /api/docs and /api/openapi.json."""
    api = FastAPI(
        title="pacsnode admin API",
        version=__version__,
        description=(
            "Browse and delete what the archive holds. List endpoints take the matching keys of "
            "the query engine as query parameters, by DICOM keyword or tag (PatientName=doe*, "
            "StudyDate=20240101-20241231, Modality=CT), with the C-FIND matching rules."
        ),
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )

    @api.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError) -> Response:
        return JSONResponse({"detail": exc.comment}, status_code=400)

    @api.exception_handler(qido.SearchError)
    async def _search_error(request: Request, exc: qido.SearchError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @api.get("/system", summary="Version, counts and disk use")
    async def system() -> dict[str, Any]:
        return await ctx.run(_disk, ctx)

    def add_level(level: str) -> None:
        plural = _PLURAL[level]
        label = "Patient ID" if level == PATIENT else "UID"

        async def listing(request: Request, limit: Limit = _PAGE, offset: Offset = 0) -> dict[str, Any]:
            params = list(request.query_params.multi_items())
            async with audited_read(ctx, request):  # PS3.15 A.5.3.10
                return await ctx.run(_list, ctx, level, params, limit, offset)

        async def one(request: Request, key: str) -> dict[str, Any]:
            if level != PATIENT:
                check_uid(key)
            async with audited_read(ctx, request):  # PS3.15 A.5.3.10
                found = await ctx.run(_one, ctx, level, key)
            if found is None:
                raise HTTPException(404, f"no such {level.lower()}")
            return found

        async def delete(request: Request, key: str) -> dict[str, Any]:
            if level != PATIENT:
                check_uid(key)
            async with audited_deletion(ctx, request, level, key):  # PS3.15 A.5.3.8 / A.5.3.6
                deleted = await ctx.archive.delete(level, key)
            if deleted is None:
                raise HTTPException(404, f"no such {level.lower()}")
            return {"deleted": level.lower(), "key": key, "instances": deleted}

        api.add_api_route(f"/{plural}", listing, methods=["GET"], summary=f"List {plural} (paged, filtered)")
        api.add_api_route(
            f"/{plural}/{{key}}", one, methods=["GET"], summary=f"One of the {plural}, by {label}"
        )
        api.add_api_route(
            f"/{plural}/{{key}}",
            delete,
            methods=["DELETE"],
            summary=f"Delete one of the {plural} by {label}, with its files and everything below it",
        )

    for level in (PATIENT, STUDY, SERIES, IMAGE):
        add_level(level)
    _add_worklist(api, ctx)
    _add_mpps(api, ctx)
    _add_audit(api, ctx)
    add_deidentify(api, ctx)  # POST /studies/{study}/deidentify (PS3.15 Annex E)
    return api


def _add_audit(api: FastAPI, ctx: WebContext) -> None:
    """PS3.15 A.5: the audit trail the node keeps (admin role, web/auth.py); reading it is audited too."""

    @api.get("/audit", summary="Audit messages (PS3.15 A.5), newest first, with their XML")
    async def audit(
        request: Request,
        since: Annotated[datetime | None, Query(description="From this time (ISO 8601).")] = None,
        until: Annotated[datetime | None, Query(description="Up to this time (ISO 8601).")] = None,
        user: Annotated[str, Query(description="A participant: AE title, user name or address.")] = "",
        patient: Annotated[str, Query(description="A Patient ID the message names.")] = "",
        study: Annotated[str, Query(description="A Study Instance UID the message names.")] = "",
        event: Annotated[str, Query(description="EventID or EventTypeCode: code or name.")] = "",
        outcome: Annotated[int | None, Query(description="EventOutcomeIndicator: 0, 4, 8, 12.")] = None,
        limit: Limit = _PAGE,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        query = AuditQuery(since, until, user, patient, study, event, outcome, limit, offset)
        try:
            page = await ctx.run(search_audit, ctx.archive.index.reader, query)
        except AuditSearchError as exc:
            raise HTTPException(400, str(exc)) from None
        # PS3.15 A.5.3.2: Audit Log Used.
        ctx.audit.emit(audit_log_used(requester(request), node(ctx), target(request)))
        return page


def _add_mpps(api: FastAPI, ctx: WebContext) -> None:
    """PS3.4 Annex F: the performed procedure steps modalities reported."""
    steps = ctx.archive.performed_steps

    @api.get("/mpps", summary="Modality Performed Procedure Steps, with their status")
    async def listing() -> dict[str, Any]:
        return {"items": await ctx.run(steps.listing)}

    @api.get("/mpps/{uid}", summary="One performed procedure step as DICOM JSON")
    async def one(uid: str) -> Response:
        check_uid(uid)
        ds = await ctx.run(steps.get, uid)
        if ds is None:
            raise HTTPException(404, "no such performed procedure step")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            body = json.dumps(ds.to_json_dict())
        return Response(body, media_type="application/dicom+json")


_WORKLIST_BODY_MAX = 16 << 20
_ORDER_KEYS = ("PatientID", "PatientName", "AccessionNumber")  # what an Order Record names


def _worklist_items(content_type: str, body: bytes) -> list[Dataset]:
    """The items of a POST /api/worklist body: one DICOM file, or DICOM JSON (one or an array)."""
    media = content_type.split(";")[0].strip().lower()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if media in ("application/dicom", "application/octet-stream"):
            try:
                return [dcmread(io.BytesIO(body), force=True)]
            except Exception as exc:
                raise HTTPException(400, f"not a DICOM file: {exc}") from None
        if media in ("application/dicom+json", "application/json"):
            try:
                parsed = json.loads(body)
                objects = parsed if isinstance(parsed, list) else [parsed]
                return [Dataset.from_json(o) for o in objects]
            except Exception as exc:
                raise HTTPException(400, f"not DICOM JSON: {exc}") from None
    raise HTTPException(415, "a worklist item is application/dicom or application/dicom+json")


def _add_worklist(api: FastAPI, ctx: WebContext) -> None:
    """PS3.4 Annex K: the scheduled procedure steps the Modality Worklist answers with."""
    worklist = ctx.archive.worklist

    @api.post("/worklist", status_code=201, summary="Schedule worklist items (DICOM file or DICOM JSON)")
    async def add(request: Request) -> dict[str, Any]:
        body = await request.body()
        if len(body) > _WORKLIST_BODY_MAX:
            raise HTTPException(413, "a worklist request is at most 16 MiB")
        datasets = _worklist_items(request.headers.get("content-type", ""), body)
        ids = []
        for ds in datasets:
            patient_id, name, accession = (str(ds.get(k, "") or "") for k in _ORDER_KEYS)
            try:
                ids.append(await ctx.run(worklist.add, ds))
            except WorklistError as exc:
                audit_order(ctx, request, "C", (patient_id, name, accession), str(exc))
                raise HTTPException(400, str(exc)) from None
            audit_order(ctx, request, "C", (patient_id, name, accession))  # PS3.15 A.5.3.13
        return {"items": [{"id": i} for i in ids]}

    @api.get("/worklist", summary="The scheduled procedure steps (all=true: cancelled ones too)")
    async def listing(all: bool = False) -> dict[str, Any]:
        return {"items": await ctx.run(worklist.listing, include_canceled=all)}

    @api.delete("/worklist/{item_id}", status_code=204, summary="Cancel a scheduled procedure step")
    async def cancel(request: Request, item_id: int) -> Response:
        subject = await ctx.run(worklist_item, ctx.archive.index.reader, item_id)
        if not await ctx.run(worklist.cancel, item_id):
            raise HTTPException(404, "no such scheduled item")
        if subject is not None:
            audit_order(ctx, request, "D", subject)  # PS3.15 A.5.3.13
        return Response(status_code=204)
