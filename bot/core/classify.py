"""Name the kind of a CI failure from log lines, using ordered rules kept as data."""

from __future__ import annotations

import re
import string
import tomllib
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import accumulate
from typing import Any, Protocol

import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.core.fingerprint import normalize, structured_key
from bot.core.logs import COMMAND_RE, WORKFLOW_COMMAND_RE, clean
from bot.core.models import Category, ExcerptLine, Severity

FALLBACK_RULE_ID = "fallback"
# A repository writes its own rules, and one pattern like (a+)+$ could backtrack for hours: each search
# of such a rule gets this many seconds, and a rule that runs out is given up for the rest of the log.
REPOSITORY_RULE_TIMEOUT = 0.1
# After this many rules ran out, the remaining rules with a timeout are skipped, which bounds the total.
MAX_TIMED_OUT_RULES = 3
MAX_KEY_PART_CHARS = 120
MAX_SUMMARY_VALUE_CHARS = 200
# Names a template may use besides the pattern's own named groups.
SUMMARY_EXTRA_FIELDS = frozenset({"line"})
# Runner annotations that echo or decorate rather than report: a pattern must not match them.
_SKIPPED_MARKERS = frozenset({"group", "endgroup", "command", "section", "debug", "warning", "notice"})
# Shell traces ("+ echo 'error: ...'") print the command, not its outcome, and compilers quote
# source lines ("128 |   panic!(...)") that are code, not messages.
_NOT_A_MESSAGE = re.compile(r"^\++ |^\s*\d+\s+\|\s")
_ERROR_WORDS = re.compile(
    r"(?i)\b(?:error|failed|failure|fatal|exception|panic(?:ked)?|abort(?:ed)?|denied|refused"
    r"|cannot|can't|could not|unable to|not found|timed out|killed|segmentation fault)\b"
)
# Lines every failed job ends with; they say that something failed, never what.
_WRAPPER_LINES = re.compile(
    r"(?i)^(?:Process completed with exit code \d+|Error: Process completed with exit code \d+"
    r"|\[OSDC\] Step script exited with code|Executing the custom container implementation failed"
    r"|Traceback \(most recent call last\)|The above exception was the direct cause"
    r"|During handling of the above exception|.*If your build fails, please take a look"
    r"|note: This error originates from a subprocess|Error: The process '.*' failed with exit code"
    r"|The command \".*\" exited with \d+|npm ERR! (?:errno|code ELIFECYCLE)|error Command failed with exit code"
    r"|.*marked build as failure|\[ERROR\] (?:Re-run Maven|For more information about the errors|\[Help \d+\]"
    r"|To see the full stack trace))"
)
_FORMATTER = string.Formatter()
_COUNTED_REPEAT = re.compile(r"\{\d*(?:,\d*)?\}")


class RuleError(ValueError):
    """A classification rule that cannot be used, with the rule named in the message."""


