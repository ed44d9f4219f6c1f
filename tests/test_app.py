"""The webhook intake, health and metrics endpoints, on real SQLite, PostgreSQL and huey behind FastAPI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from bot.adapters.store import DeliveryStatus
from bot.events import Event
from bot.routing import Outcome, Router
from bot.services import Services
from bot.web import create_app
from bot.wiring import Components, build_components
from tests.app_support import (
    APP_ID,
    INSTALLATION,
    REPO,
    SECRET,
    free_port,
    make_settings,
    rsa_keys,
    serve,
    signed,
    wait_for,
)

if TYPE_CHECKING:
    from tests.servers import PostgresServer

pytest_plugins = ["tests.servers"]


def payload(run_id: int = 1, action: str = "completed", conclusion: str = "failure") -> bytes:
    data = {
        "action": action,
        "installation": {"id": INSTALLATION, "node_id": "x"},
        "repository": {"full_name": REPO},
        "workflow_run": {"id": run_id, "conclusion": conclusion},
    }
    return json.dumps(data).encode()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Components]:
    components = build_components(
        make_settings(tmp_path, max_body_bytes=64 * 1024), registry=CollectorRegistry()
    )
    yield components
    components.close()


@pytest.fixture
def client(parts: Components) -> Iterator[TestClient]:
    with TestClient(create_app(parts.settings, components=parts)) as test_client:
        yield test_client


def post(client: TestClient, body: bytes, headers: dict[str, str]) -> Any:
    return client.post("/webhook", content=body, headers=headers)


def test_a_signed_delivery_is_stored_queued_and_answered_202(client: TestClient, parts: Components) -> None:
    body = payload()
    reply = post(client, body, signed(body, delivery_id="d-1"))
    assert reply.status_code == 202
    assert reply.json() == {"status": "queued", "delivery": "d-1"}
    record = parts.store.get_delivery("d-1")
    assert record is not None and record.status is DeliveryStatus.PENDING
    assert record.payload == body.decode() and record.installation_id == INSTALLATION
    assert parts.queue.waiting() == {"d-1"}


def test_a_green_run_is_stored_as_needing_no_work_and_never_queued(client: TestClient, parts: Components) -> None:
    body = payload(conclusion="success")
    reply = post(client, body, signed(body, delivery_id="d-green"))
    assert reply.status_code == 202 and reply.json() == {"status": "ignored", "delivery": "d-green"}
    record = parts.store.get_delivery("d-green")
    assert record is not None and record.status is DeliveryStatus.IGNORED and record.payload == body.decode()
    assert parts.queue.depth() == 0
    again = post(client, body, signed(body, delivery_id="d-green"))
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert parts.queue.depth() == 0


def test_a_replayed_delivery_id_is_not_queued_again(client: TestClient, parts: Components) -> None:
    body = payload()
    assert post(client, body, signed(body, delivery_id="d-1")).status_code == 202
    again = post(client, body, signed(body, delivery_id="d-1"))
    assert again.status_code == 202 and again.json()["status"] == "already_queued"
    assert parts.queue.depth() == 1
    parts.store.mark_delivery("d-1", DeliveryStatus.DONE, now=parts.services.clock())
    done = post(client, body, signed(body, delivery_id="d-1"))
    assert done.status_code == 200 and done.json()["status"] == "duplicate"
    assert parts.queue.depth() == 1


def test_a_redelivery_of_a_failed_delivery_is_queued_once_more(client: TestClient, parts: Components) -> None:
    body = payload()
    post(client, body, signed(body, delivery_id="d-1"))
    parts.queue.huey.flush()
    parts.store.mark_delivery("d-1", DeliveryStatus.FAILED, now=parts.services.clock(), error="GitHub 502")
    reply = post(client, body, signed(body, delivery_id="d-1"))
    assert reply.status_code == 202 and reply.json()["status"] == "requeued"
    assert parts.queue.waiting() == {"d-1"}


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (payload(), signed(payload(), secret="wrong"), 401),
        (payload(), {k: v for k, v in signed(payload()).items() if k != "X-Hub-Signature-256"}, 401),
        (b"{oops", signed(b"{oops"), 400),
        (b"\xc3\x28{}", signed(b"\xc3\x28{}"), 400),
        (b'{"action": "completed"}', signed(b'{"action": "completed"}'), 400),
        (b"x" * (64 * 1024 + 1), signed(b"x" * (64 * 1024 + 1)), 413),
    ],
    ids=["wrong-signature", "no-signature", "malformed-json", "non-utf8", "no-installation", "too-big"],
)
def test_refused_deliveries_get_4xx_a_log_line_and_are_not_stored(
    client: TestClient,
    parts: Components,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    headers = {**headers, "X-GitHub-Delivery": "refused-1"}
    with caplog.at_level(logging.WARNING, logger="bot.web"):
        reply = post(client, body, headers)
    assert reply.status_code == status
    assert parts.store.get_delivery("refused-1") is None
    assert parts.queue.depth() == 0
    assert any("refused webhook delivery 'refused-1'" in record.getMessage() for record in caplog.records)
    assert SECRET not in caplog.text
    # The server is still there for the next delivery.
    good = payload()
    assert post(client, good, signed(good)).status_code == 202


def test_unknown_events_and_actions_are_acknowledged_and_ignored(
    client: TestClient, parts: Components
) -> None:
    issue = json.dumps({"action": "opened", "installation": {"id": 7}}).encode()
    assert post(client, issue, signed(issue, event="issues", delivery_id="i-1")).status_code == 200
    requested = payload(action="requested")
    assert post(client, requested, signed(requested, delivery_id="r-1")).json() == {"status": "ignored"}
    ping = json.dumps({"zen": "Design for failure.", "hook_id": 3}).encode()
    assert post(client, ping, signed(ping, event="ping")).status_code == 200
    assert parts.store.get_delivery("i-1") is None and parts.store.get_delivery("r-1") is None
    assert parts.queue.depth() == 0


def test_healthz_and_metrics(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"database": "ok", "queue": "ok"}
    body = payload()
    post(client, body, signed(body))
    post(client, b"{}", signed(b"{}", secret="wrong"))
    text = client.get("/metrics").text
    assert 'mendbot_webhook_deliveries_total{event="workflow_run",outcome="queued"} 1.0' in text
    assert 'mendbot_webhook_deliveries_total{event="invalid",outcome="rejected_401"} 1.0' in text
    assert "mendbot_queue_depth 1.0" in text
    assert "mendbot_github_rate_limit_remaining" in text and "mendbot_job_duration_seconds" in text


def test_two_apps_in_one_process_keep_separate_metrics(tmp_path: Path, parts: Components) -> None:
    (tmp_path / "b").mkdir()
    other = build_components(make_settings(tmp_path / "b"), registry=CollectorRegistry())
    try:
        parts.metrics.delivery("workflow_run", "queued")
        assert b'outcome="queued"} 1.0' in parts.metrics.render()
        assert b'outcome="queued"} 1.0' not in other.metrics.render()
    finally:
        other.close()


def test_a_database_outage_answers_503_so_github_redelivers(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database_url=own_postgres.create_database())
    components = build_components(settings, registry=CollectorRegistry())
    try:
        with TestClient(create_app(settings, components=components)) as client:
            body = payload()
            assert post(client, body, signed(body, delivery_id="before")).status_code == 202
            own_postgres.stop()
            reply = post(client, body, signed(body, delivery_id="during"))
            assert reply.status_code == 503
            health = client.get("/healthz")
            assert health.status_code == 503 and health.json()["database"] == "unreachable"
            own_postgres.start()
            assert post(client, body, signed(body, delivery_id="during")).status_code == 202
            assert components.store.get_delivery("during") is not None
    finally:
        components.close()


def test_a_queue_outage_shows_in_healthz(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, queue_url="redis://127.0.0.1:1/0")
    components = build_components(settings, registry=CollectorRegistry())
    try:
        with TestClient(create_app(settings, components=components)) as client:
            health = client.get("/healthz")
            assert health.status_code == 503 and health.json() == {"database": "ok", "queue": "unreachable"}
            # The delivery is on disk, so it is still acknowledged; the sweep queues it later.
            body = payload()
            reply = post(client, body, signed(body, delivery_id="q-1"))
            assert reply.status_code == 202 and reply.json()["status"] == "stored"
            assert components.store.get_delivery("q-1") is not None
    finally:
        components.close()


def test_a_15_second_handler_does_not_delay_the_reply(tmp_path: Path) -> None:
    """SECURITY item 2: work runs in the worker; the webhook answers at once even while it is busy."""
    components = build_components(make_settings(tmp_path), registry=CollectorRegistry())
    started, release = threading.Event(), threading.Event()
    handled: list[str] = []

    def slow(event: Event, services: Services) -> Outcome:
        started.set()
        release.wait(15)
        handled.append(event.delivery_id)
        return Outcome.DONE

    router: Router[Services] = Router()
    router.add("workflow_run", ("completed",), slow)
    components.router = router
    app = create_app(components.settings, components=components, worker=True, worker_threads=1)
    try:
        with serve(app) as url, httpx.Client(base_url=url, timeout=10) as http:
            first = payload(1)
            assert (
                http.post("/webhook", content=first, headers=signed(first, delivery_id="slow-1")).status_code
                == 202
            )
            wait_for(started.is_set, 10, "the slow handler to start")
            timings = []
            for number in range(2, 5):
                body = payload(number)
                begin = time.monotonic()
                reply = http.post(
                    "/webhook", content=body, headers=signed(body, delivery_id=f"slow-{number}")
                )
                timings.append(time.monotonic() - begin)
                assert reply.status_code == 202
            assert max(timings) < 1.0, timings
            release.set()
            wait_for(lambda: len(handled) == 4, 15, "the queued deliveries")
        assert handled == ["slow-1", "slow-2", "slow-3", "slow-4"]
        record = components.store.get_delivery("slow-4")
        assert record is not None and record.status is DeliveryStatus.DONE
    finally:
        release.set()
        components.close()


# ---- `uvicorn app:app` -------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_entry_point_reads_no_configuration() -> None:
    imported = subprocess.run(
        [sys.executable, "-c", "import app; print(type(app.app).__name__)"],
        cwd=ROOT,
        env={},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "BuiltAtStartup"


def uvicorn_app(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def test_uvicorn_app_app_builds_the_app_from_the_environment_at_startup(tmp_path: Path) -> None:
    env = {
        "MENDBOT_APP_ID": APP_ID,
        "MENDBOT_PRIVATE_KEY": rsa_keys()[0],
        "MENDBOT_WEBHOOK_SECRET": SECRET,
        "MENDBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}",
    }
    port = free_port()
    server = uvicorn_app(env, port)
    try:

        def healthy() -> bool:
            assert server.poll() is None, server.communicate()[1]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, what="uvicorn app:app to answer /healthz")
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_uvicorn_app_app_refuses_to_start_without_configuration() -> None:
    server = uvicorn_app({}, free_port())
    _, errors = server.communicate(timeout=60)
    assert server.returncode != 0
    assert "SettingsError: set MENDBOT_APP_ID" in errors and "startup failed" in errors
