"""Choose the log lines that explain a failure, within an exact byte budget, in one streaming pass."""

from __future__ import annotations

import heapq
import math
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from bot.core.logs import LogLine
from bot.core.models import Excerpt, ExcerptBlock, ExcerptLine
from bot.core.redact import PLACEHOLDER_RE, Base64KeyBlock, placeholder, redact_head, redact_text

DEFAULT_BUDGET = 4096
# A long line is shortened so one minified bundle or JSON blob cannot eat the budget.
LINE_CAP = 300
# A line is kept at most this long between reading and packing: a job may hold thousands of 16 KB lines.
KEPT_LINE_BYTES = 2 * LINE_CAP
# An indented line under the anchor (a stack frame, a detail) is shown shorter, its middle taken out, so more
# of them fit and each keeps its file and line.
CONTEXT_LINE_CAP = 100
CONTEXT_BEFORE = 3
# A build that names its reason (`Failing due to -Werror.`) printed the details of that reason above it.
DECISIVE_CONTEXT = 8
# A pass through the exit marker keeps this many lines of the failing command's output.
EXIT_WINDOW = 40
MAX_REGION_LINES = 120
# Added to the score of a line printed in red: with one error-like word it anchors a region. Alone it stays
# below every threshold, so bot.core.scan may skip a red line that has no such word unread.
RED_BONUS = 1.0
MAX_REGIONS = 48
# Past this share of undecodable characters the input is not a text log.
BINARY_SHARE = 0.2
# Budget left after the scored regions is filled with this many lines before the last exit, newest first.
FILL_LINES = 400
# Of a run of lines that differ only in numbers, show this many.
REPEAT_RUN_SHOWN = 3
MAX_PASSING_SIGNATURES = 1_000_000

