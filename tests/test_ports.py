"""DiagnosisResult's footer usage: nothing for a rules diagnosis, and cache tokens counted as input."""

from __future__ import annotations

from bot.core.models import Category, Diagnosis, Severity
from bot.ports import DiagnosisResult

DIAGNOSIS = Diagnosis(
    severity=Severity.HIGH,
    category=Category.TEST_FAILURE,
    root_cause="test_login fails.",
    impact="Merges are blocked.",
    recommendations=["Fix the login test."],
    auto_fixable=False,
    evidence=[],
    fingerprint="0123456789abcdef",
    confidence=0.8,
    source="model",
)


def test_without_a_model_there_is_no_usage_to_show() -> None:
    assert DiagnosisResult(DIAGNOSIS).usage_for_footer() is None
    # Tokens without a model name (nothing should set them, but if it did) still show nothing.
    assert DiagnosisResult(DIAGNOSIS, input_tokens=10, cost_usd=0.5).usage_for_footer() is None


def test_with_a_model_input_counts_fresh_and_cached_tokens() -> None:
    result = DiagnosisResult(
        DIAGNOSIS,
        model="claude-sonnet-4-5",
        input_tokens=1_000,
        output_tokens=250,
        cache_read_tokens=300,
        cache_write_tokens=40,
        cost_usd=0.0123,
    )
    assert result.usage_for_footer() == {
        "model": "claude-sonnet-4-5",
        "input_tokens": 1_340,
        "output_tokens": 250,
        "cost": 0.0123,
    }
