"""The bulk-scan excerpt path gives exactly the excerpt of the line-by-line path, on real and edge-case logs."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bot.core import excerpt as rules
from bot.core import scan
from bot.core.excerpt import Excerpter, PassingIndex
from bot.core.logs import read_log
from bot.core.models import Excerpt
from bot.core.redact import contains_secret

FIXTURES = Path(__file__).parent / "fixtures" / "logs"
TS = "2024-05-01T10:00:00.0000000Z "

# Where hyperscan has no wheel every comparison below checks the line-by-line fallback instead.
needs_scan = pytest.mark.skipif(not scan.available(), reason="hyperscan has no wheel for this platform")


def reference(data: bytes, budget: int, passing: PassingIndex | None = None) -> Excerpter:
    excerpter = Excerpter(budget, passing)
    for line in read_log(io.BytesIO(data)):
        excerpter.feed(line)
    return excerpter


def assert_same(data: bytes, budget: int = 4096, passing: PassingIndex | None = None) -> Excerpt:
    """Both paths agree on the excerpt and on whether the input is text; return the excerpt."""
    slow = reference(data, budget, passing)
    fast = scan.excerpt_stream(io.BytesIO(data), budget, passing, small_bytes=0)
    assert isinstance(fast, scan.SparseExcerpter) == scan.available()
    expected, got = slow.finish(), fast.finish()
    assert got == expected
    assert fast.looks_binary == slow.looks_binary
    return got


def filler(count: int, start: int = 0) -> list[str]:
    """Ordinary build chatter with no word the excerpter reacts to."""
    return [f"{TS}Compiling module_{n} with cache {n * 7 % 13}" for n in range(start, start + count)]


def log(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.log")), ids=lambda p: p.name)
@pytest.mark.parametrize("budget", [2048, 4096, 16384])
def test_fixture_logs_excerpt_the_same(path: Path, budget: int) -> None:
    assert_same(path.read_bytes(), budget)


def test_a_passing_log_is_used_the_same_way() -> None:
    passing = PassingIndex.build(read_log(io.BytesIO((FIXTURES / "gha-gradle-test-failure.pass.log").read_bytes())))
    assert_same((FIXTURES / "gha-gradle-test-failure.log").read_bytes(), 4096, passing)


@pytest.mark.parametrize("chunk", [64, 97, 1000, 4096])
def test_chunk_boundaries_change_nothing(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(scan, "CHUNK_BYTES", chunk)
    body = [
        *filler(30),
        f"{TS}##[group]Run make test",
        *filler(7, 30),
        f"{TS}error: expected ';' before '}}' token",
        f"{TS}    at parse (src/parser.c:12)",
        *filler(50, 40),
        f"{TS}tests/test_x.py::test_one FAILED",
        *filler(5, 90),
        f"{TS}tests/test_x.py::test_one PASSED",
        *filler(420, 100),
        f"{TS}##[error]Process completed with exit code 2.",
        *filler(3, 600),
    ]
    data = log(*body)
    assert_same(data)
    assert_same((FIXTURES / "gha-gradle-test-failure.log").read_bytes())


def test_a_hit_exactly_at_a_chunk_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    head = log(*filler(20))
    monkeypatch.setattr(scan, "CHUNK_BYTES", len(head))
    tail = [f"{TS}fatal: repository not found", *filler(10, 20), f"{TS}Error: Process completed with exit code 1."]
    data = head + log(*tail)
    excerpt = assert_same(data)
    assert 21 in {line.number for line in excerpt.lines}


def _pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def test_keys_across_skipped_lines_are_redacted_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "CHUNK_BYTES", 512)
    pem = _pem()
    wrapped = base64.b64encode(pem.encode()).decode()
    wrapped_lines = [wrapped[i : i + 76] for i in range(0, len(wrapped), 76)]
    body = [
        *filler(10),
        f"{TS}cat deploy.pem",
        *[f"{TS}{line}" for line in pem.strip().splitlines()],
        *filler(3, 10),
        f"{TS}echo $KEY | base64",
        *[f"{TS}{line}" for line in wrapped_lines],
        f"{TS}ERROR: deploy failed: permission denied (publickey)",
        *filler(20, 20),
        f"{TS}##[error]Process completed with exit code 1.",
    ]
    for budget in (1024, 4096, 16384):
        excerpt = assert_same(log(*body), budget)
        text = "\n".join(line.text for line in excerpt.lines)
        assert "BEGIN EC PRIVATE KEY" not in text
        assert not contains_secret(text)
        assert all(piece not in text for piece in wrapped_lines[1:])
    assert "[REDACTED" in "\n".join(line.text for line in assert_same(log(*body), 16384).lines)


def test_a_key_opened_by_a_lone_base64_line_is_redacted_the_same() -> None:
    wrapped = base64.b64encode(_pem().encode()).decode()
    # The key's first line is the only one ending in base64: the rest of it ends in a quote.
    first, rest = wrapped[:64], wrapped[64:]
    body = [
        *filler(10),
        f"{TS}{first}",
        f'{TS}{rest}"',
        f"{TS}ERROR: deploy failed: permission denied (publickey)",
        *filler(20, 20),
        f"{TS}##[error]Process completed with exit code 1.",
    ]
    for budget in (4096, 16384):
        excerpt = assert_same(log(*body), budget)
        text = "\n".join(line.text for line in excerpt.lines)
        assert first not in text and rest[:40] not in text


@needs_scan
def test_only_lone_base64_ends_without_key_text_become_plain() -> None:
    end, key = scan.BASE64_END, scan.BASE64_END | scan.KEY_TEXT
    candidates = {0: end, 2: end, 4: end, 5: end, 7: key, 9: scan.SCORED | end, 11: end}
    scan._drop_lone_base64_ends(candidates, 12)
    assert candidates == {0: end, 4: end, 5: end, 7: key, 9: scan.SCORED | end, 11: end}
    encoded = base64.b64encode(b"-----BEGIN RSA PRIVATE KEY-----")
    for shift in range(3):
        text = base64.b64encode(b"x" * shift + b"-----BEGIN RSA PRIVATE KEY-----")
        assert scan.candidate_lines(b"a\n" + text + b"\n")[1] & scan.KEY_TEXT, shift
    assert scan.candidate_lines(b"x\n" + encoded.lower() + b"\n")[1] == end


def test_wrapped_keys_with_whitespace_after_each_line_are_redacted_the_same() -> None:
    pem = _pem().encode()
    # Bytes before the key put a wrap of 20 columns (15 bytes) inside "PRIVAT|E KEY": no line holds the
    # phrase, so only the run read on across lines, each with whitespace after it, opens the key.
    wrapped = base64.b64encode(b"A" * (-(pem.index(b"PRIVATE") + 6) % 15) + pem).decode()
    tails = [" " * 12, "\u3000\u00a0", "", " \t", *(" " * (n % 13) for n in range(60))]
    lines = [f"{TS}{wrapped[i : i + 20]}{tails[i // 20]}" for i in range(0, len(wrapped), 20)]
    body = [*filler(10), f"{TS}echo $KEY | base64", *lines, f"{TS}error: deploy failed", *filler(5, 10)]
    assert not any(kind & scan.KEY_TEXT for kind in scan.candidate_lines(log(*body)).values())
    excerpt = assert_same(log(*body), 16384)
    text = "\n".join(line.text for line in excerpt.lines)
    assert wrapped[40:60] not in text and "[REDACTED:private_key]" in text


def test_travis_log_with_carriage_returns() -> None:
    body = [
        "travis_fold:start:install\r",
        "Downloading 10%\rDownloading 50%\rDownloading 100%\r",
        "\x1b[0K\x1b[33;1mThe command \"npm ci\" exited with 0.\x1b[0m\r",
        "travis_fold:end:install\r",
        *[f"ok {n} parses case {n}\r" for n in range(30)],
        "progress 1/3\rprogress 2/3\rnpm ERR! code ELIFECYCLE\r",
        "\x1b[31;1mThe command \"npm test\" exited with 1.\x1b[0m\r",
        "Done. Your build exited with 1.\r",
    ]
    assert_same(log(*body))
    assert_same((FIXTURES / "travis-elixir-test-failure.log").read_bytes())


def test_ansi_codes_inside_words_and_lone_escapes() -> None:
    body = [
        *filler(20),
        f"{TS}\x1b[1mNo such\x1b[0m file or directory: config.yml",
        f"{TS}E\x1b[31mRR\x1b[0mOR in build",
        f"{TS}\x1b\x1b[31m[0mtrailing escape",
        f"{TS}\x1b]8;;http://x\x07link\x1b]8;;\x07 done",
        f"{TS}K\u212aILLED by signal",
        f"{TS}fa\x01iled with code 3",
        *filler(20, 20),
        f"{TS}##[error]Process completed with exit code 1.",
    ]
    assert_same(log(*body))


def test_gh_run_view_log() -> None:
    lines = []
    for job, step, text in [
        ("build", "Set up job", "Runner version 2.3"),
        ("build", "Run tests", "collected 3 items"),
        ("build", "Run tests", "tests/test_a.py::test_x FAILED"),
        ("build", "Run tests", "E   assert 1 == 2"),
        ("build", "Run tests", "##[error]Process completed with exit code 1."),
        ("lint", "Run ruff", "All checks passed!"),
        ("build", "Post Run actions/checkout@v4", "Post job cleanup."),
    ]:
        lines.append(f"{job}\t{step}\t{TS}{text}")
    plain = filler(40)
    assert_same(log(*plain[:20], *lines, *plain[20:]))


def test_zip_and_gzip() -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("1_lint.txt", log(*filler(50), f"{TS}warning: unused import"))
        bundle.writestr("2_test.txt", (FIXTURES / "gha-gradle-test-failure.log").read_bytes())
        bundle.writestr("3_empty.txt", b"")
        bundle.writestr("4_deploy.txt", log(*filler(500), f"{TS}fatal: could not read Username", *filler(3)))
    assert_same(archive.getvalue())
    assert_same(gzip.compress((FIXTURES / "gha-pytorch-keyboardinterrupt.log").read_bytes()))


def test_zip_of_step_files_only() -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("1_lint.txt", log(*filler(50), f"{TS}warning: unused import"))
        bundle.writestr("test/1_Set up job.txt", log(*filler(300)).rstrip(b"\n"))
        bundle.writestr("test/3_Post Run actions_checkout@v4.txt", log(f"{TS}Post job cleanup.", *filler(5)))
        bundle.writestr("test/2_Run gradle test.txt", (FIXTURES / "gha-gradle-test-failure.log").read_bytes())
        bundle.writestr("deploy/1_Push.txt", log(*filler(500), f"{TS}fatal: could not read Username", *filler(3)))
    got = assert_same(archive.getvalue())
    failing = [block for block in got.blocks if (block.job, block.step) == ("test", "Run gradle test")]
    assert failing and all(line.number > 300 for block in failing for line in block.lines)  # numbered on


def test_long_lines_invalid_bytes_and_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "CHUNK_BYTES", 40_000)
    long_line = (TS + "x" * 70_000 + " error at the end").encode()
    exact = (TS + "y" * (16 * 1024 - len(TS) - 1)).encode()
    broken = b"\xff\xfe broken \xc3 error"
    body = b"\n".join([*(line.encode() for line in filler(30)), long_line, exact, broken, b"tail"])
    assert_same(body)
    assert_same(body + b"\n")
    assert_same(bytes(range(256)) * 400)
    assert_same(b"")


def test_without_a_final_newline_and_with_blank_lines() -> None:
    body = log(*filler(10), "", f"{TS}", "   ", f"{TS}##[endgroup]", f"{TS}error: boom").rstrip(b"\n")
    assert_same(body)


def test_a_small_log_is_read_line_by_line() -> None:
    data = (FIXTURES / "gha-gradle-test-failure.log").read_bytes()
    for stream in (io.BytesIO(data), io.BytesIO(gzip.compress(data))):
        small = scan.excerpt_stream(stream, 4096)
        assert not isinstance(small, scan.SparseExcerpter)
        assert small.finish() == reference(data, 4096).finish()
    big = scan.excerpt_stream(io.BytesIO(data), 4096, small_bytes=len(data))
    assert isinstance(big, scan.SparseExcerpter) == scan.available()


def test_the_fallback_gives_the_same_excerpt(monkeypatch: pytest.MonkeyPatch) -> None:
    data = (FIXTURES / "gha-gradle-test-failure.log").read_bytes()
    monkeypatch.setattr(scan, "available", lambda: False)
    fallback = scan.excerpt_stream(io.BytesIO(data), 4096, small_bytes=0)
    assert not isinstance(fallback, scan.SparseExcerpter)
    assert fallback.finish() == reference(data, 4096).finish()


@needs_scan
def test_candidates_come_from_the_excerpt_tables() -> None:
    literals = scan.scored_literals()
    patterns = {pattern for pattern, _, kind in scan.candidate_patterns() if kind == scan.SCORED}
    assert {scan._literal(text) for text in literals} <= patterns
    # Each word or phrase holds a literal the scan looks for, so a line with it is never skipped.
    tables = rules._STRONG_WORDS | rules._MEDIUM_WORDS | set(rules._STRONG_PHRASES) | set(rules._DECISIVE_PHRASES)
    for text in tables | {"critical", "severe"}:
        assert any(literal in text.lower() for literal in literals), text
    assert "fail" in literals and "failed" not in literals
    # Every verdict a test-result shape can capture is one the scan looks for.
    verdicts: set[str] = set()
    for _, pattern in rules._TEST_RESULTS:
        found = re.search(r"\(\?P<verdict>([^)]*)\)", pattern.pattern)
        assert found is not None
        verdicts |= set(found.group(1).split("|"))
    covered = {"ok", "not ok"} | {v.removeprefix("--- ") for v in scan.TEST_VERDICTS}
    assert verdicts <= covered
    assert {"FAIL", "PASS"} <= {v.removeprefix("--- ") for v in scan.TEST_VERDICTS if v.startswith("--- ")}


def test_only_two_characters_lowercase_into_ascii() -> None:
    found = {
        chr(code)
        for code in range(128, sys.maxunicode + 1)
        if not 0xD800 <= code <= 0xDFFF and any(c.isascii() and c.isalpha() for c in chr(code).lower())
    }
    assert found == set(scan._LOWERS_TO_ASCII)


@needs_scan
def test_candidate_lines_finds_each_line_once() -> None:
    buffer = b"ok\nan error and a failure\nnothing\n\nfatal\nerror"
    assert scan.candidate_lines(buffer) == {1: scan.SCORED, 4: scan.SCORED, 5: scan.SCORED}
    verdicts = b"x\ntest_a PASSED\nok 3 parses\nRun make\n##[group]Run make\n--- PASS: TestX and an error"
    assert scan.candidate_lines(verdicts) == {
        1: scan.VERDICT, 2: scan.VERDICT, 4: scan.PLAIN, 5: scan.SCORED | scan.VERDICT
    }
    runs = b"sha 0123456789abcdef0123\nshort abc\n--- PASS: TestAbcdefghijklmnopqrst \t\nab\x1b[0mcdefghijklmnopqrstu\r"
    assert scan.candidate_lines(runs) == {
        0: scan.BASE64_END, 2: scan.VERDICT | scan.BASE64_END, 3: scan.SCORED | scan.BASE64_END
    }
    assert scan.candidate_lines(b"x\n" + b"A" * 24 + b"\rprogress\n") == {1: scan.BASE64_END}
    # Whitespace after the run, short or long, ASCII or not, and at the end of the buffer with no newline.
    for tail in (b" " * 8, b" \t" * 6, "\u3000\u00a0".encode() * 3):
        assert scan.candidate_lines(b"x\n" + b"A" * 20 + tail + b"\nok\n") == {1: scan.BASE64_END}, tail
        assert scan.candidate_lines(b"x\n" + b"A" * 20 + tail) == {1: scan.BASE64_END}, tail
    assert scan.candidate_lines(b"x\n" + b"A" * 19 + b" \n") == {}


def _wrapped_key_after(head: str) -> tuple[str, list[str]]:
    """A PEM key in base64 whose stream starts inside `head`'s run: its first line with `head`, and the rest
    wrapped at 64 columns. Only the run read on from `head` decodes to the key; its lines alone do not."""
    pem = _pem().encode()
    for pad in range(64):
        stream = base64.b64encode(bytes([65 + pad % 26]) * (pad + 30) + pem).decode()
        # The head's run must be cut off mid-group, or the next line would decode alone as well.
        cut = 26 + next(n for n in range(4) if (26 + n) % 4 == 2)
        first, rest = stream[:cut], stream[cut:]
        if not any(literal in (head + first).lower() for literal in scan.scored_literals()):
            return head + first, [rest[i : i + 64] for i in range(0, len(rest), 64)]
    raise AssertionError("no key avoided the scored words")


def test_a_key_read_on_from_a_skipped_verdict_is_redacted() -> None:
    verdict, wrapped = _wrapped_key_after("--- PASS: Test")
    body = [
        *filler(30),
        f"{TS}{verdict}",
        *[f"{TS}{line}" for line in wrapped],
        f"{TS}ERROR: deploy failed: permission denied (publickey)",
        *filler(5, 30),
        f"{TS}##[error]Process completed with exit code 1.",
    ]
    excerpt = assert_same(log(*body), 16384)
    text = "\n".join(line.text for line in excerpt.lines)
    assert wrapped[1] not in text and "[REDACTED" in text


def _differs(dataset: str, row: dict[str, str]) -> str | None:
    """The case id when the two paths disagree on it, else None."""
    folder = Path(dataset)
    passing = None
    if row.get("pass_log"):
        with (folder / row["pass_log"]).open("rb") as stream:
            passing = PassingIndex.build(read_log(stream))
    data = (folder / row["log"]).read_bytes()
    fast = scan.excerpt_stream(io.BytesIO(data), 4096, passing, small_bytes=0).finish()
    return None if fast == reference(data, 4096, passing).finish() else row["id"]


@pytest.mark.timeout(600)
def test_dataset_logs_excerpt_the_same(dataset_dir: Path) -> None:
    rows = [json.loads(line) for line in (dataset_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    assert rows
    if not os.environ.get("MENDBOT_ALL_CASES"):
        # Every case costs `make test` about 90 s of CPU; a fixed quarter of them, with every format
        # among them, keeps it near 25 s. MENDBOT_ALL_CASES=1 checks them all.
        sample = rows[::4]
        formats = {row["format"] for row in sample}
        rows = sample + [row for row in rows if row["format"] not in formats]
    # The line-by-line reference is what takes the time: two processes halve it.
    with ProcessPoolExecutor(2) as pool:
        differing = [case for case in pool.map(_differs, [str(dataset_dir)] * len(rows), rows) if case]
    assert differing == []


def test_a_plain_log_is_named_after_its_job_on_both_paths() -> None:
    data = log(*filler(400), f"{TS}error: the linker failed", *filler(400, 400))
    for small_bytes in (0, len(data) + 1):
        excerpt = scan.excerpt_stream(io.BytesIO(data), 2048, job="build (ubuntu)", small_bytes=small_bytes).finish()
        assert excerpt.blocks and {block.job for block in excerpt.blocks} == {"build (ubuntu)"}


def test_a_command_that_passed_hands_the_focus_back_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The failing exit inside `make test` is pruned past before its command turns out to have passed; the
    # history of the exit before it must still read as the line-by-line path reads it.
    monkeypatch.setattr(scan, "CHUNK_BYTES", 2048)
    distinct = [f"{TS}Building lib{chr(97 + n % 26)}{chr(97 + n // 26)}" for n in range(120)]
    data = log(
        "$ make",
        *distinct,
        "fail: No such hash: 31b8c996c762b151bedbd7f0e5ad12c2ababf3cd",
        "stack traceback:",
        "make: *** [lit] Error 255",
        'The command "make" exited with 2.',
        "$ make test || RESULT=$?",
        *filler(600, 100),
        "  'FAILED: utime foobarbaz ENOENT: no such file or directory'",
        "make: *** [test] Error 1",
        *filler(600, 1000),
        'The command "make test || RESULT=$?" exited with 0.',
        "Done. Your build exited with 1.",
    )
    for budget in (200, 4096):
        excerpt = assert_same(data, budget)
    assert {line.number for line in excerpt.lines} >= {*range(2, 122), 122, 123}


@pytest.mark.parametrize("chunk", [700, 2048, 1 << 20])
def test_exit_windows_read_late_are_the_lines_before_each_marker(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    # More exits than Excerpter._keep holds, each after skipped output of its own, across small chunks: the
    # sparse path reads an exit's window only for a region still kept when pruning could reach it, and must
    # read the lines that were before that marker, not those after it. Some steps print only noise, so
    # their window falls back. The errors at the end push the last exit out of the kept regions, but it is
    # still the exit whose last lines the excerpt shows first.
    monkeypatch.setattr(scan, "CHUNK_BYTES", chunk)
    body: list[str] = []
    for step in range(3 * rules.MAX_REGIONS):
        body += [f"{TS}##[group]Run ./check part{step}", f"{TS}##[endgroup]"]
        if step % 7 == 5:
            body += [f"{TS}tests/test_part.py::test_{step} PASSED"]
        else:
            body += [f"{TS}checking {letters(step)} piece {letters(n)}" for n in range(3 + step % 4)]
        body += [f"{TS}##[error]Process completed with exit code {1 + step % 3}."]
        if step % 2:
            body += [f"{TS}checking {letters(step)} again"]
    tail = [f"{TS}##[group]Run ./cleanup"]
    for n in range(3 * rules.MAX_REGIONS):
        tail += [f"{TS}error: cleanup of {letters(n)} refused", *filler(3, n)]
    for budget in (4096, 65536):
        excerpt = assert_same(log(*body), budget)
        shown = {line.text for line in excerpt.lines}
        assert f"checking {letters(3 * rules.MAX_REGIONS - 1)} piece a" in shown
        assert_same(log(*body, *tail), budget)
    assert "checking a piece a" in shown


def letters(number: int) -> str:
    """A number spelt in letters, so that lines differing in it are no storm of one message."""
    return "".join(chr(ord("a") + int(digit)) for digit in str(number))
