"""`mendbot diagnose` with a model: the real SDK against the local Messages API, and the rules without a key."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from tests.app_support import LOGS
from tests.fakes import anthropic_server as fake
from tests.fakes.anthropic_server import FakeAnthropic

LOG = LOGS / "gha-gradle-test-failure.log"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("MENDBOT_", "ANTHROPIC_")):
            monkeypatch.delenv(name)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as running:
        monkeypatch.setenv("MENDBOT_ANTHROPIC_API_KEY", running.api_key)
        monkeypatch.setenv("MENDBOT_ANTHROPIC_BASE_URL", running.url)
        yield running


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["diagnose", str(LOG), *args])
    return result.exit_code, result.output


def test_with_a_key_the_model_diagnoses_and_the_output_names_it(server: FakeAnthropic) -> None:
    code, output = run()

    assert code == 0, output
    assert len(server.message_requests) == 1
    request = server.message_requests[0].json()
    assert request["tool_choice"]["name"] == "report_diagnosis"
    assert f"source: model ({request['model']}, " in output
    assert "source: rules" not in output
    # The fake quotes the first excerpt line as evidence; it is in the log, so it is kept.
    number, text = fake.excerpt_first_line(request)
    assert f"line {number}: {text.strip()}"[:60] in output
    assert "no model was used" not in output


def test_offline_forces_the_rules_and_nothing_reaches_the_server(server: FakeAnthropic) -> None:
    code, output = run("--offline")

    assert code == 0, output
    assert "source: rules" in output
    assert "no model was used" in output
    assert server.requests == []


def test_without_a_key_the_rules_diagnose_and_say_so() -> None:
    code, output = run()

    assert code == 0, output
    assert "source: rules" in output
    assert "This diagnosis is rule-based: no model was used." in output.replace("\n", " ")


def test_a_model_failure_prints_the_rules_diagnosis_with_a_note(server: FakeAnthropic) -> None:
    # 400 is not retried by the SDK, so the failure is immediate.
    server.script(fake.error(400, "invalid_request_error", "prompt is too long"))

    code, output = run()

    assert code == 0, output
    assert "Traceback" not in output
    assert "source: rules" in output
    assert "The model could not be asked (the model API answered 400 invalid_request_error)" in " ".join(output.split())
    assert server.api_key not in output


def test_json_output_carries_the_model_and_its_usage(server: FakeAnthropic) -> None:
    code, output = run("--format", "json")

    assert code == 0, output
    document = json.loads(output)
    assert document["diagnosis"]["source"] == "model"
    assert document["usage"]["model"] == server.message_requests[0].json()["model"]
    assert document["usage"]["output_tokens"] == 180
    assert document["usage"]["cost"] > 0


def test_caps_kept_in_the_configured_database_hold_across_runs(
    server: FakeAnthropic, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MENDBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("MENDBOT_MODEL_DIAGNOSES_PER_HOUR", "1")
    second_log = tmp_path / "other.log"
    second_log.write_text("Running tests\nERROR: database migration 0042 failed: relation exists\nexit 1\n")

    first_code, first = run()
    result = CliRunner().invoke(app, ["diagnose", str(second_log)])

    assert first_code == 0 and "source: model (" in first
    assert result.exit_code == 0, result.output
    assert "source: rules" in result.output
    assert "spending cap was reached" in " ".join(result.output.split())
    assert len(server.message_requests) == 1
