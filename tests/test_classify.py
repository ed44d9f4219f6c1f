"""Tests for the rule-based failure classifier and its default rules."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.core.classify import (
    FALLBACK_RULE_ID,
    Classification,
    Rule,
    RuleError,
    classify,
    default_rules,
    load_rules,
    merge_rules,
    required_literals,
)
from bot.core.logs import LogLine, lines_from_text, parse_lines
from bot.core.models import Category, ExcerptLine, Severity

# Measured on the 41 categorised cases (see `python -m tests.test_classify`): 0.976 on the gold
# lines with 3 lines either side, 0.902 on whole logs. The floors leave room for rule changes
# that trade one case for a better general shape.
WINDOW_ACCURACY_FLOOR = 0.90
WHOLE_LOG_ACCURACY_FLOOR = 0.82
GOLD_CONTEXT_LINES = 3


def one(text: str) -> Classification:
    return classify([(1, text)])


# One line per failure kind and tool: the category and the rule that should claim it.
CASES = [
    # time limits
    (
        "##[error]The job running on runner GitHub Actions 12 has exceeded the maximum execution time of 360 minutes.",
        "timeout",
        "timeout-job-limit",
    ),
    ("##[error]The action 'Test' has timed out after 360 minutes.", "timeout", "timeout-step-limit"),
    ("Command took >30min, returning 124", "timeout", "timeout-exit-124"),
    ("Error: Process completed with exit code 124.", "timeout", "timeout-exit-124"),
    ("E       Failed: Timeout >10.0s", "timeout", "timeout-test"),
    (
        "     Error: Timeout of 2000ms exceeded. For async tests and hooks, ensure done() is called",
        "timeout",
        "timeout-test",
    ),
    ("panic: test timed out after 10m0s", "timeout", "timeout-test"),
    (
        "No output has been received in the last 10m0s, this potentially indicates a stalled build",
        "timeout",
        "timeout-job-limit",
    ),
    ("Build timed out (after 60 minutes). Marking the build as failed.", "timeout", "timeout-job-limit"),
    # cancellation
    ("##[error]The operation was canceled.", "cancelled", "cancelled-run"),
    (
        "The runner has received a shutdown signal. This can happen when the runner service is stopped",
        "cancelled",
        "cancelled-run",
    ),
    ("!!!!!!!!!!!!!!!!!!!! KeyboardInterrupt !!!!!!!!!!!!!!!!!!!!", "cancelled", "cancelled-keyboard-interrupt"),
    ("##[error]received SIGINT", "cancelled", "cancelled-interrupt"),
    # memory
    ("Killed", "oom", "oom-killed"),
    ("/home/runner/work/_temp/abc.sh: line 2:  4242 Killed                  python train.py", "oom", "oom-killed"),
    ("##[error]Process completed with exit code 137.", "oom", "oom-killed"),
    ("FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory", "oom", "oom-javascript-heap"),
    ('Exception in thread "main" java.lang.OutOfMemoryError: Java heap space', "oom", "oom-jvm"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.39 GiB.", "oom", "oom-gpu"),
    ("MemoryError", "oom", "oom-generic"),
    ("E   MemoryError: Unable to allocate 8.00 GiB for an array", "oom", "oom-generic"),
    ("cc1plus: out of memory allocating 65536 bytes", "oom", "oom-generic"),
    # crashes
    ("Segmentation fault (core dumped)", "crash", "crash-signal"),
    ("Fatal Python error: Segmentation fault", "crash", "crash-signal"),
    ("nn/test_pruning 1/1 failed! Received signal: SIGBUS", "crash", "crash-signal"),
    ("==12==ERROR: AddressSanitizer: heap-use-after-free on address 0x602000000010", "crash", "crash-sanitizer"),
    ("src/x.c:12:5: runtime error: signed integer overflow", "crash", "crash-sanitizer"),
    ("panic: runtime error: index out of range [3] with length 3", "crash", "crash-panic"),
    ("thread 'main' panicked at src/main.rs:4:5:", "crash", "crash-panic"),
    # platform
    ("##[error]Invalid workflow file: .github/workflows/ci.yml#L12", "configuration", "config-invalid-workflow"),
    ("OSError: [Errno 28] No space left on device", "infrastructure", "infra-disk-full"),
    (
        "##[error]The self-hosted runner: runner-12 lost communication with the server.",
        "infrastructure",
        "infra-runner-lost",
    ),
    (
        "Error response from daemon: manifest for python:3.14t not found: manifest unknown: manifest unknown",
        "infrastructure",
        "infra-docker",
    ),
    ("toomanyrequests: You have reached your pull rate limit.", "infrastructure", "infra-docker"),
    ('"message": "API rate limit exceeded for user ID 133916390."', "infrastructure", "infra-github-rate-limit"),
    (
        "##[error]Unable to resolve action `actions/chekout@v4`, repository not found",
        "infrastructure",
        "infra-action-download",
    ),
    (
        "##[error]Failed to download archive 'https://codeload.github.com/o/r/tar.gz/abc' after 3 attempts.",
        "network",
        "network-action-download",
    ),
    # services the application needs
    (
        "psycopg2.OperationalError: could not connect to server: Connection refused",
        "infrastructure",
        "db-connection-refused",
    ),
    (
        "sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) connection to server at "
        '"localhost" (127.0.0.1), port 5432 failed: Connection refused',
        "infrastructure",
        "db-connection-refused",
    ),
    ("connect ECONNREFUSED 127.0.0.1:3306", "infrastructure", "db-connection-refused"),
    ('FATAL:  password authentication failed for user "postgres"', "configuration", "db-auth-failed"),
    (
        "redis.exceptions.ConnectionError: Error 111 connecting to localhost:6379. Connection refused.",
        "infrastructure",
        "redis-connection",
    ),
    ("Error connecting to Redis on 127.0.0.1:6379 (Errno::ECONNREFUSED)", "infrastructure", "redis-connection"),
    ("redis.exceptions.TimeoutError: Timeout reading from socket", "infrastructure", "redis-connection"),
    # network
    ("curl: (6) Could not resolve host: example.invalid", "network", "network-dns"),
    ("socket.gaierror: [Errno -3] Temporary failure in name resolution", "network", "network-dns"),
    (
        "SSL: CERTIFICATE_VERIFY_FAILED certificate verify failed: unable to get local issuer certificate",
        "network",
        "network-tls",
    ),
    ("npm ERR! network read ECONNRESET", "network", "network-connection"),
    (
        "requests.exceptions.ConnectionError: ('Connection aborted.', ConnectionResetError(104, "
        "'Connection reset by peer'))",
        "network",
        "network-connection",
    ),
    ("ERROR: HTTP error 503 while getting https://files.pythonhosted.org/x.whl", "network", "network-http-5xx"),
    ("Received HTTP code 502 from proxy after CONNECT", "network", "network-http-5xx"),
    ("429 Too Many Requests", "network", "network-rate-limit"),
    (
        "error: Error while fetching remote python downloads json from 'https://raw.githubusercontent.com/x'",
        "network",
        "network-download",
    ),
    # dependencies
    ("ERROR: No matching distribution found for torch==9.9", "dependency", "dependency-pip"),
    ("ERROR: ResolutionImpossible: for help visit https://pip.pypa.io", "dependency", "dependency-pip"),
    ("  ERROR: Failed building wheel for torchcomms", "dependency", "dependency-pip"),
    ("ModuleNotFoundError: No module named 'yaml'", "dependency", "dependency-python-import"),
    (
        "ImportError: librocm_smi64.so.1: cannot open shared object file: No such file or directory",
        "dependency",
        "dependency-python-import",
    ),
    ("npm ERR! code ERESOLVE", "dependency", "dependency-node"),
    ('error Couldn\'t find any versions for "left-padd" that matches "^9.0.0"', "dependency", "dependency-node"),
    (
        "[ERROR] Failed to execute goal on project app: Could not resolve dependencies for project com.x:app:jar:1.0",
        "dependency",
        "dependency-jvm",
    ),
    (
        "   > Could not resolve all files for configuration ':app:debugRuntimeClasspath'.",
        "dependency",
        "dependency-jvm",
    ),
    ("Could not find gem 'rails (~> 9.0)' in locally installed gems.", "dependency", "dependency-ruby"),
    ('error: failed to select a version for the requirement `serde = "^9"`', "dependency", "dependency-rust-go"),
    (
        "main.go:4:2: missing go.sum entry for module providing package github.com/x/y",
        "dependency",
        "dependency-rust-go",
    ),
    # compile errors
    ('  File "app.py", line 3\nSyntaxError: invalid syntax', "compile_error", "compile-syntax"),
    (
        "/__w/p/p/torch/csrc/x.cpp:128:26: error: no matching function for call to 'f'",
        "compile_error",
        "compile-c-family",
    ),
    ("src/main.c:3:10: fatal error: stdio2.h: No such file or directory", "compile_error", "compile-c-family"),
    (r"C:\a\r\r\src\x.h(89): error C2143: syntax error: missing ',' before '*'", "compile_error", "compile-msvc"),
    ("error[E0425]: cannot find value `x` in this scope", "compile_error", "compile-rust"),
    ("./main.go:10:2: undefined: foo", "compile_error", "compile-go"),
    (
        "src/app.ts(12,5): error TS2322: Type 'string' is not assignable to type 'number'.",
        "compile_error",
        "compile-typescript",
    ),
    (
        "src/app.ts:12:5 - error TS2322: Type 'string' is not assignable to type 'number'.",
        "compile_error",
        "compile-typescript",
    ),
    ("src/main/java/App.java:5: error: cannot find symbol", "compile_error", "compile-jvm"),
    ("[ERROR] /home/runner/work/r/r/src/main/java/App.java:[5,9] cannot find symbol", "compile_error", "compile-jvm"),
    ("[error] /w/src/main/scala/App.scala:12:5: type mismatch;", "compile_error", "compile-jvm"),
    ("Program.cs(7,13): error CS0103: The name 'x' does not exist", "compile_error", "compile-dotnet"),
    ("/usr/bin/ld: main.o: undefined reference to `foo'", "compile_error", "compile-link"),
    ("FAILED: [code=1] caffe2/CMakeFiles/torch_cpu.dir/x.cpp.o ", "compile_error", "compile-build-driver"),
    # lint
    ("app.py:1:1: F401 'os' imported but unused", "lint", "lint-python"),
    (
        'app.py:12: error: Incompatible return value type (got "int", expected "str")  [return-value]',
        "lint",
        "lint-python",
    ),
    ("would reformat src/app.py", "lint", "lint-python"),
    ("   3:7  error  'x' is assigned a value but never used  no-unused-vars", "lint", "lint-javascript"),
    ("✖ 3 problems (3 errors, 0 warnings)", "lint", "lint-javascript"),
    ("app/models/user.rb:3:5: C: Style/StringLiterals: Prefer single-quoted strings", "lint", "lint-ruby-jvm"),
    (
        "[ERROR] src/main/java/App.java:12: Line is longer than 100 characters (found 120). [LineLength]",
        "lint",
        "lint-ruby-jvm",
    ),
    ("You have 3 Checkstyle violations.", "lint", "lint-ruby-jvm"),
    ("Line longer than 80 characters", "lint", "lint-general"),
    ("  Error (CLANGTIDY) Linter failed", "lint", "lint-general"),
    # application errors
    ("ERROR:    Exception in ASGI application", "crash", "app-exception-in"),
    ('Exception in thread "worker-1" java.lang.IllegalStateException: boom', "crash", "app-exception-in"),
    ('INFO: 127.0.0.1:5000 - "POST /orders HTTP/1.1" 500 Internal Server Error', "crash", "app-internal-server-error"),
    ("Forbidden (CSRF token missing or incorrect.): /accounts/login/", "test_failure", "app-csrf"),
    ("AssertionError: form submission failed: email is required", "test_failure", "app-form-submission"),
    ("WARNING app.forms: Form validation failed for SignupForm", "test_failure", "app-form-submission"),
    # tests
    ("FAILED tests/test_api.py::test_create - assert 500 == 201", "test_failure", "test-pytest"),
    (
        "FAILED [310.0221s] distributed/test_x.py::TestX::test_all_gather - RuntimeError: timed out",
        "test_failure",
        "test-pytest",
    ),
    ("________________ TestTorch.test_cauchy_cpu_bfloat16 ________________", "test_failure", "test-pytest"),
    ("FAIL: test_upper (tests.test_strings.TestStrings)", "test_failure", "test-unittest"),
    ("--- FAIL: TestParse (0.00s)", "test_failure", "test-go"),
    ("---- tests::it_adds stdout ----", "test_failure", "test-rust"),
    ("thread 'tests::it_adds' panicked at src/lib.rs:10:9:", "test_failure", "test-rust"),
    ("  ● Cart › adds an item", "test_failure", "test-javascript"),
    ("FAIL src/cart.test.js", "test_failure", "test-javascript"),
    ("  3 failing", "test_failure", "test-javascript"),
    ("[ERROR] com.x.AppTest.testAdd  Time elapsed: 0.01 s  <<< FAILURE!", "test_failure", "test-jvm"),
    ("com.x.AppTest > testAdd() FAILED", "test_failure", "test-jvm"),
    ("rspec ./spec/models/user_spec.rb:12 # User validates email", "test_failure", "test-ruby-elixir"),
    ("  1) test greets the world (HelloTest)", "test_failure", "test-ruby-elixir"),
    ("RuntimeError: test_cuda 1/1 failed!", "test_failure", "test-other-runner"),
    ("FAILED CONSISTENTLY: test/dynamo/test_x.py::Tests::test_y", "test_failure", "test-pytest"),
    ("REGRESSION: benchmark ('add_loop', 'instruction_count') failed", "test_failure", "test-benchmark-regression"),
    ("AssertionError: Tensor-likes are not close!", "test_failure", "test-assertion"),
    ("Failed asserting that two strings are equal.", "test_failure", "test-assertion"),
    ("Testing app.SUITE: *** FAILED test case 2 of 4 ***", "test_failure", "test-other-runner"),
    ("Error: Cannot find module 'fast-deep-equal'", "dependency", "dependency-node"),
    ("make: *** No rule to make target `travis'.  Stop.", "configuration", "config-missing-build-target"),
    (
        "xcodebuild: error: Unable to find a destination matching the provided destination specifier",
        "unknown",
        "fallback",
    ),
    # configuration and git state
    ("##[error]Input required and not supplied: token", "configuration", "config-missing-input"),
    ("KeyError: 'DATABASE_URL'", "configuration", "config-missing-input"),
    ("/home/runner/work/_temp/x.sh: line 1: mendbot: command not found", "configuration", "config-command-not-found"),
    ("error: unrecognized arguments: --frobnicate", "configuration", "config-unknown-option"),
    (
        "RuntimeError: PR 189601 is out of sync with the corresponding revision abc on branch gh/x",
        "configuration",
        "config-branch-state",
    ),
    (
        "##[error]Credentials could not be loaded, please check your action inputs",
        "infrastructure",
        "infra-cloud-credentials",
    ),
    (
        "##[error]Unable to download artifact(s): Artifact not found for name: wheel-py3_10",
        "infrastructure",
        "infra-artifact",
    ),
    ("##[error]fatal: couldn't find remote ref refs/tags/ciflow/b200/190903", "infrastructure", "infra-git"),
    ("RuntimeError: Failed to get git diff information", "test_failure", "uncaught-exception"),
    ("subprocess.TimeoutExpired: Command 'git diff' timed out after 60 seconds", "timeout", "timeout-generic"),
]


@pytest.mark.parametrize(("text", "category", "rule_id"), CASES, ids=[case[2] for case in CASES])
def test_default_rules_name_each_failure_kind(text: str, category: str, rule_id: str) -> None:
    result = classify(lines_from_text(text))
    assert (result.category, result.rule_id) == (Category(category), rule_id), result.matched_text


def test_nothing_matches_falls_back_to_the_most_error_like_line() -> None:
    result = classify(
        [
            (1, "Starting job"),
            (2, "Your PR is 3174 LOC, above the 2000 line cap"),
            (3, "##[error]Process completed with exit code 1."),
        ]
    )
    assert result.rule_id == FALLBACK_RULE_ID
    assert (result.category, result.severity) == (Category.UNKNOWN, Severity.MEDIUM)
    # The exit-code wrapper says nothing; the line before it does, with its numbers masked.
    assert result.matched_line == 2
    assert result.key == "unknown:Your PR is <n> LOC, above the <n> line cap"


def test_empty_input_is_unknown_without_a_line() -> None:
    result = classify([])
    assert (result.category, result.matched_line, result.key) == (Category.UNKNOWN, None, "unknown")


def test_fallback_key_is_the_structured_key_of_a_json_event() -> None:
    event = '{"level":"ERROR","target":"api::jobs","fields":{"error_code":"JOB_STUCK"},"message":"x 42"}'
    assert classify([(7, event)]).key == "JOB_STUCK:api::jobs"


def test_higher_priority_rule_wins_over_earlier_lines() -> None:
    result = classify(
        [
            (10, "FAILED tests/test_a.py::test_a - AssertionError"),
            (11, "##[error]The job running on runner r1 has exceeded the maximum execution time of 60 minutes."),
            (12, "##[error]The operation was canceled."),
        ]
    )
    assert (result.category, result.matched_line) == (Category.TIMEOUT, 11)


def test_database_outage_outranks_the_test_that_it_broke() -> None:
    result = classify(
        [
            (
                1,
                "FAILED tests/test_orders.py::test_list - sqlalchemy.exc.OperationalError: "
                "(psycopg2.OperationalError) could not connect to server: Connection refused",
            ),
        ]
    )
    assert (result.category, result.severity, result.rule_id) == (
        Category.INFRASTRUCTURE,
        Severity.CRITICAL,
        "db-connection-refused",
    )


def test_among_matching_lines_the_error_annotation_then_the_first_is_quoted() -> None:
    lines = [
        (3, "Error response from daemon: manifest for img:1 not found: manifest unknown"),
        (5, "##[error]Docker pull failed with exit code 1"),
        (8, "Error response from daemon: manifest for img:1 not found: manifest unknown"),
    ]
    assert classify(lines).matched_line == 5
    assert classify([lines[0], lines[2]]).matched_line == 3


def test_key_is_free_of_volatile_noise() -> None:
    first = one("FAILED tests/test_io.py::test_read[/tmp/pytest-of-a/pytest-3/x0] - OSError: 17")
    second = one("FAILED tests/test_io.py::test_read[/tmp/pytest-of-b/pytest-9/x1] - OSError: 23")
    assert first.key == second.key == "test:tests/test_io.py::test_read[<tmp>]"
    assert one("FAILED tests/test_io.py::test_write").key != first.key


def test_key_without_captured_names_is_the_rule_id() -> None:
    assert one("Failures:").key == "test-ruby-elixir"
    assert one("rspec ./spec/a_spec.rb:4 # A works").key == "test:./spec/a_spec.rb:A works"


def test_key_differs_by_failing_test_and_by_file() -> None:
    assert one("--- FAIL: TestParse (0.01s)").key != one("--- FAIL: TestPrint (0.01s)").key
    assert one("src/a.c:1:1: error: expected ';'").key != one("src/b.c:1:1: error: expected ';'").key


def test_summary_fills_named_groups_and_the_line() -> None:
    result = one("##[error]The action 'Run tests' has timed out after 30 minutes.")
    assert result.summary == "The step 'Run tests' ran past its timeout-minutes."
    assert result.key == "timeout:step:Run tests"
    assert result.recommendations and result.title


def test_accepts_excerpt_lines_log_lines_and_raw_runner_lines() -> None:
    raw = "2024-01-01T00:00:00.0000000Z ##[error]The operation was canceled."
    from_tuple = classify([(4, raw)])
    from_excerpt = classify([ExcerptLine(number=4, text=raw)])
    from_log = classify([LogLine(4, "The operation was canceled.", marker="error")])
    assert {from_tuple.rule_id, from_excerpt.rule_id, from_log.rule_id} == {"cancelled-run"}
    assert from_tuple.matched_text == "The operation was canceled."
    assert from_tuple.matched_line == from_log.matched_line == 4


def test_echoed_scripts_traces_and_warnings_are_not_evidence() -> None:
    log = "\n".join(
        [
            "##[group]Run echo 'Segmentation fault' && exit 0",
            "echo 'Segmentation fault' && exit 0",
            "##[endgroup]",
            "+ echo 'Killed'",
            "##[warning]No space left on device is likely soon",
            "FAILED tests/test_x.py::test_y - assert 1 == 2",
        ]
    )
    assert classify(lines_from_text(log)).rule_id == "test-pytest"


def test_classification_is_immutable() -> None:
    result = one("Killed")
    with pytest.raises(ValueError):
        result.category = Category.LINT


REPO_RULES = """
[[rule]]
id = "flaky-fixture"
category = "test_failure"
severity = "low"
pattern = 'fixture (?P<name>\\w+) is flaky'
key = "flaky:{name}"
title = "A known flaky fixture"
summary = "Fixture {name} flaked: {line}"
recommendations = ["Re-run."]