# fmt: off
# Scoring works on words and fixed phrases, not one big regex: Python's regex engine tries every
# alternative at every position, which costs ~250 µs a line; set and substring checks cost ~3 µs.
_WORD_RE = re.compile(r"[a-z][a-z_]+")
_STRONG_WORDS = frozenset(
    "traceback panic panicked fatal segmentation segfault sigsegv sigabrt addresssanitizer "
    "assertionerror failed failure failures unexpected killed oom timeout timedout undefined".split()
)
_MEDIUM_WORDS = frozenset(
    "error errors fail fails failing exception exceptions expected actual assert assertion mismatch "
    "invalid missing refused unreachable crash crashed crashes aborted abort violation syntax wrong "
    "incorrect denied unable cannot couldn impossible forbidden unauthorized unsupported conflict "
    "conflicts broken".split()
)
_STRONG_PHRASES = (
    "error:", "error[", "[error]", "error ts", "error cs", "npm err!", "build failed", "build failure",
    "no such file", "undefined reference", "cannot find symbol", "test-unexpected-", "process-crash",
    "core dumped", "out of memory", "timed out", "--- fail:", "not ok ", "but was", "but got", "to equal",
    "could not", "can't find", "cannot find", "cannot open", "not found", "compilation failed",
    "exception:", "exception in", "assertion failed", "✗", "✕", "✖", "×", "❌", "✘",
)
# A test harness's own verdict on a test or a process outranks every other error line.
VERDICT_SCORE = 6.0
VERDICT_PRIORITY = 1000.0
_HARNESS_VERDICTS = (
    "test-unexpected-", "process-crash", "[taskcluster:error]", "--- fail:", "assertion failure:",
    "addresssanitizer:", "panicked at", "segmentation fault", "*** failed test case",
)
# A phrase can only be present when its longest word is: check that cheap set before the phrases.
_PHRASE_TRIGGERS = frozenset(
    max(_WORD_RE.findall(phrase), key=len) for phrase in _STRONG_PHRASES if _WORD_RE.findall(phrase)
)
_STRUCTURAL = re.compile(
    r"\s*(?:E {2,}\S|(?:not ok|FAIL|FAILED|ERROR)\b|\w*(?:Error|Exception)\b[:(]?\s|\S+:\d+:(?:\d+:)? )"
)
_FAILURE_COUNT = re.compile(
    r"\b[1-9]\d* (?:failed|failures?|errors?)\b|\b(?:failures?|errors?|failed):? [1-9]"
)
_LEVEL = re.compile(
    r"(?:[\d:.,TZ/-]+\s+){0,3}[\[<]?"
    r"(INFO|DEBUG|TRACE|NOTICE|WARN|WARNING|ERROR|FATAL|CRITICAL|SEVERE)[\]>:]?\s",
    re.IGNORECASE,
)
_QUIET_LEVELS = frozenset({"INFO", "DEBUG", "TRACE", "NOTICE"})
_LOUD_LEVELS = frozenset({"ERROR", "FATAL", "CRITICAL", "SEVERE"})
# Lines that look alarming but say nothing about the cause.
_DECOY_WORDS = frozenset(
    "passed pass ok success successful successfully skipped".split()
)
_DECOY_PHRASES = (
    "0 errors", "0 failures", "0 failed", "failures: 0", "errors: 0", "failed: 0", "-werror", "--fail",
    "continue-on-error", "ignore_errors", "ignore-errors", "error_reporting", "errorprone", "on-failure",
    "fail-fast", "failfast", "allow_failures", "warnings as errors", "✓", "✔",
)
# A build that says why it failed: stronger than the flags or words in the reason, such as `-Werror`.
_DECISIVE_PHRASES = ("failing due to", "failed due to", "aborting due to")
# Lines that only restate that something failed: the boundary of the failing command's output.
_EXIT_MARKERS = re.compile(
    r"(?:The command \".*\" (?:failed and )?exited with [1-9]|Process completed with exit code [1-9]"
    r"|Error: Process completed with exit code [1-9]|Finished: FAILURE|ERROR: Job failed"
    r"|Done\. Your build exited with [1-9]|Script exited with|Command exited with non-zero status"
    r"|Error: The process '.*' failed|make(?:\[\d+\])?: \*\*\* \[.*\] Error \d+"
    r"|\s*Command failed with exit code"
    r"|\s*Got exit code|##\[error\]Process completed with exit code)"
)
# Travis's verdict on one command of the script: what ran since the one before it belongs to that command.
_COMMAND_PASSED = re.compile(r'The command ".*" exited with 0\.$')
_EXIT_PHRASES = ("marked build as failure", "returned non-zero exit status")
# fmt: on
# The Actions runner's own step verdict: a step that ends so, and is not the last to, had continue-on-error.
_RUNNER_EXIT = ("Process completed with exit code", "Error: Process completed with exit code")
# Whole-job verdicts: they close the log, not the failing command, so what precedes them is often cleanup.
_JOB_VERDICTS = ("Done. Your build exited with", "Finished: FAILURE", "ERROR: Job failed")
# The last lines a failing command printed before its exit marker come first in the excerpt.
EXIT_FOCUS_LINES = 6
# Failing exits remembered, in case the commands holding the newest ones turn out to have passed.
EXITS_KEPT = 4
_CONTINUATION = re.compile(
    r"^\s+\S|^\s*at |^\s*File \"|^\s*#\d+ |^\s*\.\.\.|^\s*Caused by|^\s*[-+] |^\s*[|>^~]|^\s*\d+ *[|:]"
    r"|^(?:Expected|Actual|Received|expected|actual|received|left|right)\b|^\s*(?:in|from) "
)
_TEARDOWN_STEP = re.compile(r"^(?:Post |Complete job|Stop containers|Clean ?up)", re.IGNORECASE)
_TEARDOWN_LINE = re.compile(
    r"^(?:Post job cleanup|Cleaning up orphan processes|Terminate orphan process|Stop and remove container"
    r"|after_failure|after_script|store build cache|travis_fold:start:cache)",
    re.IGNORECASE,
)
# A test that failed then passed on a rerun is not the cause.
# Each shape is tried only when its cheap marker is in the line; one combined pattern backtracked badly.
_TEST_RESULTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("::", re.compile(r"(?P<name>[^\s:]+::\S+)\s+(?P<verdict>PASSED|FAILED|ERROR|RERUN)\b")),
    (">", re.compile(r"(?P<name>\w+\s*>\s*\w+\(\))\s+(?P<verdict>PASSED|FAILED)\b")),
    ("--- ", re.compile(r"--- (?P<verdict>FAIL|PASS): (?P<name>\S+)")),
    ("ok ", re.compile(r"^(?P<verdict>ok|not ok) \d+ (?:- )?(?P<name>.{1,80})$")),
)
_SCORING_WORDS = _STRONG_WORDS | _MEDIUM_WORDS
_LEADING_MARKS = re.compile(r"[^\w\s]{1,6}|[A-Z]{2,}\b")
# Of failures that look alike, each later one is placed this much earlier than the one before it.
FAMILY_DECAY = 0.97
_MASK = re.compile(r"0x[0-9a-f]+|\b[0-9a-f]{7,}\b|\d+(?:\.\d+)*", re.IGNORECASE)


