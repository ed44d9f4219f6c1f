"""A local HTTP server that speaks the Anthropic Messages API, scripted per call, for tests."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOOL_NAME = "report_diagnosis"
TEST_API_KEY = "sk-ant-api03-fake-test-key-0123456789abcdef"
# The first numbered line of a log excerpt block, as bot.core.prompt renders it: "   41 | text".
EXCERPT_BLOCK_RE = re.compile(r'<untrusted kind="log_excerpt"[^>]*>\n(.*?)</untrusted>', re.S)
NUMBERED_LINE_RE = re.compile(r"^\s*(\d+) \| (.*)$", re.M)


@dataclass(frozen=True)
class RecordedRequest:
    """One request exactly as it reached the server."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def user_text(self) -> str:
        """The text of the first user message, however its content was shaped."""
        content = self.json()["messages"][0]["content"]
        if isinstance(content, str):
            return content
        return "".join(block.get("text", "") for block in content)


@dataclass
class Scenario:
    """What the server does for one call: an error status or a tool input, after an optional delay."""

    delay: float = 0.0
    status: int = 200
    error_type: str = ""
    message: str = ""
    retry_after: float | None = None
    # Builds the tool input from the parsed request body; None answers with text only.
    tool_input: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    stop_reason: str = "tool_use"


def excerpt_first_line(body: dict[str, Any]) -> tuple[int, str]:
    """The number and text of the first excerpt line in the user message, or (1, "") without one."""
    content = body["messages"][0]["content"]
    text = content if isinstance(content, str) else "".join(b.get("text", "") for b in content)
    block = EXCERPT_BLOCK_RE.search(text)
    line = NUMBERED_LINE_RE.search(block.group(1)) if block else None
    return (int(line.group(1)), line.group(2)) if line else (1, "")


def diagnosis_input(body: dict[str, Any]) -> dict[str, Any]:
    """A plausible, schema-valid diagnosis that quotes the first excerpt line as its evidence."""
    number, text = excerpt_first_line(body)
    return {
        "severity": "high",
        "category": "test_failure",
        "root_cause": "A unit test failed.",
        "impact": "The pull request cannot merge.",
        "recommendations": ["Run the failing test locally and fix the assertion."],
        "auto_fixable": False,
        "fix_suggestion": None,
        "evidence": [{"line": number, "text": text, "job": ""}],
        "confidence": 0.8,
    }


def valid() -> Scenario:
    return Scenario(tool_input=diagnosis_input)


def answer(tool_input: dict[str, Any]) -> Scenario:
    """Answer with exactly this tool input, valid or not."""
    return Scenario(tool_input=lambda _body: tool_input)


def malformed() -> Scenario:
    """A tool input with wrong types and missing required fields."""
    return answer({"severity": "apocalyptic", "root_cause": 42, "evidence": "see log"})


def invented_evidence() -> Scenario:
    """A valid diagnosis whose evidence quotes a line the log does not have."""

    def build(body: dict[str, Any]) -> dict[str, Any]:
        result = diagnosis_input(body)
        result["evidence"] = [{"line": 987654, "text": "FATAL: the flux capacitor overheated", "job": ""}]
        return result

    return Scenario(tool_input=build)


def text_only() -> Scenario:
    """The model ignored the forced tool (or was cut off) and wrote prose."""
    return Scenario(tool_input=None, stop_reason="max_tokens")


def error(status: int, error_type: str, message: str, retry_after: float | None = None) -> Scenario:
    return Scenario(status=status, error_type=error_type, message=message, retry_after=retry_after)


def rate_limited(retry_after: float | None = 0.1) -> Scenario:
    message = "Number of request tokens has exceeded your per-minute rate limit."
    return error(429, "rate_limit_error", message, retry_after)


def overloaded(retry_after: float | None = None) -> Scenario:
    return error(529, "overloaded_error", "Overloaded", retry_after)


def api_error(retry_after: float | None = None) -> Scenario:
    return error(500, "api_error", "Internal server error", retry_after)


def slow(seconds: float, then: Scenario | None = None) -> Scenario:
    scenario = then or valid()
    scenario.delay = seconds
    return scenario


