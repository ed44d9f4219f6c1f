"""The Claude-backed diagnoser: caps and breaker first, then a checked model answer, else the rules."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from bot.adapters.anthropic import ModelUnavailable, load_system_prompt
from bot.adapters.store import Store
from bot.core import templates
from bot.core.logs import LogLine
from bot.core.models import Diagnosis, ExcerptBlock, ExcerptLine
from bot.core.prompt import (
    DEFAULT_BUDGET,
    AnswerError,
    BuiltPrompt,
    ModelAnswer,
    PromptError,
    SourceSnippet,
    TokenUsage,
    build_prompt,
    parse_answer,
)
from bot.core.redact import RedactionError, redact_text
from bot.core.verify import verify_evidence
from bot.diagnosers import OfflineDiagnoser
from bot.policy import limits as spending
from bot.policy.limits import CircuitBreaker, LimitsConfig, PriceTable
from bot.ports import DiagnosisResult, FailureFacts

log = logging.getLogger(__name__)


class ModelClient(Protocol):
    """What the diagnoser needs from the model adapter (bot.adapters.anthropic.ClaudeDiagnoser)."""

    model: str

    def diagnose(self, prompt: BuiltPrompt) -> ModelAnswer: ...

    def retry_with_error(
        self, prompt: BuiltPrompt, previous: ModelAnswer, validation_error: str
    ) -> ModelAnswer: ...


def total_usage(answers: list[ModelAnswer]) -> TokenUsage:
    return TokenUsage(
        input_tokens=sum(a.usage.input_tokens for a in answers),
        output_tokens=sum(a.usage.output_tokens for a in answers),
        cache_read_tokens=sum(a.usage.cache_read_tokens for a in answers),
        cache_write_tokens=sum(a.usage.cache_write_tokens for a in answers),
    )


def excerpt_log_lines(facts: FailureFacts) -> list[LogLine]:
    """The lines the model was shown, by job and number: its evidence can only honestly quote these."""
    return [
        LogLine(number=line.number, text=line.text, job=block.job, step=block.step)
        for block in facts.excerpt.blocks
        for line in block.lines
    ]


class ModelDiagnoser:
    """Diagnose with Claude within the spending caps; every way that fails ends in the rules diagnosis.

    The fingerprint always comes from the rules, so deduplication does not depend on what the model says.
    """

    def __init__(
        self,
        client: ModelClient,
        store: Store,
        limits: LimitsConfig,
        prices: PriceTable,
        offline: OfflineDiagnoser,
        breaker: CircuitBreaker,
        prompt_budget: int = DEFAULT_BUDGET,
        system_prompt: str | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.limits = limits
        self.prices = prices
        self.offline = offline
        self.breaker = breaker
        self.prompt_budget = prompt_budget
        self.system_prompt = system_prompt if system_prompt is not None else load_system_prompt()
        self.redact = redact  # None: the core's own redaction (bot.core.redact)

    def diagnose(self, facts: FailureFacts, now: datetime) -> DiagnosisResult:
        rules = self.offline.diagnose(facts, now)
        decision = spending.check(self.store, facts.repository, facts.installation_id, now, self.limits)
        if not decision.allowed:
            return _with_note(rules, templates.MODEL_CAPPED_NOTE.format(reasons="; ".join(decision.reasons)))
        try:
            prompt = self._prompt(facts)
        except RedactionError:
            return _with_note(rules, templates.MODEL_REDACTION_NOTE)
        except PromptError:
            return _with_note(rules, templates.MODEL_PROMPT_NOTE)
        # Asked only now, so a half-open trial is never spent on a prompt that was not going to be sent.
        if not self.breaker.allow(now):
            until = self.breaker.open_until or now
            return _with_note(rules, templates.MODEL_BREAKER_NOTE.format(until=until))

        answers: list[ModelAnswer] = []
        try:
            diagnosis = self._ask(prompt, rules.diagnosis.fingerprint, answers, now)
        except ModelUnavailable as error:
            self.breaker.failure(now)
            result = _with_note(rules, templates.MODEL_UNAVAILABLE_NOTE.format(reason=error))
            return self._charge(result, facts, answers, now) if answers else result
        if diagnosis is None:
            return self._charge(_with_note(rules, templates.MODEL_INVALID_NOTE), facts, answers, now)

        verified = verify_evidence(diagnosis, excerpt_log_lines(facts), facts.fetched_files)
        if verified.all_invented:
            return self._charge(_with_note(rules, templates.MODEL_INVENTED_NOTE), facts, answers, now)
        return self._charge(DiagnosisResult(diagnosis=verified.diagnosis), facts, answers, now)

    def _prompt(self, facts: FailureFacts) -> BuiltPrompt:
        facts = self._redacted(facts)
        return build_prompt(
            facts.excerpt,
            system=self.system_prompt,
            job=facts.job,
            step=facts.step,
            sources=facts.sources,
            commits=facts.commits,
            green_diff=facts.green_diff,
            issue_body=facts.issue_body,
            budget=self.prompt_budget,
            redact=self.redact,
        )

    def _redacted(self, facts: FailureFacts) -> FailureFacts:
        """The multi-line inputs redacted as whole texts before the prompt splits them into lines.

        build_prompt redacts line by line, and a private key split over lines is only recognisable from
        its BEGIN line: once that line alone is redacted, the key's body lines would go out as they are.
        """
        blocks = [self._redacted_block(block) for block in facts.excerpt.blocks]
        excerpt = facts.excerpt.model_copy(update={"blocks": blocks})
        sources = [
            SourceSnippet(path, start, "\n".join(self._redact_lines(text.splitlines())))
            for path, start, text in facts.sources
        ]
        green_diff = self._redact_lines(list(facts.green_diff))
        return replace(facts, excerpt=excerpt, sources=sources, green_diff=green_diff)

    def _redacted_block(self, block: ExcerptBlock) -> ExcerptBlock:
        texts = self._redact_lines([line.text for line in block.lines])
        pairs = zip(block.lines, texts, strict=True)
        lines = [ExcerptLine(number=line.number, text=text) for line, text in pairs]
        return block.model_copy(update={"lines": lines})

    def _redact_lines(self, lines: Sequence[str]) -> list[str]:
        if not lines:
            return []
        redact = self.redact or redact_text
        redacted = redact("\n".join(line.replace("\n", " ") for line in lines)).split("\n")
        if len(redacted) != len(lines):
            raise RedactionError("redaction changed the number of lines")
        return redacted

    def _ask(
        self, prompt: BuiltPrompt, fingerprint: str, answers: list[ModelAnswer], now: datetime
    ) -> Diagnosis | None:
        """The parsed answer, retrying once with the validation error; None if it was invalid twice.

        Every answer received is appended to `answers`, so its tokens are charged whatever happens next.
        """
        first = self.client.diagnose(prompt)
        answers.append(first)
        self.breaker.success(now)
        try:
            return parse_answer(first.tool_input, fingerprint)
        except AnswerError as error:
            problem = str(error) or "the report_diagnosis input was missing"
        second = self.client.retry_with_error(prompt, first, problem)
        answers.append(second)
        try:
            return parse_answer(second.tool_input, fingerprint)
        except AnswerError:
            return None

    def _charge(
        self, result: DiagnosisResult, facts: FailureFacts, answers: list[ModelAnswer], now: datetime
    ) -> DiagnosisResult:
        """Record what the calls cost (the tokens were spent even if the answer went unused) and say so."""
        usage = total_usage(answers)
        model = answers[-1].model or self.client.model
        cost = spending.cost_usd(usage, model, self.prices)
        try:
            spending.record(
                self.store, facts.repository, facts.installation_id, usage, cost, now, calls=len(answers)
            )
        except Exception as error:
            # The answer is still good to post; with the store down, the next check fails closed anyway.
            log.warning("model usage for %s was not recorded: %s", facts.repository, type(error).__name__)
        return replace(
            result,
            model=model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cost_usd=cost,
        )


def _with_note(result: DiagnosisResult, note: str) -> DiagnosisResult:
    diagnosis = result.diagnosis.model_copy(update={"notes": [note, *result.diagnosis.notes]})
    return replace(result, diagnosis=diagnosis)
