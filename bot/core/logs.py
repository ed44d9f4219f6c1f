"""Read CI logs of every supported shape into numbered, cleaned lines, streaming."""

from __future__ import annotations

import gzip
import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO

# A line longer than this is cut: one 5 MB line must not cost 5 MB per copy downstream.
MAX_LINE_BYTES = 16 * 1024
# Zip caps: a run-logs archive is text, which compresses about 10:1; 200:1 is a bomb.
MAX_ZIP_ENTRY_BYTES = 100 * 1024 * 1024
MAX_ZIP_TOTAL_BYTES = 512 * 1024 * 1024
MAX_ZIP_RATIO = 200
# A run's logs hold a file per job and per step: a 256-job matrix of 50-step jobs stays well under this. The
# count is read before zipfile builds an object per entry, since a 100 MB archive can list a million.
MAX_ZIP_ENTRIES = 50_000

# Red text, as most test runners and compilers print their errors: SGR 31 or 91 (bright), alone or among other
# attributes, followed by something visible on the line.
RED_RE = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:31|91)(?:;[0-9;]*)?m(?!\s*(?:\x1b|$))")
ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
GHA_TIMESTAMP_RE = re.compile(r"^\ufeff?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z ?")
# Taskcluster and similar runners stamp each line "[task 2025-02-13T22:10:07.053Z] ".
BRACKET_TIMESTAMP_RE = re.compile(r"^\[[\w-]{0,20} ?\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?Z?\] ")
# `gh run view --log` prefixes each line with "<job>\t<step>\t<timestamp> ".
GH_RUN_VIEW_RE = re.compile(r"^([^\t]*)\t([^\t]*)\t(\ufeff?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z ?)")
COMMAND_RE = re.compile(r"^##\[(group|endgroup|error|warning|notice|debug|command|section)\]")
# `::error file=app.py,line=3::message` as echoed by a step; the runner shows it as ##[error].
WORKFLOW_COMMAND_RE = re.compile(r"^::(error|warning|notice)(?: ([^:]*))?::(.*)$")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
TRAVIS_FOLD_RE = re.compile(r"^travis_(?:fold|time):\S*")


class LogError(ValueError):
    """A log that cannot be read, with a message meant for a person."""


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a log: its original number, its cleaned text and where it was printed."""

    number: int
    text: str
    job: str = ""
    step: str = ""
    marker: str = ""
    truncated: bool = False
    red: bool = False


def clean(raw: str) -> str:
    """Strip what a reader never sees: ANSI codes, timestamps, overwritten CR segments, controls."""
    text = raw.rstrip("\r\n")
    if "\r" in text:
        # A terminal shows only what follows the last carriage return.
        segments = [s for s in text.split("\r") if ANSI_RE.sub("", s).strip()]
        text = segments[-1] if segments else ""
    if "\x1b" in text:
        text = ANSI_RE.sub("", text)
    text = GHA_TIMESTAMP_RE.sub("", text, count=1)
    if text.startswith("["):
        text = BRACKET_TIMESTAMP_RE.sub("", text, count=1)
    if text.startswith("travis_") and TRAVIS_FOLD_RE.match(text):
        text = ""
    if not text.isprintable():  # a C loop, several times quicker than the regex on the usual clean line
        text = CONTROL_RE.sub("", text)
    return text.rstrip()


def read_raw_lines(stream: BinaryIO, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[bytes, bool]]:
    """Yield each raw line (without `\\n`) and whether it was cut, reading in bounded pieces."""
    while True:
        chunk = stream.readline(max_line_bytes)
        if not chunk:
            return
        if chunk.endswith(b"\n"):
            yield chunk[:-1], False
            continue
        if len(chunk) < max_line_bytes:
            yield chunk, False  # the last line, with no newline after it
            return
        # Skip the rest of an over-long line without holding it.
        tail = stream.readline(max_line_bytes)
        while tail and not tail.endswith(b"\n"):
            tail = stream.readline(max_line_bytes)
        yield chunk, True
        if not tail:
            return


def open_stream(stream: BinaryIO) -> BinaryIO:
    """Return a stream of the log's bytes, unwrapping gzip when the magic bytes say so."""
    buffered = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(_Readable(stream))
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered)  # type: ignore[return-value]
    return buffered


