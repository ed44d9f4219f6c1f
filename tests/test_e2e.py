"""End to end: signed delivery → 202 → worker → comment, check run or issue, exactly once, over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from bot.adapters.store import DeliveryStatus, Store
from bot.cli import app as cli
from bot.web import create_app
from bot.wiring import build_components
from tests.app_support import (
    APP_ID,
    LOGS,
    REPO,
    SECRET,
    failure_payload,
    fake_github,
    free_port,
    make_settings,
    rsa_keys,
    serve,
    signed,
    wait_for,
)
from tests.fakes.github_server import FakeGitHubServer
from tests.test_notify import Receiver

pytest_plugins = ["tests.servers"]

GRADLE_LOG = (LOGS / "gha-gradle-test-failure.log").read_bytes()
GRADLE_PASS_LOG = (LOGS / "gha-gradle-test-failure.pass.log").read_bytes()
PYTORCH_LOG = (LOGS / "gha-pytorch-keyboardinterrupt.log").read_bytes()


@pytest.fixture
def fake() -> Iterator[FakeGitHubServer]:
    server = fake_github()
    yield server
    server.stop()


def pull_request_run(fake: FakeGitHubServer, log: bytes = GRADLE_LOG) -> dict[str, Any]:
    """A failed pull_request run on `feature`, with a green run of the same job before it."""
    green = fake.add_run(REPO, head_branch="feature", conclusion="success", event="pull_request")
    fake.add_job(
        REPO,
        green["id"],
        conclusion="success",
        log=GRADLE_PASS_LOG,
        steps=(("Set up job", "success"), ("Run tests", "success")),
    )
    # On GitHub a pull request is also an issue; the fake keeps them apart, so seed both.
    issue = fake.add_issue(REPO, "Change feature")
    fake.add_pull(REPO, "feature", number=issue["number"])
    commit = fake.add_commit(REPO, "Parse logs from a file", files=["cidiff/src/LogParser.java"])
    run = fake.add_run(
        REPO,
        event="pull_request",
        head_branch="feature",
        head_sha=commit["sha"],
        pull_requests=[issue["number"]],
    )
    fake.add_job(REPO, run["id"], log=log)
    return run


def default_branch_run(fake: FakeGitHubServer, log: bytes = PYTORCH_LOG) -> dict[str, Any]:
    commit = fake.add_commit(REPO, "Bump torch", files=["requirements.txt"])
    run = fake.add_run(REPO, event="push", head_branch="master", head_sha=commit["sha"])
    fake.add_job(REPO, run["id"], name="test", log=log)
    return run


def deliver(http: httpx.Client, payload: dict[str, Any], delivery_id: str) -> httpx.Response:
    body = json.dumps(payload).encode()
    return http.post("/webhook", content=body, headers=signed(body, delivery_id=delivery_id))


def writes(fake: FakeGitHubServer) -> int:
    return len(fake.requests_to(r"^/repos/", "POST")) + len(fake.requests_to(r"^/repos/", "PATCH"))


def wait_done(store: Store, delivery_id: str, timeout: float = 20) -> DeliveryStatus:
    def finished() -> bool:
        record = store.get_delivery(delivery_id)
        return record is not None and record.status in (DeliveryStatus.DONE, DeliveryStatus.IGNORED)

    wait_for(finished, timeout, f"delivery {delivery_id} to finish")
    record = store.get_delivery(delivery_id)
    assert record is not None
    return record.status


def test_a_pull_request_failure_becomes_one_comment_and_one_check_run(
    fake: FakeGitHubServer, postgres_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, fake.api_url, database_url=postgres_url, queue_url=f"sqlite:///{tmp_path / 'queue.db'}"
    )
    components = build_components(settings, registry=CollectorRegistry())
    run = pull_request_run(fake)
    payload = failure_payload(run)
    try:
        with (
            serve(create_app(settings, components=components, worker=True)) as url,
            httpx.Client(base_url=url, timeout=10) as http,
        ):
            reply = deliver(http, payload, "e2e-1")
            assert reply.status_code == 202
            assert wait_done(components.store, "e2e-1") is DeliveryStatus.DONE

            [comment] = fake.repo(REPO).comments.values()
            assert comment["issue_url"].endswith(f"/issues/{run['pull_requests'][0]['number']}")
            body = comment["body"]
            assert "## ❌ Mendbot diagnosis" in body or "Mendbot diagnosis" in body
            assert "testClassicParsing" in body and "`test_failure`" in body
            assert f"<!-- mendbot:sticky=workflow-{run['workflow_id']} -->" in body
            [check] = fake.repo(REPO).check_runs.values()
            assert check["head_sha"] == run["head_sha"] and check["name"] == "Mendbot diagnosis"
            assert "testClassicParsing" in check["output"]["text"]
            written = writes(fake)

            # A replay of the same delivery, and the same failure under a new delivery id: nothing more.
            again = deliver(http, payload, "e2e-1")
            assert again.status_code == 200 and again.json()["status"] == "duplicate"
            assert deliver(http, payload, "e2e-2").status_code == 202
            assert wait_done(components.store, "e2e-2") is DeliveryStatus.IGNORED
            assert writes(fake) == written
            assert len(fake.repo(REPO).comments) == 1 and len(fake.repo(REPO).check_runs) == 1

            # SECURITY item 20: no secret, key or token in anything written to GitHub.
            sent = b"".join(r.body for r in fake.requests if r.method in ("POST", "PATCH"))
            for secret in (SECRET, rsa_keys()[0].splitlines()[1], *fake.issued_tokens):
                assert secret.encode() not in sent

            metrics = http.get("/metrics").text
            assert 'mendbot_job_duration_seconds_count{event="workflow_run",outcome="done"} 1.0' in metrics
            assert 'mendbot_github_api_calls_total{operation="add comment",outcome="ok"} 1.0' in metrics
    finally:
        components.close()


def test_default_branch_failures_become_one_issue_via_mendbot_replay(
    fake: FakeGitHubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.set_file(REPO, ".github/mendbot.yml", "severity_threshold: medium\nlabels:\n  base: [mendbot, ci]\n")
    settings = make_settings(tmp_path, fake.api_url)
    components = build_components(settings, registry=CollectorRegistry())
    first, second = default_branch_run(fake), default_branch_run(fake)
    files = []
    for number, run in enumerate((first, second)):
        path = tmp_path / f"run-{number}.json"
        path.write_text(json.dumps(failure_payload(run)))
        files.append(path)
    monkeypatch.setenv("MENDBOT_WEBHOOK_SECRET", SECRET)
    runner = CliRunner()
    try:
        with serve(create_app(settings, components=components, worker=True)) as url:
            for path in (*files, files[0]):
                result = runner.invoke(
                    cli, ["replay", str(path), "--event", "workflow_run", "--url", f"{url}/webhook"]
                )
                assert result.exit_code == 0, result.output
                assert result.output.startswith("202 Accepted")
            wait_for(
                lambda: components.queue.depth() == 0 and not components.store.unfinished_deliveries(),
                20,
                "the deliveries",
            )
        [issue] = fake.repo(REPO).issues.values()
        assert issue["title"].startswith("🚨 [AUTO] timeout: ")
        labels = sorted(label["name"] for label in issue["labels"])
        assert labels == ["ci", "mendbot", "severity:medium", "type:timeout"]
        assert "seen 2 times" in issue["body"]
        assert not fake.repo(REPO).comments
    finally:
        components.close()


def test_a_burst_of_200_failures_makes_one_issue_and_bounded_writes(
    fake: FakeGitHubServer, tmp_path: Path
) -> None:
    fake.set_file(REPO, ".github/mendbot.yml", "severity_threshold: medium\n")
    settings = make_settings(tmp_path, fake.api_url)
    components = build_components(settings, registry=CollectorRegistry())
    runs = [default_branch_run(fake) for _ in range(200)]
    try:
        with TestClient(create_app(settings, components=components, worker=True, worker_threads=4)) as client:
            for number, run in enumerate(runs):
                body = json.dumps(failure_payload(run)).encode()
                reply = client.post(
                    "/webhook", content=body, headers=signed(body, delivery_id=f"burst-{number}")
                )
                assert reply.status_code == 202
            wait_for(lambda: not components.store.unfinished_deliveries(), 60, "the burst")
        assert len(fake.repo(REPO).issues) == 1
        # The default rate limits: one issue, at most 6 counter updates an hour on it, and 60 diagnoses an
        # hour, the rest skipped before any log is read. A delivery retried after a transient error on a busy
        # machine reads its log again but keeps its place under the cap, so count jobs, not downloads.
        assert writes(fake) <= 1 + 6
        assert len({request.path for request in fake.requests_to(r"/actions/jobs/\d+/logs$")}) == 60
        [incident_fingerprint] = {
            effect
            for effect in [components.store.get_incident(REPO, fp) for fp in _fingerprints(fake)]
            if effect
        }
        assert incident_fingerprint.count == 60
    finally:
        components.close()


def _fingerprints(fake: FakeGitHubServer) -> set[str]:
    import re

    return {
        match.group(1)
        for issue in fake.repo(REPO).issues.values()
        for match in [re.search(r"fingerprint=([0-9a-f]{16})", issue["body"] or "")]
        if match
    }


class Stall:
    """Makes the fake GitHub server hang on the request that follows a PR comment, once.

    The server asks its clock for the time of every request while holding its lock, after recording
    the previous request; blocking there stalls the worker mid-job, as a slow GitHub would.
    """

    def __init__(self) -> None:
        self.fake: FakeGitHubServer | None = None
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._armed = True

    def __call__(self) -> float:
        last = self.fake.requests[-1] if self.fake is not None and self.fake.requests else None
        if self._armed and last is not None and last.method == "POST" and last.path.endswith("/comments"):
            self._armed = False
            self.stalled.set()
            self.release.wait(30)
        return time.time()


def start_serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve", "--port", str(port), "--threads", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            assert process.poll() is None, "mendbot serve exited"
            return False

    wait_for(healthy, 30, "mendbot serve to start")
    return process


def test_mendbot_serve_killed_mid_job_leaves_exactly_one_comment_after_restart(tmp_path: Path) -> None:
    stall = Stall()
    fake = FakeGitHubServer(app_id=APP_ID, public_key_pem=rsa_keys()[1], clock=stall)
    stall.fake = fake
    fake.start()
    fake.add_installation(7)
    fake.add_repo(REPO, 7, default_branch="master")
    run = pull_request_run(fake)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MENDBOT_")}
    env.update(
        MENDBOT_APP_ID=APP_ID,
        MENDBOT_PRIVATE_KEY=rsa_keys()[0],
        MENDBOT_WEBHOOK_SECRET=SECRET,
        MENDBOT_GITHUB_API_URL=fake.api_url,
        MENDBOT_DATABASE_URL=f"sqlite:///{tmp_path / 'state.db'}",
        MENDBOT_WRITE_INTERVAL="0",
        MENDBOT_RETRY_DELAY="0.2",
    )
    port = free_port()
    process = start_serve(env, port)
    try:
        body = json.dumps(failure_payload(run)).encode()
        reply = httpx.post(
            f"http://127.0.0.1:{port}/webhook",
            content=body,
            headers=signed(body, delivery_id="kill-1"),
            timeout=10,
        )
        assert reply.status_code == 202
        assert stall.stalled.wait(30), "the worker never reached the check run"
        # The comment is posted and the worker is mid-job: kill it without warning.
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        stall.release.set()
        store = Store(env["MENDBOT_DATABASE_URL"])
        try:
            record = store.get_delivery("kill-1")
            assert record is not None and record.status is DeliveryStatus.RUNNING
            assert len(fake.repo(REPO).comments) == 1 and not fake.repo(REPO).check_runs

            process = start_serve(env, port)
            assert wait_done(store, "kill-1", 30) is DeliveryStatus.DONE
        finally:
            store.close()
        assert len(fake.repo(REPO).comments) == 1
        assert len(fake.repo(REPO).check_runs) == 1
        assert len(fake.requests_to(r"/issues/\d+/comments$", "POST")) == 1
    finally:
        stall.release.set()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        fake.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def deliver_in_turn(client: TestClient, store: Store, runs: list[dict[str, Any]], prefix: str) -> None:
    """Each run's delivery, one after the other, so the later ones are repeats of the first."""
    for number, run in enumerate(runs):
        body = json.dumps(failure_payload(run)).encode()
        reply = client.post("/webhook", content=body, headers=signed(body, delivery_id=f"{prefix}-{number}"))
        assert reply.status_code == 202
        assert wait_done(store, f"{prefix}-{number}") is DeliveryStatus.DONE


