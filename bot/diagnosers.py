"""Diagnosers that plug into the Diagnoser port; the offline one needs nothing but the rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.core.classify import Rule
from bot.core.diagnose import offline_diagnosis
from bot.ports import DiagnosisResult, FailureFacts


@dataclass(frozen=True)
class OfflineDiagnoser:
    """The embedded default when no model is configured: rules and the excerpt only."""

    rules: Sequence[Rule] | None = None

    def diagnose(self, facts: FailureFacts, now: datetime) -> DiagnosisResult:
        diagnosis = offline_diagnosis(facts.excerpt, self.rules, job=facts.job, workflow=facts.workflow)
        return DiagnosisResult(diagnosis=diagnosis)
