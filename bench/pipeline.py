"""Time webhook -> pull-request comment through `mendbot serve` and the local GitHub server, 10 MB log vs small."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.intake import mendbot_env, running
from bench.throughput import build_log
from tests.app_support import (
    LOGS,
    REPO,
    failure_payload,
    fake_github,
    free_port,
    signed,
)
from tests.fakes.github_server import FakeGitHubServer

COMMAND = "python -m bench.pipeline"
SMALL_LOG = LOGS / "gha-gradle-test-failure.log"
PASS_LOG = LOGS / "gha-gradle-test-failure.pass.log"
POLL_SECONDS = 0.01


def pull_request_run(fake: FakeGitHubServer, number: int, log: bytes) -> tuple[dict[str, Any], int]:
    """A failed pull_request run on its own branch and pull request, after a green run of the same job."""
    branch = f"feature-{number}"
    green = fake.add_run(REPO, head_branch=branch, conclusion="success", event="pull_request")
    fake.add_job(REPO, green["id"], conclusion="success", log=PASS_LOG.read_bytes(),
                 steps=(("Set up job", "success"), ("Run tests", "success")))
    # On GitHub a pull request is also an issue; the fake keeps them apart, so seed both.
    issue = fake.add_issue(REPO, f"Change {branch}")
    fake.add_pull(REPO, branch, number=issue["number"])
    commit = fake.add_commit(REPO, "Parse logs from a file", files=["cidiff/src/LogParser.java"])
    run = fake.add_run(REPO, event="pull_request", head_branch=branch, head_sha=commit["sha"],
                       pull_requests=[issue["number"]])
    fake.add_job(REPO, run["id"], log=log)
    return run, int(issue["number"])


def time_one(fake: FakeGitHubServer, url: str, number: int, log: bytes) -> tuple[float, float]:
    """Seconds from posting the signed delivery to its PR comment, and to its check run, on the fake."""
    run, pull = pull_request_run(fake, number, log)
    body = json.dumps(failure_payload(run)).encode()
    repo = fake.repo(REPO)
    start = time.perf_counter()
    reply = httpx.post(f"{url}/webhook", content=body, headers=signed(body), timeout=30)
    if reply.status_code != 202:
        raise RuntimeError(f"mendbot answered {reply.status_code}: {reply.text}")
    comment = check = None
    deadline = start + 120
    while check is None or comment is None:
        now = time.perf_counter()
        if now > deadline:
            raise RuntimeError(f"no comment and check run for run {run['id']} within 120 s")
        if comment is None and any(c["issue_url"].endswith(f"/issues/{pull}") for c in list(repo.comments.values())):
            comment = now - start
        if check is None and any(c["head_sha"] == run["head_sha"] for c in list(repo.check_runs.values())):
            check = now - start
        time.sleep(POLL_SECONDS)
    return comment, check


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--size-mb", type=int, default=10)
    parser.add_argument("--runs", type=int, default=7, help="timed deliveries per log, after one warm-up")
    args = parser.parse_args(argv)
    fake = fake_github()
    try:
        with tempfile.TemporaryDirectory(prefix="mendbot-bench-") as scratch:
            tmp = Path(scratch)
            size = build_log(tmp / "failed.log", args.size_mb * 1024 * 1024)
            logs = {f"small log ({SMALL_LOG.stat().st_size / 1000:.0f} KB, baseline)": SMALL_LOG.read_bytes(),
                    f"{size / 1e6:.1f} MB of real Actions logs": (tmp / "failed.log").read_bytes()}
            print(f"$ {COMMAND} --size-mb {args.size_mb} --runs {args.runs}")
            print(f"mendbot serve (default settings, 1 s between writes) against the fake GitHub server; "
                  f"each delivery a new failed PR run; {args.runs} timed runs per log after one warm-up")
            print(f"{'failed job log':<34}{'comment p50 s':>14}{'p95 s':>8}{'check run p50 s':>17}{'p95 s':>8}")
            medians = []
            port = free_port()
            with running([sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
                         mendbot_env(tmp, fake.api_url), port, tmp / "serve.log") as (url, _pid):
                number = 0
                for name, log in logs.items():
                    comments, checks = [], []
                    for attempt in range(args.runs + 1):
                        number += 1
                        comment, check = time_one(fake, url, number, log)
                        if attempt:
                            comments.append(comment)
                            checks.append(check)
                    medians.append(percentile(comments, 0.5))
                    print(f"{name:<34}{percentile(comments, 0.5):>14.2f}{percentile(comments, 0.95):>8.2f}"
                          f"{percentile(checks, 0.5):>17.2f}{percentile(checks, 0.95):>8.2f}", flush=True)
            print(f"ratio 10 MB / small, comment p50: {medians[1] / medians[0]:.1f}x")
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
