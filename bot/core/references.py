"""Find the source files and line numbers that log lines point to."""

from __future__ import annotations

import re
from collections.abc import Iterable

# path/to/file.ext:12 or :12:3, "File "x.py", line 12", and Java's (File.java:12).
_PATH_LINE = re.compile(
    r"(?P<path>(?:[A-Za-z]:)?/?(?:[\w.@-]+/)*[\w.@-]+\.[A-Za-z][\w]{0,9}):(?P<line>\d{1,6})\b"
    r"|File \"(?P<pypath>[^\"]+)\", line (?P<pyline>\d{1,6})"
)
_NOT_SOURCE = re.compile(r"^(?:https?|ftp)$|^\d+(?:\.\d+)+$")
_RUNNER_PREFIXES = (
    "/home/runner/work/",
    "/home/travis/build/",
    "/Users/runner/work/",
    "/builds/",
    "/github/workspace/",
    "D:/a/",
    "C:/a/",
)


def relative_path(path: str) -> str:
    """Strip the CI checkout prefix (runner work dirs repeat the repo name twice) from a path."""
    for prefix in _RUNNER_PREFIXES:
        if path.startswith(prefix):
            rest = path[len(prefix) :].split("/")
            # /home/runner/work/<repo>/<repo>/src/x.py and /home/travis/build/<owner>/<repo>/src/x.py
            return "/".join(rest[2:]) if len(rest) > 2 else rest[-1]
    return path.lstrip("./")


def file_references(lines: Iterable[str], limit: int = 20) -> list[tuple[str, int]]:
    """The distinct (path, line) pairs named in the lines, in order of first mention."""
    found: dict[tuple[str, int], None] = {}
    for text in lines:
        for match in _PATH_LINE.finditer(text):
            path = match.group("path") or match.group("pypath")
            number = int(match.group("line") or match.group("pyline"))
            if not path or _NOT_SOURCE.match(path) or "site-packages/" in path or "node_modules/" in path:
                continue
            around = text[max(match.start() - 3, 0) : match.start() + 2]
            if "://" in around or text[: match.start()].endswith("@"):
                continue  # host:port in a URL, not file:line
            if number == 0:
                continue
            found.setdefault((relative_path(path), number), None)
            if len(found) >= limit:
                return list(found)
    return list(found)
