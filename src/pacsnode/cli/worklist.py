"""`pacsnode worklist`: schedule, list and cancel Modality Worklist items (PS3.4 Annex K) over REST."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8042"


class WorklistClientError(Exception):
    """The node refused or could not be reached; the message says why."""


def credentials(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Authorization header from PACSNODE_TOKEN (Bearer), or PACSNODE_USER and PACSNODE_PASSWORD (Basic).

    None set: no header (the node then answers only from loopback, with its loopback roles).
    """
    env = os.environ if environ is None else environ
    if env.get("PACSNODE_TOKEN"):
        return {"Authorization": f"Bearer {env['PACSNODE_TOKEN']}"}
    if env.get("PACSNODE_USER"):
        pair = f"{env['PACSNODE_USER']}:{env.get('PACSNODE_PASSWORD', '')}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    return {}


def _request(url: str, method: str = "GET", body: bytes | None = None, content_type: str = "") -> Any:
    headers = {"Content-Type": content_type} if content_type else {}
    headers.update(credentials())
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            data = answer.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):  # FastAPI's {"detail": ...}, or text
            detail = json.loads(detail).get("detail", detail)
        if exc.code in (401, 403):
            detail = f"{detail} (set PACSNODE_TOKEN, or PACSNODE_USER and PACSNODE_PASSWORD)"
        raise WorklistClientError(f"{method} {url}: {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WorklistClientError(f"cannot reach {url}: {reason}") from None
    return json.loads(data) if data else None


def add(base: str, path: Path) -> list[int]:
    """Schedule the item(s) of one file: a DICOM worklist file (.wl) or DICOM JSON."""
    body = path.read_bytes()
    media = "application/dicom+json" if body.lstrip()[:1] in (b"{", b"[") else "application/dicom"
    answer = _request(f"{base.rstrip('/')}/api/worklist", "POST", body, media)
    return [int(item["id"]) for item in answer["items"]]


def listing(base: str, *, include_canceled: bool = False) -> list[dict[str, Any]]:
    """The scheduled items (and the cancelled ones too, when asked)."""
    query = "?all=true" if include_canceled else ""
    return list(_request(f"{base.rstrip('/')}/api/worklist{query}")["items"])


def cancel(base: str, item_id: int) -> None:
    """Cancel one item: it no longer answers Modality Worklist queries."""
    _request(f"{base.rstrip('/')}/api/worklist/{item_id}", "DELETE")
