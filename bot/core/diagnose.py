"""The offline diagnoser: a complete diagnosis from the rules and the excerpt, with no model."""

from __future__ import annotations

from collections.abc import Sequence

from bot.core import templates
from bot.core.classify import Classification, Rule, classify, default_rules
from bot.core.excerpt import line_score
from bot.core.fingerprint import fingerprint
from bot.core.models import Category, Diagnosis, Evidence, Excerpt, ExcerptLine, Severity
from bot.core.references import file_references

MAX_EVIDENCE = 5
RULE_CONFIDENCE = 0.6
FALLBACK_CONFIDENCE = 0.3
# Only these categories can be fixed by a config change (a timeout or a retry).
CONFIG_FIXABLE = frozenset({Category.TIMEOUT, Category.NETWORK})


def offline_diagnosis(excerpt: Excerpt, rules: Sequence[Rule] | None = None) -> Diagnosis:
    """Diagnose from rules alone; every field is filled and the notes say it is rule-based."""
    active = default_rules() if rules is None else list(rules)
    lines = excerpt.lines
    result = classify([(line.number, line.text) for line in lines], active)
    evidence = _evidence(excerpt, result)
    matched = result.rule_id != "fallback"
    notes = [templates.RULES_NOTE.format(rule_count=len(active))]
    if not matched:
        notes.append(templates.FALLBACK_RULE_NOTE)
    if result.timed_out_rules:
        notes.append(templates.SLOW_RULES_NOTE.format(rules=", ".join(result.timed_out_rules)))
    root_cause = result.summary
    if result.matched_text and result.matched_text not in root_cause:
        root_cause = f"{root_cause} The log says: “{_clip(result.matched_text, 200)}”"
    fixable = matched and result.category in CONFIG_FIXABLE
    return Diagnosis(
        severity=result.severity,
        category=result.category,
        root_cause=root_cause,
        impact=templates.IMPACT[result.category],
        recommendations=list(result.recommendations) or ["Read the evidence lines below and the full job log."],
        auto_fixable=fixable,
        fix_suggestion=templates.FIX_SUGGESTION.get(result.category) if fixable else None,
        evidence=evidence,
        # Only the failure's own content: the CLI, the Action and the App must agree on it, and one test
        # failing in several matrix jobs is one failure.
        fingerprint=fingerprint(result.key, [line.text for line in lines]),
        confidence=RULE_CONFIDENCE if matched else FALLBACK_CONFIDENCE,
        source="rules",
        notes=notes,
    )


def _evidence(excerpt: Excerpt, result: Classification) -> list[Evidence]:
    """The matched line first, then the most error-like lines of the excerpt, in log order."""
    job_of = {(line.number, line.text): block.job for block in excerpt.blocks for line in block.lines}
    scored = sorted(excerpt.lines, key=lambda line: -line_score(line.text))
    picked: list[ExcerptLine] = [line for line in excerpt.lines if line.number == result.matched_line][:1]
    for line in scored:
        if len(picked) >= MAX_EVIDENCE or line_score(line.text) < 2.0:
            break
        if line not in picked:
            picked.append(line)
    evidence = []
    for line in sorted(picked, key=lambda line: line.number):
        refs = file_references([line.text], limit=1)
        evidence.append(
            Evidence(
                line=line.number,
                text=line.text,
                job=job_of.get((line.number, line.text), ""),
                file=refs[0][0] if refs else None,
                file_line=refs[0][1] if refs else None,
            )
        )
    return evidence


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def severity_at_least(severity: Severity, threshold: Severity) -> bool:
    """True when `severity` is at or above `threshold`."""
    return severity.rank >= threshold.rank
