"""The offline diagnoser: every field filled from the rules and the excerpt, and it says so."""

from __future__ import annotations

from pathlib import Path

from bot.core.diagnose import offline_diagnosis, severity_at_least
from bot.core.excerpt import excerpt_lines
from bot.core.logs import lines_from_text, read_log
from bot.core.models import Category, Diagnosis, Severity, diagnosis_json_schema

FIXTURES = Path(__file__).parent / "fixtures" / "logs"


def diagnose_file(name: str) -> Diagnosis:
    with (FIXTURES / name).open("rb") as stream:
        return offline_diagnosis(excerpt_lines(read_log(stream), 4096))


def test_real_gradle_failure_gets_a_complete_rules_diagnosis() -> None:
    diagnosis = diagnose_file("gha-gradle-test-failure.log")
    assert diagnosis.source == "rules"
    assert diagnosis.category is Category.TEST_FAILURE
    assert "testClassicParsing" in diagnosis.root_cause
    assert diagnosis.impact and diagnosis.recommendations
    assert any(item.line == 514 for item in diagnosis.evidence)
    assert len(diagnosis.fingerprint) >= 12
    assert 0 < diagnosis.confidence <= 1
    assert any("rule-based" in note for note in diagnosis.notes)


def test_evidence_quotes_excerpt_lines_exactly_with_their_numbers() -> None:
    log = "step one\nsrc/db.py:12: OperationalError: could not connect to server: Connection refused\nexit 1\n"
    excerpt = excerpt_lines(lines_from_text(log), 4096)
    diagnosis = offline_diagnosis(excerpt)
    by_number = {line.number: line.text for line in excerpt.lines}
    assert diagnosis.evidence
    for item in diagnosis.evidence:
        assert by_number[item.line] == item.text
    assert (diagnosis.evidence[0].file, diagnosis.evidence[0].file_line) == ("src/db.py", 12)


def test_the_same_failure_on_a_rerun_has_the_same_fingerprint() -> None:
    first = "2024-01-01T00:00:01.0000000Z E   AssertionError: expected 3 got 4 in /tmp/pytest-of-x/pytest-12/t0\n"
    second = "2024-03-09T11:22:33.0000000Z E   AssertionError: expected 3 got 4 in /tmp/pytest-of-x/pytest-98/t0\n"
    a = offline_diagnosis(excerpt_lines(lines_from_text(first), 4096))
    b = offline_diagnosis(excerpt_lines(lines_from_text(second), 4096))
    c = offline_diagnosis(excerpt_lines(lines_from_text("fatal: could not read Username for github\n"), 4096))
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_unrecognised_failure_still_gets_a_low_confidence_diagnosis() -> None:
    excerpt = excerpt_lines(lines_from_text("the frobnicator stopped unexpectedly\n"), 4096)
    diagnosis = offline_diagnosis(excerpt)
    assert diagnosis.source == "rules" and diagnosis.confidence <= 0.6
    assert diagnosis.recommendations


def test_only_config_fixable_categories_are_auto_fixable() -> None:
    line = "##[error]The job running on runner X has exceeded the maximum execution time of 60 minutes.\n"
    timeout = offline_diagnosis(excerpt_lines(lines_from_text(line), 4096))
    assert timeout.category is Category.TIMEOUT
    assert timeout.auto_fixable and timeout.fix_suggestion
    assert not diagnose_file("gha-gradle-test-failure.log").auto_fixable


def test_severity_order() -> None:
    assert severity_at_least(Severity.CRITICAL, Severity.HIGH)
    assert severity_at_least(Severity.HIGH, Severity.HIGH)
    assert not severity_at_least(Severity.MEDIUM, Severity.HIGH)


def test_published_schema_matches_the_model() -> None:
    import json

    published = json.loads((Path(__file__).parent.parent / "docs" / "diagnosis.schema.json").read_text())
    assert published == diagnosis_json_schema()
    assert set(published["required"]) >= {"severity", "category", "root_cause", "evidence", "fingerprint", "source"}


def test_a_repository_rule_that_times_out_is_named_in_the_notes() -> None:
    from bot.core.classify import default_rules, load_rules, merge_rules

    slow = load_rules(
        '[[rule]]\nid = "slow"\ncategory = "crash"\nseverity = "high"\npattern = "(a|aa)+$"\n'
        'title = "slow"\nsummary = "slow"\n'
    )
    log = "a" * 300 + "!\nE   AssertionError: expected 3\n"
    diagnosis = offline_diagnosis(excerpt_lines(lines_from_text(log), 4096), merge_rules(slow, default_rules()))
    assert any("slow" in note and "took too long" in note for note in diagnosis.notes)
