"""Check a model diagnosis's evidence against the real log and fetched sources, dropping what is invented."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot.core.logs import ANSI_RE, GHA_TIMESTAMP_RE, LogLine
from bot.core.models import Diagnosis, Evidence
from bot.core.prompt import sanitize_untrusted
from bot.core.redact import PLACEHOLDER_RE, RedactionError, redact_text

# A quote may skip text with an ellipsis and hide secrets behind placeholders; each fragment must still
# match, and each placeholder must stand where the line the model was shown has one.
FRAGMENT_SPLIT_RE = re.compile(rf"(…|\.\.\.|{PLACEHOLDER_RE.pattern})")
BARE_PLACEHOLDER = "[REDACTED]"
# Models miscount by a line or two; a quote found this close is real evidence with a wrong number.
NEARBY_LINES = 2
# Fragments this short ("a", "ok") would match almost any line, so they prove nothing.
MIN_QUOTE_CHARS = 8
# A diagnosis that quotes nothing cannot be checked, so it cannot be trusted more than this.
UNEVIDENCED_CONFIDENCE = 0.3


@dataclass(frozen=True)
class VerifiedDiagnosis:
    """The diagnosis with only checked evidence, its confidence scaled down, and what was changed."""

    diagnosis: Diagnosis
    dropped: list[Evidence]
    corrected: list[tuple[int, int]]  # (quoted line, line where the quote really is)
    verified_fraction: float  # the share of the evidence whose every claim checked out
    all_invented: bool  # evidence was given and none of it is in the log


def normalize_for_match(text: str) -> str:
    """Reduce a line to what the model was shown: no ANSI, timestamp, hidden characters or extra spaces."""
    text = GHA_TIMESTAMP_RE.sub("", ANSI_RE.sub("", text), count=1)
    return " ".join(sanitize_untrusted(text).split())


def quote_matches(quote: str, original: str) -> bool:
    """True if the quote's fragments and placeholders appear, in order, in the redacted, normalised line.

    A placeholder names its kind ([REDACTED:github_token]) or not ([REDACTED]); either must be one the
    redactor put in the line, so text the model invents inside brackets never verifies.
    """
    try:
        # Redacted as the excerpt was: after the terminal codes and timestamp are gone.
        target = normalize_for_match(redact_text(GHA_TIMESTAMP_RE.sub("", ANSI_RE.sub("", original), count=1)))
    except RedactionError:
        return False
    position = 0
    matched = 0
    for index, part in enumerate(FRAGMENT_SPLIT_RE.split(quote)):
        if index % 2:  # a separator: an ellipsis skips text, a placeholder must be there
            if part in ("…", "..."):
                continue
            found, length = _find_placeholder(part, target, position)
        else:
            fragment = normalize_for_match(part)
            if not fragment:
                continue
            found, length = target.find(fragment, position), len(fragment)
            matched += length
        if found < 0:
            return False
        position = found + length
    return bool(matched and target) and matched >= min(MIN_QUOTE_CHARS, len(target))


def _find_placeholder(placeholder: str, target: str, position: int) -> tuple[int, int]:
    if placeholder != BARE_PLACEHOLDER:
        return target.find(placeholder, position), len(placeholder)
    found = PLACEHOLDER_RE.search(target, position)
    return (found.start(), len(found.group())) if found else (-1, 0)


def verify_evidence(
    diagnosis_input: Diagnosis,
    log_lines: Mapping[int, str] | Sequence[LogLine],
    fetched_sources: Mapping[str, str],
) -> VerifiedDiagnosis:
    """Hold each piece of evidence to the log and the fetched sources; keep what checks out.

    A log quote must be in the log, at its line or NEARBY_LINES away, or the evidence is dropped. A source
    location must be in a fetched file: a quote that checks out loses a location that does not and stays,
    counted as unverified; evidence that is only a source location is dropped with it. Confidence is scaled
    by the verified share, and a note records every change. Notes name log line numbers only, never the
    model's text (quotes or paths), because they are shown to people.
    """
    logs = _index(log_lines)
    kept: list[Evidence] = []
    dropped: list[Evidence] = []
    not_in_log: list[Evidence] = []
    not_fetched: list[Evidence] = []
    corrected: list[tuple[int, int]] = []
    notes: list[str] = []
    verified = 0
    for evidence in diagnosis_input.evidence:
        source_ok = _source_exists(evidence, fetched_sources)
        if not normalize_for_match(evidence.text):
            # Nothing quoted, so the source location is the whole claim; with none, there is no claim.
            if evidence.file is not None and source_ok:
                kept.append(evidence)
                verified += 1
            else:
                not_fetched.append(evidence)
                dropped.append(evidence)
            continue
        found = _find_quote(evidence, logs)
        if found is None:
            not_in_log.append(evidence)
            dropped.append(evidence)
            continue
        job, number = found
        if number != evidence.line:
            corrected.append((evidence.line, number))
            notes.append(f"evidence line {evidence.line} was corrected to line {number}")
        checked = evidence.model_copy(update={"line": number, "job": job or evidence.job})
        if source_ok:
            verified += 1
        else:
            checked = checked.model_copy(update={"file": None, "file_line": None})
            notes.append(
                f"the source location of evidence line {number} was removed and the line counted as unverified:"
                " it is not in the fetched source"
            )
        kept.append(checked)

    given = len(diagnosis_input.evidence)
    confidence = diagnosis_input.confidence
    if given:
        fraction = verified / given
        confidence = round(confidence * fraction, 3)
    else:
        fraction = 0.0
        confidence = min(confidence, UNEVIDENCED_CONFIDENCE)
        notes.append("the model quoted no evidence, so its confidence was capped")
    all_invented = given > 0 and not kept
    if not_in_log:
        numbers = ", ".join(str(evidence.line) for evidence in not_in_log)
        notes.append(f"{len(not_in_log)} of {given} evidence lines were not found in the log: {numbers}")
    if not_fetched:
        numbers = ", ".join(str(evidence.line) for evidence in not_fetched)
        notes.append(
            f"{len(not_fetched)} of {given} evidence items quoted no log text and pointed at no fetched source"
            f" location, so they were dropped: {numbers}"
        )
    if all_invented:
        notes.append("none of the model's evidence is in the log")
    elif verified < given:
        notes.append(f"verified: {verified} of {given} evidence items (log quote and source location checked)")
    if confidence < diagnosis_input.confidence:
        notes.append(f"confidence lowered from {diagnosis_input.confidence:g} to {confidence:g}")
    diagnosis = diagnosis_input.model_copy(
        update={"evidence": kept, "confidence": confidence, "notes": [*diagnosis_input.notes, *notes]}
    )
    return VerifiedDiagnosis(diagnosis, dropped, corrected, fraction, all_invented)


def _index(log_lines: Mapping[int, str] | Sequence[LogLine]) -> dict[str, dict[int, str]]:
    """Lines by job, then number: line numbers restart in each job of a run-logs archive."""
    if isinstance(log_lines, Mapping):
        return {"": dict(log_lines)}
    index: dict[str, dict[int, str]] = {}
    for line in log_lines:
        index.setdefault(line.job, {})[line.number] = line.text
    return index


def _find_quote(evidence: Evidence, logs: dict[str, dict[int, str]]) -> tuple[str, int] | None:
    """The (job, line number) that holds the quote, trying the quoted line first, then the closest ones."""
    jobs = [evidence.job] if evidence.job in logs else list(logs)
    for distance in (0, 1, -1, 2, -2)[: 2 * NEARBY_LINES + 1]:
        for job in jobs:
            original = logs[job].get(evidence.line + distance)
            if original is not None and quote_matches(evidence.text, original):
                return job, evidence.line + distance
    return None


def _source_exists(evidence: Evidence, sources: Mapping[str, str]) -> bool:
    if evidence.file is None and evidence.file_line is None:
        return True
    if evidence.file is None:
        return False
    text = _source_text(evidence.file, sources)
    if text is None:
        return False
    return evidence.file_line is None or 1 <= evidence.file_line <= len(text.splitlines())


def _source_text(path: str, sources: Mapping[str, str]) -> str | None:
    """The fetched file a path names: the same repository path, or an absolute runner path ending in it."""
    wanted = path.strip().removeprefix("./")
    if wanted in sources:
        return sources[wanted]
    matches = [name for name in sources if wanted.endswith("/" + name.removeprefix("./"))]
    return sources[matches[0]] if len(matches) == 1 else None
