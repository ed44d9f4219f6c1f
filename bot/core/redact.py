"""Redact secrets from text before it leaves Mendbot, keeping every line and every non-secret byte."""

from __future__ import annotations

import binascii
import re
import string
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

# Downstream checks split redacted text on these placeholders and expect every other byte to be original.
PLACEHOLDER_RE = re.compile(r"\[REDACTED(?::[a-z0-9_]+)?\]")

PRIVATE_KEY = "private_key"
BASE64_SECRET = "base64_secret"

# A base64 run shorter than this cannot hold a secret worth finding; a longer one is decoded once, whole.
MIN_BASE64_RUN = 20
# Quoted assignment values longer than this are matched word by word, which bounds regex backtracking.
MAX_QUOTED_VALUE = 1024
# What a rule may need to see past a cut to recognise a secret the cut crosses: more than its longest
# bounded match (a URL's user and password, 1,282 characters); unbounded tokens are recognised by their start.
CUT_LOOKAHEAD = 1536

_Span = tuple[int, int, str]


class RedactionError(Exception):
    """Redaction could not finish, so the text must not be sent anywhere."""


def placeholder(kind: str) -> str:
    return f"[REDACTED:{kind}]"


@dataclass(frozen=True, slots=True)
class _Rule:
    """One secret format: cheap lowercase substrings that must occur, and the regex that finds it.

    A `folded` rule's pattern is lowercase and runs on the line with ASCII letters lowercased, which is
    much faster than re.IGNORECASE and keeps every offset.
    """

    kind: str
    triggers: tuple[str, ...]
    pattern: re.Pattern[str]
    folded: bool


def _rule(kind: str, triggers: tuple[str, ...], pattern: str, *, folded: bool = False) -> _Rule:
    return _Rule(kind, triggers, re.compile(pattern), folded)


# Key names grouped by first letter: the regex engine then tries one branch per position, which matters on
# the 400 KB lines some test runners print.
_ASSIGNMENT_KEYS = (
    r"a(?:ws[_-]?secret[_-]?access[_-]?key|pi[_-]?key|ccess[_-]?key)"
    r"|client[_-]?secret"
    r"|p(?:ass(?:w(?:or)?d|phrase)|wd|rivate[_-]?key)"
    r"|secret(?:[_-]?(?:access[_-]?)?key)?"
    r"|token"
)
# An "&" ends a bare value only where it plainly separates: before the next "name=" of a query string or
# form body (?a=1&token=x&b=2), before a space, "&", ">" or the end (the shell's "&", "&&" and "&>"), and as an
# HTML entity (&amp;). Anywhere else it is part of the secret (Password=Tr0ub4dor&3): leaking the tail of a
# password is worse than hiding a parameter that had no "=". Patterns using it run on lowercased text.
_AMPERSAND_ENDS_VALUE = r"&(?=[a-z0-9_.\-\[\]%]*=|[\s&>]|$|(?:amp|quot|apos|lt|gt|#[0-9]+|#x[0-9a-f]+);)"
# The same for "," and ";": they end a bare value before a space, another separator, the end, or the next
# "name=" (Server=x;Password=y;Database=z), and are part of the secret anywhere else (hunter2,x).
_SEPARATOR_ENDS_VALUE = r"[,;](?=[a-z0-9_.\-\[\]%]*=|[\s,;&\"']|$)"
# A quoted value runs to its closing quote (spaces included); a bare one ends at a space, quote or separator
# and does not start with ":", which is prose ("Forgot password::reset") rather than an assignment.
_VALUE = (
    r"\s*(?:\\?[\"'])?(?P<secret>"
    rf"(?<=\\\")[^\"\\]{{1,{MAX_QUOTED_VALUE}}}(?=\\\")"
    rf"|(?<=\")[^\"]{{1,{MAX_QUOTED_VALUE}}}(?=\")"
    rf"|(?<=')[^']{{1,{MAX_QUOTED_VALUE}}}(?=')"
    rf"|[^\s\"'\\,;&:][^\s\"'\\,;&]*"
    rf"(?:(?!{_AMPERSAND_ENDS_VALUE}|{_SEPARATOR_ENDS_VALUE})[&,;][^\s\"'\\,;&]*)*)"
)

