"""The dataset's excerpt metric, implemented as its README defines it."""

from __future__ import annotations

from bot.core.metric import (
    CaseScore,
    gold_lines,
    last_bytes_baseline,
    normalize_for_match,
    quote_matches,
    score_case,
    summarize,
)


def test_normalization_strips_ansi_timestamps_and_repeated_space() -> None:
    raw = "2024-01-01T00:00:00.1234567Z \x1b[31mError:\x1b[0m   bad\t\tthing\r"
    assert normalize_for_match(raw) == "Error: bad thing"


def test_shortened_and_redacted_quotes_match_but_paraphrases_do_not() -> None:
    original = "2024-01-01T00:00:00Z export TOKEN=ghp_secret123 && run --fast"
    assert quote_matches("export TOKEN=[REDACTED:github_token] && run", original)
    assert quote_matches("export TOKEN=[REDACTED] && run --fast", original)
    assert quote_matches("export TOKEN=…--fast", original)
    assert not quote_matches("exported the token", original)
    assert not quote_matches("", original)
    assert not quote_matches("[REDACTED]", original)


def test_gold_is_non_blank_and_capped_at_forty() -> None:
    raw = {n: ("" if n == 2 else f"line {n}") for n in range(1, 100)}
    raw[3] = "2024-01-01T00:00:00.0000000Z "
    gold = gold_lines([[1, 60]], raw)
    assert 2 not in gold and 3 not in gold
    assert len(gold) == 40 and gold[0] == 1


def test_a_line_counts_only_at_its_own_number() -> None:
    raw = {1: "alpha", 2: "beta"}
    assert score_case([(1, "beta"), (2, "beta")], [[1, 2]], raw) == CaseScore(gold=2, kept=1)


def test_summary_recall_full_and_hit() -> None:
    summary = summarize([CaseScore(4, 4), CaseScore(4, 2), CaseScore(2, 0), CaseScore(0, 0)])
    assert summary.cases == 3
    assert abs(summary.recall - (1 + 0.5 + 0) / 3) < 1e-9
    assert abs(summary.full - 1 / 3) < 1e-9
    assert abs(summary.hit - 2 / 3) < 1e-9


def test_last_bytes_baseline_fits_the_budget_and_keeps_the_end() -> None:
    raw = {n: f"line number {n}" for n in range(1, 50)}
    chosen = last_bytes_baseline(raw, 100)
    assert sum(len(text) + 1 for _, text in chosen) <= 100
    assert chosen[-1][0] == 49 and [n for n, _ in chosen] == sorted(n for n, _ in chosen)
