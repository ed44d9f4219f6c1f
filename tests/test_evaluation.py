"""The dataset runner: manifests, per-case scores and the batch excerpt rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.evaluation import ManifestError, evaluate, excerpt_row, load_manifest

MANIFEST = Path(__file__).parent / "fixtures" / "logs" / "manifest.jsonl"


def test_manifest_resolves_logs_relative_to_itself() -> None:
    cases = load_manifest(MANIFEST)
    assert len(cases) == 3
    assert all(case.log.is_file() for case in cases)
    assert any(case.pass_log and case.pass_log.is_file() for case in cases)


def test_bad_manifest_lines_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "manifest.jsonl"
    bad.write_text('{"id": "a", "log": "a.log"}\nnot json\n')
    with pytest.raises(ManifestError, match=r"manifest.jsonl:2"):
        load_manifest(bad)
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "missing.jsonl")


def test_fixture_cases_are_found_and_beat_or_match_the_baseline() -> None:
    report = evaluate(load_manifest(MANIFEST), 4096, workers=1)
    assert report.ours.cases == 3
    assert report.ours.hit == 1.0
    assert report.ours.recall >= report.baseline.recall
    assert report.category_accuracy is not None and report.categorized == 1


def test_excerpt_row_has_the_documented_shape() -> None:
    case = load_manifest(MANIFEST)[0]
    row = excerpt_row(case, 2048)
    assert set(row) == {"id", "lines", "category", "severity", "fingerprint"}
    assert row["id"] == case.id
    assert all(isinstance(n, int) and isinstance(text, str) for n, text in row["lines"])
    assert sum(len(text.encode()) + 1 for _, text in row["lines"]) <= 2048
    json.dumps(row)