# Order matters only for ties: when two rules match the same span, the earlier kind names it.
_RULES: tuple[_Rule, ...] = (
    _rule(
        "github_token",
        ("ghp_", "gho_", "ghu_", "ghr_", "ghs_", "github_pat_"),
        # New tokens are opaque and may be long with dots; stop before trailing punctuation.
        r"(?<![A-Za-z0-9])(?:gh[pousr]_|github_pat_)[A-Za-z0-9_.\-]{29,}[A-Za-z0-9_]",
    ),
    _rule(
        "aws_access_key_id",
        ("akia", "asia", "agpa", "aida", "aroa", "aipa", "anpa", "anva", "abia", "acca"),
        r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])",
    ),
    _rule("slack_token", ("xox",), r"(?<![A-Za-z0-9])xox[baprs]-[A-Za-z0-9\-]{10,}"),
    _rule("slack_token", ("xapp-",), r"(?<![A-Za-z0-9])xapp-[A-Za-z0-9\-]{10,}"),
    _rule("slack_webhook", ("hooks.slack.com",), r"hooks\.slack\.com/services/(?P<secret>[A-Za-z0-9/]+)"),
    _rule("anthropic_key", ("sk-ant-",), r"(?<![A-Za-z0-9])sk-ant-[A-Za-z0-9_\-]{20,}"),
    # Requiring a digit keeps long kebab-case names that happen to start with "sk-" intact.
    _rule("openai_key", ("sk-",), r"(?<![A-Za-z0-9])sk-(?=[A-Za-z_\-]*[0-9])[A-Za-z0-9_\-]{20,}"),
    _rule("npm_token", ("npm_",), r"(?<![A-Za-z0-9])npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])"),
    _rule("gitlab_token", ("glpat-",), r"(?<![A-Za-z0-9])glpat-[A-Za-z0-9_\-]{20,}"),
    _rule("google_api_key", ("aiza",), r"(?<![A-Za-z0-9])AIza[A-Za-z0-9_\-]{35}(?![A-Za-z0-9_\-])"),
    _rule("pypi_token", ("pypi-",), r"(?<![A-Za-z0-9])pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,}"),
    _rule(
        "jwt",
        ("eyj",),
        r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*",
    ),
    _rule(
        "authorization",
        ("authorization",),
        r"authorization\\?[\"']?\s*[:=]\s*\\?[\"']?"
        r"(?:(?:bearer|basic|token|digest|negotiate|ntlm)\s+)?(?P<secret>[^\s\"'\\,;]+)",
        folded=True,
    ),
    # A bare "Bearer <token>" outside a header; the digit keeps "bearer authentication failed" intact.
    _rule(
        "bearer_token",
        ("bearer",),
        r"\bbearer\s+(?P<secret>(?=[A-Za-z._~+/\-]*[0-9])[A-Za-z0-9._~+/\-]{16,}=*)",
        folded=True,
    ),
    _rule("url_password", ("://",), r"://[^\s/?#@:\[\]]{0,256}:(?P<secret>[^\s/?#]{1,1024})@"),
    _rule(
        "assignment",
        ("pass", "pwd", "token", "secret", "key"),
        rf"(?P<key>{_ASSIGNMENT_KEYS})\\?[\"']?\s*(?:=>|:=|=|:){_VALUE}",
        folded=True,
    ),
    _rule(
        "assignment",
        ("pass", "pwd", "token", "secret", "key"),
        rf"--(?:[A-Za-z0-9]+-)*(?P<key>{_ASSIGNMENT_KEYS})\s+(?=[^\s\-]){_VALUE}",
        folded=True,
    ),
)


def _prefix_tree_pattern(words: Iterable[str]) -> str:
    """A regex for any of `words` with shared prefixes factored out, so each position tries one branch."""
    by_first: dict[str, set[str]] = {}
    ends_here = False
    for word in words:
        if word:
            by_first.setdefault(word[0], set()).add(word[1:])
        else:
            ends_here = True
    branches = [re.escape(first) + _prefix_tree_pattern(rest) for first, rest in sorted(by_first.items())]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if ends_here else body


