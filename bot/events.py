"""Events Mendbot reacts to, from a signed webhook request (signature checked first) or a stored delivery."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

SIGNATURE_HEADER = "x-hub-signature-256"
EVENT_HEADER = "x-github-event"
DELIVERY_HEADER = "x-github-delivery"
MAX_BODY_BYTES = 25 * 1024 * 1024
# GitHub sends `sha256=` and 64 lowercase hex digits; anything else is refused before any comparison.
_SIGNATURE_RE = re.compile(r"sha256=[0-9a-f]{64}")
_DELIVERY_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_EVENT_RE = re.compile(r"[a-z_]{1,64}")
# Events that carry no installation and need no work; they are answered but never stored.
UNSTORED_EVENTS = frozenset({"ping"})


class IntakeError(ValueError):
    """A request that is refused: the HTTP status to answer with and a reason safe to log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Event:
    """One webhook delivery: what happened, its delivery id and the parsed payload."""

    name: str
    action: str | None
    delivery_id: str
    payload: dict[str, Any]

    @property
    def installation_id(self) -> int | None:
        installation = self.payload.get("installation")
        if isinstance(installation, dict) and isinstance(installation.get("id"), int):
            return int(installation["id"])
        return None

    @property
    def repository(self) -> str | None:
        repository = self.payload.get("repository")
        if isinstance(repository, dict) and isinstance(repository.get("full_name"), str):
            return str(repository["full_name"])
        return None


def sign(secret: bytes, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> None:
    """Raise IntakeError(401) unless `header` is the HMAC-SHA256 of the raw body under `secret`."""
    if not secret:
        raise IntakeError(500, "no webhook secret is configured")
    if not header:
        raise IntakeError(401, "missing X-Hub-Signature-256")
    if not _SIGNATURE_RE.fullmatch(header):
        raise IntakeError(401, "malformed X-Hub-Signature-256 (want sha256= and 64 lowercase hex digits)")
    if not hmac.compare_digest(header.encode("ascii"), sign(secret, body).encode("ascii")):
        raise IntakeError(401, "X-Hub-Signature-256 does not match the body")


def event_from_http(
    headers: Mapping[str, str], body: bytes, secret: bytes, max_bytes: int = MAX_BODY_BYTES
) -> Event:
    """Check a webhook request in a fixed order (size, signature, headers, encoding, JSON) and parse it.

    Nothing in the body is looked at before the signature is verified.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    if len(body) > max_bytes:
        raise IntakeError(413, f"body of {len(body)} bytes exceeds the {max_bytes}-byte cap")
    verify_signature(secret, body, lowered.get(SIGNATURE_HEADER))
    name = lowered.get(EVENT_HEADER, "")
    delivery_id = lowered.get(DELIVERY_HEADER, "")
    if not _EVENT_RE.fullmatch(name):
        raise IntakeError(400, "missing or malformed X-GitHub-Event")
    if not _DELIVERY_RE.fullmatch(delivery_id):
        raise IntakeError(400, "missing or malformed X-GitHub-Delivery")
    try:
        # orjson: a 20 KB delivery parses in a third of the time json takes, on the intake path and again
        # in the worker. It is stricter (no NaN, no integers beyond 64 bits), which GitHub never sends. It
        # reads the bytes as they came and checks their UTF-8 itself.
        payload = orjson.loads(body)
    except ValueError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise IntakeError(400, f"body is not UTF-8 (byte {bad.start})") from None
        raise IntakeError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise IntakeError(400, "body is not a JSON object")
    action = payload.get("action")
    event = Event(name, action if isinstance(action, str) else None, delivery_id, payload)
    if name not in UNSTORED_EVENTS and event.installation_id is None:
        raise IntakeError(400, "payload has no installation id; is this an App webhook?")
    return event


def event_from_stored(delivery_id: str, name: str, payload_text: str) -> Event:
    """Rebuild an event from a stored delivery; it was checked when it came in."""
    payload = orjson.loads(payload_text)
    action = payload.get("action")
    return Event(name, action if isinstance(action, str) else None, delivery_id, payload)
