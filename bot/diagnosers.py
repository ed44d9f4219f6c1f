"""Diagnosers that plug into the Diagnoser port: the offline one, and a memory of model answers."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from bot.adapters.store import Store
from bot.core import templates
from bot.core.classify import Rule
from bot.core.diagnose import offline_diagnosis
from bot.core.models import Diagnosis, Excerpt
from bot.ports import Diagnoser, DiagnosisResult, FailureFacts

log = logging.getLogger(__name__)

MEMO_KIND = "model_diagnosis"


@dataclass(frozen=True)
class OfflineDiagnoser:
    """The embedded default when no model is configured: rules and the excerpt only."""

    rules: Sequence[Rule] | None = None

    def diagnose(self, facts: FailureFacts, now: datetime) -> DiagnosisResult:
        rules = facts.rules if facts.rules is not None else self.rules
        diagnosis = offline_diagnosis(facts.excerpt, rules)
        return DiagnosisResult(diagnosis=diagnosis)


def excerpt_digest(excerpt: Excerpt) -> str:
    """Identifies an excerpt exactly: its jobs, steps, line numbers and texts."""
    return hashlib.sha256(excerpt.model_dump_json().encode("utf-8")).hexdigest()[:32]


class RememberingDiagnoser:
    """Ask the model once per excerpt: the same excerpt in the same repository gets the earlier answer back.

    A recurring failure, or a `claude-ready` label added again to an issue whose logs did not change,
    then costs no second model call. The answer is kept in the side-effect ledger, so it survives restarts.
    """

    def __init__(self, inner: Diagnoser, store: Store) -> None:
        self.inner = inner
        self.store = store

    def diagnose(self, facts: FailureFacts, now: datetime) -> DiagnosisResult:
        key = f"model-memo:{facts.repository}:{excerpt_digest(facts.excerpt)}"
        remembered = self._recall(key)
        if remembered is not None:
            return remembered
        result = self.inner.diagnose(facts, now)
        if result.model is not None and result.diagnosis.source == "model":
            try:
                self.store.record_effect(
                    key,
                    kind=MEMO_KIND,
                    repository=facts.repository,
                    now=now,
                    target=result.model[:255],
                    detail={"diagnosis": result.diagnosis.model_dump(mode="json")},
                )
            except Exception as error:  # a memo that is not written only costs a later call
                log.warning("model diagnosis for %s not remembered: %s", facts.repository, type(error).__name__)
        return result

    def _recall(self, key: str) -> DiagnosisResult | None:
        try:
            effect = self.store.get_effect(key)
        except Exception as error:
            log.warning("model diagnoses could not be looked up: %s", type(error).__name__)
            return None
        if effect is None or not effect.completed or not effect.detail:
            return None
        try:
            diagnosis = Diagnosis.model_validate(effect.detail.get("diagnosis"))
        except ValidationError:
            return None
        note = templates.MODEL_REMEMBERED_NOTE.format(when=effect.created_at)
        diagnosis = diagnosis.model_copy(update={"notes": [note, *diagnosis.notes]})
        return DiagnosisResult(diagnosis=diagnosis, model=effect.target or "the model")
