"""The node's HTTP application: PS3.18 DICOMweb (QIDO-RS, WADO-RS, STOW-RS, WADO-URI) and the admin API."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pacsnode.archive.qr_model import IMAGE, SERIES, SERIES_INSTANCE_UID, STUDY, STUDY_INSTANCE_UID
from pacsnode.archive.query import QueryError
from pacsnode.web import capabilities, qido, retrieve, store, wado_uri
from pacsnode.web.admin import create_admin_app
from pacsnode.web.auditing import audited_query
from pacsnode.web.auth import HttpAuth, HttpGuard
from pacsnode.web.context import WebContext, check_uid
from pacsnode.web.dicomjson import dumps
from pacsnode.web.media import DICOM_JSON, DICOM_XML, MULTIPART, Acceptable, accept_list, accepts
from pacsnode.web.multipart import MultipartWriter, new_boundary
from pacsnode.web.viewer import viewer_routes

log = logging.getLogger("pacsnode.web")

Handler = Callable[[Request], Awaitable[Response]]


def _search(ctx: WebContext | None, level: str) -> Handler:
    async def handler(request: Request) -> Response:
        assert ctx is not None
        accept = accept_list(request.headers.get("accept"))
        xml = _wants_xml(accept)
        if not xml and accepts(accept, DICOM_JSON, "application/json") is None:
            wanted = 'application/dicom+json or multipart/related; type="application/dicom+xml"'
            raise HTTPException(406, f"search results are {wanted}")
        scope: dict[int, str] = {}
        if "study" in request.path_params:
            scope[STUDY_INSTANCE_UID] = check_uid(request.path_params["study"])
        if "series" in request.path_params:
            scope[SERIES_INSTANCE_UID] = check_uid(request.path_params["series"])
        try:
            search = qido.parse(
                level,
                list(request.query_params.multi_items()),
                scope,
                max_results=ctx.settings.web.max_results,
                case_insensitive_names=ctx.settings.query.case_insensitive_names,
            )
            query = qido.prepared(search)
            base = ctx.base_url(request)
            if ctx.engine.is_selective(query):
                # A lookup of a few index rows (a UID, a Patient ID): a thread hop would cost
                # more than the query, as for C-FIND.
                found, more = qido.run_search(ctx.engine, search, base, xml=xml, query=query)
            else:
                found, more = await ctx.run(qido.run_search, ctx.engine, search, base, xml=xml, query=query)
        except (qido.SearchError, QueryError) as exc:
            raise HTTPException(400, getattr(exc, "comment", None) or str(exc)) from None
        headers = {}
        if more:
            # PS3.18 8.3.4.4 / 10.6.3.2: the answer was cut; the client may page with offset.
            headers["Warning"] = '299 pacsnode: "The number of results exceeded the maximum supported"'
        if not found:
            return Response(status_code=204 if not more else 200, headers=headers)
        if xml:
            # PS3.18 8.7.3.4: one application/dicom+xml part per match.
            writer = MultipartWriter(new_boundary())
            parts = [writer.head(DICOM_XML) + document for document in found]
            body = b"".join(parts) + writer.close()
            return Response(body, media_type=writer.content_type(DICOM_XML), headers=headers)
        body = dumps([_for_viewers(obj) for obj in found])
        return Response(body, media_type=DICOM_JSON, headers=headers)

    handler.transaction = "search"  # type: ignore[attr-defined]
    return audited_query(ctx, handler)  # PS3.15 A.5.3.10


def _for_viewers(obj: dict[str, Any]) -> dict[str, Any]:
    """A QIDO-RS answer as deployed viewers read it.

    OHIF 3.13.2 reads ModalitiesInStudy's Value without checking it exists, and its whole
    study list fails on one study without Modality; an empty ModalitiesInStudy is left out
    (an empty value and an absent one mean the same to a client, PS3.18 F.2.5).
    """
    modalities = obj.get("00080061")
    if modalities is not None and "Value" not in modalities:
        del obj["00080061"]
    return obj


def _wants_xml(accept: list[Acceptable]) -> bool:
    """Whether the Accept header prefers multipart DICOM XML to DICOM JSON (PS3.18 8.7.3.4)."""
    for a in accept:
        if a.media_type == MULTIPART and a.part_type == DICOM_XML:
            return True
        if a.media_type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return False
    return False


def _bind(ctx: WebContext | None, fn: Callable[..., Awaitable[Response]], **fixed: Any) -> Handler:
    async def handler(request: Request) -> Response:
        return await fn(ctx, request, **request.path_params, **fixed)

    handler.transaction = fn.__name__  # type: ignore[attr-defined]
    return handler


def dicomweb_routes(ctx: WebContext | None) -> list[BaseRoute]:
    """PS3.18 Tables 10.4-1, 10.5-1 and 10.6-1: the resources of the DICOMweb root.

    ``ctx`` None gives the table without a node behind it (to describe the service).
    """
    s, se, i = "/studies/{study}", "/series/{series}", "/instances/{instance}"
    r = retrieve
    return [
        Route("/", _bind(ctx, capabilities.capabilities), methods=["GET", "OPTIONS"]),
        Route("/studies", _search(ctx, STUDY), methods=["GET"]),
        Route("/studies", _bind(ctx, store.store_instances), methods=["POST"]),
        Route("/series", _search(ctx, SERIES), methods=["GET"]),
        Route("/instances", _search(ctx, IMAGE), methods=["GET"]),
        Route(s, _bind(ctx, r.retrieve_instances), methods=["GET"]),
        Route(s, _bind(ctx, store.store_instances), methods=["POST"]),
        Route(f"{s}/metadata", _bind(ctx, r.retrieve_metadata), methods=["GET"]),
        Route(f"{s}/rendered", _bind(ctx, r.retrieve_rendered), methods=["GET"]),
        Route(f"{s}/thumbnail", _bind(ctx, r.retrieve_thumbnail), methods=["GET"]),
        Route(f"{s}/series", _search(ctx, SERIES), methods=["GET"]),
        Route(f"{s}/instances", _search(ctx, IMAGE), methods=["GET"]),
        Route(f"{s}{se}", _bind(ctx, r.retrieve_instances), methods=["GET"]),
        Route(f"{s}{se}/metadata", _bind(ctx, r.retrieve_metadata), methods=["GET"]),
        Route(f"{s}{se}/rendered", _bind(ctx, r.retrieve_rendered), methods=["GET"]),
        Route(f"{s}{se}/thumbnail", _bind(ctx, r.retrieve_thumbnail), methods=["GET"]),
        Route(f"{s}{se}/instances", _search(ctx, IMAGE), methods=["GET"]),
        Route(f"{s}{se}{i}", _bind(ctx, r.retrieve_instances), methods=["GET"]),
        Route(f"{s}{se}{i}/metadata", _bind(ctx, r.retrieve_metadata), methods=["GET"]),
        Route(f"{s}{se}{i}/rendered", _bind(ctx, r.retrieve_rendered), methods=["GET"]),
        Route(f"{s}{se}{i}/thumbnail", _bind(ctx, r.retrieve_thumbnail), methods=["GET"]),
        Route(f"{s}{se}{i}/frames/{{frames}}", _bind(ctx, r.retrieve_frames), methods=["GET"]),
        Route(f"{s}{se}{i}/frames/{{frames}}/rendered", _bind(ctx, r.retrieve_rendered), methods=["GET"]),
        Route(f"{s}{se}{i}/bulkdata/{{tag_path:path}}", _bind(ctx, r.retrieve_bulkdata), methods=["GET"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code >= 400:
        log.info("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.detail)
    return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path)
    return PlainTextResponse("internal error", status_code=500)


class _GzipWhenAsked:
    """Starlette's gzip, entered only by requests that accept gzip (the others skip its cost)."""

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"accept-encoding" and b"gzip" in value:
                    await self.gzip(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def create_app(ctx: WebContext) -> Starlette:
    """The HTTP application of a node: DICOMweb under [web] base_path, WADO-URI at /wado."""
    web = ctx.settings.web
    middleware = []
    if web.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=web.cors_origins,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Warning", "Content-Location"],
            )
        )
    # Inside CORS (a preflight carries no credentials; a 401 still gets CORS headers).
    middleware.append(Middleware(HttpAuth, guard=HttpGuard(ctx.settings, ctx.authenticator, ctx.audit)))
    if web.gzip_min_size:
        # Only answers (DICOM JSON, XML) are worth compressing: pixel data and images are not,
        # and the viewer's large bundles, cached by the browser, are not worth gzip each time.
        excluded = (
            *DEFAULT_EXCLUDED_CONTENT_TYPES,
            "multipart/*",
            "application/dicom",
            "application/octet-stream",
            "application/wasm",
            "text/javascript",
            "application/javascript",
        )
        middleware.append(
            Middleware(_GzipWhenAsked, minimum_size=web.gzip_min_size, exclude_content_types=excluded)
        )
    routes: list[BaseRoute] = [
        Mount(web.base_path, routes=dicomweb_routes(ctx)),
        Route("/wado", _bind(ctx, wado_uri.wado), methods=["GET"]),
        Mount("/api", app=create_admin_app(ctx)),
        # Last: the OHIF viewer at the root, with its single-page fallback (when installed).
        *viewer_routes(ctx.settings),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
