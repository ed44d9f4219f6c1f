"""Render a diagnosis as Markdown for GitHub, as plain text for terminals and as one line for chat."""

from __future__ import annotations

import re
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from typing import Any

from bot.core import templates
from bot.core.models import Diagnosis, Excerpt

# GitHub rejects issue and comment bodies over 65,536 characters.
MAX_BODY_CHARS = 65_536
_MARKER_RE = re.compile(r"^<!-- mendbot:fingerprint=([0-9a-zA-Z_-]{1,64}) -->\s*$", re.MULTILINE)
_MENTION_RE = re.compile(r"@(?=[A-Za-z0-9])")
_BACKTICKS_RE = re.compile(r"`+")
# Characters that Markdown would read as HTML, links or images. A link needs `](` and a link reference
# definition `]:`, so breaking those pairs disarms every link while plain brackets stay readable.
_PROSE_RE = re.compile(r"[&<>\\|`]|(?<=\])[(:]|(?<=!)\[")
_PROSE_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# At the start of a line these open headings, lists, quotes, rules, setext underlines or fences.
_BLOCK_START_RE = re.compile(r"^([ \t]*)(?:([#*+=_~-])|(\d{1,9})([.)]))", re.MULTILINE)


def marker(fingerprint: str) -> str:
    """The hidden line that lets Mendbot find its own comment or issue again."""
    return templates.MARKER.format(fingerprint=fingerprint)


def find_fingerprint(body: str) -> str | None:
    """The fingerprint in Mendbot's own marker: the last marker line, outside any quoted log text."""
    found = _MARKER_RE.findall(body or "")
    return found[-1] if found else None


def neutralize(text: str) -> str:
    """Make untrusted text inert as Markdown prose, yet readable once GitHub renders it.

    Raw HTML, links, images, headings, lists, quotes, fences, HTML comments and @-mentions all become
    plain text. Code spans that open and close on one line are kept, with only markers and mentions
    defused inside them, since nothing in a code span is live.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(_neutralize_line(line) for line in lines)


def _neutralize_line(line: str) -> str:
    # As in CommonMark, a run of backticks opens a code span only if a later run of the same length closes it.
    runs = list(_BACKTICKS_RE.finditer(line))
    later: dict[int, deque[re.Match[str]]] = defaultdict(deque)
    for run in runs:
        later[len(run.group())].append(run)
    parts: list[str] = []
    done = 0
    for opener in runs:
        same = later[len(opener.group())]
        while same and same[0].start() <= opener.start():
            same.popleft()
        if opener.start() < done or not same:
            continue  # inside a span already taken, or unmatched: escaped with the prose around it
        closer = same.popleft()
        parts.append(_escape_prose(line[done : opener.start()], at_line_start=done == 0))
        parts.append(_defuse(line[opener.start() : closer.end()]))
        done = closer.end()
    parts.append(_escape_prose(line[done:], at_line_start=done == 0))
    return "".join(parts)


def _escape_prose(text: str, *, at_line_start: bool) -> str:
    text = _PROSE_RE.sub(lambda found: _PROSE_ESCAPES.get(found.group(), "\\" + found.group()), text)
    if at_line_start:
        text = _BLOCK_START_RE.sub(_escape_block_start, text, count=1)
    return _MENTION_RE.sub("@\u200b", text)


def _escape_block_start(found: re.Match[str]) -> str:
    indent, symbol, number, delimiter = found.groups()
    return f"{indent}\\{symbol}" if symbol else f"{indent}{number}\\{delimiter}"


def _defuse(text: str) -> str:
    """Disarm HTML comments (so no marker can be planted) and @-mentions in text shown literally."""
    text = text.replace("<!--", "<!-\u200b-").replace("-->", "-\u200b->")
    return _MENTION_RE.sub("@\u200b", text)


def plain_text(text: str) -> str:
    """Untrusted text for a plain-text field such as a title: one line, no markers, no @-mentions."""
    return _defuse(" ".join(text.split()))


def inline_code(text: str) -> str:
    """Quote text as inline code that its own backticks cannot break out of."""
    text = _defuse(text).replace("\r", " ").replace("\n", " ")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def code_block(text: str, language: str = "text") -> str:
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{language}\n{_defuse(text)}\n{fence}"


def issue_title(diagnosis: Diagnosis) -> str:
    """`🚨 [AUTO] {category}: {summary}`, kept within GitHub's title length."""
    title = templates.ISSUE_TITLE.format(category=diagnosis.category, summary=plain_text(diagnosis.summary))
    return title if len(title) <= 200 else title[:199] + "…"


def one_line(diagnosis: Diagnosis, repository: str = "") -> str:
    """A single line for chat alerts."""
    return templates.ONE_LINE.format(
        severity=diagnosis.severity,
        repository=f"{repository} " if repository else "",
        category=diagnosis.category,
        summary=diagnosis.summary,
        fingerprint=diagnosis.fingerprint,
    )


def excerpt_listing(excerpt: Excerpt) -> str:
    """The excerpt with line numbers, one labeled section per job and step."""
    parts = []
    width = max((len(str(line.number)) for line in excerpt.lines), default=1)
    for block in excerpt.blocks:
        label = " / ".join(part for part in (block.job, block.step) if part)
        body = "\n".join(f"{line.number:>{width}} | {line.text}" for line in block.lines)
        parts.append(f"# {label}\n{body}" if label else body)
    return "\n…\n".join(parts)


