"""A repository's own .github/mendbot.yml: parsed with ruamel.yaml, validated, merged with the defaults."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from bot.core.classify import Rule, RuleError, default_rules, load_rules, merge_rules
from bot.core.models import Category, Severity

CONFIG_PATH = ".github/mendbot.yml"
MAX_CONFIG_BYTES = 64 * 1024
MAX_PROBLEMS = 10


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkflowFilter(_Strict):
    """Glob patterns matched against a workflow's name, its file path and its file name."""

    include: list[str] = Field(
        default_factory=list, max_length=100, description="watch only these workflows; empty watches all"
    )
    exclude: list[str] = Field(default_factory=list, max_length=100, description="never watch these")

    def watches(self, name: str, path: str) -> bool:
        candidates = [name, path, path.rsplit("/", 1)[-1]]

        def hit(patterns: Sequence[str]) -> bool:
            return any(
                fnmatchcase(candidate, pattern)
                for pattern in patterns
                for candidate in candidates
                if candidate
            )

        if hit(self.exclude):
            return False
        return not self.include or hit(self.include)


class LabelConfig(_Strict):
    base: list[str] = Field(
        default_factory=lambda: ["mendbot", "bug", "claude-ready"],
        max_length=20,
        description="labels every incident issue gets",
    )
    severity_prefix: str | None = Field(
        default="severity:", max_length=40, description="label `{prefix}{severity}`; null for none"
    )
    category_prefix: str | None = Field(
        default="type:", max_length=40, description="label `{prefix}{category}`; null for none"
    )

    @field_validator("base")
    @classmethod
    def _label_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name.strip() or len(name) > 50:
                raise ValueError("a label name must be 1 to 50 characters")
        return names

    def for_issue(self, severity: Severity, category: Category) -> tuple[str, ...]:
        labels = list(self.base)
        if self.severity_prefix is not None:
            labels.append(f"{self.severity_prefix}{severity}")
        if self.category_prefix is not None:
            labels.append(f"{self.category_prefix}{category}")
        return tuple(dict.fromkeys(labels))


class RateLimits(_Strict):
    diagnoses_per_hour: int = Field(default=60, ge=0, le=10_000, description="failed runs diagnosed per hour")
    comments_per_hour: int = Field(default=60, ge=0, le=1_000, description="PR comments written per hour")
    issues_per_hour: int = Field(default=10, ge=0, le=500, description="incident issues opened per hour")
    issue_updates_per_hour: int = Field(
        default=6, ge=0, le=500, description="occurrence updates per incident issue per hour"
    )
    notifications_per_hour: int = Field(
        default=10, ge=0, le=500, description="alerts sent to the notify targets per hour"
    )


class RepoConfig(_Strict):
    """What a repository may say about how Mendbot treats it; every key is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Mendbot repository configuration")

    workflows: WorkflowFilter = Field(default_factory=WorkflowFilter)
    severity_threshold: Severity = Field(
        default=Severity.HIGH, description="open issues only at or above this severity"
    )
    labels: LabelConfig = Field(default_factory=LabelConfig)
    dedup_window_hours: float = Field(
        default=24.0, gt=0, le=24 * 90, description="a repeat inside this window updates the issue quietly"
    )
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    notify: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(
        default_factory=list,
        max_length=20,
        description="apprise URLs alerted when Mendbot opens a new incident issue",
    )
    diagnose_forks: bool = Field(default=True, description="diagnose runs from forks (never fix them)")
    dry_run: bool = Field(default=False, description="print what Mendbot would do instead of doing it")
    rules: str | None = Field(
        default=None,
        max_length=32_000,
        description="extra classification rules as TOML [[rule]] tables, tried first",
    )

    @field_validator("rules")
    @classmethod
    def _rules_compile(cls, text: str | None) -> str | None:
        if text is not None:
            try:
                load_rules(text)
            except RuleError as exc:
                raise ValueError(str(exc)) from None
        return text

    @property
    def dedup_window(self) -> timedelta:
        return timedelta(hours=self.dedup_window_hours)


@dataclass(frozen=True)
class LoadedConfig:
    """The config in force, the problems found in the file (then it is the defaults) and its digest."""

    config: RepoConfig
    problems: tuple[str, ...] = ()
    digest: str | None = None
    rules: list[Rule] = field(default_factory=default_rules)


def parse_repo_config(text: str | None) -> LoadedConfig:
    """Parse the text (None: no file); an invalid file yields the defaults plus the problems found."""
    if text is None or not text.strip():
        return LoadedConfig(RepoConfig())
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        return LoadedConfig(RepoConfig(), (f"the file is over {MAX_CONFIG_BYTES} bytes",), digest)
    try:
        document: Any = YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        return LoadedConfig(RepoConfig(), (f"not valid YAML{line}: {problem}",), digest)
    if document is None:
        return LoadedConfig(RepoConfig(), (), digest)
    if not isinstance(document, dict):
        return LoadedConfig(RepoConfig(), ("the file must be a mapping of keys to values",), digest)
    try:
        config = RepoConfig.model_validate(document)
    except ValidationError as exc:
        problems = tuple(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
            for error in exc.errors()[:MAX_PROBLEMS]
        )
        return LoadedConfig(RepoConfig(), problems, digest)
    rules = default_rules()
    if config.rules:
        rules = merge_rules(load_rules(config.rules), rules)
    return LoadedConfig(config, (), digest, rules)


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema published as docs/mendbot-config.schema.json."""
    schema = RepoConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