def signature(text: str) -> str:
    """A line with its volatile parts (numbers, hashes) masked, to compare across runs."""
    return _MASK.sub("#", text.strip())[:200]


_NOT_LETTERS = re.compile(r"[^A-Za-z]+")


def loose_signature(text: str) -> str:
    """The letters of a line's start: repeats that differ only in numbers, URLs' tails or ids look alike."""
    return _NOT_LETTERS.sub("", text[:80])


def line_score(text: str) -> float:
    """How strongly one cleaned line reads like the cause of a failure."""
    if len(text) < 3:
        return 0.0
    probe = text[:400]
    lower = probe.lower()
    words = set(_WORD_RE.findall(lower))
    score = 0.0
    if words & _STRONG_WORDS or (
        (words & _PHRASE_TRIGGERS or not lower.isascii()) and any(phrase in lower for phrase in _STRONG_PHRASES)
    ):
        score = 4.0
    elif words & _MEDIUM_WORDS:
        score = 2.0
    if (score and _STRUCTURAL.match(probe)) or (score == 2.0 and _FAILURE_COUNT.search(lower)):
        score = 4.0
    decisive = _is_decisive(lower)
    if decisive:
        score = 4.0
    elif score and (words & _DECOY_WORDS or any(phrase in lower for phrase in _DECOY_PHRASES)):
        score *= 0.25
    if score == 2.0 and ("warning" in words or "warn" in words):
        # "warning: unable to …" is a tool's aside; a warning that fails the build says error or failed.
        score = 1.0
    if score and any(verdict in lower for verdict in _HARNESS_VERDICTS):
        return VERDICT_SCORE
    level = _LEVEL.match(probe)
    if level:
        # A logger's own level outranks the words in its message.
        name = level.group(1).upper()
        if name in _QUIET_LEVELS and "-unexpected-" not in lower:
            score *= 0.5
        elif name in _LOUD_LEVELS:
            score = max(score, 4.0)
    return score


def _is_decisive(lower: str) -> bool:
    return "due to" in lower and any(phrase in lower for phrase in _DECISIVE_PHRASES)


def is_noise(text: str) -> bool:
    """A line that only reports success, such as `test_x PASSED` or `ok 5 parses`."""
    words = set(_WORD_RE.findall(text[:200].lower()))
    return bool(words & _DECOY_WORDS) and line_score(text) == 0.0


def exit_window(recent: list[LogLine], marker: LogLine) -> list[LogLine]:
    """Of the lines before an exit marker, those that show why its command failed."""
    window = [old for old in recent if old.job == marker.job and old.step == marker.step]
    if not window:
        window = [old for old in recent if old.job == marker.job]
    # Passing-test lines just before the exit say nothing about why it failed.
    return [old for old in window if not is_noise(old.text)]


def is_exit_marker(line: LogLine) -> bool:
    """True for lines that only say the command failed, such as `Process completed with exit code 1`."""
    return bool(_EXIT_MARKERS.match(line.text)) or any(phrase in line.text for phrase in _EXIT_PHRASES)