class RuleSpec(BaseModel):
    """One rule as written in a TOML file, before its pattern is compiled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=80)
    category: Category
    severity: Severity
    pattern: str = Field(min_length=1, max_length=4000)
    key: str | None = Field(default=None, max_length=200)
    title: str = Field(min_length=1, max_length=120)
    summary: str = Field(min_length=1, max_length=500)
    recommendations: list[str] = Field(default_factory=list, max_length=10)

    @field_validator("pattern")
    @classmethod
    def _no_text_anchors(cls, value: str) -> str:
        # Rules are first tried on the whole excerpt at once; \A and \Z would mean something else there.
        if "\\A" in value or "\\Z" in value:
            raise ValueError("use ^ and $ instead of \\A and \\Z: patterns match one line")
        return value


@dataclass(frozen=True, slots=True)
class Rule:
    """A validated rule with its pattern compiled; the first rule that matches decides."""

    id: str
    category: Category
    severity: Severity
    regex: regex.Pattern[str]
    key: str | None
    title: str
    summary: str
    recommendations: tuple[str, ...]
    # Case-folded strings one of which every match contains; empty when none could be found.
    literals: tuple[str, ...] = ()
    # Seconds one search may take; None for the packaged rules, which are written and tested here.
    timeout: float | None = None


class Classification(BaseModel):
    """What kind of failure a log shows, which rule said so and on which line."""

    model_config = ConfigDict(frozen=True)

    category: Category
    severity: Severity
    rule_id: str
    key: str = Field(description="groupable key with the volatile parts masked")
    title: str
    summary: str
    recommendations: tuple[str, ...] = ()
    matched_line: int | None = None
    matched_text: str = ""
    timed_out_rules: tuple[str, ...] = Field(
        default=(), description="rules given up because a search ran past its timeout: broken patterns"
    )


class _NumberedText(Protocol):
    @property
    def number(self) -> int: ...

    @property
    def text(self) -> str: ...


ClassifiableLine = tuple[int, str] | ExcerptLine | _NumberedText


@dataclass(frozen=True, slots=True)
class _Line:
    number: int
    text: str
    score: int


def _fields(template: str) -> set[str]:
    names: set[str] = set()
    for _, name, spec, conversion in _FORMATTER.parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"template field {{{name}}} must be a plain name, without format spec")
        names.add(name)
    return names


def required_literals(pattern: str) -> tuple[str, ...]:
    """Case-folded strings of which any match of `pattern` contains at least one, or () if unknown.

    Reads only the top level of each alternative: a run of plain characters there is required.
    Python's re cannot skip ahead on case-insensitive or `\\b`-led patterns, so testing these
    strings first keeps a 10k-line log fast; () just means the rule is always tried.
    """
    if re.search(r"\\[xuUN0-9]|\(\?[a-wyzA-Z]*x", pattern):
        return ()  # escapes that spell characters, or verbose mode: not worth reading here
    found: list[str] = []
    runs: list[str] = []
    run, depth, i = "", 0, 0

    def close_run() -> None:
        nonlocal run
        if len(run) >= 3:
            runs.append(run)
        run = ""

    while i <= len(pattern):
        char = pattern[i] if i < len(pattern) else "|"
        if char == "|" and depth == 0:
            close_run()
            if not runs:
                return ()
            found.append(max(runs, key=len).casefold())
            runs = []
        elif char == "\\":
            escaped = pattern[i + 1 : i + 2]
            if depth == 0 and escaped and not escaped.isalnum():
                run += escaped
            else:
                close_run()
            i += 1
        elif char == "[":
            close_run()
            i += 2 if pattern[i + 1 : i + 2] == "]" else 3 if pattern[i + 1 : i + 3] == "^]" else 1
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
        elif char in "()":
            close_run()
            depth += 1 if char == "(" else -1
        elif char in "*+?{":
            # The character before a quantifier may be absent or repeated, so it is not required.
            if depth == 0:
                run = run[:-1]
            close_run()
            if char == "{":
                counted = _COUNTED_REPEAT.match(pattern, i)
                if counted is None:
                    return ()  # a literal brace; rare enough not to read
                i = counted.end() - 1
        elif char in ".^$" or depth:
            close_run()
        else:
            run += char
        i += 1
    return tuple(dict.fromkeys(found))


def _compile(spec: RuleSpec, timeout: float | None) -> Rule:
    try:
        # Version 0 reads patterns as Python's re does; `regex` adds the search timeout.
        pattern = regex.compile(spec.pattern, regex.MULTILINE | regex.VERSION0)
    except regex.error as exc:
        raise RuleError(f"rule {spec.id!r}: invalid pattern: {exc}") from exc
    groups = set(pattern.groupindex)
    try:
        key_fields = _fields(spec.key) if spec.key else set()
        summary_fields = _fields(spec.summary)
    except ValueError as exc:
        raise RuleError(f"rule {spec.id!r}: {exc}") from exc
    unknown = (key_fields - groups) | (summary_fields - groups - SUMMARY_EXTRA_FIELDS)
    if unknown:
        raise RuleError(f"rule {spec.id!r}: templates name groups the pattern lacks: {sorted(unknown)}")
    return Rule(
        id=spec.id,
        category=spec.category,
        severity=spec.severity,
        regex=pattern,
        key=spec.key,
        title=spec.title,
        summary=spec.summary,
        recommendations=tuple(spec.recommendations),
        literals=required_literals(spec.pattern),
        timeout=timeout,
    )


def load_rules(toml_text: str, *, timeout: float | None = REPOSITORY_RULE_TIMEOUT) -> list[Rule]:
    """Parse, validate and compile `[[rule]]` tables, keeping their order as priority.

    Each search of a rule may take `timeout` seconds; only rules written here may go without one.
    """
    try:
        document = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"rules file is not valid TOML: {exc}") from exc
    unexpected = set(document) - {"rule"}
    if unexpected:
        raise RuleError(f"rules file has unknown top-level keys: {sorted(unexpected)}")
    tables = document.get("rule", [])
    if not isinstance(tables, list):
        raise RuleError("`rule` must be an array of tables: write [[rule]]")
    rules: list[Rule] = []
    seen: set[str] = set()
    for position, table in enumerate(tables, start=1):
        name = table.get("id") if isinstance(table, dict) else None
        label = repr(name) if isinstance(name, str) else f"#{position}"
        try:
            spec = RuleSpec.model_validate(table)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'rule'}: {error['msg']}" for error in exc.errors()
            )
            raise RuleError(f"rule {label}: {problems}") from exc
        if spec.id in seen:
            raise RuleError(f"rule {label}: the id is used twice")
        seen.add(spec.id)
        rules.append(_compile(spec, timeout))
    return rules


def merge_rules(repo_rules: Sequence[Rule], default_rules: Sequence[Rule]) -> list[Rule]:
    """Repository rules first; a repository rule replaces the default rule with the same id."""
    overridden = {rule.id for rule in repo_rules}
    return [*repo_rules, *(rule for rule in default_rules if rule.id not in overridden)]


@cache
def _default_rules() -> tuple[Rule, ...]:
    text = resources.files("bot.rules").joinpath("default.toml").read_text(encoding="utf-8")
    return tuple(load_rules(text, timeout=None))


def default_rules() -> list[Rule]:
    """The packaged rules, highest priority first (read once: it is package data, not configuration)."""
    return list(_default_rules())


def _read(item: ClassifiableLine) -> tuple[int, str, str]:
    """Number, cleaned text and runner marker of a line given raw, as an excerpt line or as a LogLine."""
    if isinstance(item, tuple):
        number, raw, marker = item[0], item[1], ""
    else:
        number, raw, marker = item.number, item.text, getattr(item, "marker", "") or ""
    text = clean(raw)
    command = COMMAND_RE.match(text)
    if command:
        marker, text = marker or command.group(1), text[command.end() :]
    else:
        workflow_command = WORKFLOW_COMMAND_RE.match(text)
        if workflow_command:
            marker = marker or workflow_command.group(1)
    return number, text, marker


def _error_score(text: str, marker: str) -> int:
    """How much a line reads like the report of an error rather than noise around it."""
    if _WRAPPER_LINES.match(text):
        return -1
    score = 2 if marker == "error" else 0
    if _ERROR_WORDS.search(text):
        score += 1
    return score


def _usable_lines(lines: Iterable[ClassifiableLine]) -> list[_Line]:
    usable: list[_Line] = []
    in_run_group = False
    for item in lines:
        number, text, marker = _read(item)
        # The lines between "##[group]Run ..." and "##[endgroup]" echo the step's script and inputs.
        if marker == "group":
            in_run_group = text.startswith("Run ")
            continue
        if marker == "endgroup":
            in_run_group = False
            continue
        if in_run_group or marker in _SKIPPED_MARKERS or _NOT_A_MESSAGE.match(text) or not text.strip():
            continue
        usable.append(_Line(number, text, _error_score(text, marker)))
    return usable


class _Blank(dict[str, str]):
    """Template values: a group that did not take part in the match reads as empty."""

    def __missing__(self, key: str) -> str:
        return ""


def _fill(template: str, values: dict[str, str]) -> str:
    return template.format_map(_Blank(values))


def _captures(match: regex.Match[str], limit: int) -> dict[str, str]:
    return {name: (value or "").strip()[:limit] for name, value in match.groupdict().items()}


def _build_key(rule: Rule, match: regex.Match[str]) -> str:
    if not rule.key:
        return rule.id
    parts = {name: normalize(value) for name, value in _captures(match, MAX_KEY_PART_CHARS).items()}
    if _fields(rule.key) and not any(parts.get(name) for name in _fields(rule.key)):
        return rule.id  # the line matched an alternative without names; "test::." groups nothing
    return normalize(_fill(rule.key, parts)) or rule.id


class _Text:
    """The usable lines, joined once, with a case-folded copy for finding rule literals."""

    def __init__(self, lines: list[_Line]) -> None:
        self.lines = lines
        self.joined = "\n".join(line.text for line in lines)
        folded = [line.text.casefold() for line in lines]
        self.folded = "\n".join(folded)
        # Offsets are taken in the folded text: folding can change a line's length.
        self.starts = list(accumulate((len(text) + 1 for text in folded[:-1]), initial=0))

    def lines_containing(self, literals: Sequence[str]) -> list[_Line]:
        """Lines, in log order, whose folded text holds one of the literals."""
        hits: set[int] = set()
        for literal in literals:
            position = self.folded.find(literal)
            while position != -1:
                index = bisect_right(self.starts, position) - 1
                hits.add(index)
                next_line = self.starts[index + 1] if index + 1 < len(self.starts) else len(self.folded)
                position = self.folded.find(literal, next_line)
        return [self.lines[index] for index in sorted(hits)]


def _find(rule: Rule, text: _Text) -> tuple[_Line, regex.Match[str]] | None:
    """The best line the rule matches; raises TimeoutError when one search runs past the rule's timeout."""
    # Only lines holding one of the rule's literals can match; without literals, one scan of the
    # joined text in C rules the rule out before any per-line work.
    if rule.literals:
        candidates = text.lines_containing(rule.literals)
    elif rule.regex.search(text.joined, timeout=rule.timeout) is None:
        return None
    else:
        candidates = text.lines
    best: tuple[_Line, regex.Match[str]] | None = None
    for line in candidates:
        match = rule.regex.search(line.text, timeout=rule.timeout)
        if match and (best is None or line.score > best[0].score):
            best = (line, match)
    return best


