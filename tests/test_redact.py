"""Tests for secret redaction: planted secrets of every format vanish, ordinary log text survives."""

from __future__ import annotations

import base64
import gzip
import json
import random
import re
import string
import time
import urllib.parse
from pathlib import Path

import pytest

from bot.core import redact
from bot.core.redact import (
    PLACEHOLDER_RE,
    RedactionError,
    contains_secret,
    redact_head,
    redact_lines,
    redact_stream,
    redact_text,
)

# Fake secrets are assembled at runtime so no literal in this file looks like a credential to a scanner.
RNG = random.Random(19)


def _chars(alphabet: str, count: int) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(count))


ALNUM = string.ascii_letters + string.digits
UPPER_ALNUM = string.ascii_uppercase + string.digits
B64URL = ALNUM + "_-"


def _b64url(data: str) -> str:
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


FAKE_JWT = ".".join(
    [_b64url('{"alg":"RS256","typ":"JWT"}'), _b64url('{"iss":"12345","exp":1700000000}'), _chars(B64URL, 43)]
)

SECRETS = {
    "ghp": "ghp_" + _chars(ALNUM, 36),
    "gho": "gho_" + _chars(ALNUM, 36),
    "ghu": "ghu_" + _chars(ALNUM, 36),
    "ghr": "ghr_" + _chars(ALNUM, 36),
    "ghs": "ghs_" + _chars(ALNUM, 36),
    # The new installation-token shape: long, opaque, with dots and a JWT inside.
    "ghs_long": "ghs_" + FAKE_JWT + "." + _chars(B64URL, 200),
    "github_pat": "github_pat_" + _chars(ALNUM, 22) + "_" + _chars(ALNUM, 59),
    "akia": "AKIA" + _chars(UPPER_ALNUM, 16),
    "asia": "ASIA" + _chars(UPPER_ALNUM, 16),
    "aroa": "AROA" + _chars(UPPER_ALNUM, 16),
    "aws_secret": _chars(ALNUM + "/+", 40),
    "slack": "xoxb-" + _chars(string.digits, 12) + "-" + _chars(string.digits, 12) + "-" + _chars(ALNUM, 24),
    "slack_user": "xoxp-" + _chars(string.digits, 12) + "-" + _chars(ALNUM, 32),
    "anthropic": "sk-ant-api03-" + _chars(B64URL, 93) + "AA",
    "openai": "sk-proj-" + _chars(ALNUM, 48),
    "openai_legacy": "sk-" + _chars(ALNUM, 48),
    "jwt": FAKE_JWT,
    "password": "hunter2-" + _chars(ALNUM, 8),
    "opaque": _chars(ALNUM, 32),
}

# Formats recognisable without context; the others are secrets only after "password=" and the like.
SELF_EVIDENT = [name for name in SECRETS if name not in {"aws_secret", "password", "opaque"}]

