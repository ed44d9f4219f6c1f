"""Excerpt a big log at C speed: one bulk scan finds the lines that can matter, only those are parsed.

The excerpter decides from a few kinds of line: error-like words, exit markers, test verdicts, step and
teardown markers, key material. A line with none of them changes nothing but the windows of recent lines,
so it is skipped; the windows rebuild skipped lines from the raw bytes only where they are read. The
candidate patterns come from the excerpt module's own tables, and whenever state spans lines (an open
region, a key block) every line is fed. The result is the excerpt the line-by-line path gives.
"""

from __future__ import annotations

import base64
import gzip
import io
import itertools
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any, BinaryIO

from bot.core import excerpt as rules
from bot.core.excerpt import DEFAULT_BUDGET, EXIT_WINDOW, FILL_LINES, Excerpter, PassingIndex
from bot.core.logs import (
    MAX_LINE_BYTES,
    LogError,
    LogLine,
    is_zip,
    iter_zip_jobs,
    open_stream,
    parse_line,
    read_log,
    read_raw_lines,
)
from bot.core.models import Excerpt
from bot.core.redact import MIN_BASE64_RUN

# Lines are read in pieces of about this size, each ending at a newline: big enough that the per-piece
# work is nothing, small enough that the few pieces kept for the windows stay a few megabytes.
CHUNK_BYTES = 4 * 1024 * 1024
# Below this a log is read line by line, which takes less time than compiling the scan.
SMALL_LOG_BYTES = 256 * 1024

# The scan sees ANSI codes removed, one pass, as clean() removes them; an OSC string stops at a newline or
# carriage return so that no line is joined to the next and no CR segment to the one before.
_ANSI_BYTES = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b\n\r]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# Non-ASCII characters whose lowercase holds ASCII letters: `line_score` lowercases before it looks.
_LOWERS_TO_ASCII = ("\u0130", "\u212a")


# A test verdict counts only in one of the shapes of excerpt._TEST_RESULTS, each of which holds one of these
# as written (the `ok N` of TAP is the pattern `ok [0-9]`); tests/test_scan.py checks the two agree.
TEST_VERDICTS = ("PASSED", "FAILED", "ERROR", "RERUN", "--- FAIL", "--- PASS")


def _literal(text: str) -> bytes:
    """A pattern matching `text` byte for byte: letters and digits plain (so CASELESS applies), the rest hex."""
    return b"".join(
        bytes([byte]) if chr(byte).isascii() and chr(byte).isalnum() else b"\\x%02x" % byte
        for byte in text.encode("utf-8")
    )


# What a line's patterns say it needs, one bit each: scoring; a test-verdict check (which matters only
# while a failed test awaits its rerun); the bookkeeping of steps, teardown and PEM keys (`plain`); or a
# look at the base64 run that ends it (Base64KeyBlock). A line with none of them resets Base64KeyBlock.
# KEY_TEXT marks "PRIVATE KEY" in base64, which a lone line ending in base64 needs to open a key.
SCORED, VERDICT, PLAIN, BASE64_END, KEY_TEXT = 1, 2, 4, 8, 16


def scored_literals() -> list[str]:
    """The words and phrases that can give a line a score, less each one that holds another (`failed` holds
    `fail`): a line with the longer holds the shorter, and every extra match is a call into Python."""
    texts = (
        set(rules._STRONG_WORDS)
        | set(rules._MEDIUM_WORDS)
        | set(rules._STRONG_PHRASES)
        | set(rules._DECISIVE_PHRASES)
        | {level.lower() for level in rules._LOUD_LEVELS}
        | set(_LOWERS_TO_ASCII)
        # Excerpter.feed looks for an exit marker only in a line with one of these.
        | {"exit", "fail", "error"}
    )
    # The tables are lowercase already; lowercasing here would turn the Kelvin sign into a plain `k`.
    return sorted(text for text in texts if not any(other != text and other in text for other in texts))