@dataclass(frozen=True, slots=True)
class PassingIndex:
    """The masked lines of the last passing run of the same job: lines found there are not the cause."""

    signatures: frozenset[str]

    @classmethod
    def build(cls, lines: Iterable[LogLine], cap: int = MAX_PASSING_SIGNATURES) -> PassingIndex:
        seen: set[str] = set()
        for line in lines:
            if line.text.strip():
                seen.add(signature(line.text))
                if len(seen) >= cap:
                    break
        return cls(frozenset(seen))

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and signature(text) in self.signatures


@dataclass(slots=True)
class _Region:
    """A stretch of lines around error-like anchors, or before an exit marker."""

    lines: list[LogLine]
    anchor: int
    weight: float
    kind: str
    job: str
    step: str
    signature: str
    repeats: int = 1
    seen: set[str] = field(default_factory=set)
    recovered: bool = False
    focus_end: bool = False
    rank_in_segment: int = 0
    verdict: bool = False
    open_until: int = 0
    indent: int = 0
    command: int = 0
    final_score: float = field(default=0.0)


class Excerpter:
    """Feed it a log line by line; `finish()` returns the excerpt. Memory stays bounded."""

    def __init__(self, budget: int = DEFAULT_BUDGET, passing: PassingIndex | None = None) -> None:
        if budget < 16:
            raise ValueError("the excerpt budget must be at least 16 bytes")
        self.budget = budget
        self.passing = passing
        self._recent: deque[LogLine] = deque(maxlen=EXIT_WINDOW)
        self._regions: list[_Region] = []
        self._open: _Region | None = None
        self._by_signature: dict[str, _Region] = {}
        self._tests: dict[str, _Region] = {}
        self._total = 0
        self._teardown = False
        # The newest few failing exits, each with the history before it; the last one is the failure's end.
        self._exits: list[tuple[_Region, Iterable[LogLine]]] = []
        self._segment_regions = 0
        self._job_order: dict[str, int] = {}
        self._in_key_block = False
        self._encoded_keys = Base64KeyBlock()
        self._runner_exits: list[tuple[str, str]] = []
        self._history: deque[LogLine] = deque(maxlen=FILL_LINES)
        self._characters = 0
        self._undecodable = 0
        self._command = 0
        self._shown = 0
        self._blank = 0
        self._passed_commands: set[int] = set()

    @property
    def wants_every_line(self) -> bool:
        """True while state spans lines (an open region, a key block): a reader that skips lines must not."""
        keys = self._encoded_keys
        return self._open is not None or self._in_key_block or keys._in_key or bool(keys._carry or keys._tail)

    # Hooks for a reader that feeds only the lines that matter (bot.core.scan) and rebuilds the others
    # only where they are read: the context before an anchor or exit, and the fill before the last exit.
    def _recent_lines(self, count: int) -> list[LogLine]:
        """The last `count` non-empty lines before the current one."""
        return list(self._recent)[-count:]

    def _history_lines(self) -> Iterable[LogLine]:
        """The last FILL_LINES non-empty lines, the current one included."""
        return list(self._history)

    @property
    def looks_binary(self) -> bool:
        """True when much of what was read did not decode as text: an archive or binary, not a log."""
        return self._undecodable > BINARY_SHARE * max(self._characters, 1)

    def feed(self, line: LogLine, plain: bool = False) -> None:
        """Take the next line. `plain` promises that it holds none of the words, phrases, exit markers or test
        verdicts the checks below look for (bot.core.scan proves it in bulk), so it scores 0 unread."""
        self._count_read(line)
        shown = self._hide_key_block(line)
        # A hidden key's placeholder was not in the bytes the scan read.
        plain, line = plain and shown is line, shown
        text = line.text
        if _TEARDOWN_LINE.match(text) or (line.step and _TEARDOWN_STEP.match(line.step)):
            self._teardown = True
        elif line.marker == "group" and text.startswith("Run "):
            self._teardown = False
        if not self._count_shown(text):
            return
        # Decisions read the whole line; what is kept for the excerpt is cut, so memory stays small.
        kept = _kept(line)
        self._history.append(kept)
        if plain:
            self._place(line, kept, 0.0)
            return
        lower = text.lower()
        if "pass" in lower or "fail" in lower or " ok" in lower or "rerun" in lower:
            self._track_test_result(text)
        if "exited with 0" in text and _COMMAND_PASSED.match(text):
            self._close_open()
            self._passed_commands.add(self._command)
            # A failure inside it was tolerated (`make test || RESULT=$?`): the build failed where it did before.
            while self._exits and self._exits[-1][0].command == self._command:
                self._exits.pop()
            self._command += 1
        elif ("exit" in lower or "fail" in lower or "error" in lower) and is_exit_marker(line):
            self._close_open()
            self._add_exit_window(kept)
            self._recent.append(kept)
            if text.startswith("The command "):
                self._command += 1
            return
        score = line_score(text)
        if self.passing is not None and score and text in self.passing:
            score *= 0.15
        if line.marker == "error":
            score = max(score, 3.0)
        elif line.red and not self._teardown:
            # A tool that colours a line red means it as an error, whatever words it uses.
            score += RED_BONUS
        if self._teardown:
            score *= 0.4
        self._place(line, kept, score)

    def _count_read(self, line: LogLine) -> None:
        """What every line read adds up to: the line count, the share of undecodable text, the job order."""
        self._total = line.number
        self._characters += len(line.text)
        self._undecodable += line.text.count("\ufffd")
        self._job_order.setdefault(line.job, len(self._job_order))

    def _count_shown(self, text: str) -> bool:
        """Advance the count that measures a region's open window; False for a blank line.

        A region stays open a few shown lines past its last error line. One blank line is a paragraph break
        inside a report (pytest's captured output, a test's stack trace); two end the report.
        """
        if not text.strip():
            self._shown += self._blank
            self._blank = 1
            return False
        self._blank = 0
        self._shown += 1
        return True

    def _place(self, line: LogLine, kept: LogLine, score: float) -> None:
        """Add a scored line to the open region, or close it and perhaps open one."""
        text = line.text
        region = self._open
        if (
            region is not None
            and (self._shown <= region.open_until or _continues(text, score, region.indent))
            and len(region.lines) < MAX_REGION_LINES
        ):
            region.lines.append(kept)
            region.verdict = region.verdict or score >= VERDICT_SCORE
            if score >= 2.0:
                loose = loose_signature(text)
                if loose not in region.seen:
                    # Only a new kind of error line adds weight; a repeated one would inflate noise.
                    region.seen.add(loose)
                    region.weight += score / (1 + len(region.lines) / 8)
                region.open_until = self._shown + 2
            self._recent.append(kept)
            return
        self._close_open()
        if score >= 2.0:
            self._open_region(kept, score)
        self._recent.append(kept)

    def _hide_key_block(self, line: LogLine) -> LogLine:
        """Blank out every line of a private key, plain or base64-wrapped, which a line-by-line redactor
        cannot see whole."""
        encoded = self._encoded_keys.feed(line.text)
        if "PRIVATE KEY" in line.text and "-----BEGIN" in line.text:
            self._in_key_block = "-----END" not in line.text
            return replace(line, text=placeholder("private_key"))
        if self._in_key_block:
            if "-----END" in line.text:
                self._in_key_block = False
            return replace(line, text=placeholder("private_key"))
        if encoded is not None:
            start, end = encoded
            return replace(line, text=line.text[:start] + placeholder("private_key") + line.text[end:])
        return line

    def _open_region(self, line: LogLine, score: float) -> None:
        key = signature(line.text)
        twin = self._by_signature.get(key)
        if twin is not None:
            # The same failure again: count it, keep the first copy's lines.
            twin.repeats += 1
            return
        reach = DECISIVE_CONTEXT if _is_decisive(line.text.lower()) else CONTEXT_BEFORE
        before = [old for old in self._recent_lines(reach) if old.job == line.job]
        region = _Region(
            lines=[*before, line],
            anchor=line.number,
            weight=score,
            kind="anchor",
            job=line.job,
            step=line.step,
            signature=key,
            open_until=self._shown + 2,
            indent=_indent(line.text),
            command=self._command,
            rank_in_segment=self._segment_regions,
            verdict=score >= VERDICT_SCORE,
        )
        self._segment_regions += 1
        self._open = region
        self._by_signature[key] = region

    def _close_open(self) -> None:
        if self._open is not None:
            self._keep(self._open)
            self._open = None

    def _exit_lines(self, marker: LogLine) -> list[LogLine]:
        """The lines an exit marker's region shows, or none when no output of the failing command is left."""
        window = exit_window(self._recent_lines(EXIT_WINDOW), marker)
        # The marker itself names the command that failed (`The command "make" exited with 2.`).
        return [*window, marker] if window else []

    def _add_exit_window(self, marker: LogLine) -> None:
        lines = self._exit_lines(marker)
        if marker.text.startswith(_RUNNER_EXIT):
            self._runner_exits.append((marker.job, marker.step))
        verdict = marker.text.startswith(_JOB_VERDICTS)
        self._segment_regions = 0
        if not lines:
            return
        region = _Region(
            lines=lines,
            anchor=marker.number,
            weight=1.0 if verdict else 2.5,
            kind="exit",
            job=marker.job,
            step=marker.step,
            signature=f"exit:{marker.number}",
            focus_end=True,
            command=self._command,
        )
        self._keep(region)
        if not verdict:
            # The history is filtered once, in finish.
            self._exits = [*self._exits[-(EXITS_KEPT - 1) :], (region, self._history_lines())]

    def _keep(self, region: _Region) -> None:
        self._regions.append(region)
        if len(self._regions) > 2 * MAX_REGIONS:
            # Keep the strongest half and the newest half: the cause is usually strong or late.
            strongest = heapq.nlargest(MAX_REGIONS // 2, self._regions, key=lambda r: r.weight)
            newest = self._regions[-MAX_REGIONS // 2 :]
            keep = {id(r) for r in strongest} | {id(r) for r in newest}
            self._regions = [r for r in self._regions if id(r) in keep]
            self._by_signature = {r.signature: r for r in self._regions}

    def _track_test_result(self, text: str) -> None:
        probe = text[:240]
        match = next(
            (found for marker, pattern in _TEST_RESULTS if marker in probe and (found := pattern.search(probe))),
            None,
        )
        if not match:
            return
        name, verdict = match.group("name"), match.group("verdict")
        if verdict in ("FAILED", "FAIL", "ERROR", "RERUN", "not ok"):
            if self._open is not None:
                self._tests[name] = self._open
        elif name in self._tests:
            self._tests.pop(name).recovered = True

    def finish(self) -> Excerpt:
        self._close_open()
        total = max(self._total, 1)
        tolerated = set(self._runner_exits[:-1]) - set(self._runner_exits[-1:])
        positions = _family_positions(self._regions, total)
        for region in self._regions:
            position = positions[id(region)]
            score = region.weight * (0.35 + 0.65 * position**2)
            if (region.job, region.step) in tolerated or region.command in self._passed_commands:
                score *= 0.4
            if region.rank_in_segment:
                score *= 0.85
            if region.verdict and not region.recovered:
                # Lexically first: a harness saying a test failed beats any amount of other noise.
                score += VERDICT_PRIORITY
            if region.recovered:
                score *= 0.2
            score *= 1 + 0.1 * math.log1p(region.repeats - 1)
            region.final_score = score
        if self._exits:
            last, before_last = self._exits[-1]
            focus = _Region(
                lines=last.lines[-EXIT_FOCUS_LINES - 1 :],
                anchor=last.anchor,
                weight=last.weight,
                kind="exit-focus",
                job=last.job,
                step=last.step,
                signature="exit-focus",
                focus_end=True,
                final_score=float("inf"),
            )
            self._regions.append(focus)
        fill = before_last if self._exits else self._history_lines()
        fill = [line for line in fill if not is_noise(line.text)]
        if self.passing is not None:
            fill = [line for line in fill if line.text not in self.passing]
        if fill:
            # Whatever budget the scored regions leave goes to the output just before the failure.
            self._regions.append(
                _Region(lines=fill, anchor=fill[-1].number, weight=0.0, kind="fill", job=fill[-1].job,
                        step=fill[-1].step, signature="fill", focus_end=True, final_score=-1.0)
            )
        return _pack(self._regions, self.budget, self._total, self._job_order)


def _family(region: _Region) -> tuple[str, frozenset[str]] | None:
    """What an anchor looks like apart from its names and numbers: its leading marks and its error words."""
    anchor = next((line.text for line in region.lines if line.number == region.anchor), None)
    if region.kind != "anchor" or anchor is None:
        return None
    stripped = anchor.strip()
    marks = _LEADING_MARKS.match(stripped)
    words = frozenset(_WORD_RE.findall(stripped[:400].lower())) & _SCORING_WORDS
    return (marks.group(0) if marks else "", words)


def _family_positions(regions: list[_Region], total: int) -> dict[int, float]:
    """Each region's place in the log, 0 to 1, for the lateness prior. Where several failures look alike,
    the first of them is the likely cause and the rest its echoes, so it takes the place of the last one
    and each later one a little less."""
    positions = {id(region): region.anchor / total for region in regions}
    families: dict[tuple[str, frozenset[str]], list[_Region]] = {}
    for region in regions:
        family = _family(region)
        if family is not None and family[1]:
            families.setdefault(family, []).append(region)
    for members in families.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda r: r.anchor)
        latest = positions[id(members[-1])]
        for rank, member in enumerate(members):
            positions[id(member)] = latest * FAMILY_DECAY**rank
    return positions


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip())