# (line with {} where the secret goes, secret name, expected kind)
PLANTED = [
    ("git push https://{}@github.com/o/r.git", "ghp", "github_token"),
    ("Using token {} for checkout", "gho", "github_token"),
    # A known format inside an assignment is named by the format.
    ("user token: {}", "ghu", "github_token"),
    ("refresh={} expires in 3600", "ghr", "github_token"),
    ("installation token {}.", "ghs", "github_token"),
    ("installation token {} ok", "ghs_long", "github_token"),
    ("fine-grained {} (read only)", "github_pat", "github_token"),
    ("aws configure set aws_access_key_id {}", "akia", "aws_access_key_id"),
    ("Credentials: {} (session)", "asia", "aws_access_key_id"),
    ("role key {}", "aroa", "aws_access_key_id"),
    ("aws_secret_access_key = {}", "aws_secret", "aws_secret_access_key"),
    ("AWS_SECRET_ACCESS_KEY={} terraform plan", "aws_secret", "aws_secret_access_key"),
    ("posting to slack with {} failed", "slack", "slack_token"),
    ("SLACK_USER {}", "slack_user", "slack_token"),
    ("anthropic.AuthenticationError: invalid x-api-key {}", "anthropic", "anthropic_key"),
    ("OPENAI key {} rejected", "openai", "openai_key"),
    ("OPENAI key {} rejected", "openai_legacy", "openai_key"),
    ("id_token {} decoded", "jwt", "jwt"),
    ("password={} ok", "password", "password"),
    ("passwd: {}", "password", "password"),
    ("mysql --pwd={} -h db", "password", "password"),
    ('{{"password": "{}", "user": "ci"}}', "password", "password"),
    ("    DB_PASSWORD: {}", "password", "password"),
    ("export POSTGRES_PASSWORD={} && make", "password", "password"),
    ("secret={}", "opaque", "secret"),
    ("client_secret: '{}'", "opaque", "client_secret"),
    ("api_key={}&format=json", "opaque", "api_key"),
    ("APIKEY={}", "opaque", "api_key"),
    ("access_key: {}", "opaque", "access_key"),
    ("GITHUB_TOKEN={} gh pr list", "opaque", "token"),
    ('config = {{"Token" : "{}"}}', "opaque", "token"),
    ('payload: {{\\"token\\":\\"{}\\"}}', "opaque", "token"),
    ("docker login --password {} ghcr.io", "password", "password"),
    ("cloning postgres://ci:{}@db.internal:5432/app", "password", "url_password"),
    ("remote: https://oauth2:{}@gitlab.example.com/x.git", "opaque", "url_password"),
    ("> Authorization: Bearer {}", "opaque", "authorization"),
    ("curl -H 'Authorization: token {}' https://api.github.com", "opaque", "authorization"),
    ('headers={{"Authorization": "Basic {}"}}', "opaque", "authorization"),
    ("request failed with bearer {} attached", "opaque", "bearer_token"),
]


def _parts_are_original(redacted: str, original: str) -> bool:
    """The evaluation metric's check: text between placeholders must be copied from the original."""
    return all(part in original for part in PLACEHOLDER_RE.split(redacted))


@pytest.mark.parametrize(("template", "name", "kind"), PLANTED)
def test_planted_secret_is_replaced_and_the_rest_is_kept(template: str, name: str, kind: str) -> None:
    secret = SECRETS[name]
    line = template.format(secret)

    redacted = redact_text(line)

    assert secret not in redacted
    assert redacted == template.format(f"[REDACTED:{kind}]")
    assert contains_secret(line)
    assert not contains_secret(redacted)


def test_the_example_from_the_brief() -> None:
    assert redact_text("password=hunter2 ok") == "password=[REDACTED:password] ok"


# The kind each self-evident format is reported as.
SELF_EVIDENT_KINDS = {
    **dict.fromkeys(["ghp", "gho", "ghu", "ghr", "ghs", "ghs_long", "github_pat"], "github_token"),
    **dict.fromkeys(["akia", "asia", "aroa"], "aws_access_key_id"),
    **dict.fromkeys(["slack", "slack_user"], "slack_token"),
    "anthropic": "anthropic_key",
    **dict.fromkeys(["openai", "openai_legacy"], "openai_key"),
    "jwt": "jwt",
}

# Escapes ending in a letter or digit, which once hid the token after them from the "not inside a word"
# checks: URL-encoded "=", ":", '"', " ", newline and ",", and their JSON, JavaScript and C forms.
WORD_ENDING_ESCAPES = [
    *["%3D", "%3d", "%3A", "%22", "%27", "%20", "%0A", "%2C"],
    *["\\u003d", "\\u003D", "\\u0022", "\\x3d", "\\n", "\\t"],
]
# Escapes ending in punctuation, which were always caught; kept so a change to the escape handling cannot
# lose them.
PUNCTUATION_ESCAPES = ['\\"', "&quot;", "&#34;", "&#x22;"]


@pytest.mark.parametrize("escape", WORD_ENDING_ESCAPES + PUNCTUATION_ESCAPES)
@pytest.mark.parametrize("name", SELF_EVIDENT)
def test_a_token_after_an_escape_is_redacted(name: str, escape: str) -> None:
    line = f"GET /callback?q{escape}{SECRETS[name]}%26next=1 HTTP/1.1"

    redacted = redact_text(line)

    assert redacted == f"GET /callback?q{escape}[REDACTED:{SELF_EVIDENT_KINDS[name]}]%26next=1 HTTP/1.1"
    assert contains_secret(line)


