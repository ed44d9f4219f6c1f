"""The small interfaces between the services and the outside world; adapters implement them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from bot.core.classify import Rule
from bot.core.models import Diagnosis, Excerpt
from bot.core.prompt import CommitInfo, SourceSnippet


@dataclass(frozen=True)
class FailureFacts:
    """Everything gathered about one failure before it is diagnosed; plain data, no clients."""

    repository: str
    excerpt: Excerpt
    installation_id: int | None = None
    job: str = ""
    step: str = ""
    workflow: str = ""
    sources: Sequence[SourceSnippet] = ()
    commits: Sequence[CommitInfo] = ()
    green_diff: Sequence[str] = ()
    issue_body: str | None = None
    # The fetched source files by repository path, to check the `file:line` a diagnosis cites.
    fetched_files: dict[str, str] = field(default_factory=dict)
    # The repository's own rules merged over the defaults (.github/mendbot.yml); None: the defaults. Every
    # rules diagnosis uses them, including the fallback inside a model diagnoser.
    rules: Sequence[Rule] | None = None


@dataclass(frozen=True)
class DiagnosisResult:
    """A diagnosis and, when a model produced it, what it cost."""

    diagnosis: Diagnosis
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0

    def usage_for_footer(self) -> dict[str, object] | None:
        if self.model is None:
            return None
        return {
            "model": self.model,
            "input_tokens": self.input_tokens + self.cache_read_tokens + self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost_usd,
        }


class Diagnoser(Protocol):
    """Turns gathered facts into a diagnosis: the rules offline, or a model behind policy gates."""

    def diagnose(self, facts: FailureFacts, now: datetime) -> DiagnosisResult: ...


@dataclass(frozen=True)
class TargetResult:
    """What became of one notify target. `target` is safe to log and show: never the whole URL."""

    target: str
    sent: bool
    reason: str = ""


@dataclass(frozen=True)
class TargetCheck:
    """Whether one notify URL may be used: `refusal` says why not, and is empty when it may."""

    target: str
    refusal: str = ""


class Notifier(Protocol):
    """Sends short alerts to a repository's notify URLs, after checking that each one may be used."""

    def check(self, urls: Sequence[str]) -> list[TargetCheck]:
        """One check per URL, in order; `send` checks again, so an address that changed is still refused."""
        ...

    def send(self, urls: Sequence[str], title: str, body: str) -> list[TargetResult]:
        """Send to each URL in turn; a refused or failing one is reported, never raised."""
        ...
