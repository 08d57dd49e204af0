"""PS3.18 8.7: media types, transfer syntaxes and Accept negotiation of DICOMweb responses."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pacsnode.data.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from pacsnode.web.multipart import MultipartError, parse_media_type

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"
ANY_SYNTAX = "*"

# PS3.18 Table 8.7.3-2: the media type of a compressed frame, by transfer syntax.
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
}
# PS3.18 8.7.3.5.2: what an origin server sends when no transfer-syntax is asked for.
DEFAULT_SYNTAX = {DICOM: EXPLICIT_VR_LITTLE_ENDIAN, OCTET_STREAM: EXPLICIT_VR_LITTLE_ENDIAN}

_SPLIT = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')


class NotAcceptable(ValueError):
    """No representation the client accepts can be produced (HTTP 406)."""


@dataclass(frozen=True, slots=True)
class Acceptable:
    """One element of an Accept header: a media type, the part type of a multipart, a syntax."""

    media_type: str
    part_type: str  # the type= parameter of multipart/related, or the media type itself
    transfer_syntax: str | None  # None: not named
    quality: float


def accept_list(header: str | None) -> list[Acceptable]:
    """The elements of an Accept header, best first (RFC 9110 12.5.1); '*/*' when absent."""
    out: list[Acceptable] = []
    for raw in _SPLIT.split(header or "*/*"):
        if not raw.strip():
            continue
        try:
            media_type, params = parse_media_type(raw)
        except MultipartError:
            continue
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 1.0
        part = params.get("type", "").lower() if media_type == MULTIPART else media_type
        out.append(Acceptable(media_type, part, params.get("transfer-syntax"), quality))
    out.sort(key=lambda a: -a.quality)
    return [a for a in out if a.quality > 0]


def _matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", "", media_type):
        return True
    return pattern.endswith("/*") and media_type.startswith(pattern[:-1])


def choose_syntax(accept: list[Acceptable], part_type: str, stored: str, *, multipart: bool = True) -> str:
    """The transfer syntax to send an instance (or frame) in: the stored one when '*' or named.

    Raises NotAcceptable when no element of ``accept`` allows ``part_type``.
    """
    for a in accept:
        if multipart and a.media_type not in (MULTIPART, "*/*", "multipart/*"):
            continue
        if not multipart and not _matches(a.media_type, part_type):
            continue
        if a.media_type == MULTIPART and a.part_type and not _matches(a.part_type, part_type):
            continue
        syntax = a.transfer_syntax
        if syntax in (ANY_SYNTAX, stored):
            return stored
        if syntax is None:
            return DEFAULT_SYNTAX.get(part_type, stored)
        if syntax in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
            return syntax
    raise NotAcceptable(f"cannot send {part_type} in what the Accept header asks for")


def accepts(accept: list[Acceptable], *media_types: str) -> str | None:
    """The first of ``media_types`` (a single-part response) that the Accept header allows."""
    for a in accept:
        for media_type in media_types:
            if _matches(a.media_type, media_type):
                return media_type
    return None