def _continues(text: str, score: float, anchor_indent: int) -> bool:
    """Whether a line carries on the region above it: a stack frame or detail line indented under the
    anchor does, even when it names an exception itself; a passing-test line does not."""
    if not _CONTINUATION.match(text):
        return False
    if score < 2.0:
        return not (text[:1].isspace() and is_noise(text))
    return _indent(text) > anchor_indent


def _kept(line: LogLine) -> LogLine:
    """The line as stored until packing: its start, redacted, within KEPT_LINE_BYTES.

    Packing shows at most LINE_CAP bytes of a line, and scoring has read it whole already. Redacting
    before the cut keeps a secret that the cut crosses from leaving as a piece too short to recognise.
    """
    if len(line.text) <= KEPT_LINE_BYTES // 4 or len(line.text.encode("utf-8")) <= KEPT_LINE_BYTES:
        return line
    return replace(line, text=_shorten(redact_head(line.text, KEPT_LINE_BYTES), KEPT_LINE_BYTES), truncated=True)


def _shorten(text: str, cap: int) -> str:
    """Cut text to at most `cap` UTF-8 bytes, marking the cut with an ellipsis."""
    data = text.encode("utf-8")
    if len(data) <= cap:
        return text
    ellipsis = "…".encode()
    cut = data[: max(cap - len(ellipsis), 0)].decode("utf-8", errors="ignore")
    opened = cut.rfind("[REDACTED")
    if opened != -1 and "]" not in cut[opened:]:
        cut = cut[:opened]  # never leave half a placeholder, which would read as log text
    cut = cut.rstrip()
    return cut + "…" if cut else ""


