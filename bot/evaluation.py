"""Run the excerpter over a dataset manifest and score it with the dataset's own metric."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.core.excerpt import Excerpter, PassingIndex
from bot.core.logs import LogLine, parse_lines
from bot.core.metric import CaseScore, Summary, last_bytes_baseline, score_case, summarize
from bot.core.models import Excerpt


class ManifestError(ValueError):
    """A manifest that cannot be used, with a message meant for a person."""


@dataclass(frozen=True, slots=True)
class Case:
    """One dataset case: where its logs are and which lines are the cause."""

    id: str
    log: Path
    pass_log: Path | None
    gold: list[list[int]]
    category: str | None
    format: str


def load_manifest(path: Path) -> list[Case]:
    """Read a manifest.jsonl, resolving log paths relative to it."""
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    cases = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            cases.append(
                Case(
                    id=row["id"],
                    log=path.parent / row["log"],
                    pass_log=path.parent / row["pass_log"] if row.get("pass_log") else None,
                    gold=row.get("gold", []),
                    category=row.get("category"),
                    format=row.get("format", ""),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{path}:{number}: not a valid case ({exc})") from exc
    return cases


def read_lines(path: Path) -> Iterator[LogLine]:
    with path.open("rb") as stream:
        yield from parse_lines(stream)


def excerpt_case(case: Case, budget: int) -> tuple[Excerpt, list[LogLine]]:
    """Excerpt one case, using its passing log when it has one; also return its parsed lines."""
    passing = PassingIndex.build(read_lines(case.pass_log)) if case.pass_log else None
    excerpter = Excerpter(budget, passing)
    lines = []
    for line in read_lines(case.log):
        excerpter.feed(line)
        lines.append(line)
    return excerpter.finish(), lines


def raw_text_lines(path: Path) -> dict[int, str]:
    """The raw lines of a log, numbered by splitting the decompressed bytes on newlines."""
    import gzip

    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return {n: raw.decode("utf-8", errors="replace") for n, raw in enumerate(data.split(b"\n"), start=1)}


@dataclass(frozen=True, slots=True)
class CaseResult:
    """Scores of the excerpter and of the last-bytes baseline on one case."""

    case_id: str
    ours: CaseScore
    baseline: CaseScore
    category: str | None
    predicted_category: str | None


Classifier = Callable[[Excerpt], tuple[str, str, str]]


def evaluate_case(case: Case, budget: int) -> CaseResult:
    excerpt, _ = excerpt_case(case, budget)
    raw = raw_text_lines(case.log)
    pairs = [(line.number, line.text) for line in excerpt.lines]
    predicted = classify_excerpt(excerpt)[0] if case.category else None
    return CaseResult(
        case_id=case.id,
        ours=score_case(pairs, case.gold, raw),
        baseline=score_case(last_bytes_baseline(raw, budget), case.gold, raw),
        category=case.category,
        predicted_category=predicted,
    )


def classify_excerpt(excerpt: Excerpt) -> tuple[str, str, str]:
    """(category, severity, fingerprint) of an excerpt, with the default rules."""
    from bot.core.classify import classify
    from bot.core.fingerprint import fingerprint

    pairs = [(line.number, line.text) for line in excerpt.lines]
    result = classify(pairs)
    return (
        str(result.category),
        str(result.severity),
        fingerprint(result.key, [line.text for line in excerpt.lines]),
    )


def excerpt_row(case: Case, budget: int) -> dict[str, Any]:
    """One line of `mendbot excerpt` output for a case."""
    excerpt, _ = excerpt_case(case, budget)
    category, severity, fingerprint = classify_excerpt(excerpt)
    return {
        "id": case.id,
        "lines": [[line.number, line.text] for line in excerpt.lines],
        "category": category,
        "severity": severity,
        "fingerprint": fingerprint,
    }


def excerpt_rows(cases: list[Case], budget: int, workers: int = 2) -> Iterator[dict[str, Any]]:
    """Excerpt rows for every case, in manifest order, computed in parallel processes."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(excerpt_row, cases, [budget] * len(cases), chunksize=4)


@dataclass(frozen=True, slots=True)
class Report:
    """Figures for one budget: ours beside the baseline, plus category accuracy."""

    budget: int
    ours: Summary
    baseline: Summary
    category_accuracy: float | None
    categorized: int
    results: list[CaseResult]


def evaluate(cases: list[Case], budget: int, workers: int = 2, progress: Callable[[], Any] | None = None) -> Report:
    """Score every case at one budget, in parallel processes."""
    results: list[CaseResult] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(evaluate_case, cases, [budget] * len(cases), chunksize=4):
            results.append(result)
            if progress:
                progress()
    labeled = [r for r in results if r.category]
    accuracy = sum(r.category == r.predicted_category for r in labeled) / len(labeled) if labeled else None
    return Report(
        budget=budget,
        ours=summarize([r.ours for r in results]),
        baseline=summarize([r.baseline for r in results]),
        category_accuracy=accuracy,
        categorized=len(labeled),
        results=results,
    )