def _fallback(lines: Sequence[_Line], timed_out: tuple[str, ...]) -> Classification:
    if not lines:
        return Classification(
            category=Category.UNKNOWN,
            severity=Severity.MEDIUM,
            rule_id=FALLBACK_RULE_ID,
            key="unknown",
            title="Unrecognised failure",
            summary="The log holds no line that explains the failure.",
            timed_out_rules=timed_out,
        )
    # Most error-like, then latest: with no rule to go by, the line nearest where the job died.
    line = max(reversed(lines), key=lambda candidate: candidate.score)
    key = structured_key(line.text) or f"unknown:{normalize(line.text)[:MAX_KEY_PART_CHARS]}"
    return Classification(
        category=Category.UNKNOWN,
        severity=Severity.MEDIUM,
        rule_id=FALLBACK_RULE_ID,
        key=key,
        title="Unrecognised failure",
        summary=f"No rule matched; the most error-like line is: {line.text[:MAX_SUMMARY_VALUE_CHARS]}",
        recommendations=("Read the quoted line and the lines around it in the job log.",),
        matched_line=line.number,
        matched_text=line.text,
        timed_out_rules=timed_out,
    )


def classify(lines: Sequence[ClassifiableLine], rules: Sequence[Rule] | None = None) -> Classification:
    """Apply the rules in priority order; the first that matches any line decides.

    Among the lines the winning rule matches, the most error-like one is quoted (a runner
    `##[error]` annotation counts most, then error words), and the earliest of equals, because
    the first error usually causes the ones after it. A rule whose search runs past its timeout counts
    as not matching and is named in `timed_out_rules`.
    """
    usable = _usable_lines(lines)
    text = _Text(usable)
    timed_out: list[str] = []
    for rule in default_rules() if rules is None else rules:
        if rule.timeout is not None and len(timed_out) >= MAX_TIMED_OUT_RULES:
            continue
        try:
            found = _find(rule, text)
        except TimeoutError:
            timed_out.append(rule.id)
            continue
        if found is None:
            continue
        line, match = found
        values: dict[str, Any] = _captures(match, MAX_SUMMARY_VALUE_CHARS)
        values.setdefault("line", line.text[:MAX_SUMMARY_VALUE_CHARS])
        return Classification(
            category=rule.category,
            severity=rule.severity,
            rule_id=rule.id,
            key=_build_key(rule, match),
            title=rule.title,
            summary=_fill(rule.summary, values),
            recommendations=rule.recommendations,
            matched_line=line.number,
            matched_text=line.text,
            timed_out_rules=tuple(timed_out),
        )
    return _fallback(usable, tuple(timed_out))