def _shorten_middle(text: str, cap: int) -> str:
    """Cut text to at most `cap` UTF-8 bytes by taking out its middle: a stack frame names its file and line
    at the end (`at Foo.bar (Foo.java:42)`), which the source lookup and the reader both need."""
    data = text.encode("utf-8")
    if len(data) <= cap:
        return text
    tail_bytes = (cap - len("…".encode())) * 2 // 5
    cut = len(data) - tail_bytes
    for secret in PLACEHOLDER_RE.finditer(text):
        start, end = len(text[: secret.start()].encode("utf-8")), len(text[: secret.end()].encode("utf-8"))
        if start < cut < end:
            cut = end  # never begin the tail inside a placeholder, which would read as log text
    tail = data[cut:].decode("utf-8", errors="ignore")
    return _shorten(text, cap - len(tail.encode("utf-8"))) + tail


def _cost(text: str) -> int:
    return len(text.encode("utf-8")) + 1


def _pack(regions: list[_Region], budget: int, total: int, job_order: dict[str, int]) -> Excerpt:
    """Fill the budget with the best regions first; show the chosen lines in log order."""
    chosen: dict[tuple[str, int], tuple[LogLine, str]] = {}
    storm_shown: dict[str, int] = {}
    used = 0
    for region in sorted(regions, key=lambda r: r.final_score, reverse=True):
        ordered = region.lines[::-1] if region.focus_end else _anchor_first(region)
        storm = _storm_lines(region.lines)
        for line in ordered:
            key = (line.job, line.number)
            if key in chosen or not line.text.strip():
                continue
            if line.number in storm:
                # A storm of one message shows a few times in all, however many regions hold it.
                if storm_shown.get(storm[line.number], 0) >= REPEAT_RUN_SHOWN:
                    continue
                storm_shown[storm[line.number]] = storm_shown.get(storm[line.number], 0) + 1
            # Redact before measuring, so the budget holds for the text that actually leaves.
            clean = redact_text(line.text)
            frame = line.number != region.anchor and line.text[:1].isspace()
            text = _shorten_middle(clean, CONTEXT_LINE_CAP) if frame else _shorten(clean, LINE_CAP)
            cost = _cost(text)
            if used + cost > budget:
                room = budget - used - 1
                if room < 24:
                    continue
                text = _shorten(clean, room)
                cost = _cost(text)
            chosen[key] = (line, text)
            used += cost
        if budget - used < 24:
            break
    return Excerpt(blocks=_blocks(chosen, job_order), budget=budget, total_lines=total)


