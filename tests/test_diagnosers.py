"""The offline diagnoser's choice of rules, the excerpt digest, and the memory of model answers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.adapters.store import Store, migrate
from bot.core import templates
from bot.core.classify import default_rules, load_rules, merge_rules
from bot.core.models import Category, Diagnosis, Excerpt, ExcerptBlock, ExcerptLine, Severity
from bot.diagnosers import OfflineDiagnoser, RememberingDiagnoser, excerpt_digest
from bot.ports import DiagnosisResult, FailureFacts

REPO = "octo-org/octo-repo"
NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=2)
FLAKY_FIXTURE_RULE = """
[[rule]]
id = "flaky-fixture"
category = "infrastructure"
severity = "low"
pattern = 'fixture (?P<name>\\w+) is flaky'
key = "flaky:{name}"
title = "A known flaky fixture"
summary = "Fixture {name} flaked."
"""


def excerpt(*texts: str, step: str = "pytest", first: int = 40) -> Excerpt:
    lines = [ExcerptLine(number=number, text=text) for number, text in enumerate(texts, start=first)]
    return Excerpt(blocks=[ExcerptBlock(job="test", step=step, lines=lines)], budget=4096)


CRASH = excerpt("fixture db_1 is flaky", "Segmentation fault (core dumped)")


def model_diagnosis(root_cause: str, source: str = "model") -> Diagnosis:
    return Diagnosis.model_validate(
        {
            "severity": "high",
            "category": "test_failure",
            "root_cause": root_cause,
            "impact": "Merges are blocked.",
            "recommendations": ["Fix the login test."],
            "auto_fixable": False,
            "evidence": [{"line": 41, "text": "Segmentation fault (core dumped)", "job": "test"}],
            "fingerprint": "0123456789abcdef",
            "confidence": 0.9,
            "source": source,
            "notes": ["A note from the model."],
        }
    )


@dataclass
class CountingDiagnoser:
    """Our own Diagnoser port, answering like a model and counting how often it is asked."""

    model: str | None = "claude-test"
    source: str = "model"
    asked: list[FailureFacts] = field(default_factory=list)

    def diagnose(self, facts: FailureFacts, now: datetime) -> DiagnosisResult:
        self.asked.append(facts)
        return DiagnosisResult(
            model_diagnosis(f"Answer number {len(self.asked)}.", self.source),
            model=self.model,
            input_tokens=1_000,
            output_tokens=200,
            cost_usd=0.01,
        )


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    return url


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    opened = Store(database)
    yield opened
    opened.close()


# ---- offline -----------------------------------------------------------------------------------------


def test_offline_uses_the_defaults_without_repository_rules() -> None:
    result = OfflineDiagnoser().diagnose(FailureFacts(REPO, CRASH), NOW)
    assert (result.diagnosis.category, result.diagnosis.source) == (Category.CRASH, "rules")
    assert result.model is None


def test_repository_rules_in_the_facts_outrank_the_defaults() -> None:
    rules = merge_rules(load_rules(FLAKY_FIXTURE_RULE), default_rules())
    diagnosis = OfflineDiagnoser().diagnose(FailureFacts(REPO, CRASH, rules=rules), NOW).diagnosis
    assert (diagnosis.category, diagnosis.severity) == (Category.INFRASTRUCTURE, Severity.LOW)
    assert diagnosis.root_cause.startswith("Fixture db_1 flaked.")


def test_the_facts_rules_win_over_the_diagnosers_own() -> None:
    repository_rules = merge_rules(load_rules(FLAKY_FIXTURE_RULE), default_rules())
    own = OfflineDiagnoser(rules=repository_rules)
    assert own.diagnose(FailureFacts(REPO, CRASH), NOW).diagnosis.category is Category.INFRASTRUCTURE
    with_defaults = FailureFacts(REPO, CRASH, rules=default_rules())
    assert own.diagnose(with_defaults, NOW).diagnosis.category is Category.CRASH


# ---- excerpt digest ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "again",
    [
        excerpt("fixture db_1 is flaky", "Segmentation fault (core dumped)"),
        excerpt("fixture db_1 is flaky", "Segmentation fault (core dumped)", first=412),
        excerpt("fixture db_7 is flaky", "Segmentation fault (core dumped)"),
    ],
    ids=["equal", "moved in the log", "another number"],
)
def test_a_rerun_of_the_same_failure_has_the_same_digest(again: Excerpt) -> None:
    assert again is not CRASH
    assert excerpt_digest(again) == excerpt_digest(CRASH)
    assert len(excerpt_digest(CRASH)) == 32 and int(excerpt_digest(CRASH), 16) >= 0


@pytest.mark.parametrize(
    "changed",
    [
        excerpt("fixture cache is flaky", "Segmentation fault (core dumped)"),
        excerpt("fixture db_1 is flaky", "Segmentation fault (core dumped)", step="unit tests"),
        excerpt("fixture db_1 is flaky"),
    ],
    ids=["one line's words", "the step", "a line fewer"],
)
def test_a_changed_excerpt_has_another_digest(changed: Excerpt) -> None:
    assert excerpt_digest(changed) != excerpt_digest(CRASH)


# ---- remembering model answers -------------------------------------------------------------------------


def test_the_same_excerpt_gets_the_stored_answer_without_asking_again(store: Store) -> None:
    inner = CountingDiagnoser()
    remembering = RememberingDiagnoser(inner, store)

    first = remembering.diagnose(FailureFacts(REPO, CRASH, job="test"), NOW)
    again = remembering.diagnose(FailureFacts(REPO, excerpt(*(line.text for line in CRASH.lines))), LATER)

    assert len(inner.asked) == 1
    assert first.diagnosis.root_cause == again.diagnosis.root_cause == "Answer number 1."
    assert again.diagnosis.model_dump(exclude={"notes"}) == first.diagnosis.model_dump(exclude={"notes"})
    assert again.diagnosis.notes == [templates.MODEL_REMEMBERED_NOTE.format(when=NOW), "A note from the model."]
    # The repeat names the model but costs nothing: no call was made.
    assert again.model == "claude-test"
    assert (again.input_tokens, again.output_tokens, again.cost_usd) == (0, 0, 0.0)


def test_a_rerun_gets_the_stored_answer_with_its_evidence_at_the_new_lines(store: Store) -> None:
    inner = CountingDiagnoser()
    remembering = RememberingDiagnoser(inner, store)
    remembering.diagnose(FailureFacts(REPO, CRASH), NOW)

    rerun = excerpt("fixture db_3 is flaky", "Segmentation fault (core dumped)", first=900)
    again = remembering.diagnose(FailureFacts(REPO, rerun), LATER)

    assert len(inner.asked) == 1
    assert [(item.line, item.text) for item in again.diagnosis.evidence] == [
        (901, "Segmentation fault (core dumped)")
    ]


def test_a_changed_excerpt_or_another_repository_asks_the_model_again(store: Store) -> None:
    inner = CountingDiagnoser()
    remembering = RememberingDiagnoser(inner, store)
    remembering.diagnose(FailureFacts(REPO, CRASH), NOW)

    changed = excerpt("fixture db_1 is flaky", "Segmentation fault (core dumped) in worker 2")
    assert remembering.diagnose(FailureFacts(REPO, changed), NOW).diagnosis.root_cause == "Answer number 2."
    elsewhere = remembering.diagnose(FailureFacts("octo-org/other-repo", CRASH), NOW)
    assert elsewhere.diagnosis.root_cause == "Answer number 3."
    assert len(inner.asked) == 3


def test_the_memory_survives_a_restart(store: Store, database: str) -> None:
    RememberingDiagnoser(CountingDiagnoser(), store).diagnose(FailureFacts(REPO, CRASH), NOW)

    reopened = Store(database)
    try:
        inner = CountingDiagnoser()
        result = RememberingDiagnoser(inner, reopened).diagnose(FailureFacts(REPO, CRASH), LATER)
    finally:
        reopened.close()
    assert inner.asked == [] and result.diagnosis.root_cause == "Answer number 1."


@pytest.mark.parametrize("model", [None, "claude-test"], ids=["no model", "the model's rules fallback"])
def test_only_answers_the_model_gave_are_remembered(store: Store, model: str | None) -> None:
    inner = CountingDiagnoser(model=model, source="rules")
    remembering = RememberingDiagnoser(inner, store)
    remembering.diagnose(FailureFacts(REPO, CRASH), NOW)
    second = remembering.diagnose(FailureFacts(REPO, CRASH), LATER)
    assert len(inner.asked) == 2
    assert second.diagnosis.root_cause == "Answer number 2."