def footer(diagnosis: Diagnosis, usage: Mapping[str, Any] | None = None) -> str:
    """Who diagnosed it: the model with its tokens and cost, or the rules."""
    if diagnosis.source == "model" and usage:
        return str(templates.FOOTER_MODEL.format(confidence=diagnosis.confidence, **usage))
    return templates.FOOTER_RULES.format(confidence=diagnosis.confidence)


def render_markdown(
    diagnosis: Diagnosis,
    excerpt: Excerpt,
    *,
    log_urls: Mapping[str, str] | None = None,
    usage: Mapping[str, Any] | None = None,
    previous: str | None = None,
    extra: Sequence[str] = (),
    trailer: str = "",
) -> str:
    """The issue or PR comment body: summary, evidence, collapsible excerpt, recommendations, marker.

    `log_urls` maps a job name ("" for a single log) to its log page, so evidence lines link there.
    `previous` is an outdated diagnosis body, kept collapsed under the new one. `extra` lines go just
    before the footer and `trailer` after the marker; the size cap counts both.
    """
    icon = templates.SEVERITY_ICON.get(str(diagnosis.severity), "❌")
    head = [
        templates.COMMENT_HEADING.format(icon=icon, title=neutralize(plain_text(diagnosis.summary))),
        "",
        f"**Severity:** {diagnosis.severity} · **Category:** `{diagnosis.category}` · "
        f"**Confidence:** {diagnosis.confidence:.0%} · **Source:** {diagnosis.source}",
        "",
        neutralize(diagnosis.root_cause),
        "",
        f"**Impact:** {neutralize(diagnosis.impact)}",
    ]
    evidence = ["", "### Evidence"] if diagnosis.evidence else []
    for item in diagnosis.evidence:
        url = (log_urls or {}).get(item.job) or (log_urls or {}).get("")
        where = f"[line {item.line}]({url}#L{item.line})" if url else f"line {item.line}"
        if item.job:
            where += f" ({neutralize(plain_text(item.job))})"
        source = f" → {inline_code(f'{item.file}:{item.file_line}')}" if item.file else ""
        evidence.append(f"- {where}: {inline_code(_clip(item.text, 300))}{source}")
    advice = ["", "### What to do"]
    advice += [f"{n}. {neutralize(text)}" for n, text in enumerate(diagnosis.recommendations, start=1)]
    if diagnosis.auto_fixable and diagnosis.fix_suggestion:
        advice += ["", f"**Config fix:** {neutralize(diagnosis.fix_suggestion)}"]
    notes = ["", *(f"> {neutralize(note)}" for note in diagnosis.notes)] if diagnosis.notes else []
    tail = ["", f"<sub>{footer(diagnosis, usage)}</sub>", marker(diagnosis.fingerprint)]
    tail += [trailer] if trailer else []
    older = _outdated(previous)
    added = ["", *extra] if extra else []

    def assemble(listing: str) -> str:
        details = (
            [
                "",
                f"<details><summary>Log excerpt ({len(excerpt.lines)} lines)</summary>",
                "",
                code_block(listing),
                "",
                "</details>",
            ]
            if listing
            else []
        )
        return "\n".join([*head, *evidence, *details, *advice, *notes, *older, *added, *tail])

    listing = excerpt_listing(excerpt)
    body = assemble(listing)
    if len(body) > MAX_BODY_CHARS:
        # Shrink the excerpt first: the evidence and advice matter more than the raw lines.
        overflow = len(body) - MAX_BODY_CHARS + len(templates.TRUNCATED_NOTE) + 16
        listing = listing[: max(len(listing) - overflow, 0)].rsplit("\n", 1)[0]
        body = assemble(listing + "\n…" if listing else "")
    if len(body) > MAX_BODY_CHARS:
        keep = MAX_BODY_CHARS - len(templates.TRUNCATED_NOTE) - len("\n".join(tail)) - 2
        body = body[:keep] + templates.TRUNCATED_NOTE + "\n" + "\n".join(tail)
    return body


def _outdated(previous: str | None) -> list[str]:
    """An earlier diagnosis, collapsed and stripped of its marker so it is never mistaken for current."""
    if not previous:
        return []
    stale = _MARKER_RE.sub("", previous).strip()
    stale = re.sub(
        r"<details><summary>" + re.escape(templates.OUTDATED_SUMMARY) + r".*", "", stale, flags=re.S
    )
    stale = stale[:8000]
    return ["", f"<details><summary>{templates.OUTDATED_SUMMARY}</summary>", "", stale, "", "</details>"]


def render_text(diagnosis: Diagnosis, excerpt: Excerpt) -> str:
    """A plain-text diagnosis for terminals."""
    lines = [
        f"{diagnosis.severity.upper()} {diagnosis.category}: {diagnosis.summary}",
        f"source: {diagnosis.source} · confidence {diagnosis.confidence:.0%}"
        f" · fingerprint {diagnosis.fingerprint}",
        "",
        diagnosis.root_cause,
        "",
        f"Impact: {diagnosis.impact}",
        "",
        "Evidence:",
        *(f"  line {e.line}: {_clip(e.text, 200)}" for e in diagnosis.evidence),
        "",
        "What to do:",
        *(f"  {n}. {text}" for n, text in enumerate(diagnosis.recommendations, start=1)),
    ]
    if diagnosis.notes:
        lines += ["", *(f"note: {note}" for note in diagnosis.notes)]
    lines += ["", f"Excerpt ({len(excerpt.lines)} lines, {excerpt.size} of {excerpt.budget} bytes):"]
    lines.append(excerpt_listing(excerpt))
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