def _storm_lines(lines: list[LogLine]) -> dict[int, str]:
    """Lines in a run of more than REPEAT_RUN_SHOWN that differ only in numbers, with their signature."""
    storm: dict[int, str] = {}
    run: list[LogLine] = []
    for line in [*lines, None]:
        same = signature(line.text) if line is not None else None
        if run and (line is None or same != signature(run[-1].text)):
            if len(run) > REPEAT_RUN_SHOWN:
                storm.update((member.number, signature(member.text)) for member in run)
            run = []
        if line is not None:
            run.append(line)
    return storm


def _anchor_first(region: _Region) -> list[LogLine]:
    """The anchor line, then what follows it, then the context before it."""
    after = [line for line in region.lines if line.number >= region.anchor]
    before = [line for line in region.lines if line.number < region.anchor]
    return after + before[::-1]


def _blocks(
    chosen: dict[tuple[str, int], tuple[LogLine, str]], job_order: dict[str, int]
) -> list[ExcerptBlock]:
    blocks: list[ExcerptBlock] = []
    current: list[ExcerptLine] = []
    previous: LogLine | None = None
    for key in sorted(chosen, key=lambda k: (job_order.get(k[0], 0), k[1])):
        line, text = chosen[key]
        if previous is not None and (line.job != previous.job or line.step != previous.step):
            blocks.append(ExcerptBlock(job=previous.job, step=previous.step, lines=current))
            current = []
        current.append(ExcerptLine(number=line.number, text=text))
        previous = line
    if previous is not None and current:
        blocks.append(ExcerptBlock(job=previous.job, step=previous.step, lines=current))
    return blocks


def excerpt_lines(
    lines: Iterable[LogLine], budget: int = DEFAULT_BUDGET, passing: PassingIndex | None = None
) -> Excerpt:
    """Excerpt a whole log in one call."""
    excerpter = Excerpter(budget, passing)
    for line in lines:
        excerpter.feed(line)
    return excerpter.finish()
