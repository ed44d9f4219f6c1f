"""Fixtures every test module may use: where the shared datasets live, and skipping without them."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared folder; tests that need it skip when a fresh clone does not have it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture
def dataset_dir(shared_dir: Path) -> Path:
    path = shared_dir / "datasets" / "ci-logs"
    if not (path / "manifest.jsonl").is_file():
        pytest.skip("../shared/datasets/ci-logs is not present")
    return path


@pytest.fixture
def github_fixtures(shared_dir: Path) -> Path:
    path = shared_dir / "fixtures" / "github"
    if not path.is_dir():
        pytest.skip("../shared/fixtures/github is not present")
    return path