def test_a_new_incident_issue_alerts_the_notify_target_once_and_its_repeat_does_not(
    fake: FakeGitHubServer, tmp_path: Path, receiver: Receiver
) -> None:
    fake.set_file(REPO, ".github/mendbot.yml", f"severity_threshold: medium\nnotify:\n  - {receiver.url()}\n")
    settings = make_settings(tmp_path, fake.api_url, notify_schemes="json", notify_allow_private=True)
    components = build_components(settings, registry=CollectorRegistry())
    try:
        with TestClient(create_app(settings, components=components, worker=True)) as client:
            deliver_in_turn(client, components.store, [default_branch_run(fake), default_branch_run(fake)], "n")
        [issue] = fake.repo(REPO).issues.values()
        assert "seen 2 times" in issue["body"]
        [(path, payload)] = receiver.received
        assert path == "/hook"
        assert payload["title"] == f"Mendbot: new CI incident in {REPO}"
        line, url = payload["message"].split("\n")
        assert url == issue["html_url"]
        assert line.startswith("[medium] ") and REPO in line and "timeout" in line
    finally:
        components.close()


def test_a_failure_back_after_its_issue_was_closed_reopens_it_and_alerts_once_more(
    fake: FakeGitHubServer, tmp_path: Path, receiver: Receiver
) -> None:
    fake.set_file(REPO, ".github/mendbot.yml", f"severity_threshold: medium\nnotify:\n  - {receiver.url()}\n")
    settings = make_settings(tmp_path, fake.api_url, notify_schemes="json", notify_allow_private=True)
    components = build_components(settings, registry=CollectorRegistry())
    try:
        with TestClient(create_app(settings, components=components, worker=True)) as client:
            deliver_in_turn(client, components.store, [default_branch_run(fake)], "first")
            [issue] = fake.repo(REPO).issues.values()
            issue["state"] = "closed"
            # Back within the dedup window, then once more while the issue is open again.
            deliver_in_turn(client, components.store, [default_branch_run(fake), default_branch_run(fake)], "back")
        assert [i["number"] for i in fake.repo(REPO).issues.values()] == [issue["number"]]
        assert issue["state"] == "open" and "seen 3 times" in issue["body"]
        regressions = [c for c in fake.repo(REPO).comments.values() if "regression" in c["body"]]
        assert len(regressions) == 1 and regressions[0]["issue_url"] == issue["url"]
        assert [payload["title"] for _, payload in receiver.received] == [
            f"Mendbot: new CI incident in {REPO}",
            f"Mendbot: CI incident reopened in {REPO} (failed again)",
        ]
    finally:
        components.close()


