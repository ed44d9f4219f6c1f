"""The excerpt metric from the dataset README: which gold lines an excerpt kept."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bot.core.logs import ANSI_RE, GHA_TIMESTAMP_RE

GOLD_CAP = 40
PART_SPLIT_RE = re.compile(r"…|\[REDACTED(?::[^\]]*)?\]")
SPACE_RE = re.compile(r"\s+")


def normalize_for_match(text: str) -> str:
    """Strip ANSI codes, the Actions timestamp prefix and repeated whitespace, as the metric does."""
    text = ANSI_RE.sub("", text)
    text = GHA_TIMESTAMP_RE.sub("", text, count=1)
    return SPACE_RE.sub(" ", text).strip()


def quote_matches(quote: str, original: str) -> bool:
    """True when every part of `quote` (split at … and redaction placeholders) is inside `original`."""
    target = normalize_for_match(original)
    parts = [normalize_for_match(part) for part in PART_SPLIT_RE.split(quote)]
    parts = [part for part in parts if part]
    return bool(parts) and all(part in target for part in parts)


def gold_lines(gold: Iterable[Sequence[int]], raw_lines: Mapping[int, str]) -> list[int]:
    """The non-blank gold line numbers, capped at the first 40."""
    numbers = sorted({n for start, end in gold for n in range(start, end + 1)})
    kept = [n for n in numbers if n in raw_lines and normalize_for_match(raw_lines[n])]
    return kept[:GOLD_CAP]


@dataclass(frozen=True, slots=True)
class CaseScore:
    """How one excerpt did against one case's gold lines."""

    gold: int
    kept: int

    @property
    def recall(self) -> float:
        return self.kept / self.gold if self.gold else 0.0


def score_case(
    excerpt: Iterable[tuple[int, str]], gold: Iterable[Sequence[int]], raw_lines: Mapping[int, str]
) -> CaseScore:
    """Count the gold lines whose excerpt text really appears in the same-numbered raw line."""
    wanted = set(gold_lines(gold, raw_lines))
    kept = {n for n, text in excerpt if n in wanted and quote_matches(text, raw_lines[n])}
    return CaseScore(gold=len(wanted), kept=len(kept))


@dataclass(frozen=True, slots=True)
class Summary:
    """Mean recall, share of cases fully kept and share with at least one gold line kept."""

    cases: int
    recall: float
    full: float
    hit: float


def summarize(scores: Sequence[CaseScore]) -> Summary:
    """Average per-case scores; cases whose gold has no non-blank line are left out."""
    counted = [s for s in scores if s.gold]
    if not counted:
        return Summary(0, 0.0, 0.0, 0.0)
    n = len(counted)
    return Summary(
        cases=n,
        recall=sum(s.recall for s in counted) / n,
        full=sum(s.kept == s.gold for s in counted) / n,
        hit=sum(s.kept > 0 for s in counted) / n,
    )


def last_bytes_baseline(raw_lines: Mapping[int, str], budget: int) -> list[tuple[int, str]]:
    """The reference method: the last lines of the log that fit in `budget` bytes."""
    chosen: list[tuple[int, str]] = []
    used = 0
    for number in sorted(raw_lines, reverse=True):
        text = normalize_for_match(raw_lines[number])
        cost = len(text.encode("utf-8")) + 1
        if used + cost > budget:
            break
        chosen.append((number, text))
        used += cost
    return chosen[::-1]
