"""The plain data that flows through the core: excerpts and diagnoses."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class Category(StrEnum):
    TEST_FAILURE = "test_failure"
    COMPILE_ERROR = "compile_error"
    LINT = "lint"
    DEPENDENCY = "dependency"
    NETWORK = "network"
    TIMEOUT = "timeout"
    OOM = "oom"
    CRASH = "crash"
    INFRASTRUCTURE = "infrastructure"
    CONFIGURATION = "configuration"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class ExcerptLine(BaseModel):
    """One chosen line: its number in the original log and its cleaned (and redacted) text."""

    model_config = ConfigDict(frozen=True)

    number: int
    text: str


class ExcerptBlock(BaseModel):
    """Consecutive chosen lines from one job and step."""

    model_config = ConfigDict(frozen=True)

    job: str = ""
    step: str = ""
    lines: list[ExcerptLine]


class Excerpt(BaseModel):
    """The lines that explain a failure, within a byte budget, grouped into labeled blocks."""

    model_config = ConfigDict(frozen=True)

    blocks: list[ExcerptBlock]
    budget: int
    total_lines: int = 0

    @property
    def lines(self) -> list[ExcerptLine]:
        return [line for block in self.blocks for line in block.lines]

    @property
    def size(self) -> int:
        """Bytes the excerpt costs: UTF-8 text plus one newline per line."""
        return sum(len(line.text.encode("utf-8")) + 1 for line in self.lines)

    def as_text(self) -> str:
        return "\n".join(line.text for line in self.lines)


class Evidence(BaseModel):
    """A log line quoted as evidence, optionally with the source location it points to."""

    line: int = Field(description="1-based line number in the failed log")
    text: str = Field(description="the line's text, quoted exactly as it appears in the excerpt")
    job: str = Field(default="", description="the job whose log holds the line")
    file: str | None = Field(default=None, description="a source file the line points to, if any")
    file_line: int | None = Field(default=None, description="the line in that source file, if any")


class Diagnosis(BaseModel):
    """Why a CI run failed and what to do about it."""

    severity: Severity
    category: Category
    root_cause: str = Field(description="one or two sentences: why the run failed")
    impact: str = Field(description="what this failure blocks or breaks")
    recommendations: list[str] = Field(description="concrete next steps, most useful first")
    auto_fixable: bool = Field(description="true only if a config-only change (timeout, retry, env) fixes it")
    fix_suggestion: str | None = Field(default=None, description="the config change, if auto_fixable")
    evidence: list[Evidence] = Field(description="log lines that show the cause")
    fingerprint: str = Field(description="stable id of this failure across reruns")
    confidence: float = Field(ge=0.0, le=1.0)
    source: Literal["rules", "model"]
    notes: list[str] = Field(default_factory=list, description="caveats: fallbacks, dropped evidence, caps")

    @property
    def summary(self) -> str:
        first = self.root_cause.strip().split("\n", 1)[0]
        return first if len(first) <= 120 else first[:119] + "…"


def diagnosis_json_schema() -> dict[str, object]:
    """The published JSON Schema of a diagnosis (docs/diagnosis.schema.json)."""
    return Diagnosis.model_json_schema()