@pytest.mark.parametrize(
    ("template", "name", "kind"),
    [
        ("url?access_token%3D{}%26x%3D1", "ghp", "github_token"),
        ("key%3D{}", "akia", "aws_access_key_id"),
        ('{{"msg": "a\\u003d{}"}}', "ghp", "github_token"),
        ("var a='\\x3d{}'", "ghp", "github_token"),
        ("webhook%3Fauth%3A{}", "github_pat", "github_token"),
    ],
)
def test_the_audited_encoded_bypasses_are_closed(template: str, name: str, kind: str) -> None:
    line = template.format(SECRETS[name])

    assert redact_text(line) == template.format(f"[REDACTED:{kind}]")


# Assignments whose separator or quotes are escaped, and secrets that are themselves percent-encoded.
ENCODED_PLANTED = [
    ("POST /login body=user%3Dci%26password%3D{}%26remember%3D1", "password", "password"),
    ("password%3d{}", "password", "password"),
    ("?q=token%3A%20{}", "opaque", "token"),
    ('{{"env": "PASSWORD\\u003d{}"}}', "password", "password"),
    ("<input value=\"&quot;password&quot;: &quot;{}&quot;\">", "password", "password"),
    ("state=%7B%22secret%22%3A%22{}%22%7D", "opaque", "secret"),
    ("aws_secret_access_key%3D{}", "aws_secret", "aws_secret_access_key"),
    ('{{"url": "https:\\/\\/ci:{}@db.internal\\/app"}}', "password", "url_password"),
    ("DATABASE_URL=postgres%3A%2F%2Fci%3A{}%40db%2Fapp", "password", "url_password"),
    ("Authorization%3A%20Bearer%20{}", "opaque", "authorization"),
    # Double encoding: %253D is %3D once decoded, and "=" twice.
    ("redirect_uri=https%3A%2F%2Fx%2Fcb%3Ftoken%253D{}", "ghp", "github_token"),
]


@pytest.mark.parametrize(("template", "name", "kind"), ENCODED_PLANTED)
def test_an_assignment_with_escaped_punctuation_is_redacted(template: str, name: str, kind: str) -> None:
    line = template.format(SECRETS[name])

    redacted = redact_text(line)

    assert redacted == template.format(f"[REDACTED:{kind}]")
    assert not contains_secret(redacted)


def _percent_encode(text: str, chars: str) -> str:
    return "".join(f"%{ord(char):02X}" if char in chars else char for char in text)


@pytest.mark.parametrize(
    ("name", "kind"), [("slack", "slack_token"), ("jwt", "jwt"), ("anthropic", "anthropic_key")]
)
def test_a_percent_encoded_token_is_redacted_whole(name: str, kind: str) -> None:
    encoded = _percent_encode(SECRETS[name], "-.")
    assert encoded != SECRETS[name]
    line = f"POST https://hooks.example.com/notify?t={encoded}&channel=ci"

    redacted = redact_text(line)

    assert redacted == f"POST https://hooks.example.com/notify?t=[REDACTED:{kind}]&channel=ci"


@pytest.mark.parametrize("plus_for_space", [False, True])
def test_a_private_key_url_encoded_into_one_line_is_redacted(plus_for_space: bool) -> None:
    pem = _fake_pem(body_chars=300)
    encoded = (urllib.parse.quote_plus if plus_for_space else urllib.parse.quote)(pem, safe="")
    line = f"POST /deploy-keys body=title%3Dci%26key%3D{encoded}"

    redacted = redact_text(line)

    assert redacted == "POST /deploy-keys body=title%3Dci%26key%3D[REDACTED:private_key]%0A"


def test_a_slack_webhook_with_encoded_slashes_is_redacted_whole() -> None:
    path = "T" + _chars(UPPER_ALNUM, 8) + "%2FB" + _chars(UPPER_ALNUM, 8) + "%2F" + _chars(ALNUM, 24)

    redacted = redact_text(f"POST https://hooks.slack.com/services/{path} 404")

    assert redacted == "POST https://hooks.slack.com/services/[REDACTED:slack_webhook] 404"


