"""Diagnosers that plug into the Diagnoser port: the offline one, and a memory of model answers."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import ValidationError

from bot.core import templates
from bot.core.classify import Rule
from bot.core.diagnose import offline_diagnosis
from bot.core.excerpt import signature
from bot.core.models import Diagnosis, Excerpt
from bot.ports import Diagnoser, DiagnosisResult, FailureFacts

if TYPE_CHECKING:
    # Only the model path needs the store; the offline CLI must not pay for importing SQLAlchemy.
    from bot.adapters.store import Store

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
    """Identifies what an excerpt says: its jobs, steps and lines with numbers and hashes masked. Where the
    lines sit in the log is left out, so a rerun of the same failure, which shifts them, matches."""
    shape = [[block.job, block.step, [signature(line.text) for line in block.lines]] for block in excerpt.blocks]
    return hashlib.sha256(json.dumps(shape).encode("utf-8")).hexdigest()[:32]


def _moved_to(diagnosis: Diagnosis, excerpt: Excerpt) -> Diagnosis:
    """The remembered answer with its evidence pointed at the same lines in this log, which may sit
    elsewhere; evidence with no counterpart here is left out rather than shown at a wrong line."""
    here = {(block.job, signature(line.text)): line for block in excerpt.blocks for line in block.lines}
    anywhere = {signature(line.text): (block.job, line) for block in excerpt.blocks for line in block.lines}
    evidence = []
    for item in diagnosis.evidence:
        key = signature(item.text)
        found = here.get((item.job, key))
        job = item.job
        if found is None and key in anywhere:
            job, found = anywhere[key]
        if found is not None:
            evidence.append(item.model_copy(update={"line": found.number, "text": found.text, "job": job}))
    return diagnosis.model_copy(update={"evidence": evidence})


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
        remembered = self._recall(key, facts.excerpt)
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

    def _recall(self, key: str, excerpt: Excerpt) -> DiagnosisResult | None:
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
        diagnosis = _moved_to(diagnosis, excerpt).model_copy(update={"notes": [note, *diagnosis.notes]})
        return DiagnosisResult(diagnosis=diagnosis, model=effect.target or "the model")