class _Readable(io.RawIOBase):
    """Adapt any object with read() to RawIOBase so it can be buffered and peeked."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def parse_line(
    raw: bytes, number: int, job: str, step: str, truncated: bool = False, pinned: bool = False
) -> tuple[LogLine, str]:
    """Parse one raw line (without `\\n`) given the step in effect; return it and the step after it.

    A `pinned` step (a per-step file names its own step) is not changed by what the line says.
    """
    text = raw.decode("utf-8", errors="replace")
    line_job = job
    # The cheap tests first: most lines have no tab and start with neither `##[` nor `::`.
    prefixed = GH_RUN_VIEW_RE.match(text) if "\t" in text else None
    if prefixed:
        line_job = prefixed.group(1)
        if not pinned:
            step = prefixed.group(2)
        text = text[prefixed.end() :]
    red = "\x1b[" in text and RED_RE.search(text) is not None
    text = clean(text)
    marker = ""
    command = COMMAND_RE.match(text) if text.startswith("##[") else None
    if command:
        marker = command.group(1)
        text = text[command.end() :]
        if marker == "group" and text.startswith("Run ") and not prefixed and not pinned:
            step = text[4:].strip()
    elif text.startswith("::"):
        workflow_command = WORKFLOW_COMMAND_RE.match(text)
        if workflow_command:
            marker = workflow_command.group(1)
    return _new_line(number, text, line_job, step, marker, truncated, red), step


# A frozen dataclass's __init__ sets each field through object.__setattr__, which costs a bulk scan of a
# big log about 2 µs a line; its slot descriptors set the same fields in a third of the time.
_SET_NUMBER, _SET_TEXT, _SET_JOB, _SET_STEP, _SET_MARKER, _SET_TRUNCATED, _SET_RED = (
    getattr(LogLine, name).__set__ for name in ("number", "text", "job", "step", "marker", "truncated", "red")
)


def _new_line(number: int, text: str, job: str, step: str, marker: str, truncated: bool, red: bool) -> LogLine:
    """LogLine(number, text, job, step, marker, truncated, red), built quicker; tests/test_logs.py checks it
    sets every field."""
    line = object.__new__(LogLine)
    _SET_NUMBER(line, number)
    _SET_TEXT(line, text)
    _SET_JOB(line, job)
    _SET_STEP(line, step)
    _SET_MARKER(line, marker)
    _SET_TRUNCATED(line, truncated)
    _SET_RED(line, red)
    return line


def parse_lines(
    stream: BinaryIO, job: str = "", max_line_bytes: int = MAX_LINE_BYTES, step: str = "", after: int = 0
) -> Iterator[LogLine]:
    """Yield every line of one job log (GitHub Actions, gh run view, Travis, Jenkins, plain, gzip).

    A `step` given is pinned to every line (a per-step file of a run-logs zip); `after` is the number of
    lines of the same job already read, so that numbering continues across its step files.
    """
    pinned = bool(step)
    try:
        raw_lines = read_raw_lines(open_stream(stream), max_line_bytes)
        for number, (raw, truncated) in enumerate(raw_lines, start=after + 1):
            line, step = parse_line(raw, number, job, step, truncated, pinned)
            yield line
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise LogError(f"the log could not be read: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ZipJob:
    """One job inside a run-logs archive, named by the archive; entry names are never used as paths.

    `entries` holds (step, entry name) pairs: the whole-job file `<n>_<job>.txt` alone with no step (its
    `##[group]Run` lines name the steps), or, when the archive has no such file for the job, every
    `<job>/<n>_<step>.txt` in step order, each with its step's name.
    """

    name: str
    entries: tuple[tuple[str, str], ...]


def _label(entry_name: str, fallback: str = "job") -> str:
    """Make an archive entry name safe to show: no directories, controls or traversal."""
    base = entry_name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    base = CONTROL_RE.sub("", base).replace("..", "")
    base = re.sub(r"^\d+_", "", base)
    return base.removesuffix(".txt").strip() or fallback


def list_zip_jobs(archive: zipfile.ZipFile) -> list[ZipJob]:
    """List the jobs of a run-logs archive: numbered whole-job files in the runner's order, then step-only jobs."""
    jobs: list[tuple[int, ZipJob]] = []
    steps: dict[str, list[tuple[int, str]]] = {}
    for info in archive.infolist():
        name = info.filename
        if info.is_dir() or not name.endswith(".txt"):
            continue
        parts = name.replace("\\", "/").split("/")
        order = _order(parts[-1])
        if len(parts) == 1:
            jobs.append((order, ZipJob(_label(name), (("", name),))))
        elif len(parts) == 2:
            steps.setdefault(parts[0], []).append((order, name))
    whole = {job.name for _, job in jobs}
    for folder, entries in steps.items():
        if _label(folder) in whole:
            continue  # the whole-job file already holds every step
        entries.sort()
        ordered = tuple((_label(entry, "step"), entry) for _, entry in entries)
        jobs.append(((1 << 31) + len(jobs), ZipJob(_label(folder), ordered)))
    jobs.sort(key=lambda pair: pair[0])
    return [job for _, job in jobs]


def _order(base: str) -> int:
    match = re.match(r"^(\d+)_", base)
    return int(match.group(1)) if match else 1 << 30


