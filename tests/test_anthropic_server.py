"""The fake Messages API refuses what the real one refuses and answers in the real shapes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes import anthropic_server as fake
from tests.fakes.anthropic_server import FakeAnthropic

BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": '<untrusted kind="log_excerpt">\n7 | boom\n</untrusted>'}],
    "tools": [{"name": "report_diagnosis", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "tool", "name": "report_diagnosis"},
}


@pytest.fixture
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as running:
        yield running


def post(
    server: FakeAnthropic, body: object = BODY, path: str = "/v1/messages", **headers: str
) -> httpx.Response:
    sent = {"x-api-key": server.api_key, "anthropic-version": "2023-06-01"}
    sent["content-type"] = "application/json"
    sent.update({name.replace("_", "-"): value for name, value in headers.items()})
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers=sent, timeout=5)


def test_a_valid_call_gets_a_tool_use_message_quoting_the_excerpt(server: FakeAnthropic) -> None:
    response = post(server)
    message = response.json()

    assert response.status_code == 200
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["stop_reason"] == "tool_use" and message["model"] == BODY["model"]
    (block,) = message["content"]
    assert block["type"] == "tool_use" and block["name"] == "report_diagnosis"
    assert block["input"]["evidence"] == [{"line": 7, "text": "boom", "job": ""}]
    assert set(message["usage"]) == {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    }
    (recorded,) = server.requests
    assert recorded.body == json.dumps(BODY).encode()
    assert recorded.headers["x-api-key"] == server.api_key


def test_the_key_may_come_as_a_bearer_token(server: FakeAnthropic) -> None:
    response = post(server, x_api_key="", authorization=f"Bearer {server.api_key}")
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({"x_api_key": "sk-ant-wrong"}, 401, "authentication_error"),
        ({"x_api_key": ""}, 401, "authentication_error"),
        ({"anthropic_version": ""}, 400, "invalid_request_error"),
        ({"content_type": "text/plain"}, 400, "invalid_request_error"),
    ],
)
def test_bad_headers_are_refused_in_the_error_shape(
    server: FakeAnthropic, headers: dict[str, str], status: int, kind: str
) -> None:
    server.script(fake.valid())
    response = post(server, **headers)
    assert response.status_code == status
    payload = response.json()
    assert payload["type"] == "error"
    assert set(payload["error"]) == {"type", "message"} and payload["error"]["type"] == kind
    assert response.headers["request-id"].startswith("req_")


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        {key: value for key, value in BODY.items() if key != "max_tokens"},
        {**BODY, "tool_choice": {"type": "tool", "name": "run_shell"}},
        {**BODY, "messages": []},
    ],
)
def test_bodies_the_api_would_refuse_get_400(server: FakeAnthropic, body: object) -> None:
    response = post(server, body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_scripted_errors_carry_retry_after_and_then_the_queue_moves_on(server: FakeAnthropic) -> None:
    server.script(fake.rate_limited(retry_after=0.25), fake.overloaded(), fake.api_error())
    limited, overloaded, failed, fine = (post(server) for _ in range(4))

    assert limited.status_code == 429 and limited.headers["retry-after"] == "0.25"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert overloaded.status_code == 529 and overloaded.json()["error"]["type"] == "overloaded_error"
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "api_error"
    assert fine.status_code == 200
    assert len(server.message_requests) == 4


def test_an_unknown_path_is_404_and_count_tokens_counts(server: FakeAnthropic) -> None:
    assert post(server, path="/v1/complete").status_code == 404
    counted = post(server, {"model": "m", "messages": BODY["messages"]}, path="/v1/messages/count_tokens")
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
