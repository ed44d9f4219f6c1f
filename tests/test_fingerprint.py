"""Tests for failure fingerprints: stable across reruns, distinct across failures."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from bot.core.classify import classify
from bot.core.fingerprint import fingerprint, normalize, structured_key
from bot.core.logs import LogLine, parse_lines


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:30:45.1234567Z boom", "<ts> boom"),
        ("2024-05-01 12:30:45,123 ERROR boom", "<ts> ERROR boom"),
        ("E0730 10:12:22.917000 80638 common.py:1133] boom", "<ts> common.py:<n>] boom"),
        ("Jul 30 10:12:17 host sshd boom", "<ts> host sshd boom"),
        ("1 failed in 310.03s (0:05:10)", "<n> failed in <dur> (<time>)"),
        ("took 1234 ms", "took <dur>"),
        ("run 123e4567-e89b-12d3-a456-426614174000 failed", "run <uuid> failed"),
        ("object at 0x7fea0d9b9480", "object at <addr>"),
        ("cherry-pick f2c14040ce9aa74d0e5fa7e36b3f5df80f5be0c2 and 597be33c510", "cherry-pick <hex> and <hex>"),
        ("network github_network_375aa4aa80a74dc488498a10436d373f", "network github_network_<hex>"),
        ("wrote /tmp/pytest-of-runner/pytest-12/x0/out.txt", "wrote <tmp>"),
        ("/var/folders/ab/cd/T/tmpx/f.txt missing", "<tmp> missing"),
        (r"C:\Users\bob\AppData\Local\Temp\tmpab12\f.txt missing", "<tmp> missing"),
        ("connect to localhost:5432 pid 4242", "connect to localhost:<n> pid <n>"),
        (
            'File "/opt/py-3.10/lib/python3.10/site-packages/torch/nn/module.py", line 1371, in convert',
            'File "<site>/torch/nn/module.py", line <n>, in convert',
        ),
        ("/home/runner/work/app/app/src/x.c:12:5: error: boom", "<ws>/src/x.c:<n>:<n>: error: boom"),
        ("/__w/app/app/src/x.c:12:5: error: boom", "<ws>/src/x.c:<n>:<n>: error: boom"),
        # Digits that are part of a name stay: they tell tests and types apart.
        ("test_case_3 bfloat16 py3_10 int64", "test_case_3 bfloat16 py3_10 int64"),
        ("  many   spaces\t", "many spaces"),
    ],
)
def test_normalize_masks_what_changes_between_reruns(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_fingerprint_is_sixteen_hex_characters() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint("test:x", ["FAILED x"]))


RUN_ONE = [
    "2024-05-01T10:00:01.1234567Z FAILED [12.3s] tests/test_api.py::test_create - AssertionError: 500 != 201",
    "E   at /tmp/pytest-of-runner/pytest-12/test_create0/db.sqlite, pid 4242, request 9f1c2e3d4b5a",
    '  File "/home/runner/work/app/app/api/views.py", line 120, in create',
]
RUN_TWO = [
    "2024-06-09T23:59:59.7654321Z FAILED [0.8s] tests/test_api.py::test_create - AssertionError: 500 != 201",
    "E   at /tmp/pytest-of-runner/pytest-97/test_create0/db.sqlite, pid 17, request 0a7b3c9d1e2f",
    '  File "/__w/app/app/api/views.py", line 134, in create',
]


def test_same_failure_in_two_runs_has_one_fingerprint() -> None:
    key_one = classify(list(enumerate(RUN_ONE, start=40))).key
    key_two = classify(list(enumerate(RUN_TWO, start=97))).key
    assert key_one == key_two
    assert fingerprint(key_one, RUN_ONE) == fingerprint(key_two, RUN_TWO)


@pytest.mark.parametrize(
    "changed",
    [
        [RUN_ONE[0].replace("test_create", "test_delete"), *RUN_ONE[1:]],  # another test
        [RUN_ONE[0].replace("AssertionError", "KeyError"), *RUN_ONE[1:]],  # another error type
        [*RUN_ONE[:2], RUN_ONE[2].replace("views.py", "models.py")],  # another file
    ],
)
def test_different_failures_have_different_fingerprints(changed: list[str]) -> None:
    assert fingerprint("test:x", changed) != fingerprint("test:x", RUN_ONE)


def test_the_classification_key_is_part_of_the_id() -> None:
    assert fingerprint("test:b", RUN_ONE) != fingerprint("test:a", RUN_ONE)


def test_plain_fingerprints_keep_their_stored_values() -> None:
    # Incidents in existing databases are keyed by these; a change here would open duplicate issues.
    assert fingerprint("test:x", ["FAILED tests/test_api.py::test_create - AssertionError: 500 != 201"]) == (
        "999c3e82feeb09a0"
    )
    assert fingerprint("oom:killed") == "44ec8bea1be7d7e5"


def test_job_and_workflow_names_cannot_enter_a_fingerprint() -> None:
    # The product keys failures on the failure alone, so one failure in several matrix jobs is one issue.
    with pytest.raises(TypeError):
        fingerprint("test:a", RUN_ONE, job="test (3.11)")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fingerprint("test:a", RUN_ONE, workflow="CI")  # type: ignore[call-arg]


def test_without_lines_the_key_alone_decides() -> None:
    assert fingerprint("oom:killed") == fingerprint("oom:killed", [])
    assert fingerprint("oom:killed") != fingerprint("oom:jvm")


def _event(code: str, target: str, message: str) -> str:
    return json.dumps(
        {
            "timestamp": "2024-05-01T10:00:00Z",
            "level": "ERROR",
            "target": target,
            "fields": {"error_code": code, "attempt": 3},
            "message": message,
        }
    )


def test_structured_key_reads_error_code_and_target() -> None:
    assert structured_key(_event("DB_CONN", "api::db", "pool timed out")) == "DB_CONN:api::db"
    assert structured_key("2024-05-01T10:00:00Z " + _event("E1", "svc", "x")) == "E1:svc"
    assert structured_key('{"error_code": "TOP", "target": "t"}') == "TOP:t"


@pytest.mark.parametrize(
    "line",
    [
        "plain text with error_code in it",
        '{"level":"ERROR","target":"api::db","message":"no code"}',
        '{"error_code": "X", "message": "no target"}',
        '{"error_code": "X", "target": "t"',  # cut short
        '["error_code", "target"]',
    ],
)
def test_structured_key_is_none_without_a_complete_event(line: str) -> None:
    assert structured_key(line) is None


def test_structured_events_group_by_code_and_target_whatever_the_message() -> None:
    first = fingerprint("unknown:a", [_event("DB_CONN", "api::db", "connection to 10.0.0.7 refused")])
    second = fingerprint("unknown:b", [_event("DB_CONN", "api::db", "pool exhausted after 30s, 12 waiting")])
    other_code = fingerprint("unknown:a", [_event("DB_AUTH", "api::db", "connection to 10.0.0.7 refused")])
    other_target = fingerprint("unknown:a", [_event("DB_CONN", "worker::db", "connection refused")])
    assert first == second
    assert len({first, other_code, other_target}) == 3


def test_a_structured_event_is_fingerprinted_by_code_and_target_alone() -> None:
    expected = hashlib.sha256(b"DB_CONN:api::db").hexdigest()[:16]
    event = _event("DB_CONN", "api::db", "pool timed out")
    assert fingerprint("unknown:a", [event]) == expected
    # The classification key, the job's other lines and the text around the event do not go in.
    assert fingerprint("test:b", ["##[group]Run cargo test --job integration", event, "FAILED x"]) == expected
    assert fingerprint("infra:c", ["2024-06-09T23:59:59Z worker-7 " + event]) == expected


# --- real reruns from the shared dataset ----------------------------------------------------


def _gold_lines(dataset_dir: Path, case_id: str) -> list[LogLine]:
    with open(dataset_dir / "manifest.jsonl", encoding="utf-8") as manifest:
        row = next(row for row in map(json.loads, manifest) if row["id"] == case_id)
    with open(dataset_dir / row["log"], "rb") as log:
        return [line for line in parse_lines(log) if any(start <= line.number <= end for start, end in row["gold"])]


def _case_fingerprint(dataset_dir: Path, case_id: str) -> str:
    lines = _gold_lines(dataset_dir, case_id)
    return fingerprint(classify(lines).key, [line.text for line in lines])


def test_dataset_reruns_of_one_go_test_failure_share_a_fingerprint(dataset_dir: Path) -> None:
    # The same failing test on two commits: different durations and line numbers in the log.
    first = _case_fingerprint(dataset_dir, "logchunks-ethereum-go-ethereum-566991375")
    second = _case_fingerprint(dataset_dir, "logchunks-ethereum-go-ethereum-567003594")
    other_test = _case_fingerprint(dataset_dir, "logchunks-ethereum-go-ethereum-566363943")
    assert first == second
    assert other_test != first


def test_dataset_retries_inside_one_log_share_a_fingerprint(dataset_dir: Path) -> None:
    # The runner retried a docker pull three times; each attempt has its own timestamp.
    with open(dataset_dir / "logs" / "pytorch-docker-manifest-unknown.log.gz", "rb") as log:
        lines = {line.number: line.text for line in parse_lines(log)}
    attempts = [fingerprint(classify([(number, lines[number])]).key, [lines[number]]) for number in (31, 34, 37)]
    assert len(set(attempts)) == 1
