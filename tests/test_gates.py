"""Policy gates: loop guard, forks (SECURITY item 14), watched workflows, severity, hourly limits."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.adapters.store import Store, migrate
from bot.core.models import Severity
from bot.plan import RunInfo
from bot.policy.gates import RateGate, fix_pr_gate, issue_gate, run_gate
from bot.policy.repo_config import RepoConfig

RUN = RunInfo(
    "octo/app",
    7,
    1,
    1,
    42,
    "CI",
    ".github/workflows/ci.yml",
    "main",
    "a" * 40,
    "push",
    "failure",
    "https://github.com/octo/app/actions/runs/1",
    "main",
    actor="alice",
    triggering_actor="alice",
    head_repository="octo/app",
)
BOT = "mendbot[bot]"


def test_a_failed_run_is_allowed_with_a_reason() -> None:
    decision = run_gate(RUN, RepoConfig(), BOT)
    assert decision.allowed and "failed" in decision.reasons[0]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"conclusion": "success"}, "concluded 'success'"),
        ({"conclusion": "cancelled"}, "concluded 'cancelled'"),
        ({"actor": "mendbot[bot]"}, "loop guard"),
        ({"triggering_actor": "Mendbot[bot]"}, "loop guard"),
        ({"head_branch": "mendbot/fix-1"}, "loop guard"),
    ],
)
def test_refusals_say_why(change: dict[str, str], reason: str) -> None:
    decision = run_gate(replace(RUN, **change), RepoConfig(), BOT)  # type: ignore[arg-type]
    assert not decision.allowed
    assert any(reason in text for text in decision.reasons), decision.reasons


def test_every_reason_is_collected() -> None:
    run = replace(RUN, actor=BOT, head_branch="mendbot/x", conclusion="success")
    assert len(run_gate(run, RepoConfig(), BOT).reasons) == 3


def test_timed_out_runs_are_diagnosed() -> None:
    assert run_gate(replace(RUN, conclusion="timed_out"), RepoConfig(), BOT).allowed


def test_a_bot_with_a_similar_name_is_not_us() -> None:
    assert run_gate(replace(RUN, actor="mendbot-evil[bot]"), RepoConfig(), BOT).allowed


def test_fork_runs_are_diagnosed_if_allowed_but_never_fixed() -> None:
    fork = replace(RUN, head_repository="mallory/app")
    allowed = run_gate(fork, RepoConfig(), BOT)
    assert allowed.allowed and any("never fixed" in reason for reason in allowed.reasons)
    refused = run_gate(fork, RepoConfig(diagnose_forks=False), BOT)
    assert not refused.allowed and "fork" in refused.reasons[0]
    assert not fix_pr_gate(fork).allowed
    assert not fix_pr_gate(replace(RUN, head_branch="mendbot/fix")).allowed
    assert fix_pr_gate(RUN).allowed


def test_excluded_workflows_are_refused() -> None:
    config = RepoConfig.model_validate({"workflows": {"exclude": ["CI"]}})
    assert "does not watch" in run_gate(RUN, config, BOT).reasons[0]


def test_the_severity_threshold() -> None:
    assert issue_gate(Severity.HIGH, RepoConfig()).allowed
    assert issue_gate(Severity.CRITICAL, RepoConfig()).allowed
    refused = issue_gate(Severity.MEDIUM, RepoConfig())
    assert not refused.allowed and "below the threshold high" in refused.reasons[0]
    assert issue_gate(Severity.LOW, RepoConfig(severity_threshold=Severity.LOW)).allowed


def test_hourly_limits_are_shared_through_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    now = datetime(2025, 3, 10, 12, 30, tzinfo=UTC)
    stores = [Store(url), Store(url)]
    gates = [RateGate(store, lambda: now) for store in stores]
    taken = [gates[n % 2].take("issues", "octo/app", 3).allowed for n in range(5)]
    assert taken == [True, True, True, False, False]
    assert "limit of 3 per hour" in gates[0].take("issues", "octo/app", 3).reasons[0]
    assert gates[0].take("issues", "octo/other", 3).allowed
    later = RateGate(stores[0], lambda: now + timedelta(hours=1))
    assert later.take("issues", "octo/app", 3).allowed
    assert not gates[0].take("comments", "octo/app", 0).allowed
    for store in stores:
        store.close()


def test_a_retry_of_the_same_work_reuses_the_unit_it_spent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    now = datetime(2025, 3, 10, 12, 30, tzinfo=UTC)
    store = Store(url)
    gate = RateGate(store, lambda: now)
    assert gate.take("diagnoses", "octo/app", 2, for_work="run-1").allowed
    assert gate.take("diagnoses", "octo/app", 2, for_work="run-1").allowed  # the retry
    assert gate.take("diagnoses", "octo/app", 2, for_work="run-2").allowed
    assert not gate.take("diagnoses", "octo/app", 2, for_work="run-3").allowed
    # The retry still passes once the cap is full, since its unit was spent already.
    assert gate.take("diagnoses", "octo/app", 2, for_work="run-1").allowed
    # A new hour is a new budget: the same work spends again there.
    next_hour = RateGate(store, lambda: now + timedelta(hours=1))
    assert next_hour.take("diagnoses", "octo/app", 1, for_work="run-1").allowed
    assert not next_hour.take("diagnoses", "octo/app", 1, for_work="run-2").allowed
    store.close()
