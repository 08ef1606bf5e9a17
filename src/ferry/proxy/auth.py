"""API keys: bearer tokens, kept (in files) only as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from ferry.settings import Settings

BEARER = "bearer "


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class NoApiKeys(Exception):
    """The proxy would accept anyone: refuse to start instead."""


class ApiKeys:
    """The accepted keys, by hash. `identify` names the caller's key, or None."""

    def __init__(self, hashes: list[str]) -> None:
        if not hashes:
            raise NoApiKeys("no API keys: set FERRY_API_KEYS or FERRY_API_KEYS_FILE")
        self._digests = [bytes.fromhex(digest) for digest in hashes]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        hashes = [key_hash(key.strip()) for key in settings.api_keys.get_secret_value().split(",") if key.strip()]
        if settings.api_keys_file is not None:
            hashes += read_hashes(settings.api_keys_file)
        return cls(hashes)

    @classmethod
    def admin_from_settings(cls, settings: Settings) -> ApiKeys | None:
        """The keys of FERRY_ADMIN_API_KEYS, or None: no one may administer."""
        keys = [key.strip() for key in settings.admin_api_keys.get_secret_value().split(",") if key.strip()]
        return cls([key_hash(key) for key in keys]) if keys else None

    def identify(self, authorization: str | None) -> str | None:
        """The id (hash prefix) of the key in an `Authorization: Bearer` header, if it is ours.

        Every stored hash is compared, each in constant time: the answer's timing
        says nothing about which key, or how much of one, matched.
        """
        if not authorization or authorization[: len(BEARER)].lower() != BEARER:
            return None
        offered = hashlib.sha256(authorization[len(BEARER) :].strip().encode()).digest()
        found = None
        for digest in self._digests:
            if hmac.compare_digest(digest, offered):
                found = digest
        return found.hex()[:16] if found is not None else None


def read_hashes(path: Path) -> list[str]:
    """SHA-256 hex digests, one per line; blank lines and # comments skipped."""
    hashes = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip().lower()
        if not text:
            continue
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise ValueError(f"{path}:{number}: not a SHA-256 hex digest")
        hashes.append(text)
    return hashes
