"""The workflow_run handler: which deliveries it acts on, and payloads derived from GitHub's own examples."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from referencing import Registry, Resource

from bot.adapters.github import GitHubApp
from bot.adapters.store import Store, migrate
from bot.events import Event
from bot.handlers.workflow_run import on_completed
from bot.plan import RunInfo
from bot.routing import Outcome
from bot.services import Options, Services
from tests.app_support import (
    APP_ID,
    INSTALLATION,
    LOGS,
    REPO,
    failure_payload,
    fake_github,
    fixture_payload,
    rsa_keys,
)
from tests.fakes.github_server import FakeGitHubServer


@pytest.fixture
def fake() -> Iterator[FakeGitHubServer]:
    server = fake_github()
    yield server
    server.stop()


@pytest.fixture
def services(fake: FakeGitHubServer, tmp_path: Path) -> Iterator[Services]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    store = Store(url)
    app = GitHubApp(APP_ID, rsa_keys()[0], fake.api_url, write_interval=0.0)
    yield Services(store, app, options=Options())
    app.close()
    store.close()


def seeded_runs(fake: FakeGitHubServer) -> list[dict[str, Any]]:
    issue = fake.add_issue(REPO, "Change feature")
    fake.add_pull(REPO, "feature", number=issue["number"])
    runs = [
        fake.add_run(REPO, event="push", head_branch="master"),
        fake.add_run(REPO, event="pull_request", head_branch="feature", pull_requests=[issue["number"]]),
        fake.add_run(REPO, event="pull_request", head_branch="patch", head_repository="fork/octo-repo"),
        fake.add_run(REPO, event="schedule", head_branch="master", conclusion="timed_out", run_attempt=2),
    ]
    return runs


def test_derived_payloads_match_githubs_webhook_schema(fake: FakeGitHubServer, github_fixtures: Path) -> None:
    root = github_fixtures / "webhook-schemas"

    def retrieve(uri: str) -> Resource[Any]:
        return Resource.from_contents(json.loads((root / uri).read_text()))

    schema = json.loads((root / "workflow_run" / "completed.schema.json").read_text())
    validator = Draft7Validator(schema, registry=Registry(retrieve=retrieve))  # type: ignore[call-arg]
    for run in seeded_runs(fake):
        payload = failure_payload(run)
        errors = [f"{list(error.path)}: {error.message}" for error in validator.iter_errors(payload)]
        assert not errors, errors[:5]
    # The check is real: a conclusion GitHub never sends is caught.
    broken = failure_payload(seeded_runs(fake)[0])
    broken["workflow_run"]["conclusion"] = "exploded"
    assert not validator.is_valid(broken)


def test_run_info_reads_the_payload(fake: FakeGitHubServer) -> None:
    _, pull, fork, scheduled = seeded_runs(fake)
    info = RunInfo.from_payload(failure_payload(pull), INSTALLATION)
    assert (info.repository, info.run_id, info.workflow_id, info.head_sha) == (
        REPO,
        pull["id"],
        pull["workflow_id"],
        pull["head_sha"],
    )
    assert info.pull_requests == (pull["pull_requests"][0]["number"],)
    assert info.default_branch == "master" and not info.from_fork
    assert RunInfo.from_payload(failure_payload(fork), INSTALLATION).from_fork
    timed_out = RunInfo.from_payload(failure_payload(scheduled), INSTALLATION)
    assert (timed_out.conclusion, timed_out.attempt, timed_out.event) == ("timed_out", 2, "schedule")


def test_pull_requests_of_other_repositories_are_not_ours() -> None:
    # GitHub's example lists a pull request of another repository that shares the branch name.
    payload = fixture_payload("completed.with-pull-requests.payload.json")
    assert payload["workflow_run"]["pull_requests"]
    assert RunInfo.from_payload(payload, INSTALLATION).pull_requests == ()


@pytest.mark.parametrize("conclusion", ["success", "cancelled", "skipped", "neutral", None])
def test_runs_that_did_not_fail_are_ignored(
    fake: FakeGitHubServer, services: Services, conclusion: str | None
) -> None:
    run = fake.add_run(REPO, conclusion=conclusion)
    event = Event("workflow_run", "completed", "d-1", failure_payload(run))
    assert on_completed(event, services) is Outcome.IGNORED
    assert not fake.requests_to(r"/actions/")


def test_a_timed_out_run_is_diagnosed(fake: FakeGitHubServer, services: Services) -> None:
    run = fake.add_run(REPO, conclusion="timed_out", head_branch="master")
    fake.add_job(
        REPO, run["id"], conclusion="timed_out", log=(LOGS / "gha-pytorch-keyboardinterrupt.log").read_bytes()
    )
    event = Event("workflow_run", "completed", "d-1", failure_payload(run))
    assert on_completed(event, services) is Outcome.DONE
    assert fake.requests_to(rf"/actions/runs/{run['id']}/attempts/1/jobs")


def test_a_payload_without_installation_is_ignored(fake: FakeGitHubServer, services: Services) -> None:
    run = fake.add_run(REPO)
    event = Event("workflow_run", "completed", "d-1", failure_payload(run, installation=None))
    assert on_completed(event, services) is Outcome.IGNORED
