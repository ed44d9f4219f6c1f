"""The apprise adapter: real alerts to a real HTTP receiver on 127.0.0.1, and every refusal of a notify URL."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bot.adapters.notify import AppriseNotifier, target_label
from bot.settings import DEFAULT_NOTIFY_SCHEMES


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST; `status`, `delay` and `location` shape its answer."""

    def __init__(self, status: int = 200, delay: float = 0.0, location: str = "") -> None:
        self.status, self.delay, self.location = status, delay, location
        self.received: list[tuple[str, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append((self.path, json.loads(body or b"{}")))
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook", scheme: str = "json") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def local_notifier(**overrides: Any) -> AppriseNotifier:
    """What an operator sets for tests: json allowed and private addresses reachable."""
    values: dict[str, Any] = {"allow_private": True, "timeout": 5.0}
    values.update(overrides)
    return AppriseNotifier(("json", *DEFAULT_NOTIFY_SCHEMES), **values)


def test_an_alert_arrives_with_its_title_and_body(receiver: Receiver) -> None:
    [result] = local_notifier().send([receiver.url()], "Mendbot: new CI incident", "line\nhttps://x/issues/1")
    assert result.sent and result.target == "json://127.0.0.1" and result.reason == ""
    [(path, payload)] = receiver.received
    assert path == "/hook"
    assert payload["title"] == "Mendbot: new CI incident"
    assert payload["message"] == "line\nhttps://x/issues/1"


def test_a_failing_target_is_reported_and_does_not_stop_the_others(receiver: Receiver) -> None:
    broken = Receiver(status=500)
    try:
        results = local_notifier().send(
            [broken.url("/a"), "json://127.0.0.1:1/closed", receiver.url("/b")], "t", "b"
        )
    finally:
        broken.stop()
    assert [result.sent for result in results] == [False, False, True]
    assert all(result.reason for result in results[:2])
    assert [path for path, _ in receiver.received] == ["/b"]


def test_a_slow_target_times_out_whatever_its_url_asks_for(receiver: Receiver) -> None:
    slow = Receiver(delay=3.0)
    try:
        started = time.monotonic()
        results = local_notifier(timeout=0.5).send(
            [slow.url("/slow?cto=60&rto=60"), receiver.url()], "t", "b"
        )
        elapsed = time.monotonic() - started
    finally:
        slow.stop()
    assert [result.sent for result in results] == [False, True]
    assert elapsed < 2.5


def test_a_redirect_is_not_followed_even_when_the_url_asks(receiver: Receiver) -> None:
    # A public host could otherwise send the server on to an internal address after the check.
    bouncer = Receiver(status=307, location=receiver.url("/internal", scheme="http"))
    try:
        [result] = local_notifier().send([bouncer.url("/hook?redirect=yes")], "t", "b")
    finally:
        bouncer.stop()
    assert len(bouncer.received) == 1
    assert receiver.received == []
    assert not result.sent


def test_a_scheme_the_operator_did_not_allow_is_refused_and_nothing_is_sent(receiver: Receiver) -> None:
    notifier = AppriseNotifier(DEFAULT_NOTIFY_SCHEMES, allow_private=True)
    for scheme in ("json", "xml", "form", "mailto", "http"):
        [check] = notifier.check([receiver.url(scheme=scheme)])
        assert f"the scheme {scheme!r} is not allowed" in check.refusal
    [result] = notifier.send([receiver.url()], "t", "b")
    assert not result.sent and "not allowed" in result.reason
    assert receiver.received == []


def test_the_default_schemes_leave_out_generic_webhooks_and_mail() -> None:
    assert {"json", "jsons", "xml", "xmls", "form", "forms", "mailto", "mailtos"}.isdisjoint(
        DEFAULT_NOTIFY_SCHEMES
    )
    assert {"slack", "discord"} <= set(DEFAULT_NOTIFY_SCHEMES)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "0.0.0.0",
        "[::ffff:127.0.0.1]",
        "[fd00:ec2::254]",
        "[fe80::1]",
    ],
)
def test_a_host_on_a_non_public_address_is_refused(host: str) -> None:
    # Only checked, never sent to: literal addresses resolve without any traffic.
    [check] = local_notifier(allow_private=False).check([f"json://{host}/hook"])
    assert "non-public address" in check.refusal


