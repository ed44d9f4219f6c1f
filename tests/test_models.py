"""The core's plain data: severity order, excerpt byte cost, and what a diagnosis accepts and summarises."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bot.core.models import Category, Diagnosis, Excerpt, ExcerptBlock, ExcerptLine, Severity


def diagnosis_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "severity": "high",
        "category": "test_failure",
        "root_cause": "test_login fails: the session token is missing.",
        "impact": "Merges are blocked.",
        "recommendations": ["Set SESSION_SECRET in the test env."],
        "auto_fixable": False,
        "evidence": [{"line": 12, "text": "E   KeyError: 'session_token'"}],
        "fingerprint": "0123456789abcdef",
        "confidence": 0.6,
        "source": "rules",
    }
    fields.update(overrides)
    return fields


def test_severity_rank_orders_low_to_critical() -> None:
    ranks = [severity.rank for severity in (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)]
    assert ranks == sorted(ranks) and len(set(ranks)) == 4
    assert sorted(Severity, key=lambda severity: severity.rank)[-1] is Severity.CRITICAL
    assert Severity("medium").rank > Severity("low").rank


def test_excerpt_size_counts_utf8_bytes_and_one_newline_per_line() -> None:
    excerpt = Excerpt(
        blocks=[
            ExcerptBlock(job="build", lines=[ExcerptLine(number=1, text="é"), ExcerptLine(number=2, text="")]),
            ExcerptBlock(job="test", lines=[ExcerptLine(number=9, text="✗ abc")]),
        ],
        budget=100,
    )
    # "é" is 2 bytes, "" is 0, "✗ abc" is 3 + 4; plus three newlines.
    assert excerpt.size == 2 + 0 + 7 + 3
    assert [line.number for line in excerpt.lines] == [1, 2, 9]
    assert excerpt.as_text() == "é\n\n✗ abc"


@pytest.mark.parametrize("confidence", [0.0, 0.45, 1.0])
def test_confidence_within_zero_and_one_is_accepted(confidence: float) -> None:
    assert Diagnosis.model_validate(diagnosis_fields(confidence=confidence)).confidence == confidence


@pytest.mark.parametrize("confidence", [-0.01, 1.01, 60])
def test_confidence_outside_zero_and_one_is_rejected(confidence: float) -> None:
    with pytest.raises(ValidationError, match="confidence"):
        Diagnosis.model_validate(diagnosis_fields(confidence=confidence))


@pytest.mark.parametrize(("field", "value"), [("category", "weather"), ("severity", "urgent"), ("source", "guesswork")])
def test_unknown_category_severity_or_source_is_rejected(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Diagnosis.model_validate(diagnosis_fields(**{field: value}))


def test_known_category_is_read_as_the_enum() -> None:
    assert Diagnosis.model_validate(diagnosis_fields(category="oom")).category is Category.OOM


def test_summary_is_the_first_line_of_the_root_cause() -> None:
    diagnosis = Diagnosis.model_validate(
        diagnosis_fields(root_cause="\n  The linker ran out of memory.\nSecond line with details.")
    )
    assert diagnosis.summary == "The linker ran out of memory."


def test_summary_is_capped_at_120_characters_with_an_ellipsis() -> None:
    exact = Diagnosis.model_validate(diagnosis_fields(root_cause="x" * 120))
    assert exact.summary == "x" * 120
    long = Diagnosis.model_validate(diagnosis_fields(root_cause="y" * 121 + "\nmore"))
    assert len(long.summary) == 120 and long.summary == "y" * 119 + "…"
    assert "\n" not in long.summary
