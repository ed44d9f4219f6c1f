"""Stable ids for failures: mask what changes between reruns, hash what stays."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

FINGERPRINT_VERSION = "v1"
FINGERPRINT_HEX_CHARS = 16
SIGNATURE_LINES = 3
SIGNATURE_LINE_CHARS = 200
# Parsing JSON is the only costly step here; no log event worth keying is this long.
MAX_STRUCTURED_LINE = 64 * 1024

# Order matters: wider shapes (timestamps, UUIDs, paths) are masked before the numbers inside them.
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    # ISO 8601 and "2024-01-02 03:04:05,678" log stamps, with optional zone.
    (
        re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d)?(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d\b)?"),
        "<ts>",
    ),
    # glog/absl prefix "E0730 10:12:22.917000 80638 file.cc:12]": level, date, time, thread.
    (re.compile(r"\b[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\b"), "<ts>"),
    # Syslog and Apache shapes: "Jul 30 10:12:17", "30/Jul/2024:10:12:17 +0000".
    (
        re.compile(
            r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +\d{1,2} \d\d:\d\d:\d\d\b"
            r"|\b\d{1,2}/(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)/\d{4}"
            r":\d\d:\d\d:\d\d(?: [+-]\d{4})?"
        ),
        "<ts>",
    ),
    (re.compile(r"\b\d{4}-\d\d-\d\d\b|\b\d{4}/\d\d/\d\d\b"), "<date>"),
    # Clock times and "in 0:08:17" durations look the same.
    (re.compile(r"\b\d{1,2}:\d\d:\d\d(?:[.,]\d+)?\b"), "<time>"),
    (
        re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
        "<uuid>",
    ),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<addr>"),
    # Temporary directories: the whole path, since a file under them is as throwaway as the dir.
    (
        re.compile(
            r"(?:/private)?/var/folders/[^\s'\"`,;)\]]*"
            r"|(?<![\w.-])/tmp/[^\s'\"`,;)\]]*"
            r"|[A-Za-z]:\\Users\\[^\\\s]+\\AppData\\Local\\Temp\\[^\s'\"`,;)\]]*"
            r"|(?:[A-Za-z]:)?[\\/][^\s'\"`]*?[\\/]_temp[\\/][^\s'\"`,;)\]]*"
        ),
        "<tmp>",
    ),
    # Checkout roots differ between hosted, container and self-hosted runners; the path below is kept.
    (
        re.compile(
            r"/home/runner/work/[^/\s]+/[^/\s]+/"
            r"|/__w/[^/\s]+/[^/\s]+/"
            r"|[A-Za-z]:\\a\\[^\\\s]+\\[^\\\s]+\\"
            r"|[A-Za-z]:\\actions-runner\\_work\\[^\\\s]+\\[^\\\s]+\\"
            r"|/home/travis/build/[^/\s]+/[^/\s]+/"
            r"|/var/lib/jenkins/workspace/(?:[^/\s]+/)?"
            r"|/builds/[^/\s]+/[^/\s]+/"
        ),
        "<ws>/",
    ),
    # Interpreter install prefixes vary by runner image; the package path below them does not.
    (re.compile(r"[^\s'\"(]*[\\/](?:site|dist)-packages[\\/]"), "<site>/"),
    # Durations before plain numbers so "12.3s" and "1234 ms" read the same.
    (
        re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ms|msec|s|sec|secs|seconds?|m|min|mins|minutes?|h|hrs?|hours?)\b"),
        "<dur>",
    ),
    # Hex runs of 7+ with both a digit and a letter: SHAs, object ids, request ids. An underscore
    # counts as a boundary so "network_375aa4aa80a7" loses its suffix.
    (
        re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{7,}(?![0-9A-Za-z])"),
        "<hex>",
    ),
    # Standalone numbers, versions and IPs (ports, PIDs, counts, line:col). Digits glued to a word,
    # as in "test_case_3" or "bfloat16", are part of a name and stay.
    (re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)*(?![\w])"), "<n>"),
)
_SPACES = re.compile(r"\s+")
_ERROR_WORDS = re.compile(
    r"(?i)\b(?:error|errors|failed|failure|fatal|exception|panic(?:ked)?|abort(?:ed)?|denied|refused"
    r"|cannot|could not|unable to|not found|timed out|killed|segmentation fault)\b"
)


def normalize(text: str) -> str:
    """Mask what varies between reruns of the same failure and collapse whitespace."""
    for pattern, placeholder in _MASKS:
        text = pattern.sub(placeholder, text)
    return _SPACES.sub(" ", text).strip()


def structured_key(line: str) -> str | None:
    """Return "{error_code}:{target}" for a JSON log event that carries both, else None."""
    if '"error_code"' not in line or len(line) > MAX_STRUCTURED_LINE:
        return None
    start, end = line.find("{"), line.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        event = json.loads(line[start : end + 1])
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    fields = event.get("fields")
    code = fields.get("error_code") if isinstance(fields, dict) else None
    code = code if code is not None else event.get("error_code")
    target = event.get("target")
    if not isinstance(code, str | int) or not isinstance(target, str) or code == "" or not target:
        return None
    return f"{code}:{target}"


def signature(lines: Sequence[str], limit: int = SIGNATURE_LINES) -> list[str]:
    """The normalised top lines: up to `limit` distinct ones, error-like lines first, in log order."""
    distinct = [text for text in dict.fromkeys(normalize(line)[:SIGNATURE_LINE_CHARS] for line in lines) if text]
    # Lines without error words (a stack frame naming the file) fill the slots errors leave free.
    ranked = sorted(range(len(distinct)), key=lambda index: not _ERROR_WORDS.search(distinct[index]))
    return [distinct[index] for index in sorted(ranked[:limit])]


def fingerprint(classification_key: str, lines: Sequence[str] | None = None) -> str:
    """A short id that stays put across reruns and commits of one failure and differs between failures.

    It rests on the failure alone, never on job or workflow names: the CLI, the Action and the App must
    agree on it, and one failure in several matrix jobs is one failure.
    """
    lines = lines or []
    structured = next((key for key in map(structured_key, lines) if key), None)
    if structured:
        # A structured event names its failure outright: "{error_code}:{target}" is the whole basis, so
        # the same event has one fingerprint in every job, workflow and log around it.
        return _digest(structured)
    # The two empty fields once held job and workflow; they stay so stored fingerprints remain valid.
    parts = [FINGERPRINT_VERSION, "", "", "key", normalize(classification_key), *signature(lines)]
    return _digest("\x00".join(parts))


def _digest(basis: str) -> str:
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()[:FINGERPRINT_HEX_CHARS]