def test_a_percent_encoded_base64_secret_is_redacted() -> None:
    encoded = base64.b64encode(f"ci:{SECRETS['ghp']}\n".encode() * 2).decode()
    assert "+" in encoded or "/" in encoded or "=" in encoded
    line = f"GET /cb?state={_percent_encode(encoded, '+/=')}&x=1"

    redacted = redact_text(line)

    assert redacted == "GET /cb?state=[REDACTED:base64_secret]&x=1"


# The "&" rule: after an assignment, "&" ends the value only where it plainly separates: before the next
# "name=" of a query string or form body, before another "&" or a space (the shell's && and &), and in an
# HTML entity (&amp;). Anywhere else it is part of the secret.
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Password=Tr0ub4dor&3", "Password=[REDACTED:password]"),
        ("login with password=Tr0ub&4dor now", "login with password=[REDACTED:password] now"),
        ("PASSWORD=a&b&c make deploy", "PASSWORD=[REDACTED:password] make deploy"),
        ("password%3DTr0ub4dor%263", "password%3D[REDACTED:password]"),
        # A query flag with no "=" could as well be the rest of the secret, so it goes too.
        ("url?access_token%3D" + SECRETS["ghp"] + "%26x", "url?access_token%3D[REDACTED:token]"),
    ],
)
def test_an_ampersand_inside_a_value_is_part_of_the_secret(line: str, expected: str) -> None:
    assert redact_text(line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("GET /x?a=1&token=s3cr3tvalue&b=2", "GET /x?a=1&token=[REDACTED:token]&b=2"),
        ("api_key=s3cr3tvalue&format=json&page[size]=5", "api_key=[REDACTED:api_key]&format=json&page[size]=5"),
        ("GET /x?a=1%26token%3Ds3cr3tvalue%26b%3D2", "GET /x?a=1%26token%3D[REDACTED:token]%26b%3D2"),
        ('<a href="/x?token=s3cr3tvalue&amp;b=2">', '<a href="/x?token=[REDACTED:token]&amp;b=2">'),
        ("export TOKEN=s3cr3tvalue&& make", "export TOKEN=[REDACTED:token]&& make"),
        ("PASSWORD=s3cr3tvalue & wait", "PASSWORD=[REDACTED:password] & wait"),
    ],
)
def test_an_ampersand_that_separates_parameters_or_commands_ends_the_value(line: str, expected: str) -> None:
    assert redact_text(line) == expected


# "," and ";" follow the same rule: a separator before a space, the end or the next "name=", else the secret's.
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("PASSWORD=hunter2,x", "PASSWORD=[REDACTED:password]"),
        ("export API_TOKEN=s3cr3t;value,more done", "export API_TOKEN=[REDACTED:token] done"),
        ("Server=db;Password=sec;ret;Database=app", "Server=db;Password=[REDACTED:password];Database=app"),
        ("password=s3cr3tvalue, user=bob", "password=[REDACTED:password], user=bob"),
        ("token=s3cr3tvalue;", "token=[REDACTED:token];"),
        ('{"password=s3cr3t,1","next"}', '{"password=[REDACTED:password]","next"}'),
    ],
)
def test_a_comma_or_semicolon_inside_a_value_is_part_of_the_secret(line: str, expected: str) -> None:
    assert redact_text(line) == expected


def test_redact_head_sees_an_escaped_secret_the_cut_crosses() -> None:
    line = "x" * 590 + "?token%3D" + SECRETS["opaque"] + "%26b%3D2 " + "y" * 3_000

    assert redact_head(line, 600) == "x" * 590 + "?token%3D[REDACTED:token]"


@pytest.mark.parametrize("name", ["ghp", "akia", "slack", "anthropic", "jwt"])
def test_base64_encoded_secret_is_redacted(name: str) -> None:
    encoded = base64.b64encode(f"ci-user:{SECRETS[name]}".encode()).decode()
    line = f"echo {encoded} | base64 -d > ~/.netrc"

    redacted = redact_text(line)

    assert redacted == "echo [REDACTED:base64_secret] | base64 -d > ~/.netrc"