[[rule]]
id = "cancelled-run"
category = "cancelled"
severity = "medium"
pattern = 'The operation was canceled'
title = "Cancelled (repository override)"
summary = "Cancelled."
"""


def test_repository_rules_come_first_and_replace_defaults_by_id() -> None:
    repo = load_rules(REPO_RULES)
    merged = merge_rules(repo, default_rules())
    assert [rule.id for rule in merged[:2]] == ["flaky-fixture", "cancelled-run"]
    assert sum(rule.id == "cancelled-run" for rule in merged) == 1
    flaky = classify([(1, "Segmentation fault"), (2, "fixture db_1 is flaky")], merged)
    assert (flaky.rule_id, flaky.key, flaky.severity) == ("flaky-fixture", "flaky:db_1", Severity.LOW)
    assert flaky.summary == "Fixture db_1 flaked: fixture db_1 is flaky"
    cancelled = classify([(1, "##[error]The operation was canceled.")], merged)
    assert (cancelled.severity, cancelled.key) == (Severity.MEDIUM, "cancelled-run")


def _rule(**fields: str) -> str:
    base = {"id": "r1", "category": "lint", "severity": "low", "pattern": "x", "title": "t", "summary": "s"}
    base.update(fields)
    return "[[rule]]\n" + "\n".join(f"{name} = {json.dumps(value)}" for name, value in base.items())


def test_a_catastrophic_repository_rule_times_out_and_classification_goes_on() -> None:
    evil = load_rules(_rule(id="evil", pattern="(a|aa)+$"))
    lines = [(1, "a" * 300 + "!"), (2, "##[error]The action 'Test' has timed out after 360 minutes.")]
    started = time.perf_counter()

    result = classify(lines, merge_rules(evil, default_rules()))

    assert time.perf_counter() - started < 1.0
    assert result.rule_id == "timeout-step-limit"
    assert result.timed_out_rules == ("evil",)


def test_many_catastrophic_rules_cost_a_bounded_time() -> None:
    # Half of them have a literal, so they are searched line by line rather than over the whole text.
    patterns = ["(a|aa)+$", "aaa(a|aa)+$"] * 10
    evil = load_rules("\n".join(_rule(id=f"evil-{n}", pattern=pattern) for n, pattern in enumerate(patterns)))
    lines = [(number, "a" * 300 + "!") for number in range(1, 21)]
    started = time.perf_counter()

    result = classify(lines, evil)

    assert time.perf_counter() - started < 1.5
    assert result.rule_id == FALLBACK_RULE_ID
    assert result.timed_out_rules == ("evil-0", "evil-1", "evil-2")


def test_packaged_rules_have_no_timeout_and_repository_rules_do() -> None:
    assert all(rule.timeout is None for rule in default_rules())
    assert all(rule.timeout for rule in load_rules(REPO_RULES))
    assert classify([(1, "##[error]The operation was canceled.")]).timed_out_rules == ()


@pytest.mark.parametrize(
    ("toml_text", "message"),
    [
        (_rule(pattern="(unclosed"), "rule 'r1': invalid pattern"),
        (_rule(category="weather"), "rule 'r1': category"),
        (_rule(severity="urgent"), "rule 'r1': severity"),
        (_rule(colour="red"), "rule 'r1': colour"),
        (_rule(id="Bad Id"), "rule 'Bad Id': id"),
        (_rule(key="k:{missing}"), "templates name groups the pattern lacks: ['missing']"),
        (_rule(summary="{line.__class__}"), "must be a plain name"),
        (_rule(pattern="\\Aboom"), "use ^ and $"),
        (_rule() + "\n" + _rule(), "rule 'r1': the id is used twice"),
        ("[[rule]\n", "not valid TOML"),
        ("rules = 1", "unknown top-level keys"),
        ('[[rule]]\ncategory = "lint"', "rule #1"),
    ],
)
def test_invalid_rules_raise_rule_error_naming_the_rule(toml_text: str, message: str) -> None:
    with pytest.raises(RuleError, match=re.escape(message)):
        load_rules(toml_text)


def test_default_rules_load_and_follow_the_severity_policy() -> None:
    rules = default_rules()
    assert len(rules) >= 60
    assert len({rule.id for rule in rules}) == len(rules)
    by_category: dict[Category, set[Severity]] = {}
    for rule in rules:
        by_category.setdefault(rule.category, set()).add(rule.severity)
    assert by_category[Category.CANCELLED] == {Severity.LOW}
    assert by_category[Category.LINT] == {Severity.LOW}
    assert by_category[Category.COMPILE_ERROR] == {Severity.HIGH}
    assert by_category[Category.OOM] == by_category[Category.CRASH] == {Severity.HIGH}
    assert by_category[Category.NETWORK] == {Severity.MEDIUM}
    db_and_redis = {rule.id: rule.severity for rule in rules if rule.id.startswith(("db-", "redis-"))}
    assert set(db_and_redis.values()) <= {Severity.HIGH, Severity.CRITICAL}


@pytest.mark.parametrize(
    ("pattern", "literals"),
    [
        (r"(?i)foo\bbar|baz(?:x|y)quux", ("foo", "quux")),
        (r"abc?def|x\.yz", ("def", "x.yz")),
        (r"\+{3,} Timeout \+{3,}", (" timeout ",)),
        (r"[Cc]onnection|ab", ()),
        (r"(?P<file>\S+\.go):\d+", ()),
        (r"\x41bcd", ()),
    ],
)
def test_required_literals_reads_only_what_every_match_must_contain(pattern: str, literals: tuple[str, ...]) -> None:
    assert required_literals(pattern) == literals


def test_a_rule_with_literals_still_matches_case_insensitively() -> None:
    rules = load_rules(_rule(pattern="(?i)Disk Quota", category="infrastructure", severity="medium"))
    assert rules[0].literals == ("disk quota",)
    assert classify([(1, "DISK QUOTA exceeded")], rules).rule_id == "r1"


def test_ten_thousand_lines_classify_quickly() -> None:
    filler = [
        (n, f"2024-01-01T00:00:{n % 60:02d}Z test_module_{n}.py::test_case_{n} PASSED [{n / 100:.2f}s]")
        for n in range(1, 10_001)
    ]
    started = time.perf_counter()
    result = classify(filler)
    elapsed = time.perf_counter() - started
    assert result.rule_id == FALLBACK_RULE_ID
    assert elapsed < 3.0


# --- the shared dataset ------------------------------------------------------------------------


def _categorised_cases(dataset_dir: Path) -> Iterator[tuple[dict[str, object], list[LogLine]]]:
    with open(dataset_dir / "manifest.jsonl", encoding="utf-8") as manifest:
        for row in map(json.loads, manifest):
            if row.get("category"):
                with open(dataset_dir / row["log"], "rb") as log:
                    yield row, list(parse_lines(log))


def _gold_window(row: dict[str, object], lines: list[LogLine], context: int) -> list[LogLine]:
    spans = row["gold"]
    assert isinstance(spans, list)
    wanted = {n for start, end in spans for n in range(start - context, end + context + 1)}
    return [line for line in lines if line.number in wanted]


def measure_accuracy(dataset_dir: Path, context: int | None) -> tuple[float, list[str]]:
    """Category accuracy on the categorised cases: gold lines ± `context`, or whole logs if None."""
    hits, misses = 0, []
    for row, lines in _categorised_cases(dataset_dir):
        chosen = lines if context is None else _gold_window(row, lines, context)
        result = classify(chosen)
        if result.category == row["category"]:
            hits += 1
        else:
            misses.append(f"{row['id']}: gold {row['category']}, got {result.category} ({result.rule_id})")
    return hits / (hits + len(misses)), misses


def test_dataset_accuracy_on_gold_windows(dataset_dir: Path) -> None:
    accuracy, misses = measure_accuracy(dataset_dir, GOLD_CONTEXT_LINES)
    assert accuracy >= WINDOW_ACCURACY_FLOOR, misses


def test_dataset_accuracy_on_whole_logs(dataset_dir: Path) -> None:
    accuracy, misses = measure_accuracy(dataset_dir, None)
    assert accuracy >= WHOLE_LOG_ACCURACY_FLOOR, misses


def test_rule_literals_never_hide_a_real_match(dataset_dir: Path) -> None:
    rules: list[Rule] = default_rules()
    texts = [line.text for _, lines in _categorised_cases(dataset_dir) for line in lines]
    texts += [text for text, _, _ in CASES]
    for rule in rules:
        for text in texts:
            if rule.literals and rule.regex.search(text):
                folded = text.casefold()
                assert any(literal in folded for literal in rule.literals), (rule.id, text)


if __name__ == "__main__":
    # python -m tests.test_classify [path to ci-logs]: print accuracy and the misses.
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared/datasets/ci-logs"
    for label, context in (("gold ± 3 lines", GOLD_CONTEXT_LINES), ("whole log", None)):
        accuracy, misses = measure_accuracy(root, context)
        print(f"{label}: {accuracy:.3f}")
        for miss in misses:
            print("   ", miss)
