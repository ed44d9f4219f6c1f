"""Shared set-up for the GitHub App tests: keys, settings, signed deliveries and derived webhook payloads."""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from bot.events import sign
from bot.settings import Settings
from tests.fakes.github_server import FakeGitHubServer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WEBHOOKS = FIXTURES / "webhooks"
LOGS = FIXTURES / "logs"
SECRET = "It's a Secret to Everybody"
APP_ID = "4242"
REPO = "octo-org/octo-repo"
INSTALLATION = 7
WORKFLOW_ID = 2823525


class FakeClock:
    """A clock the test moves by hand: `clock.now += 3600`."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@cache
def rsa_keys() -> tuple[str, str]:
    """A fresh App key pair (private PEM, public PEM), made once per test process."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def make_settings(tmp_path: Path, api_url: str = "http://127.0.0.1:9", **overrides: Any) -> Settings:
    """Settings as an operator would set them, with test-friendly write spacing and retries."""
    values: dict[str, Any] = {
        "app_id": APP_ID,
        "private_key": rsa_keys()[0],
        "webhook_secret": SECRET,
        "github_api_url": api_url,
        "database_url": f"sqlite:///{tmp_path / 'state.db'}",
        "write_interval": 0.0,
        "retry_delay": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


def fake_github() -> FakeGitHubServer:
    server = FakeGitHubServer(app_id=APP_ID, public_key_pem=rsa_keys()[1])
    server.start()
    server.add_installation(INSTALLATION)
    server.add_repo(REPO, INSTALLATION, default_branch="master")
    return server


def fixture_payload(name: str = "completed.payload.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WEBHOOKS / "workflow_run" / name).read_text())
    return data


def failure_payload(
    run: dict[str, Any], *, installation: int | None = INSTALLATION, base: str = "completed.payload.json"
) -> dict[str, Any]:
    """A workflow_run.completed delivery for a run seeded in the fake, derived from GitHub's example."""
    payload = copy.deepcopy(fixture_payload(base))
    target = payload["workflow_run"]
    for key in (
        "id",
        "name",
        "workflow_id",
        "head_branch",
        "head_sha",
        "event",
        "status",
        "conclusion",
        "run_attempt",
        "html_url",
        "path",
        "display_title",
    ):
        target[key] = run[key]
    target["actor"]["login"] = run["actor"]["login"]
    target["triggering_actor"]["login"] = run["triggering_actor"]["login"]
    head = run["head_repository"]["full_name"]
    if head != payload["repository"]["full_name"]:
        target["head_repository"]["full_name"] = head
        target["head_repository"]["id"] = run["head_repository"]["id"]
    repo_id = payload["repository"]["id"]
    template = copy.deepcopy(fixture_payload("completed.with-pull-requests.payload.json"))
    pull_template = template["workflow_run"]["pull_requests"][0]
    pulls = []
    for pull in run["pull_requests"]:
        item = copy.deepcopy(pull_template)
        item["number"] = pull["number"]
        item["head"].update(ref=run["head_branch"], sha=run["head_sha"])
        item["head"]["repo"]["id"] = repo_id
        item["base"]["repo"]["id"] = repo_id
        pulls.append(item)
    target["pull_requests"] = pulls
    payload["workflow"]["id"] = run["workflow_id"]
    payload["sender"]["login"] = run["triggering_actor"]["login"]
    if installation is not None:
        payload["installation"] = {
            "id": installation,
            "node_id": f"MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u{installation}",
        }
    return payload


def signed(
    body: bytes, event: str = "workflow_run", delivery_id: str | None = None, secret: str = SECRET
) -> dict[str, str]:
    """The headers GitHub sends with a delivery."""
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(secret.encode(), body),
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/test",
    }


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run the app under a real uvicorn server in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 15, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