def test_base64url_encoded_assignment_is_redacted() -> None:
    encoded = _b64url("DATABASE_URL=postgres://app:" + SECRETS["password"] + "@db/app\nDEBUG=1")
    line = f"  .env: {encoded}"

    assert redact_text(line) == "  .env: [REDACTED:base64_secret]"


def test_base64_of_a_pem_key_is_redacted() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\n" + _chars(ALNUM, 64) + "\n-----END RSA PRIVATE KEY-----\n"
    encoded = base64.b64encode(pem.encode()).decode()

    assert redact_text(f"tls.key: {encoded}") == "tls.key: [REDACTED:base64_secret]"


def test_base64_of_ordinary_text_is_left_alone() -> None:
    encoded = base64.b64encode(b"just a harmless configuration blob, nothing to hide").decode()
    line = f"data: {encoded}"

    assert redact_text(line) == line


PEM_KINDS = ["RSA ", "EC ", "OPENSSH ", "DSA ", "ENCRYPTED ", ""]


@pytest.mark.parametrize("label", PEM_KINDS)
def test_pem_block_split_over_lines_is_redacted_line_by_line(label: str) -> None:
    body = [_chars(ALNUM + "+/", 64) for _ in range(5)] + [_chars(ALNUM, 20) + "=="]
    lines = [
        "##[group]Run ./deploy.sh",
        "Writing deploy key to ~/.ssh/id_key",
        f"  -----BEGIN {label}PRIVATE KEY-----",
        *body,
        f"  -----END {label}PRIVATE KEY----- (written)",
        "Error: Permission denied (publickey).",
        "##[error]Process completed with exit code 255.",
    ]

    redacted = redact_lines(lines)

    assert len(redacted) == len(lines)
    assert redacted[:2] == lines[:2]
    assert redacted[2] == "  [REDACTED:private_key]"
    assert redacted[3:9] == ["[REDACTED:private_key]"] * 6
    assert redacted[9] == "[REDACTED:private_key] (written)"
    assert redacted[10:] == lines[10:]
    assert not any(chunk in "\n".join(redacted) for chunk in body)


def test_unterminated_pem_block_redacts_to_the_end() -> None:
    lines = ["before", "-----BEGIN OPENSSH PRIVATE KEY-----", _chars(ALNUM, 70), _chars(ALNUM, 70)]

    assert redact_lines(lines) == ["before"] + ["[REDACTED:private_key]"] * 3


def test_pem_block_inside_one_line_with_escaped_newlines() -> None:
    key = "-----BEGIN PRIVATE KEY-----\\n" + _chars(ALNUM, 64) + "\\n-----END PRIVATE KEY-----\\n"
    line = '  "private_key": "' + key + '", "client_email": "ci@example.iam"'

    redacted = redact_text(line)

    assert redacted == '  "private_key": "[REDACTED:private_key]", "client_email": "ci@example.iam"'


def test_redact_text_keeps_line_count_across_a_pem_block() -> None:
    text = "a\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\nabcd\n-----END EC PRIVATE KEY-----\nb\n"

    redacted = redact_text(text)

    assert redacted.count("\n") == text.count("\n")
    assert redacted.split("\n") == ["a"] + ["[REDACTED:private_key]"] * 4 + ["b", ""]


def test_a_public_certificate_is_not_a_secret() -> None:
    lines = ["-----BEGIN CERTIFICATE-----", "MIIBszCCAVmgAwIBAgIU", "-----END CERTIFICATE-----", "next"]

    assert redact_lines(lines) == lines


def test_pem_block_inside_a_larger_log_via_stream() -> None:
    log = [f"step {n}: ok" for n in range(50)]
    log[20:20] = [
        "-----BEGIN RSA PRIVATE KEY-----",
        "Proc-Type: 4,ENCRYPTED",
        "",
        "abc",
        "-----END RSA PRIVATE KEY-----",
    ]

    redacted = list(redact_stream(iter(log)))

    assert len(redacted) == len(log)
    assert redacted[20:25] == ["[REDACTED:private_key]"] * 5
    assert redacted[:20] == log[:20]
    assert redacted[25:] == log[25:]