def candidate_patterns() -> list[tuple[bytes, int, int]]:
    """Every pattern, with its hyperscan flags and kind, whose absence from a line proves feeding it changes
    nothing.

    A pattern may match more than it must (the line is then parsed for nothing) but never less, so each
    reads the raw line anywhere, case-insensitively where the excerpter lowercases.
    """
    import hyperscan

    caseless, multiline = hyperscan.HS_FLAG_CASELESS, hyperscan.HS_FLAG_MULTILINE
    patterns = [(_literal(text), caseless, SCORED) for text in scored_literals()]
    patterns += [
        # Control characters vanish in clean() and could join the pieces of a word.
        (rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", 0, SCORED),
        *[(_literal(verdict), 0, VERDICT) for verdict in TEST_VERDICTS],
        (rb"ok [0-9]", 0, VERDICT),
        # A step starts (the parser's step, the excerpter's teardown), or a teardown line.
        (_literal("##[group]Run "), 0, PLAIN),
        (rules._TEARDOWN_LINE.pattern.removeprefix("^").encode(), caseless, PLAIN),
        # Key material: a PEM block, or a base64 run that ends the line or a CR segment (Base64KeyBlock),
        # before any whitespace rstrip() removes. Hyperscan finds a fixed-width end quickly and an unbounded
        # run of whitespace slowly, so a line ending in a longer one is a candidate whatever precedes it.
        (_literal("PRIVATE KEY"), 0, PLAIN),
        (rb"[A-Za-z0-9+/=]{%d}(?:%s)[\r\n]" % (MIN_BASE64_RUN, b"|".join(_TAILS)), 0, BASE64_END),
        (_TRAILING_SPACE * len(_TAILS) + rb"[\r\n]", 0, BASE64_END),
        *[(base64.b64encode(text.encode()), 0, KEY_TEXT) for text in _KEY_TEXT_GROUPS],
        # `gh run view --log` prefixes set the job and step (logs.GH_RUN_VIEW_RE).
        (rb"^[^\t\n]*\t[^\t\n]*\t(?:\xef\xbb\xbf)?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", multiline, PLAIN),
    ]
    return patterns


# A byte of what str.rstrip() may remove (controls make a line a scored candidate anyway), and the endings
# of up to 8 of them that the base64-end pattern spells out.
_TRAILING_SPACE = rb"[ \t\x0b\x0c\x80-\xff]"
_TAILS = [_TRAILING_SPACE * count for count in range(9)]
# Decoded from its start, a run holds "PRIVATE KEY" only if it holds one of these three-byte-group spans
# of it, encoded: whichever way the phrase falls across groups, three whole groups lie inside it.
_KEY_TEXT_GROUPS = ("PRIVATE K", "RIVATE KE", "IVATE KEY")


_SCAN_LOCK = threading.Lock()


@cache
def _database() -> Any:
    """The compiled scan, or None where hyperscan has no wheel (the line-by-line path then runs)."""
    try:
        import hyperscan
    except ImportError:
        return None
    patterns = candidate_patterns()
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    # A pattern's id is its kind: a line needs what all its matches say.
    database.compile(
        expressions=[pattern for pattern, _, _ in patterns],
        ids=[kind for _, _, kind in patterns],
        elements=len(patterns),
        flags=[flags for _, flags, _ in patterns],
    )
    return database


def available() -> bool:
    """True when the bulk scan can run here."""
    return _database() is not None


def candidate_lines(buffer: bytes) -> dict[int, int]:
    """The lines of `buffer` (split on newlines) that hold a candidate pattern, by index, with their kinds'
    bits."""
    hits: list[int] = []
    if not buffer.endswith(b"\n"):
        buffer += b"\n"  # the base64-end patterns end at a newline; this one ends the last line
    with _SCAN_LOCK:  # a compiled database has one scratch space, so one scan at a time
        # One int per match, end offset and kind together, sorts fastest.
        _database().scan(buffer, match_event_handler=lambda kind, _from, end, _flags, _c: hits.append(end << 5 | kind))
    hits.sort()
    found: dict[int, int] = {}
    index, position, next_start = -1, 0, -1
    for hit in hits:
        end, kind = hit >> 5, hit & 31
        last = max(end - 1, 0)
        if last >= next_start:
            index += buffer.count(b"\n", position, last) + (index < 0)
            position = last
            next_start = buffer.find(b"\n", last) + 1 or len(buffer) + 1
            found[index] = kind
        else:
            found[index] |= kind
    return found


@dataclass(slots=True)
class _Skipped:
    """A run of lines that were not fed: raw bytes kept by reference, parsed from the end when read."""

    raw: list[bytes]
    start: int
    end: int
    first_number: int
    job: str
    step: str
    max_line_bytes: int
    # Kept (redacted, cut) non-empty lines parsed so far, newest first, and the raw index parsed down to.
    parsed: list[LogLine] = field(default_factory=list)
    cursor: int = -1

    def newest(self, count: int) -> list[LogLine]:
        """Up to `count` of the newest non-empty lines of the run, newest first."""
        if self.cursor < 0:
            self.cursor = self.end
        while len(self.parsed) < count and self.cursor > self.start:
            self.cursor -= 1
            raw = self.raw[self.cursor]
            truncated = len(raw) >= self.max_line_bytes
            line, _ = parse_line(
                raw[: self.max_line_bytes] if truncated else raw,
                self.first_number + self.cursor - self.start,
                self.job,
                self.step,
                truncated,
            )
            # A skipped line holds no key material, so what feed() keeps of it is only the cut.
            if line.text.strip():
                self.parsed.append(rules._kept(line))
        return self.parsed[:count]

    def newest_first(self) -> Iterator[LogLine]:
        """The non-empty lines of the run, newest first, each parsed only when asked for."""
        taken = 0
        while len(self.newest(taken + 1)) > taken:
            yield self.parsed[taken]
            taken += 1


class SparseExcerpter(Excerpter):
    """An Excerpter fed only the lines that matter, told of the others as runs it can read back."""

    def __init__(self, budget: int = DEFAULT_BUDGET, passing: PassingIndex | None = None) -> None:
        super().__init__(budget, passing)
        # Fed non-empty lines (as kept) and skipped runs, oldest first; `_dropped` counts entries pruned.
        self._timeline: list[LogLine | _Skipped] = []
        self._dropped = 0
        self._feeding = False
        self._pending: list[_LazyHistory] = []
        self._pending_windows: list[_LazyWindow] = []
        # The names of the failed tests awaiting a rerun, encoded, until a test result is tracked again.
        self._test_names: list[bytes] | None = None

    def feed(self, line: LogLine, plain: bool = False) -> None:
        newest = self._history[-1] if self._history else None
        self._feeding = True
        try:
            super().feed(line, plain)
        finally:
            self._feeding = False
        if self._history and self._history[-1] is not newest:
            self._timeline.append(self._history[-1])

    def feed_plain(
        self, raw: list[bytes], start: int, stop: int, before: int, job: str, step: str, max_line_bytes: int,
        pinned: bool,
    ) -> tuple[int, str]:
        """Feed lines `start` to `stop` of `raw`, none holding a candidate pattern, while a region is open and
        no key is being read; return where it stopped and the step.

        This is feed() with what the scan proved away: such a line is no teardown line, starts no step and
        ends in no base64 run, so it only resets Base64KeyBlock, and scores 0.
        """
        keys = self._encoded_keys
        if self._in_key_block or keys._in_key:
            return start, step
        history, timeline, place = self._history, self._timeline, self._place
        index = start
        while index < stop and self._open is not None:
            data = raw[index]
            truncated = len(data) >= max_line_bytes
            line, step = parse_line(
                data[:max_line_bytes] if truncated else data, before + index + 1, job, step, truncated, pinned
            )
            index += 1
            text = line.text
            self._count_read(line)
            keys._carry = keys._tail = ""
            if line.step and rules._TEARDOWN_STEP.match(line.step):
                self._teardown = True
            if not self._count_shown(text):
                continue
            kept = rules._kept(line)
            history.append(kept)
            timeline.append(kept)
            place(line, kept, 0.0)
        return index, step

    def awaits(self, raw: bytes) -> bool:
        """Whether a line whose only candidate is a test verdict can be the rerun of a failed test.

        The test's name, taken from the cleaned line, is then in the raw bytes too, unless an ANSI code
        split it (a control character makes the line a scored candidate anyway).
        """
        if not self._tests:
            return False
        if self._test_names is None:
            self._test_names = [name.encode() for name in self._tests]
        return b"\x1b" in raw or any(map(raw.__contains__, self._test_names))

    def _track_test_result(self, text: str) -> None:
        super()._track_test_result(text)
        self._test_names = None

    @property
    def wants_every_line(self) -> bool:
        # A base64 run carried over from the line before needs no feeding: a skipped line ends no line
        # in base64, so it would only reset the carry, which skip() does.
        return self._open is not None or self._in_key_block or self._encoded_keys._in_key

    def skip(self, run: _Skipped, characters: int) -> None:
        """Account for lines that were not fed, none ending in base64; `characters` bounds their cleaned text
        from above."""
        self._encoded_keys._reset()
        self._timeline.append(run)
        self._characters += characters
        self._job_order.setdefault(run.job, len(self._job_order))

    def end_stream(self, job: str, lines: int) -> None:
        """After the last line of one job's log: what feed() records of every line, for the skipped ones."""
        if lines:
            self._job_order.setdefault(job, len(self._job_order))
            self._total = lines

    def _newest(self, count: int, end: int | None = None) -> list[LogLine]:
        """The newest `count` non-empty lines before timeline entry `end` (global index), oldest first."""
        stop = (len(self._timeline) if end is None else end - self._dropped) - 1
        found: list[LogLine] = []
        while len(found) < count and stop >= 0:
            entry = self._timeline[stop]
            if isinstance(entry, _Skipped):
                found.extend(entry.newest(count - len(found)))
            else:
                found.append(entry)
            stop -= 1
        found.reverse()
        return found

    def _newest_first(self) -> Iterator[LogLine]:
        """The non-empty lines fed or skipped so far, newest first, parsed as they are read."""
        for index in range(len(self._timeline) - 1, -1, -1):
            entry = self._timeline[index]
            if isinstance(entry, _Skipped):
                yield from entry.newest_first()
            else:
                yield entry

    def _recent_lines(self, count: int) -> list[LogLine]:
        return self._newest(count)

    def _exit_lines(self, marker: LogLine) -> list[LogLine]:
        # Most exit regions are pruned unread (Excerpter._keep), and reading a window means parsing skipped
        # lines. A line of the marker's own step that is no noise proves the window is not empty; the rest
        # of it is read only if the region is still kept when pruning could reach its lines.
        recent = itertools.islice(self._newest_first(), EXIT_WINDOW)
        if not any(
            line.job == marker.job and line.step == marker.step and not rules.is_noise(line.text) for line in recent
        ):
            return super()._exit_lines(marker)
        window = _LazyWindow(self, self._dropped + len(self._timeline), marker)
        self._pending_windows.append(window)
        return window.lines

    def _history_lines(self) -> Iterable[LogLine]:
        if not self._feeding:
            return self._newest(FILL_LINES)
        # At an exit marker: note where its history ends for now; it is read only if it is still one of the
        # remembered exits when pruning could reach it (Excerpter._exits).
        lazy = _LazyHistory(self, self._dropped + len(self._timeline), self._history[-1])
        self._pending.append(lazy)
        return lazy

    def _resolve_pending(self) -> None:
        """Read the windows and histories still wanted, while the timeline holds their lines."""
        remembered = {id(history) for _, history in self._exits}
        for lazy in self._pending:
            if id(lazy) in remembered:
                lazy.resolve()
        self._pending.clear()
        kept = {id(region.lines) for region in self._regions} | {id(region.lines) for region, _ in self._exits}
        for window in self._pending_windows:
            if id(window.lines) in kept:
                window.resolve()
        self._pending_windows.clear()

    def finish(self) -> Excerpt:
        self._resolve_pending()
        return super().finish()

    def prune(self) -> None:
        """Drop what no window can read any more: everything before the newest FILL_LINES lines."""
        self._resolve_pending()
        keep = FILL_LINES
        index = len(self._timeline)
        while keep > 0 and index > 0:
            index -= 1
            entry = self._timeline[index]
            keep -= len(entry.newest(keep)) if isinstance(entry, _Skipped) else 1
        if index > 0:
            del self._timeline[:index]
            self._dropped += index

    def resolve(self, end: int, head: LogLine) -> list[LogLine]:
        return [*self._newest(FILL_LINES - 1, end), head]


class _LazyHistory:
    """The history at an exit marker, built from the timeline when read or before it is pruned."""

    def __init__(self, owner: SparseExcerpter, end: int, head: LogLine) -> None:
        self._owner, self._end, self._head = owner, end, head
        self._lines: list[LogLine] | None = None

    def resolve(self) -> list[LogLine]:
        if self._lines is None:
            self._lines = self._owner.resolve(self._end, self._head)
        return self._lines

    def __iter__(self) -> Iterator[LogLine]:
        return iter(self.resolve())


class _LazyWindow:
    """The lines of an exit marker's region: the marker alone until resolved, then the window before it too.

    The region holds `lines` itself, so resolving fills that very list in.
    """

    def __init__(self, owner: SparseExcerpter, end: int, marker: LogLine) -> None:
        self._owner, self._end, self._marker = owner, end, marker
        self.lines = [marker]

    def resolve(self) -> None:
        recent = self._owner._newest(EXIT_WINDOW, self._end)
        self.lines[:-1] = rules.exit_window(recent, self._marker)


def _chunks(stream: BinaryIO, size: int, max_line_bytes: int) -> Iterator[bytes]:
    """Pieces of the stream that end at a newline (the last may not); an over-long line keeps its start only."""
    while True:
        block = stream.read(size)
        if not block:
            return
        if block.endswith(b"\n"):
            yield block
            continue
        pieces = [block]
        partial = len(block) - (block.rfind(b"\n") + 1)
        while True:
            more = stream.readline(max_line_bytes)
            if not more:
                break
            ended = more.endswith(b"\n")
            body = more[:-1] if ended else more
            room = max_line_bytes - partial
            if room > 0:
                pieces.append(body[:room])
                partial += min(len(body), room)
            if ended:
                pieces.append(b"\n")
                break
        yield b"".join(pieces)


def _feed_stream(
    excerpter: SparseExcerpter, chunks: Iterable[bytes], job: str, max_line_bytes: int, step: str = "", after: int = 0
) -> int:
    """Feed one log (or one step file, its `step` pinned, numbered on from `after`); return its last line number."""
    pinned = bool(step)
    number = after
    try:
        for chunk in chunks:
            raw = chunk.split(b"\n")
            if chunk.endswith(b"\n"):
                raw.pop()
            clean_text = b"\xef\xbf\xbd" not in chunk and _decodes(chunk)
            if clean_text:
                candidates = candidate_lines(_ANSI_BYTES.sub(b"", chunk) if b"\x1b" in chunk else chunk)
                _drop_lone_base64_ends(candidates, len(raw))
            else:
                # Undecodable bytes count towards telling a binary from a log: read every line of this piece.
                candidates = dict.fromkeys(range(len(raw)), SCORED)
            step = _feed_chunk(excerpter, raw, candidates, number, job, step, max_line_bytes, pinned)
            number += len(raw)
            excerpter.prune()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise LogError(f"the log could not be read: {exc}") from exc
    return number


def _drop_lone_base64_ends(candidates: dict[int, int], count: int) -> None:
    """Make plain the lines whose only candidate is a base64 end, between lines with none, and no encoded
    "PRIVATE KEY" in them.

    Base64KeyBlock reads such a line with nothing carried over (the line before ended in no base64) and,
    with no key in it, only leaves a carry that the line after drops; so feeding it changes nothing that
    skipping it (which resets the carry) does not. The first and last lines of a piece stay: their
    neighbours are in another piece.
    """
    lone = [
        index
        for index, kind in candidates.items()
        if kind == BASE64_END
        and 0 < index < count - 1
        and not (candidates.get(index - 1, 0) | candidates.get(index + 1, 0)) & BASE64_END
    ]
    for index in lone:
        del candidates[index]


def _parse_chunks(chunks: Iterable[bytes], job: str, max_line_bytes: int) -> Iterator[LogLine]:
    """Every line of the pieces, as parse_lines gives them from the stream they came from."""
    step = ""
    number = 0
    try:
        for chunk in chunks:
            for raw, truncated in read_raw_lines(io.BytesIO(chunk), max_line_bytes):
                number += 1
                line, step = parse_line(raw, number, job, step, truncated)
                yield line
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise LogError(f"the log could not be read: {exc}") from exc


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _feed_chunk(
    excerpter: SparseExcerpter,
    raw: list[bytes],
    candidates: dict[int, int],
    before: int,
    job: str,
    step: str,
    max_line_bytes: int,
    pinned: bool = False,
) -> str:
    """Feed the candidate lines of one piece, and every line while the excerpter wants them; return the step."""
    index, count = 0, len(raw)
    pending = iter(candidates)  # in line order, as candidate_lines found them
    target = next(pending, count)
    while index < count:
        if not excerpter.wants_every_line:
            # Only a verdict alone can be skipped: a line ending in base64 must reach Base64KeyBlock.
            while target < count and candidates[target] == VERDICT and not excerpter.awaits(raw[target]):
                target = next(pending, count)
            if index < target:
                excerpter.skip(
                    _Skipped(raw, index, target, before + index + 1, job, step, max_line_bytes),
                    sum(map(len, raw[index:target])),
                )
                index = target
                continue
        if index < target:
            index, step = excerpter.feed_plain(raw, index, target, before, job, step, max_line_bytes, pinned)
            if index == target or not excerpter.wants_every_line:
                continue
        line = raw[index]
        truncated = len(line) >= max_line_bytes
        parsed, step = parse_line(
            line[:max_line_bytes] if truncated else line, before + index + 1, job, step, truncated, pinned
        )
        excerpter.feed(parsed, plain=not candidates.get(index, 0) & (SCORED | VERDICT))
        index += 1
        while target < index:
            target = next(pending, count)
    return step


def excerpt_stream(
    stream: BinaryIO,
    budget: int = DEFAULT_BUDGET,
    passing: PassingIndex | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    small_bytes: int = SMALL_LOG_BYTES,
    job: str = "",
) -> Excerpter:
    """Read any supported log (zip of job logs, gzip, plain) into an excerpter, ready for `finish()`.

    A log smaller than `small_bytes` is read line by line: that is quicker than compiling the scan. `job`
    names the job of a plain log; a zip names its own jobs.
    """
    if stream.seekable() and is_zip(stream):
        if not available():
            return _line_by_line(read_log(stream), budget, passing)
        sparse = SparseExcerpter(budget, passing)
        for name, parts in iter_zip_jobs(stream):
            number = 0
            for step, entry in parts:
                chunks = _chunks(open_stream(entry), CHUNK_BYTES, max_line_bytes)
                number = _feed_stream(sparse, chunks, name, max_line_bytes, step, number)
            sparse.end_stream(name, number)
        return sparse
    try:
        source = open_stream(stream)
        pieces = _chunks(source, CHUNK_BYTES, max_line_bytes)
        first = next(pieces, b"")
        whole = not source.peek(1)  # type: ignore[attr-defined]
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise LogError(f"the log could not be read: {exc}") from exc
    chunks = itertools.chain([first] if first else [], pieces)
    if (whole and len(first) < small_bytes) or not available():
        return _line_by_line(_parse_chunks(chunks, job, max_line_bytes), budget, passing)
    sparse = SparseExcerpter(budget, passing)
    sparse.end_stream(job, _feed_stream(sparse, chunks, job, max_line_bytes))
    return sparse


def _line_by_line(lines: Iterable[LogLine], budget: int, passing: PassingIndex | None) -> Excerpter:
    excerpter = Excerpter(budget, passing)
    for line in lines:
        excerpter.feed(line)
    return excerpter
