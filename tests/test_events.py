"""Webhook signature checks and parsing (SECURITY items 1, 4 and 5, and the adversarial intake inputs)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from bot.events import IntakeError, event_from_http, event_from_stored, sign, verify_signature

SECRET = b"It's a Secret to Everybody"
BODY = json.dumps(
    {"action": "completed", "installation": {"id": 7}, "repository": {"full_name": "o/r"}}
).encode()


def headers(body: bytes = BODY, **overrides: str) -> dict[str, str]:
    values = {
        "X-GitHub-Event": "workflow_run",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": sign(SECRET, body),
    }
    values.update(overrides)
    return values


def refused(body: bytes, hdrs: dict[str, str], max_bytes: int = 25 * 1024 * 1024) -> IntakeError:
    with pytest.raises(IntakeError) as caught:
        event_from_http(hdrs, body, SECRET, max_bytes)
    return caught.value


def test_githubs_published_test_vector() -> None:
    digest = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign(SECRET, b"Hello, World!") == f"sha256={digest}"
    verify_signature(SECRET, b"Hello, World!", f"sha256={digest}")


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "missing"),
        ("", "missing"),
        ("sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest(), "malformed"),
        (sign(SECRET, BODY)[:-2], "malformed"),
        (sign(SECRET, BODY) + "00", "malformed"),
        (sign(SECRET, BODY).upper().replace("SHA256=", "sha256="), "malformed"),
        (sign(SECRET, BODY).replace("sha256=", "SHA256="), "malformed"),
        (" " + sign(SECRET, BODY), "malformed"),
        (sign(b"another secret", BODY), "does not match"),
        ("sha256=" + "é" * 64, "malformed"),
    ],
    ids=[
        "absent",
        "empty",
        "sha1",
        "truncated",
        "too-long",
        "uppercase-hex",
        "uppercase-prefix",
        "padded",
        "wrong-secret",
        "non-ascii",
    ],
)
def test_bad_signatures_are_refused_with_401(header: str | None, why: str) -> None:
    hdrs = headers()
    if header is None:
        del hdrs["X-Hub-Signature-256"]
    else:
        hdrs["X-Hub-Signature-256"] = header
    error = refused(BODY, hdrs)
    assert error.status == 401
    assert why in error.reason


def test_a_body_reserialised_after_signing_is_refused() -> None:
    reserialised = json.dumps(json.loads(BODY), indent=2).encode()
    assert json.loads(reserialised) == json.loads(BODY)
    assert refused(reserialised, headers(BODY)).status == 401


def test_the_signature_is_checked_before_the_body_is_parsed() -> None:
    # Garbage with a wrong signature is a 401 (not a 400): nothing was parsed.
    assert refused(b"\xff{not json", headers(BODY)).status == 401


@pytest.mark.parametrize(
    ("body", "status", "why"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe{}", 400, "not UTF-8"),
        (b"[1, 2]", 400, "not a JSON object"),
        (json.dumps({"action": "completed"}).encode(), 400, "no installation"),
        (json.dumps({"action": "completed", "installation": {"id": "7"}}).encode(), 400, "no installation"),
    ],
    ids=["malformed-json", "non-utf8", "array", "no-installation", "string-installation-id"],
)
def test_bad_bodies_with_a_good_signature_are_refused_with_400(body: bytes, status: int, why: str) -> None:
    error = refused(body, headers(body))
    assert error.status == status
    assert why in error.reason


def test_an_oversized_body_is_refused_before_anything_else() -> None:
    assert refused(BODY, headers(b"other"), max_bytes=len(BODY) - 1).status == 413


@pytest.mark.parametrize("header", ["X-GitHub-Event", "X-GitHub-Delivery"])
def test_missing_event_headers_are_refused(header: str) -> None:
    hdrs = headers()
    del hdrs[header]
    assert refused(BODY, hdrs).status == 400


def test_a_delivery_id_that_could_inject_log_lines_is_refused() -> None:
    hdrs = headers()
    hdrs["X-GitHub-Delivery"] = "abc\ninjected"
    assert refused(BODY, hdrs).status == 400


def test_a_good_delivery_becomes_an_event() -> None:
    event = event_from_http({k.lower(): v for k, v in headers().items()}, BODY, SECRET)
    assert (event.name, event.action, event.installation_id, event.repository) == (
        "workflow_run",
        "completed",
        7,
        "o/r",
    )
    assert event.delivery_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def test_ping_needs_no_installation() -> None:
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    hdrs = headers(body)
    hdrs["X-GitHub-Event"] = "ping"
    event = event_from_http(hdrs, body, SECRET)
    assert event.name == "ping" and event.installation_id is None


def test_without_a_secret_nothing_is_accepted() -> None:
    with pytest.raises(IntakeError) as caught:
        verify_signature(b"", BODY, sign(b"", BODY))
    assert caught.value.status == 500


def test_a_stored_delivery_round_trips() -> None:
    event = event_from_stored("d-1", "workflow_run", BODY.decode())
    assert event.action == "completed" and event.installation_id == 7