_TRIGGERS = {trigger for rule in _RULES for trigger in rule.triggers}
# One pass over the lowercased line decides which rules run; most log lines match none.
_TRIGGER_RE = re.compile(_prefix_tree_pattern(_TRIGGERS))
# A longer trigger ("sk-ant-") found in a line implies every trigger inside it ("sk-") is there too.
_RULES_BY_TRIGGER = {
    found: tuple(
        index for index, rule in enumerate(_RULES) if any(trigger in found for trigger in rule.triggers)
    )
    for found in _TRIGGERS
}

# Kinds for assignments, by key name with separators removed.
_KEY_KINDS = {
    "password": "password",
    "passwd": "password",
    "pwd": "password",
    "passphrase": "password",
    "token": "token",
    "secret": "secret",
    "clientsecret": "client_secret",
    "apikey": "api_key",
    "accesskey": "access_key",
    "secretkey": "secret_key",
    "privatekey": PRIVATE_KEY,
    "secretaccesskey": "aws_secret_access_key",
    "awssecretaccesskey": "aws_secret_access_key",
}

# Values that name a secret without being one: masks (GitHub's ***, Travis's [secure], <PASSWORD>),
# variable references, JSON literals and our own placeholders.
_NOT_A_SECRET_RE = re.compile(
    r"\*+[)\]}>.,]*|\[secure\]|<[A-Za-z_-]+>|\$\{\{.*|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|null|none|true|false|"
    + PLACEHOLDER_RE.pattern,
    re.IGNORECASE,
)

# "+" is a space in a form-encoded body (urlencode), which is how a key pasted into a web form is logged.
_PEM_BEGIN_RE = re.compile(r"-----BEGIN[A-Z0-9 +]*PRIVATE[ +]KEY[A-Z +]*-----")
_PEM_END_RE = re.compile(r"-----END[A-Z0-9 +]*PRIVATE[ +]KEY[A-Z +]*-----")
# The standard alphabet only: `base64` and `openssl base64`, which wrap keys over lines, never write "-_".
_BASE64_ALPHABET = string.ascii_letters + string.digits + "+/"
_BASE64_ALPHABET_AND_PADDING = frozenset(_BASE64_ALPHABET + "=")
# Decoded text kept between lines, enough to hold a PEM marker that straddles two wrapped lines.
_DECODED_TAIL = 80
# Tools wrap base64 at 64 or 76 columns; a longer run is one whole line, which `_base64_spans` decodes alone.
MAX_WRAPPED_LINE = 1024
_LEADING_BASE64_RE = re.compile(r"\s*([A-Za-z0-9+/]+={0,2})")