@dataclass
class _State:
    api_key: str
    scenarios: deque[Scenario] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    cached_prefixes: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class FakeAnthropic:
    """Serve /v1/messages on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(self, api_key: str = TEST_API_KEY) -> None:
        self._state = _State(api_key=api_key)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self._state))
        # A short poll interval makes stop() quick; the default half second adds up over a test run.
        serve = {"poll_interval": 0.02}
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=serve, daemon=True)

    @property
    def api_key(self) -> str:
        return self._state.api_key

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    def script(self, *scenarios: Scenario) -> None:
        """Queue what the next calls get; once the queue is empty every call gets a valid diagnosis."""
        with self._state.lock:
            self._state.scenarios.extend(scenarios)

    def start(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._state.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _handler_for(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            path = self.path.split("?", 1)[0]
            headers = {name.lower(): value for name, value in self.headers.items()}
            with state.lock:
                state.requests.append(RecordedRequest("POST", path, headers, body))
            # A client that gave up (a timeout test) closes the socket; there is nobody left to answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._answer(path, headers, body)

        def _answer(self, path: str, headers: dict[str, str], body: bytes) -> None:
            if path not in ("/v1/messages", "/v1/messages/count_tokens"):
                return self._error(404, "not_found_error", f"Not found: {path}")
            # The documented header is x-api-key; the installed SDK sends the key as a bearer token.
            sent_key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
            if sent_key != state.api_key:
                return self._error(401, "authentication_error", "invalid x-api-key")
            if not re.fullmatch(r"\d{4}-\d\d-\d\d", headers.get("anthropic-version", "")):
                return self._error(400, "invalid_request_error", "anthropic-version: header is required")
            if not headers.get("content-type", "").startswith("application/json"):
                return self._error(400, "invalid_request_error", "content-type must be application/json")
            try:
                request = json.loads(body)
            except ValueError:
                return self._error(400, "invalid_request_error", "The request body is not valid JSON.")
            problem = _request_problem(request, counting=path.endswith("count_tokens"))
            if problem:
                return self._error(400, "invalid_request_error", problem)
            if path.endswith("count_tokens"):
                return self._json(200, {"input_tokens": _tokens(body)})
            with state.lock:
                scenario = state.scenarios.popleft() if state.scenarios else valid()
            if scenario.delay and state.stopping.wait(scenario.delay):
                return
            if scenario.status != 200:
                s = scenario
                return self._error(s.status, s.error_type, s.message, s.retry_after)
            self._json(200, self._message(request, body, scenario))

        def _message(self, request: dict[str, Any], body: bytes, scenario: Scenario) -> dict[str, Any]:
            content: list[dict[str, Any]]
            if scenario.tool_input is None:
                content = [{"type": "text", "text": "The build failed because", "citations": None}]
            else:
                tool_id = "toolu_" + uuid.uuid4().hex[:24]
                tool_input = scenario.tool_input(request)
                content = [{"type": "tool_use", "id": tool_id, "name": TOOL_NAME, "input": tool_input}]
            return {
                "id": "msg_" + uuid.uuid4().hex[:24],
                "type": "message",
                "role": "assistant",
                "model": request["model"],
                "content": content,
                "stop_reason": scenario.stop_reason,
                "stop_sequence": None,
                "usage": self._usage(request, body),
            }

        def _usage(self, request: dict[str, Any], body: bytes) -> dict[str, int]:
            # Like the real API: the first call with a marked system prompt writes the cache, later ones hit.
            cached = json.dumps([request.get("tools"), request.get("system")], sort_keys=True)
            system = request.get("system")
            marked = isinstance(system, list) and any(
                isinstance(block, dict) and block.get("cache_control") for block in system
            )
            prefix_tokens = _tokens(cached.encode()) if marked else 0
            with state.lock:
                hit = cached in state.cached_prefixes
                if marked:
                    state.cached_prefixes.add(cached)
            return {
                "input_tokens": max(_tokens(body) - prefix_tokens, 1),
                "output_tokens": 180,
                "cache_creation_input_tokens": 0 if hit else prefix_tokens,
                "cache_read_input_tokens": prefix_tokens if hit else 0,
            }

        def _error(self, status: int, kind: str, message: str, retry_after: float | None = None) -> None:
            extra = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
            self._json(status, {"type": "error", "error": {"type": kind, "message": message}}, extra)

        def _json(self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", "req_" + uuid.uuid4().hex[:24])
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _request_problem(request: Any, counting: bool) -> str:
    """The first reason the real API would refuse this body, or ""."""
    if not isinstance(request, dict):
        return "The request body must be a JSON object."
    required = ("model", "messages") if counting else ("model", "max_tokens", "messages")
    for name in required:
        if name not in request:
            return f"{name}: Field required"
    if not request["messages"]:
        return "messages: at least one message is required"
    choice = request.get("tool_choice")
    names = {tool.get("name") for tool in request.get("tools") or []}
    if isinstance(choice, dict) and choice.get("type") == "tool" and choice.get("name") not in names:
        return f"tool_choice.name: no tool named {choice.get('name')!r} was given"
    return ""


def _tokens(data: bytes) -> int:
    return max(len(data) // 4, 1)
