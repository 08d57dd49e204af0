"""`pacsnode worklist`: schedule, list and cancel Modality Worklist items (PS3.4 Annex K) over REST."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8042"


class WorklistClientError(Exception):
    """The node refused or could not be reached; the message says why."""


def _request(url: str, method: str = "GET", body: bytes | None = None, content_type: str = "") -> Any:
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            data = answer.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):  # FastAPI's {"detail": ...}, or text
            detail = json.loads(detail).get("detail", detail)
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