def test_a_notify_target_the_operator_did_not_allow_gets_nothing_and_is_reported_once(
    fake: FakeGitHubServer, tmp_path: Path, receiver: Receiver
) -> None:
    target = receiver.url("/t0ken-path")
    fake.set_file(REPO, ".github/mendbot.yml", f"severity_threshold: medium\nnotify: ['{target}']\n")
    # The default schemes, and private addresses refused: json:// to 127.0.0.1 breaks both rules.
    settings = make_settings(tmp_path, fake.api_url)
    components = build_components(settings, registry=CollectorRegistry())
    try:
        with TestClient(create_app(settings, components=components, worker=True)) as client:
            deliver_in_turn(client, components.store, [default_branch_run(fake), default_branch_run(fake)], "r")
        assert receiver.received == []
        reports = [i for i in fake.repo(REPO).issues.values() if "notify targets" in i["title"]]
        [report] = reports
        assert "json://127.0.0.1" in report["body"] and "not allowed" in report["body"]
        assert "t0ken-path" not in report["body"]
        assert len(fake.repo(REPO).issues) == 2
    finally:
        components.close()


def test_a_dry_run_prints_the_alert_instead_of_sending_it(
    fake: FakeGitHubServer, tmp_path: Path, receiver: Receiver
) -> None:
    fake.set_file(REPO, ".github/mendbot.yml", f"severity_threshold: medium\nnotify: ['{receiver.url()}']\n")
    settings = make_settings(
        tmp_path, fake.api_url, notify_schemes="json", notify_allow_private=True, dry_run=True
    )
    printed: list[str] = []
    components = build_components(settings, registry=CollectorRegistry(), print_plan=printed.append)
    try:
        with TestClient(create_app(settings, components=components, worker=True)) as client:
            deliver_in_turn(client, components.store, [default_branch_run(fake)], "dry")
        assert any("would alert 1 notify target(s)" in line for line in printed)
        assert receiver.received == [] and not fake.repo(REPO).issues
    finally:
        components.close()
