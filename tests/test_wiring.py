"""Choosing the diagnoser from the settings, and the App's failure path with Claude over real HTTP."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from bot import wiring
from bot.adapters.anthropic import DEFAULT_MAX_TOKENS, DEFAULT_TIMEOUT, ClaudeDiagnoser, default_model
from bot.adapters.store import DeliveryStatus, Store, migrate
from bot.core import templates
from bot.core.prompt import TokenUsage
from bot.diagnosers import OfflineDiagnoser, RememberingDiagnoser
from bot.model_diagnoser import ModelDiagnoser
from bot.policy import limits
from bot.policy.limits import LimitsConfig, PriceTable
from bot.settings import Settings, load_settings
from bot.web import create_app
from bot.wiring import Components, build_components, build_diagnoser
from tests.app_support import (
    INSTALLATION,
    LOGS,
    REPO,
    failure_payload,
    fake_github,
    make_settings,
    serve,
    signed,
    wait_for,
)
from tests.fakes import anthropic_server as fake_model
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.github_server import FakeGitHubServer

NOW = datetime(2025, 3, 10, 12, 20, tzinfo=UTC)
GRADLE_LOG = (LOGS / "gha-gradle-test-failure.log").read_bytes()
PYTORCH_LOG = (LOGS / "gha-pytorch-keyboardinterrupt.log").read_bytes()
MISSING_DATA_RULE = (
    "rules: |\n"
    "  [[rule]]\n"
    '  id = "missing-fixture-data"\n'
    '  category = "configuration"\n'
    '  severity = "critical"\n'
    "  pattern = 'NoSuchFileException: (?P<path>\\S+)'\n"
    '  title = "Test data missing"\n'
    '  summary = "The test data file {path} is missing."\n'
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("MENDBOT_", "ANTHROPIC_")):
            monkeypatch.delenv(name)


@pytest.fixture
def github() -> Iterator[FakeGitHubServer]:
    server = fake_github()
    yield server
    server.stop()


@pytest.fixture
def claude() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'unit.db'}"
    migrate(url)
    opened = Store(url)
    yield opened
    opened.close()


# ---- choosing the diagnoser ----------------------------------------------------------------------------


def test_without_a_key_the_rules_diagnose(store: Store) -> None:
    assert isinstance(build_diagnoser(load_settings(), store), OfflineDiagnoser)
    assert isinstance(build_diagnoser(Settings(anthropic_api_key=SecretStr("  ")), store), OfflineDiagnoser)


def test_a_key_under_either_name_chooses_claude_with_the_documented_defaults(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-plain-name")
    chosen = build_diagnoser(load_settings(), store)

    assert isinstance(chosen, RememberingDiagnoser)
    model = chosen.inner
    assert isinstance(model, ModelDiagnoser) and isinstance(model.client, ClaudeDiagnoser)
    assert model.client.model == default_model()
    assert model.client.max_tokens == DEFAULT_MAX_TOKENS
    assert model.limits == LimitsConfig()
    assert model.prices.for_model("claude-sonnet-4-5").output == 15.0
    # Settings keep their own copies of the defaults; they must not drift from the adapter's.
    settings = load_settings()
    assert (settings.anthropic_max_tokens, settings.anthropic_timeout) == (DEFAULT_MAX_TOKENS, DEFAULT_TIMEOUT)
    model.client.close()


def test_model_settings_reach_the_model_diagnoser(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = {"sonnet": {"input": 1.0, "output": 2.0, "cache_write": 1.25, "cache_read": 0.1}}
    for name, value in {
        "MENDBOT_ANTHROPIC_API_KEY": "sk-ant-test",
        "MENDBOT_ANTHROPIC_BASE_URL": "http://127.0.0.1:9/",
        "MENDBOT_ANTHROPIC_MODEL": "claude-haiku-4-5",
        "MENDBOT_ANTHROPIC_MAX_TOKENS": "512",
        "MENDBOT_ANTHROPIC_TIMEOUT": "7.5",
        "MENDBOT_MODEL_DIAGNOSES_PER_HOUR": "3",
        "MENDBOT_MODEL_USD_PER_DAY_PER_REPOSITORY": "0.5",
        "MENDBOT_MODEL_USD_PER_DAY_PER_INSTALLATION": "5",
        "MENDBOT_MODEL_PRICES": json.dumps(prices),
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    first, second = build_diagnoser(settings, store), build_diagnoser(settings, store)

    assert isinstance(first, RememberingDiagnoser) and isinstance(second, RememberingDiagnoser)
    model = first.inner
    assert isinstance(model, ModelDiagnoser) and isinstance(model.client, ClaudeDiagnoser)
    assert (model.client.model, model.client.max_tokens) == ("claude-haiku-4-5", 512)
    assert model.limits == LimitsConfig(
        diagnoses_per_hour_per_repository=3, usd_per_day_per_repository=0.5, usd_per_day_per_installation=5
    )
    assert model.prices.for_model("claude-sonnet-4-5").input == 1.0
    assert model.prices.for_model("claude-haiku-4-5").input == 1.0  # the built-in table is kept beneath
    # One breaker per process: what one delivery learns about the API, the next one knows.
    assert isinstance(second.inner, ModelDiagnoser)
    assert model.breaker is second.inner.breaker is wiring.process_breaker()
    model.client.close()
    second.inner.client.close()  # type: ignore[attr-defined]


def test_trigger_bots_are_read_as_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MENDBOT_TRIGGER_BOTS", "renovate[bot], release-bot[bot] ,")
    assert load_settings().trigger_bots == ("renovate[bot]", "release-bot[bot]")


# ---- the App's failure path over HTTP ------------------------------------------------------------------


@contextmanager
def running_app(
    tmp_path: Path, github: FakeGitHubServer, **overrides: Any
) -> Iterator[tuple[httpx.Client, Components]]:
    settings = make_settings(tmp_path, github.api_url, **overrides)
    components = build_components(settings, registry=CollectorRegistry(), clock=lambda: NOW)
    try:
        with (
            serve(create_app(settings, components=components, worker=True)) as url,
            httpx.Client(base_url=url, timeout=10) as http,
        ):
            yield http, components
    finally:
        components.close()


def with_claude(claude: FakeAnthropic, **overrides: Any) -> dict[str, Any]:
    return {"anthropic_api_key": claude.api_key, "anthropic_base_url": claude.url, **overrides}


def pull_request_failure(github: FakeGitHubServer, log: bytes = GRADLE_LOG) -> dict[str, Any]:
    issue = github.add_issue(REPO, "Change feature")
    github.add_pull(REPO, "feature", number=issue["number"])
    commit = github.add_commit(REPO, "Parse logs from a file", files=["cidiff/src/LogParser.java"])
    run = github.add_run(
        REPO, event="pull_request", head_branch="feature", head_sha=commit["sha"], pull_requests=[issue["number"]]
    )
    github.add_job(REPO, run["id"], log=log)
    return run


def deliver_and_wait(http: httpx.Client, components: Components, run: dict[str, Any], delivery: str) -> None:
    body = json.dumps(failure_payload(run)).encode()
    assert http.post("/webhook", content=body, headers=signed(body, delivery_id=delivery)).status_code == 202

    def finished() -> bool:
        record = components.store.get_delivery(delivery)
        return record is not None and record.status in (DeliveryStatus.DONE, DeliveryStatus.IGNORED)

    wait_for(finished, 20, f"delivery {delivery}")


def only_comment(github: FakeGitHubServer) -> str:
    [comment] = github.repo(REPO).comments.values()
    return str(comment["body"])


def test_with_a_key_the_pull_request_comment_is_claudes_with_verified_evidence_and_usage(
    tmp_path: Path, github: FakeGitHubServer, claude: FakeAnthropic
) -> None:
    run = pull_request_failure(github)
    with running_app(tmp_path, github, **with_claude(claude)) as (http, components):
        deliver_and_wait(http, components, run, "model-1")

    [request] = claude.message_requests
    sent = request.json()
    assert sent["tool_choice"] == {"type": "tool", "name": "report_diagnosis", "disable_parallel_tool_use": True}
    assert '<untrusted kind="log_excerpt">' in request.user_text
    number, quoted = fake_model.excerpt_first_line(sent)
    body = only_comment(github)
    assert "**Source:** model" in body
    assert "A unit test failed." in body
    assert f"line {number}" in body and quoted.strip() in body  # the quoted line is in the log, so it stays
    usage = components.store.usage_since(NOW.date(), repository=REPO)
    assert usage.calls == 1 and usage.output_tokens == 180
    tokens = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    footer = next(line for line in body.splitlines() if line.startswith("<sub>"))
    assert f"Diagnosed by Mendbot with {sent['model']} · {tokens:,} in / 180 out tokens · $" in footer
    assert footer.endswith("· confidence 80%</sub>")
    assert f"${limits.cost_usd(usage, sent['model'], PriceTable()):.4f} ·" in footer
    # The check run carries the same diagnosis.
    [check] = github.repo(REPO).check_runs.values()
    assert "**Source:** model" in check["output"]["text"]


def test_without_a_key_the_comment_is_the_rules_and_says_so(tmp_path: Path, github: FakeGitHubServer) -> None:
    run = pull_request_failure(github)
    with running_app(tmp_path, github) as (http, components):
        deliver_and_wait(http, components, run, "rules-1")

    body = only_comment(github)
    assert "**Source:** rules" in body
    assert "This diagnosis is rule-based: no model was used." in body
    assert "<sub>Diagnosed by Mendbot from the rules · confidence" in body


def test_the_eleventh_diagnosis_in_an_hour_is_the_rules_with_the_cap_note(
    tmp_path: Path, github: FakeGitHubServer, claude: FakeAnthropic
) -> None:
    run = pull_request_failure(github)
    with running_app(tmp_path, github, **with_claude(claude)) as (http, components):
        for _ in range(10):  # ten model diagnoses already made this hour
            limits.record(components.store, REPO, INSTALLATION, TokenUsage(input_tokens=1000), 0.01, NOW)
        deliver_and_wait(http, components, run, "capped-1")

    body = only_comment(github)
    assert claude.message_requests == []
    assert "**Source:** rules" in body
    assert "The model was not used because a spending cap was reached" in body
    assert f"{REPO} has had 10 model diagnoses this hour (limit 10)" in body


def test_repository_rules_reach_the_fallback_inside_the_model_diagnoser(
    tmp_path: Path, github: FakeGitHubServer, claude: FakeAnthropic
) -> None:
    github.set_file(REPO, ".github/mendbot.yml", MISSING_DATA_RULE)
    run = pull_request_failure(github)
    with running_app(tmp_path, github, **with_claude(claude, model_diagnoses_per_hour=0)) as (http, components):
        deliver_and_wait(http, components, run, "rules-fallback-1")

    body = only_comment(github)
    assert claude.message_requests == []
    assert "The test data file ../data/astor_399.log is missing." in body
    assert "spending cap was reached" in body


def test_the_same_excerpt_again_costs_no_second_model_call_but_a_changed_one_does(
    tmp_path: Path, github: FakeGitHubServer, claude: FakeAnthropic
) -> None:
    first, repeat = pull_request_failure(github), pull_request_failure(github)
    changed = pull_request_failure(github, log=PYTORCH_LOG)
    with running_app(tmp_path, github, **with_claude(claude)) as (http, components):
        deliver_and_wait(http, components, first, "memo-1")
        deliver_and_wait(http, components, repeat, "memo-2")
        assert len(claude.message_requests) == 1
        deliver_and_wait(http, components, changed, "memo-3")
        assert len(claude.message_requests) == 2

    bodies = [comment["body"] for comment in github.repo(REPO).comments.values()]
    assert len(bodies) == 3
    assert "**Source:** model" in bodies[1]
    assert "repeats that diagnosis without a new model call" in bodies[1]
    assert "repeats that diagnosis" not in bodies[0] + bodies[2]
    assert templates.MODEL_REMEMBERED_NOTE.split("{")[0] in bodies[1]