# Starts only where a run starts, so scanning a line costs one pass. Encoded text starts with a letter
# (ASCII bytes encode to A-Z or a-f first), which skips "--flags", "/paths" and "----" rules.
_BASE64_RUN_RE = re.compile(
    rf"(?<![A-Za-z0-9+/_\-])[A-Za-z][A-Za-z0-9+/_\-]{{{MIN_BASE64_RUN - 1},}}={{0,2}}"
)
# Escapes a secret may hide behind or be written in (URL percent-escapes, JSON, JavaScript and C backslash
# escapes, HTML entities): "q%3Dghp_…" puts a letter before the token, "password%3D…" hides the "=", and
# "xoxb%2D…" the token itself. Lines holding one are also scanned decoded. Each decodes to one character.
_PERCENT_ESCAPE_RE = re.compile(r"%[0-9A-Fa-f]{2}")
_BACKSLASH_ESCAPE_RE = re.compile(r"\\(?:u[0-9A-Fa-f]{4}|x[0-9A-Fa-f]{2}|[nrt\"'/\\])")
_HTML_ESCAPE_RE = re.compile(r"&(?:quot|apos|amp|lt|gt|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
_ESCAPE_RE = re.compile("|".join(rule.pattern for rule in (_PERCENT_ESCAPE_RE, _BACKSLASH_ESCAPE_RE, _HTML_ESCAPE_RE)))
_BACKSLASH_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
_HTML_ENTITIES = {"quot": '"', "apos": "'", "amp": "&", "lt": "<", "gt": ">"}
# Redirect URLs are often encoded twice (%253D); a third round covers one layer more and bounds the work.
MAX_UNESCAPE_ROUNDS = 3
_ASCII_LOWERCASE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


def redact_text(text: str) -> str:
    """Return `text` with every secret replaced by a placeholder; the number of lines never changes."""
    try:
        return "\n".join(_redact_stream(text.split("\n")))
    except Exception as exc:
        raise _failure(exc) from None


def redact_lines(lines: Sequence[str]) -> list[str]:
    """Redact each line; a private key block spanning lines is replaced line by line, same count out."""
    try:
        redacted = list(_redact_stream(lines))
    except Exception as exc:
        raise _failure(exc) from None
    if len(redacted) != len(lines):
        raise RedactionError("redaction changed the number of lines")
    return redacted


def redact_stream(lines: Iterable[str]) -> Iterator[str]:
    """Redact lines one at a time, for logs too large to hold; same guarantees as `redact_lines`."""
    try:
        yield from _redact_stream(lines)
    except Exception as exc:
        raise _failure(exc) from None


def redact_head(line: str, keep: int) -> str:
    """The redacted first `keep` characters of one line, for keeping a long line short.

    The redactor reads CUT_LOOKAHEAD characters past the cut, so a secret the cut crosses is still
    recognised; it is hidden whole, and nothing after it shows.
    """
    try:
        window = line[: keep + CUT_LOOKAHEAD]
        spans = _merge(next(_spans_by_line([window]))[1])
    except Exception as exc:
        raise _failure(exc) from None
    end = max([keep, *(stop for start, stop, _ in spans if start < keep)])
    return _apply(window[:end], [span for span in spans if span[0] < end])


def contains_secret(text: str) -> bool:
    """Whether redaction would change `text`: a last check before anything is sent."""
    try:
        return any(spans for _, spans in _spans_by_line(text.split("\n")))
    except Exception as exc:
        raise _failure(exc) from None


def _failure(exc: Exception) -> RedactionError:
    # Only the exception type: its message or chained context could quote the text being redacted.
    return RedactionError(f"redaction failed ({type(exc).__name__})")


def _redact_stream(lines: Iterable[str]) -> Iterator[str]:
    for line, spans in _spans_by_line(lines):
        yield _apply(line, spans) if spans else line


def _spans_by_line(lines: Iterable[str]) -> Iterator[tuple[str, list[_Span]]]:
    """Pair each line with the secret spans in it, carrying private-key blocks across lines."""
    in_key_block = False
    encoded_keys = Base64KeyBlock()
    for line in lines:
        if not isinstance(line, str):
            raise TypeError("lines must be str")
        spans: list[_Span] = []
        if in_key_block or "PRIVATE KEY" in line:
            # Key spans go first so that, on a tie, a key line is always labelled private_key.
            spans, in_key_block = _key_block_spans(line, in_key_block)
        encoded = encoded_keys.feed(line)
        if encoded is not None:
            spans.append((*encoded, PRIVATE_KEY))
        spans.extend(_line_spans(line))
        yield line, spans


class Base64KeyBlock:
    """Follows base64 wrapped over lines (`base64`, `openssl base64`) to find an encoded private key whole.

    Fed every line in order, it returns the (start, end) of key material on that line, or None. A wrapped
    line decodes to a piece of the key that no check of one line can recognise, so from the line whose
    decoded text opens a PEM private key, every following base64 line is key material until the decoded
    text reaches the key's END marker, the padding ends the stream, or a line that is not base64 ends it.
    """

    def __init__(self) -> None:
        self._in_key = False
        # Base64 characters not decoded yet (fewer than 4) and the decoded tail of the current run of lines.
        self._carry = ""
        self._tail = ""

    def feed(self, line: str) -> tuple[int, int] | None:
        body = line.rstrip()
        if not self._in_key and (not body or body[-1] not in _BASE64_ALPHABET_AND_PADDING):
            # Most log lines end in punctuation or a space, so no base64 run ends them.
            self._carry = self._tail = ""
            return None
        # The run of base64 that ends the line; the line is pure base64 when nothing but spaces precede it.
        # Only the end of a long line is read: a run longer than any wrap width is not a wrapped line.
        offset = max(len(body) - MAX_WRAPPED_LINE - 1, 0)
        start = offset + len(body[offset:].rstrip("=").rstrip(_BASE64_ALPHABET))
        if start == offset and offset:
            if not self._in_key:
                self._reset()
                return None
            start = len(body.rstrip("=").rstrip(_BASE64_ALPHABET))
        run = body[start:]
        pure = bool(run) and not body[:start].strip()
        if self._in_key:
            if pure:
                return self._continue_key(start, run)
            # A key's last line may end in a quote or a comment; its leading run still belongs to the key.
            return self._end_key(line)
        if len(run) < MIN_BASE64_RUN:
            self._reset()
            return None
        return self._start_key(start, run, continues=pure)

    def _start_key(self, start: int, run: str, *, continues: bool) -> tuple[int, int] | None:
        # A line need not start on a 4-character boundary of the stream: decode it joined to the lines
        # before it, and alone.
        carry, tail = (self._carry, self._tail) if continues else ("", "")
        joined, joined_left = _decode_prefix(carry + run)
        readings = [(tail + joined, joined_left)]
        if carry or tail:
            readings.append(_decode_prefix(run))
        for decoded, left in readings:
            opened = _unclosed_key_start(decoded)
            if opened is not None and not run.endswith("="):
                self._in_key, self._carry, self._tail = True, left, decoded[opened:][-_DECODED_TAIL:]
                return start, start + len(run)
        if run.endswith("="):
            self._reset()  # the padding ends the stream, so the next line starts a new one
        else:
            self._carry, self._tail = joined_left, (tail + joined)[-_DECODED_TAIL:]
        return None

    def _continue_key(self, start: int, run: str) -> tuple[int, int]:
        decoded, left = _decode_prefix(self._carry + run)
        tail = self._tail + decoded
        end = _PEM_END_RE.search(tail)
        # The line that finishes the END marker's own line is the key's last; padding ends the stream.
        if (end is not None and end.end() < len(tail)) or run.endswith("="):
            self._reset()
        else:
            self._carry, self._tail = left, tail[-_DECODED_TAIL:]
        return start, start + len(run)

    def _end_key(self, line: str) -> tuple[int, int] | None:
        leading = _LEADING_BASE64_RE.match(line)
        ends_key = False
        if leading is not None:
            decoded, _ = _decode_prefix(self._carry + leading.group(1))
            ends_key = "-----END" in self._tail + decoded
        self._reset()
        return leading.span(1) if leading is not None and ends_key else None

    def _reset(self) -> None:
        self._in_key, self._carry, self._tail = False, "", ""


def _decode_prefix(chars: str) -> tuple[str, str]:
    """Decode the whole 4-character groups of standard base64 (all of it when padded), and the rest."""
    if chars.endswith("="):
        return _decode_base64(chars) or "", ""
    whole = len(chars) - len(chars) % 4
    try:
        raw = binascii.a2b_base64(chars[:whole])
    except binascii.Error:
        return "", ""
    return raw.decode("latin-1"), chars[whole:]


def _unclosed_key_start(decoded: str) -> int | None:
    """Where the last PEM private key opened in `decoded` starts, if it is not closed there too."""
    if "PRIVATE KEY" not in decoded:
        return None
    begins = list(_PEM_BEGIN_RE.finditer(decoded))
    if not begins or "-----END" in decoded[begins[-1].end() :]:
        return None
    return begins[-1].start()


def _key_block_spans(line: str, in_key_block: bool) -> tuple[list[_Span], bool]:
    spans: list[_Span] = []
    position = 0
    if in_key_block:
        end = _PEM_END_RE.search(line)
        if end is None:
            return [(0, len(line), PRIVATE_KEY)], True
        spans.append((0, end.end(), PRIVATE_KEY))
        position = end.end()
    while line.find("PRIVATE", position) != -1:
        begin = _PEM_BEGIN_RE.search(line, position)
        if begin is None:
            break
        end = _PEM_END_RE.search(line, begin.end())
        if end is None:
            # An unterminated block: everything after it is key material until an END line appears.
            spans.append((begin.start(), len(line), PRIVATE_KEY))
            return spans, True
        spans.append((begin.start(), end.end(), PRIVATE_KEY))
        position = end.end()
    return spans, False


def _line_spans(line: str, *, decode_base64: bool = True) -> list[_Span]:
    spans = _view_spans(line, decode_base64)
    unescaped = _unescaped(line)
    if unescaped is not None:
        view, layers = unescaped
        view_spans = _view_spans(view, decode_base64)
        if "PRIVATE" in view:
            # A key encoded into one line (%0A or \n for its newlines) starts and ends there.
            view_spans.extend(_key_block_spans(view, False)[0])
        for start, end, kind in view_spans:
            spans.append((_line_offset(start, layers), _line_offset(end, layers), kind))
    if spans and "[REDACTED" in line:
        # Text redacted before must come out unchanged, so a rule that bites into a placeholder was fooled.
        placeholders = [(*match.span(), "") for match in PLACEHOLDER_RE.finditer(line)]
        spans = [span for span in spans if not _overlaps(span, placeholders)]
    return spans


# Per round of decoding: where each escape's character landed in the decoded text, and how many characters
# the escapes up to and including it saved.
_Layer = tuple[list[int], list[int]]


def _unescaped(line: str) -> tuple[str, list[_Layer]] | None:
    """`line` with its escapes decoded (repeatedly, for text encoded twice), or None when it holds none."""
    # Half of all log lines hold a "%" (progress counters) but almost none an escape; substring tests and
    # one small pattern each rule them out three times faster than _ESCAPE_RE.
    if not (
        ("%" in line and _PERCENT_ESCAPE_RE.search(line))
        or ("\\" in line and _BACKSLASH_ESCAPE_RE.search(line))
        or ("&" in line and _HTML_ESCAPE_RE.search(line))
    ):
        return None
    layers: list[_Layer] = []
    view = line
    for _ in range(MAX_UNESCAPE_ROUNDS):
        landed: list[int] = []
        saved: list[int] = []
        pieces: list[str] = []
        position = 0
        for match in _ESCAPE_RE.finditer(view):
            start, end = match.span()
            pieces += [view[position:start], _unescape(match.group())]
            landed.append(start - (saved[-1] if saved else 0))
            saved.append((saved[-1] if saved else 0) + end - start - 1)
            position = end
        if not landed:
            break
        view = "".join([*pieces, view[position:]])
        layers.append((landed, saved))
    return (view, layers) if layers else None


def _unescape(escape: str) -> str:
    """The one character an escape stands for."""
    if escape[0] == "%":
        return chr(int(escape[1:], 16))
    if escape[0] == "\\":
        if escape[1] in "ux":
            return chr(int(escape[2:], 16))
        return _BACKSLASH_ESCAPES.get(escape[1], escape[1])
    name = escape[1:-1].lower()
    if name[0] != "#":
        return _HTML_ENTITIES[name]
    code = int(name[2:], 16) if name[1] == "x" else int(name[1:])
    return chr(code) if code <= 0x10FFFF else "\ufffd"


def _line_offset(offset: int, layers: list[_Layer]) -> int:
    """Map an offset in the decoded view back to the line; a decoded character covers its whole escape."""
    for landed, saved in reversed(layers):
        before = bisect_left(landed, offset)
        if before:
            offset += saved[before - 1]
    return offset


def _view_spans(line: str, decode_base64: bool) -> list[_Span]:
    spans: list[_Span] = []
    assignments: list[_Span] = []
    folded = ""
    for rule in _rules_triggered_by(line):
        if rule.folded and not folded:
            folded = line.translate(_ASCII_LOWERCASE)
        for match in rule.pattern.finditer(folded if rule.folded else line):
            span = _secret_span(rule, match, line)
            if span is not None:
                (assignments if rule.kind == "assignment" else spans).append(span)
    if assignments:
        # In https://x-access-token:PASS@host the "token:" looks like an assignment whose bare value
        # would swallow the host; the URL rule knows where the password ends.
        urls = [span for span in spans if span[2] == "url_password"]
        spans.extend(span for span in assignments if not _overlaps(span, urls))
    if decode_base64 and len(line) >= MIN_BASE64_RUN:
        spans.extend(_base64_spans(line, spans))
    return spans


def _rules_triggered_by(line: str) -> list[_Rule]:
    hits = _TRIGGER_RE.findall(line.lower())
    if not hits:
        return []
    wanted = {index for hit in set(hits) for index in _RULES_BY_TRIGGER[hit]}
    return [_RULES[index] for index in sorted(wanted)]


def _secret_span(rule: _Rule, match: re.Match[str], line: str) -> _Span | None:
    groups = match.re.groupindex
    start, end = match.span("secret") if "secret" in groups else match.span()
    value = line[start:end]
    if _NOT_A_SECRET_RE.fullmatch(value):
        return None
    if "key" not in groups:
        return start, end, rule.kind
    key = re.sub(r"[_-]", "", match["key"].lower())
    # PWD=/home/runner/work is the shell's working directory, not a password.
    if key == "pwd" and value.startswith(("/", "~", ".")):
        return None
    return start, end, _KEY_KINDS.get(key, "secret")


def _base64_spans(line: str, found: list[_Span]) -> list[_Span]:
    spans: list[_Span] = []
    for run in _BASE64_RUN_RE.finditer(line):
        text = run.group()
        # Paths, package names and commit SHAs are single-case, and no encoder mixes "+/" with "-_".
        if text.islower() or text.isupper() or _mixes_alphabets(text):
            continue
        start, end = run.span()
        if found and _overlaps((start, end, BASE64_SECRET), found):
            continue
        decoded = _decode_base64(text)
        if decoded is not None and _holds_secret(decoded):
            spans.append((start, end, BASE64_SECRET))
    return spans


def _overlaps(span: _Span, others: list[_Span]) -> bool:
    return any(start < span[1] and span[0] < end for start, end, _ in others)


def _mixes_alphabets(text: str) -> bool:
    return ("/" in text or "+" in text) and ("-" in text or "_" in text)


def _decode_base64(run: str) -> str | None:
    body = run.rstrip("=").translate(_URLSAFE_TO_STANDARD)
    if len(body) % 4 == 1:
        body = body[:-1]
    try:
        raw = binascii.a2b_base64(body + "=" * (-len(body) % 4))
    except binascii.Error:
        return None
    # Latin-1 maps every byte to one character, so an ASCII secret survives any surrounding binary.
    return raw.decode("latin-1")


def _holds_secret(decoded: str) -> bool:
    if "PRIVATE KEY" in decoded and _PEM_BEGIN_RE.search(decoded):
        return True
    # Most candidates are identifiers that decode to noise; one search rules them out.
    if not _TRIGGER_RE.search(decoded.lower()):
        return False
    return any(_line_spans(part, decode_base64=False) for part in decoded.splitlines())


def _apply(line: str, spans: list[_Span]) -> str:
    pieces: list[str] = []
    position = 0
    for start, end, kind in _merge(spans):
        pieces.append(line[position:start])
        pieces.append(placeholder(kind))
        position = end
    pieces.append(line[position:])
    return "".join(pieces)


def _merge(spans: list[_Span]) -> list[_Span]:
    """Union overlapping spans; the earliest-starting (then longest) match names the merged one."""
    merged: list[_Span] = []
    for start, end, kind in sorted(spans, key=lambda span: (span[0], -span[1])):
        if merged and start < merged[-1][1]:
            last_start, last_end, last_kind = merged[-1]
            merged[-1] = (last_start, max(last_end, end), last_kind)
        else:
            merged.append((start, end, kind))
    return merged
