"""PS3.15 E.1-1 action U: UIDs replaced by a keyed, deterministic mapping to PS3.5 B.2 UUID-derived UIDs."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_BYTES = 32


class KeyFileError(ValueError):
    """A key file that cannot be read or is not a key."""


def load_or_create_key(path: Path) -> bytes:
    """The secret of a key file; the file is created (mode 0600) with a fresh random key if missing.

    The same key gives the same replacement UIDs, date shifts and pseudonyms: keep
    it to de-identify more of a study later (a second batch) consistently, and
    secret, since whoever has it can test a guessed original against the output.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.hex() + "\n")
        return key
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the de-identification key: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{path}: not a de-identification key (expected hex digits)") from None
    if len(key) < 16:
        raise KeyFileError(f"{path}: key too short ({len(key)} bytes; at least 16)")
    return key


def keyed(key: bytes, purpose: str, value: str) -> bytes:
    """HMAC-SHA256 of ``value`` under ``key``, separated by purpose (UIDs, dates, pseudonyms)."""
    return hmac.new(key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()


class UidMap:
    """Original UID -> replacement UID, the same for every instance, batch and run under one key.

    PS3.15 E.1-1 U: "replace with a non-zero length UID that is internally
    consistent within a set of Instances". The replacement is 2.25.<decimal of
    128 bits of HMAC-SHA256(key, UID)> (PS3.5 B.2), so references (Referenced SOP
    Instance UID, Frame of Reference UID, SEG and SR sequences) follow their
    targets without any shared state.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        uid = uid.strip("\0 ")
        if not uid:
            return uid
        found = self._cache.get(uid)
        if found is None:
            digest = keyed(self._key, "uid", uid)
            found = f"2.25.{int.from_bytes(digest[:16], 'big')}"  # PS3.5 B.2: at most 39 digits
            if len(self._cache) < 1_000_000:
                self._cache[uid] = found
        return found