def _fake_pem(label: str = "RSA ", body_chars: int = 1600) -> str:
    body = _chars(ALNUM + "+/", body_chars)
    rows = [body[start : start + 64] for start in range(0, len(body), 64)]
    return f"-----BEGIN {label}PRIVATE KEY-----\n" + "\n".join(rows) + f"\n-----END {label}PRIVATE KEY-----\n"


def _wrapped_base64(text: str, width: int) -> list[str]:
    """What `echo "$KEY" | base64 -w <width>` prints."""
    encoded = base64.b64encode(text.encode()).decode()
    return [encoded[start : start + width] for start in range(0, len(encoded), width)]


def _log_around(block: list[str]) -> list[str]:
    return [
        *(f"step {n}: ok" for n in range(30)),
        'Run echo "$DEPLOY_KEY" | base64',
        *block,
        "Error: deploy failed",
        "##[error]Process completed with exit code 1.",
    ]


# 76 is what `base64` wraps at by default, 64 what `base64 -w 64` and `openssl base64` give; 32 splits
# the BEGIN marker itself across two lines. The body lengths cover each padding: "==", "=" and none.
@pytest.mark.parametrize("width", [76, 64, 32])
@pytest.mark.parametrize("body_chars", [1600, 1601, 1602])
@pytest.mark.parametrize("label", ["RSA ", "OPENSSH ", ""])
def test_a_base64_wrapped_private_key_is_redacted_whole(width: int, body_chars: int, label: str) -> None:
    block = _wrapped_base64(_fake_pem(label, body_chars), width)
    log = _log_around(block)
    first = log.index(block[0])

    for redacted in (redact_lines(log), list(redact_stream(iter(log))), redact_text("\n".join(log)).split("\n")):
        assert len(redacted) == len(log)
        shown = redacted[first : first + len(block)]
        # At 32 columns the first line holds only "-----BEGIN RSA P...", which gives nothing away.
        key_lines = shown[1:] if width == 32 else shown
        assert set(key_lines) == {"[REDACTED:private_key]"}, (width, body_chars, label)
        assert redacted[:first] == log[:first]
        assert redacted[first + len(block) :] == log[first + len(block) :]


def test_a_wrapped_key_after_other_base64_is_still_found() -> None:
    # An odd-length base64 line just before the key shifts the 4-character groups of the joined stream.
    block = _wrapped_base64(_fake_pem(), 76)
    log = ["c2hhMjU2OmFiY2RlZjAxMjM0NTY3", *block, "done"]

    redacted = redact_lines(log)

    assert redacted[1 : 1 + len(block)] == ["[REDACTED:private_key]"] * len(block)
    assert redacted[-1] == "done"


def test_a_wrapped_key_after_a_prefix_and_before_a_closing_quote() -> None:
    block = _wrapped_base64(_fake_pem(), 64)
    lines = [f"DEPLOY_KEY: '{block[0]}", *block[1:-1], f"{block[-1]}' # from secrets", "next step"]

    redacted = redact_lines(lines)

    assert redacted[0] == "DEPLOY_KEY: '[REDACTED:private_key]"
    assert redacted[1:-2] == ["[REDACTED:private_key]"] * (len(block) - 2)
    assert redacted[-2] == "[REDACTED:private_key]' # from secrets"
    assert redacted[-1] == "next step"