def open_zip_entry(
    archive: zipfile.ZipFile,
    entry: str,
    max_entry_bytes: int = MAX_ZIP_ENTRY_BYTES,
    max_ratio: int = MAX_ZIP_RATIO,
) -> BinaryIO:
    """Open one entry of an archive, refusing symlinks, oversized entries and bombs."""
    info = archive.getinfo(entry)
    mode = info.external_attr >> 16
    if mode & 0o170000 == 0o120000:
        raise LogError(f"archive entry {_label(entry)!r} is a symlink")
    if info.file_size > max_entry_bytes:
        raise LogError(f"archive entry {_label(entry)!r} is {info.file_size} bytes, over the cap")
    if info.compress_size and info.file_size / info.compress_size > max_ratio:
        raise LogError(f"archive entry {_label(entry)!r} expands {info.file_size // info.compress_size}:1")
    # The header sizes can lie; count what actually comes out.
    capped = _CappedReader(archive.open(info), max_entry_bytes, _label(entry))
    return io.BufferedReader(capped)


class _CappedReader(io.RawIOBase):
    """Raise once more than `cap` bytes have been read, whatever the zip header claimed."""

    def __init__(self, inner: IO[bytes], cap: int, label: str) -> None:
        self._inner, self._cap, self._label, self._seen = inner, cap, label, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        self._seen += len(data)
        if self._seen > self._cap:
            raise LogError(f"archive entry {self._label!r} expands past {self._cap} bytes")
        buffer[: len(data)] = data
        return len(data)


def iter_zip_lines(stream: BinaryIO, max_total_bytes: int = MAX_ZIP_TOTAL_BYTES) -> Iterator[LogLine]:
    """Yield the lines of every job in a run-logs archive, each labeled with its job (and step, from step files).

    A job read from step files is numbered as one log: the first line of a step follows the last of the
    step before, as in the whole-job file GitHub builds from the same steps.
    """
    for name, parts in iter_zip_jobs(stream, max_total_bytes):
        number = 0
        for step, entry in parts:
            for line in parse_lines(entry, job=name, step=step, after=number):
                number = line.number
                yield line


ZipParts = Iterator[tuple[str, BinaryIO]]


def iter_zip_jobs(
    stream: BinaryIO, max_total_bytes: int = MAX_ZIP_TOTAL_BYTES, max_entries: int = MAX_ZIP_ENTRIES
) -> Iterator[tuple[str, ZipParts]]:
    """Yield each job of a run-logs archive, in the runner's order, with its (step, capped byte stream) parts.

    A job's parts are opened one at a time as they are read, so each is checked against the caps; read them
    before asking for the next job.
    """
    listed = zip_entry_count(stream)
    if listed is not None and listed > max_entries:
        raise LogError(f"archive lists {listed} entries, over the {max_entries}-entry cap")
    try:
        archive = zipfile.ZipFile(stream)
    except zipfile.BadZipFile as exc:
        raise LogError(f"not a readable zip archive: {exc}") from exc
    with archive:
        total = sum(info.file_size for info in archive.infolist())
        if total > max_total_bytes:
            raise LogError(f"archive expands to {total} bytes, over the {max_total_bytes}-byte cap")
        for job in list_zip_jobs(archive):
            yield job.name, ((step, open_zip_entry(archive, entry)) for step, entry in job.entries)


_END_OF_DIRECTORY = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_END = b"PK\x06\x06"


def zip_entry_count(stream: BinaryIO) -> int | None:
    """The number of entries a zip's end-of-directory record states, or None where there is no such record.

    Read from the archive's tail, so a huge listing is refused before anything is built from it.
    """
    start = stream.tell()
    size = stream.seek(0, io.SEEK_END)
    tail_start = max(size - (0xFFFF + 22), 0)  # the record ends the file, after a comment of at most 64 KiB
    stream.seek(tail_start)
    tail = stream.read()
    stream.seek(start)
    at = tail.rfind(_END_OF_DIRECTORY)
    if at < 0 or len(tail) - at < 22:
        return None
    count = int.from_bytes(tail[at + 10 : at + 12], "little")
    locator = tail[at - 20 : at] if at >= 20 else b""
    if count == 0xFFFF and locator[:4] == _ZIP64_LOCATOR:
        stream.seek(int.from_bytes(locator[8:16], "little"))
        record = stream.read(56)
        stream.seek(start)
        if record[:4] == _ZIP64_END and len(record) == 56:
            count = int.from_bytes(record[32:40], "little")
    return count


def is_zip(stream: BinaryIO) -> bool:
    """Tell a zip archive from a text or gzip log by its first bytes, without consuming them."""
    position = stream.tell()
    head = stream.read(4)
    stream.seek(position)
    return head == b"PK\x03\x04"


def read_log(stream: BinaryIO) -> Iterator[LogLine]:
    """Yield the lines of any supported log: a zip of job logs, gzip or plain text."""
    if stream.seekable() and is_zip(stream):
        return iter_zip_lines(stream)
    return parse_lines(stream)


def lines_from_text(text: str, job: str = "") -> list[LogLine]:
    """Parse a log held in memory, such as one pasted into an issue."""
    return list(parse_lines(io.BytesIO(text.encode("utf-8", errors="replace")), job=job))


def count_lines(lines: Iterable[LogLine]) -> int:
    """Count lines while consuming an iterator, for progress and tests."""
    return sum(1 for _ in lines)