def test_a_name_that_resolves_to_the_metadata_address_is_refused_and_a_public_one_passes() -> None:
    answers = {"metadata.example": ["169.254.169.254"], "hooks.example": ["93.184.216.34", "2606:2800::1"],
               "split.example": ["93.184.216.34", "10.0.0.5"]}
    notifier = local_notifier(allow_private=False, resolver=lambda host: answers[host])
    checks = notifier.check(
        ["json://metadata.example/x", "json://hooks.example/x", "json://split.example/x",
         "mailtos://user:pw@hooks.example?smtp=metadata.example"]
    )
    assert "metadata.example resolves to 169.254.169.254" in checks[0].refusal
    assert checks[1].refusal == ""
    assert "10.0.0.5" in checks[2].refusal
    assert "the scheme 'mailtos' is not allowed" in checks[3].refusal
    mail = AppriseNotifier(["mailtos"], resolver=lambda host: answers[host]).check(
        ["mailtos://user:pw@hooks.example?smtp=metadata.example"]
    )
    assert "metadata.example resolves to 169.254.169.254" in mail[0].refusal


def test_a_local_receiver_is_refused_unless_private_targets_are_allowed(receiver: Receiver) -> None:
    [result] = local_notifier(allow_private=False).send([receiver.url()], "t", "b")
    assert not result.sent and "127.0.0.1" in result.reason
    assert receiver.received == []
    [result] = local_notifier(allow_private=True).send([receiver.url()], "t", "b")
    assert result.sent and len(receiver.received) == 1


def test_a_host_that_does_not_resolve_is_refused() -> None:
    def nowhere(host: str) -> list[str]:
        raise OSError("no such host")

    [check] = local_notifier(allow_private=False, resolver=nowhere).check(["json://nowhere.example/x"])
    assert "does not resolve" in check.refusal


def test_a_url_that_makes_apprise_load_a_file_is_refused(tmp_path: Path) -> None:
    # ?template= reads a file (or fetches a URL) on the server and posts it: the server's secrets, say.
    template = tmp_path / "template.json"
    template.write_text('{"content": "{{app_body}}"}')
    [check] = local_notifier().check([f"discord://1234/abcdefgh?template={template}"])
    assert "load a file or URL" in check.refusal


@pytest.mark.parametrize("url", ["", "not a url", "json://", "slack://", "nonsense-scheme://x"])
def test_a_url_apprise_cannot_use_is_refused_not_raised(url: str) -> None:
    notifier = AppriseNotifier(("json", "slack", "nonsense-scheme"), allow_private=True)
    [check] = notifier.check([url])
    assert check.refusal


def test_logs_and_results_show_only_scheme_and_host(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret_url = f"json://user:s3cr3tpw@127.0.0.1:{receiver.port}/tok3n-path?token=tok3n-query"
    results = local_notifier().send([secret_url, "json://user:s3cr3tpw@127.0.0.1:1/tok3n-path"], "t", "b")
    assert [result.sent for result in results] == [True, False]
    refused = AppriseNotifier(["json"]).send([secret_url], "t", "b")
    # urllib3 logs request paths of every HTTP client at DEBUG; Mendbot's and apprise's own lines must not.
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("urllib3"))
    shown = logged + repr(results) + repr(refused)
    for secret in ("s3cr3tpw", "tok3n"):
        assert secret not in shown
    assert "json://127.0.0.1" in shown


def test_a_label_hides_tokens_that_sit_where_a_host_would() -> None:
    assert target_label("tgram://123456789:AAH-bot-token/12345") == "tgram://…"
    assert target_label("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnl/#general") == "slack://…"
    assert target_label("json://user:pw@hooks.example:8443/p?x=1") == "json://hooks.example"
    assert target_label("no scheme at all") == "(not a URL)"