def test_a_cut_off_wrapped_key_ends_at_the_first_line_that_is_not_base64() -> None:
    block = _wrapped_base64(_fake_pem(), 76)[:10]
    lines = [*block, "Error: Permission denied (publickey).", "aGVsbG8K"]

    redacted = redact_lines(lines)

    assert redacted[:10] == ["[REDACTED:private_key]"] * 10
    assert redacted[10:] == lines[10:]


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 3,
        b"hello\n",
        ("just some wrapped configuration, nothing to hide. " * 20).encode(),
        b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n" * 5,
        (_fake_pem() + "and a public note after the key\n" * 10).encode(),
    ],
    ids=["png", "hello", "text", "certificate", "text-after-a-whole-key"],
)
def test_wrapped_base64_that_is_not_a_key_is_left_alone(data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    block = [encoded[start : start + 76] for start in range(0, len(encoded), 76)]
    lines = [*block, "next"]

    redacted = redact_lines(lines)

    if data.startswith(b"-----BEGIN RSA"):
        # The lines that decode to the key are hidden; the note after its END marker is not.
        assert redacted[0] == "[REDACTED:private_key]"
        assert redacted[-4:] == lines[-4:]
    else:
        assert redacted == lines


def test_redact_head_hides_a_secret_the_cut_crosses_whole() -> None:
    line = "a" * 580 + ' password="correct horse battery staple" and then ' + "b" * 5_000

    head = redact_head(line, 600)

    assert head == "a" * 580 + ' password="[REDACTED:password]'
    assert redact_head("short " + SECRETS["ghp"], 600) == "short [REDACTED:github_token]"
    assert redact_head("x" * 1_000, 600) == "x" * 600


ORDINARY_LINES = [
    "HEAD is now at 0123456789abcdef0123456789abcdef01234567 Merge pull request #42",
    "Run ID 123e4567-e89b-12d3-a456-426614174000 started",
    '  File "/home/runner/work/mendbot/mendbot/bot/core/redact.py", line 12, in <module>',
    "Successfully installed pydantic-2.7.1 pydantic-core-2.18.2 typing-extensions-4.11.0",
    'psql: error: FATAL:  Password authentication failed for user "postgres"',
    "remote: Invalid username or password.",
    "Enter your password to continue",
    "token=",
    'token: ""',
    "  token: ***",
    "  password: ***",
    "  GITHUB_TOKEN: ***",
    "  with: token: ${{ secrets.GITHUB_TOKEN }}",
    "export NPM_TOKEN=$NPM_TOKEN",
    "PWD=/home/runner/work/mendbot/mendbot",
    "OLDPWD=/home/runner",
    "max_tokens=4096 num_tokens: 17 tokenizer=bpe",
    "git@github.com: Permission denied (publickey).",
    "Fetching https://github.com/o/r.git refs/heads/main",
    "Listening on http://127.0.0.1:8000/health (Press CTRL+C to quit)",
    "Bearer authentication failed: token expired",
    "Authorization header is missing",
    "gcc -Wno-deprecated-declarations -Wunreachable-code-return -o build/out main.c",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "Downloading https://files.pythonhosted.org/packages/ab/cd/ef0123456789/requests-2.32.3.tar.gz",
    "secrets: inherit",
    "test_task-runner-configuration-without-digits-passes PASSED",
    "  [secure] values are hidden by Travis",
    "Forgot password::requesting password reset",
    "::add-mask::***",
    "=============== 3 failed, 120 passed in 12.34s ===============",
    # Escaped text that holds no secret must come out as it went in.
    "GET /search?q=hello%20world%3F&page=2&per_page=100 200 OK",
    "GET /accounts/reset-password%3Fnext%3D%2Fhome 302",
    '{"message": "line one\\nline two\\ttabbed \\u00e9t\\u00e9", "level": "info"}',
    "C:\\Users\\runneradmin\\AppData\\Local\\Temp\\token_cache",
    "Tom &amp; Jerry &lt;tom@example.com&gt; &#169; 2024",
    "[ 42%] Building CXX object src/CMakeFiles/app.dir/main.cpp.o",
    'printf("%s=%d%%\\n", name, 100)',
    "git log --format=%H%x09%an%x09%s",
    "token%3D%24%7BTOKEN%7D",
]


@pytest.mark.parametrize("line", ORDINARY_LINES)
def test_ordinary_log_text_is_not_redacted(line: str) -> None:
    assert redact_text(line) == line
    assert not contains_secret(line)


def test_redaction_is_idempotent() -> None:
    lines = [template.format(SECRETS[name]) for template, name, _ in PLANTED]

    once = redact_lines(lines)

    assert redact_lines(once) == once
    assert not any(contains_secret(line) for line in once)


def _random_line(rng: random.Random) -> str:
    pieces = [
        lambda: rng.choice(ORDINARY_LINES),
        lambda: rng.choice(PLANTED)[0].format(SECRETS[rng.choice(list(SECRETS))]),
        lambda: "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 80))),
        lambda: base64.b64encode(rng.randbytes(rng.randint(10, 60))).decode(),
        lambda: rng.choice(["-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "", "\r"]),
        lambda: "token=" + "".join(rng.choice(ALNUM + "=:@/\"' ") for _ in range(rng.randint(0, 30))),
    ]
    return " ".join(rng.choice(pieces)() for _ in range(rng.randint(1, 3)))


@pytest.mark.parametrize("seed", range(30))
def test_random_line_lists_keep_their_length_and_original_bytes(seed: int) -> None:
    rng = random.Random(seed)
    lines = [_random_line(rng).replace("\n", " ") for _ in range(rng.randint(0, 60))]

    redacted = redact_lines(lines)

    assert len(redacted) == len(lines)
    for original, out in zip(lines, redacted, strict=True):
        assert _parts_are_original(out, original)


@pytest.mark.parametrize("seed", range(30))
def test_random_text_keeps_its_newlines(seed: int) -> None:
    rng = random.Random(1000 + seed)
    text = "\n".join(_random_line(rng) for _ in range(rng.randint(0, 40)))

    redacted = redact_text(text)

    assert redacted.count("\n") == text.count("\n")
    for name in SELF_EVIDENT:
        if SECRETS[name] in text:
            assert SECRETS[name] not in redacted


def test_failing_internals_raise_redaction_error_without_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = SECRETS["ghp"]

    class BrokenPattern:
        def finditer(self, text: str) -> None:
            raise ValueError(f"cannot scan {text}")

    broken = redact._Rule("github_token", ("ghp_",), BrokenPattern(), False)  # type: ignore[arg-type]
    monkeypatch.setattr(redact, "_RULES", (broken, *redact._RULES[1:]))

    for call in (
        redact_text,
        contains_secret,
        lambda t: redact_lines([t]),
        lambda t: list(redact_stream([t])),
    ):
        with pytest.raises(RedactionError) as caught:
            call(f"token {secret}")
        assert secret not in str(caught.value)
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__


def test_non_string_input_raises_redaction_error() -> None:
    with pytest.raises(RedactionError):
        redact_lines(["fine", b"bytes are not text"])  # type: ignore[list-item]
    with pytest.raises(RedactionError):
        redact_text(None)  # type: ignore[arg-type]


def test_adversarial_lines_are_linear() -> None:
    # Each of these would take minutes if a pattern backtracked quadratically.
    lines = [
        'password="' * 10_000,
        "://a:" * 20_000,
        "ghp_" + "a." * 50_000,
        "eyJaaaaaa.eyJaaaaa." * 5_000,
        "-----BEGIN PRIVATE KEY-----" * 4_000,
        "token" + " " * 100_000,
        "--password " * 10_000,
        "A" * 200_000,
        "%3D" * 100_000,
        "%2525" * 50_000,
        "\\u003d" * 50_000,
        "password%3D" + "a%26" * 50_000,
        "token=" + "a&" * 100_000,
    ]
    started = time.perf_counter()

    redacted = redact_lines(lines)

    assert time.perf_counter() - started < 10
    assert len(redacted) == len(lines)


def test_placeholders_are_exactly_the_documented_shape() -> None:
    lines = [template.format(SECRETS[name]) for template, name, _ in PLANTED]
    for line in redact_lines(lines):
        for found in re.findall(r"\[REDACTED[^\]]*\]", line):
            assert PLACEHOLDER_RE.fullmatch(found)


def test_real_github_actions_logs_are_almost_untouched(dataset_dir: Path) -> None:
    records = [json.loads(line) for line in (dataset_dir / "manifest.jsonl").read_text().splitlines()]
    total = changed = 0
    for record in records:
        if record["format"] not in ("github-actions", "gh-run-view"):
            continue
        with gzip.open(dataset_dir / record["log"], "rt", encoding="utf-8", errors="replace") as stream:
            lines = stream.read().split("\n")

        redacted = redact_lines(lines)

        assert len(redacted) == len(lines)
        for original, out in zip(lines, redacted, strict=True):
            if out != original:
                changed += 1
                assert _parts_are_original(out, original)
        total += len(lines)
    if not total:
        pytest.skip("no GitHub Actions logs in the dataset")
    # These public logs hold no live secrets; the few hits are inputs such as "server-password: NAME".
    assert changed <= total // 1000
