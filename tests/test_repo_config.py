"""The repository's .github/mendbot.yml: validated, merged with defaults, published as a JSON Schema."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest

from bot.core.classify import classify
from bot.core.models import Category, Severity
from bot.policy.repo_config import RepoConfig, WorkflowFilter, config_json_schema, parse_repo_config

REPO_ROOT = Path(__file__).resolve().parent.parent
FULL = """\
workflows:
  include: [CI, "release-*"]
  exclude: [".github/workflows/nightly.yml"]
severity_threshold: medium
labels:
  base: [mendbot, ci-failure]
  severity_prefix: "sev/"
  category_prefix: null
dedup_window_hours: 6
rate_limits:
  diagnoses_per_hour: 10
  comments_per_hour: 5
  issues_per_hour: 2
  issue_updates_per_hour: 1
  notifications_per_hour: 3
notify: ["slack://token@channel"]
diagnose_forks: false
dry_run: true
rules: |
  [[rule]]
  id = "flaky-port"
  category = "network"
  severity = "low"
  pattern = 'Address already in use'
  title = "Port clash"
  summary = "Two tests bound the same port."
"""


def test_no_file_means_the_defaults() -> None:
    loaded = parse_repo_config(None)
    assert loaded.problems == () and loaded.digest is None
    config = loaded.config
    assert config.severity_threshold is Severity.HIGH
    assert config.dedup_window == timedelta(hours=24)
    assert config.labels.for_issue(Severity.HIGH, Category.TIMEOUT) == (
        "mendbot",
        "bug",
        "claude-ready",
        "severity:high",
        "type:timeout",
    )
    assert config.diagnose_forks is True and config.dry_run is False
    assert config.workflows.watches("CI", ".github/workflows/ci.yml")


def test_every_key_is_read() -> None:
    loaded = parse_repo_config(FULL)
    assert loaded.problems == ()
    config = loaded.config
    assert config.severity_threshold is Severity.MEDIUM
    assert config.labels.for_issue(Severity.LOW, Category.LINT) == ("mendbot", "ci-failure", "sev/low")
    assert config.dedup_window == timedelta(hours=6)
    assert config.rate_limits.issues_per_hour == 2 and config.rate_limits.issue_updates_per_hour == 1
    assert config.notify == ["slack://token@channel"]
    assert config.rate_limits.notifications_per_hour == 3
    assert config.diagnose_forks is False and config.dry_run is True
    assert loaded.rules[0].id == "flaky-port" and len(loaded.rules) > 1


def test_workflow_filters_match_name_path_or_file_name() -> None:
    config = parse_repo_config(FULL).config.workflows
    assert config.watches("CI", ".github/workflows/ci.yml")
    assert config.watches("release-linux", ".github/workflows/release.yml")
    assert not config.watches("Docs", ".github/workflows/docs.yml")
    assert not config.watches("CI", ".github/workflows/nightly.yml")
    assert WorkflowFilter(exclude=["ci.yml"]).watches("CI", ".github/workflows/ci.yml") is False


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("severity_threshold: urgent\n", "severity_threshold"),
        ("labelz: [a]\n", "labelz"),
        ("dedup_window_hours: -1\n", "dedup_window_hours"),
        ("rate_limits:\n  issues_per_hour: lots\n", "rate_limits.issues_per_hour"),
        ("workflows: [CI]\n", "workflows"),
        ("- just\n- a list\n", "mapping"),
        ("key: [unclosed\n", "not valid YAML"),
        ("a: 1\na: 2\n", "not valid YAML"),
        ("rules: |\n  [[rule]]\n  id = 'x'\n", "rules"),
        (
            "rules: \"[[rule]]\\nid = 'bad'\\ncategory = 'lint'\\nseverity = 'low'\\npattern = '('\\n"
            "title = 't'\\nsummary = 's'\\n\"\n",
            "invalid pattern",
        ),
        ("x: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
    ids=[
        "bad-enum",
        "unknown-key",
        "negative",
        "wrong-type",
        "wrong-shape",
        "not-a-mapping",
        "yaml-syntax",
        "duplicate-key",
        "incomplete-rule",
        "bad-regex",
        "python-tag",
    ],
)
def test_an_invalid_file_gives_defaults_and_a_reason(text: str, problem: str) -> None:
    loaded = parse_repo_config(text)
    assert loaded.config == RepoConfig()
    assert loaded.digest is not None and len(loaded.digest) == 16
    assert any(problem in reason for reason in loaded.problems), loaded.problems


def test_a_huge_file_is_not_parsed() -> None:
    loaded = parse_repo_config("notify: []\n" + "#" * 70_000)
    assert loaded.problems and "bytes" in loaded.problems[0]


def test_the_digest_changes_with_the_file() -> None:
    assert parse_repo_config("a: 1\n").digest != parse_repo_config("a: 2\n").digest


def test_the_published_schema_is_current_and_accepts_the_example() -> None:
    published = json.loads((REPO_ROOT / "docs" / "mendbot-config.schema.json").read_text())
    assert published == config_json_schema(), "regenerate docs/mendbot-config.schema.json"
    from ruamel.yaml import YAML

    jsonschema.validate(YAML(typ="safe", pure=True).load(FULL), published)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"severity_threshold": "urgent"}, published)


def test_the_configuration_reference_documents_every_key_and_setting() -> None:
    from bot.settings import Settings

    text = (REPO_ROOT / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"MENDBOT_{name.upper()}" in text, name
    assert "ANTHROPIC_API_KEY" in text
    schema = config_json_schema()
    for key in schema["properties"]:
        assert f"`{key}`" in text, key
    for section in ("WorkflowFilter", "LabelConfig", "RateLimits"):
        for key in schema["$defs"][section]["properties"]:
            assert f"`{key}`" in text, key


def test_a_repository_rule_that_backtracks_forever_cannot_hang_classification() -> None:
    loaded = parse_repo_config(
        "rules: |\n  [[rule]]\n  id = \"x\"\n  category = \"unknown\"\n  severity = \"low\"\n"
        "  pattern = '''(a|aa)+$'''\n  title = \"t\"\n  summary = \"s\"\n"
    )
    started = time.perf_counter()

    result = classify([(1, "error: build failed"), (2, "a" * 300 + "!")], loaded.rules)

    assert time.perf_counter() - started < 1.0
    assert loaded.problems == ()
    assert result.timed_out_rules == ("x",)


def test_alerts_are_capped_at_ten_an_hour_by_default() -> None:
    assert RepoConfig().rate_limits.notifications_per_hour == 10
    assert RepoConfig().notify == []


@pytest.mark.parametrize(
    "text",
    [
        "notify: ['']\n",
        f"notify: ['json://{'a' * 2100}']\n",
        "notify: [" + ", ".join(["'slack://a/b/c'"] * 21) + "]\n",
        "notify: 'slack://a/b/c'\n",
        "rate_limits:\n  notifications_per_hour: -1\n",
    ],
)
def test_a_bad_notify_list_or_alert_limit_is_a_config_problem(text: str) -> None:
    loaded = parse_repo_config(text)
    assert loaded.problems and loaded.config == RepoConfig()
