"""PS3.18 8.9 / 10.8: what the DICOMweb origin server supports, generated from its route table."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pacsnode.config.settings import Settings
from pacsnode.web.context import WebContext

# Handler function name -> (PS3.18 transaction, media types of the answer or the request).
_TRANSACTIONS: dict[str, tuple[str, str]] = {
    "capabilities": ("Capabilities (8.9)", "application/vnd.sun.wadl+xml"),
    "search": (
        "QIDO-RS Search (10.6)",
        'application/dicom+json; multipart/related; type="application/dicom+xml"',
    ),
    "retrieve_instances": (
        "WADO-RS Retrieve Instances (10.4.1.1)",
        'multipart/related; type="application/dicom" (transfer-syntax: as stored with *, '
        "else Explicit or Implicit VR Little Endian); application/zip for a study",
    ),
    "retrieve_metadata": ("WADO-RS Retrieve Metadata (10.4.1.2)", "application/dicom+json"),
    "retrieve_frames": (
        "WADO-RS Retrieve Frames (10.4.1.3)",
        'multipart/related; type="application/octet-stream" (native, or as stored with transfer-syntax=*)'
        ", or the compressed frame's own type (image/jpeg, image/jls, image/jp2, ...)",
    ),
    "retrieve_bulkdata": (
        "WADO-RS Retrieve Bulkdata (10.4.1.4)",
        'multipart/related; type="application/octet-stream", or application/octet-stream with Range',
    ),
    "retrieve_rendered": ("WADO-RS Retrieve Rendered (10.4.1.5)", "image/jpeg, image/png, image/gif"),
    "retrieve_thumbnail": ("WADO-RS Retrieve Thumbnail (10.4.1.6)", "image/jpeg, image/png, image/gif"),
    "store_instances": (
        "STOW-RS Store Instances (10.5)",
        'request: multipart/related; type="application/dicom", or type="application/dicom+json" with '
        "bulk data parts; answer: application/dicom+json",
    ),
}


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource of the service: method, path under the root, transaction, media types."""

    method: str
    path: str
    transaction: str
    media_types: str


def resources() -> list[Resource]:
    """Every DICOMweb resource the node serves, read off the route table itself."""
    from pacsnode.web.app import dicomweb_routes

    out: list[Resource] = []
    for route in dicomweb_routes(None):
        if not isinstance(route, Route):
            continue
        name = getattr(route.endpoint, "transaction", "")
        transaction, media = _TRANSACTIONS.get(name, (name, ""))
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                out.append(Resource(method, route.path, transaction, media))
    return out


def conformance_sections(settings: Settings) -> list[tuple[str, str]]:
    """The Web Services sections of the conformance statement (PS3.2 A.4), Markdown."""
    web = settings.web
    if not web.enabled:
        return []
    rows = ["| Method | Resource | Transaction | Media types |", "|---|---|---|---|"]
    for r in resources():
        rows.append(f"| {r.method} | `{web.base_path}{r.path}` | {r.transaction} | {r.media_types} |")
    origin = (
        f"The node is a DICOMweb origin server on HTTP port {settings.node.http_port} "
        f"(`[node] http_port`), service root `{web.base_path}` (`[web] base_path`). "
        "WADO-URI (PS3.18 9) answers at `/wado` with `application/dicom` (as stored, or Explicit / "
        "Implicit VR Little Endian) and `image/jpeg`, `image/png`, `image/gif` (windowCenter, "
        "windowWidth, rows, columns, frameNumber, imageQuality); `anonymize`, `region`, `annotation` "
        "and presentation states are not supported."
    )
    limits = (
        f"QIDO-RS returns at most {web.max_results} matches per request (`[web] max_results`); a cut "
        "answer carries a Warning header and the client pages with `offset`. Matching follows the "
        "C-FIND rules of this statement (relational keys of indexed attributes, `fuzzymatching`). "
        "`orderby` is refused (400). Default attributes follow PS3.18 Table 6.7.1-2a except Bits "
        "Allocated (0028,0100), returned only when asked for with `includefield`. "
        f"STOW-RS bodies over {web.max_body} bytes are refused with 413 (`[web] max_body`); "
        "STOW-RS of `application/dicom+json` metadata holds its bulk data parts in memory per instance. "
        "Transcoding is to uncompressed transfer syntaxes only; other requested syntaxes give 406."
    )
    roles = settings.auth.loopback_roles
    auth = (
        "Requests from loopback without credentials get the roles "
        + (", ".join(f"`{r}`" for r in roles) if roles else "none")
        + " (`[auth] loopback_roles`); every other request needs HTTP Basic credentials of a "
        "configured user (scrypt password hash)"
        + (
            ", a Bearer API token (its SHA-256 configured)"
            if settings.auth.oidc_issuer
            else " or a Bearer API token (its SHA-256 configured)"
        )
        + (" or a Bearer OpenID Connect JWT of `[auth] oidc_issuer`" if settings.auth.oidc_issuer else "")
        + ". Searches and retrievals need the `read` role, STOW-RS `write`; without credentials the "
        'answer is 401 with `WWW-Authenticate: Basic realm="pacsnode", Bearer`, without the role 403.'
    )
    return [
        ("DICOMweb Origin Server", origin),
        ("Resources", "\n".join(rows)),
        ("Limits and Options", limits),
        ("Authentication and Authorization", auth),
    ]


def wadl(base_url: str) -> bytes:
    """The capabilities of the service as WADL (PS3.18 8.9.1: application/vnd.sun.wadl+xml)."""
    ns = "http://wadl.dev.java.net/2009/02"
    ET.register_namespace("", ns)
    app = ET.Element(f"{{{ns}}}application")
    root = ET.SubElement(app, f"{{{ns}}}resources", base=base_url)
    by_path: dict[str, ET.Element] = {}
    for r in resources():
        node = by_path.get(r.path)
        if node is None:
            node = by_path[r.path] = ET.SubElement(root, f"{{{ns}}}resource", path=r.path.lstrip("/"))
        method = ET.SubElement(node, f"{{{ns}}}method", name=r.method, id=r.transaction)
        doc = ET.SubElement(method, f"{{{ns}}}doc")
        doc.text = r.media_types
    return bytes(ET.tostring(app, encoding="utf-8", xml_declaration=True))


async def capabilities(ctx: WebContext, request: Request) -> Response:
    """OPTIONS (or GET) on the service root: the WADL description (PS3.18 8.9)."""
    return Response(
        wadl(ctx.base_url(request)),
        media_type="application/vnd.sun.wadl+xml",
        headers={"Allow": "GET, POST, OPTIONS"},
    )
