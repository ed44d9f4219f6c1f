"""Tests for the GitHub adapter: real PyGithub and httpx talking HTTP to the fake GitHub server."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from bot.adapters.github import (
    Annotation,
    ApiCall,
    GitHubApp,
    GitHubError,
    InstallationClient,
    LabelSpec,
    RateLimited,
    WriteGate,
    app_jwt,
    run_blocking,
)
from tests.app_support import FakeClock, rsa_keys
from tests.fakes.github_server import SECONDARY_RATE_LIMIT_MESSAGE, FakeGitHubServer

APP_ID = "4242"
BOT = "mendbot[bot]"
REPO = "octo-org/octo-repo"
INSTALLATION = 7


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return rsa_keys()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def calls() -> list[ApiCall]:
    return []


@pytest.fixture
def server(keys: tuple[str, str], clock: FakeClock) -> Iterator[FakeGitHubServer]:
    with FakeGitHubServer(app_id=APP_ID, public_key_pem=keys[1], clock=clock) as fake:
        fake.add_installation(INSTALLATION)
        fake.add_repo(REPO, INSTALLATION)
        yield fake


@pytest.fixture
def app(
    server: FakeGitHubServer,
    keys: tuple[str, str],
    clock: FakeClock,
    sleeps: list[float],
    calls: list[ApiCall],
) -> Iterator[GitHubApp]:
    github_app = GitHubApp(
        APP_ID,
        keys[0],
        base_url=server.api_url,
        clock=clock,
        sleep=sleeps.append,
        write_interval=0,
        on_api_call=calls.append,
    )
    yield github_app
    github_app.close()


@pytest.fixture
def client(app: GitHubApp) -> InstallationClient:
    return app.client(INSTALLATION)


def api_requests(server: FakeGitHubServer, pattern: str, method: str = "GET") -> int:
    return len(server.requests_to(pattern, method))


# ---- auth -----------------------------------------------------------------------------------------


def test_app_jwt_has_the_claims_github_requires(keys: tuple[str, str]) -> None:
    token = app_jwt(APP_ID, keys[0], now=1_000_000.7)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, keys[1], algorithms=["RS256"], options={"verify_exp": False})
    assert claims == {"iat": 1_000_000 - 60, "exp": 1_000_000 + 540, "iss": APP_ID}
    assert claims["exp"] - claims["iat"] <= 600


def test_the_server_accepts_our_jwt_and_sees_its_claims(
    server: FakeGitHubServer, client: InstallationClient, clock: FakeClock
) -> None:
    run = server.add_run(REPO)
    assert client.get_run(REPO, run["id"]).id == run["id"]
    assert server.mints[INSTALLATION] == 1
    claims = server.jwt_claims[-1]
    assert claims["iss"] == APP_ID
    assert claims["iat"] == int(clock()) - 60
    assert claims["exp"] == int(clock()) + 540


def test_a_wrong_app_id_fails_without_leaking_the_jwt_or_key(
    server: FakeGitHubServer, keys: tuple[str, str], clock: FakeClock
) -> None:
    run = server.add_run(REPO)
    wrong = GitHubApp("999", keys[0], base_url=server.api_url, clock=clock, sleep=lambda _: None)
    with pytest.raises(GitHubError) as caught:
        wrong.client(INSTALLATION).get_run(REPO, run["id"])
    assert caught.value.status == 401
    text = "".join(traceback.format_exception(caught.value))
    assert "eyJ" not in text
    assert "PRIVATE KEY" not in text
    wrong.close()


def test_installation_for_repo_uses_the_app_jwt(server: FakeGitHubServer, app: GitHubApp) -> None:
    assert app.installation_for_repo(REPO) == INSTALLATION
    assert server.requests_to(r"/installation$")[0].headers["authorization"].startswith("Bearer eyJ")


def test_tokens_are_cached_until_five_minutes_before_expiry(
    server: FakeGitHubServer, client: InstallationClient, clock: FakeClock
) -> None:
    run = server.add_run(REPO)
    client.get_run(REPO, run["id"])
    client.get_run(REPO, run["id"])
    assert server.mints[INSTALLATION] == 1
    clock.now += 3600 - 301
    client.get_run(REPO, run["id"])
    assert server.mints[INSTALLATION] == 1
    clock.now += 2
    client.get_run(REPO, run["id"])
    assert server.mints[INSTALLATION] == 2


def test_tokens_are_cached_per_installation(server: FakeGitHubServer, app: GitHubApp) -> None:
    server.add_installation(8)
    server.add_repo("other/repo", 8)
    run_a = server.add_run(REPO)
    run_b = server.add_run("other/repo")
    app.client(INSTALLATION).get_run(REPO, run_a["id"])
    app.client(8).get_run("other/repo", run_b["id"])
    app.client(8).get_run("other/repo", run_b["id"])
    assert server.mints == {INSTALLATION: 1, 8: 1}


def test_a_revoked_token_is_reminted_once_and_the_call_retried(
    server: FakeGitHubServer, client: InstallationClient
) -> None:
    run = server.add_run(REPO)
    client.get_run(REPO, run["id"])
    server.revoke_all_tokens()
    assert client.get_run(REPO, run["id"]).id == run["id"]
    assert server.mints[INSTALLATION] == 2
    assert (
        server.requests_to(r"/actions/runs/\d+$")[-1].headers["authorization"]
        == f"token {server.issued_tokens[-1]}"
    )


def test_a_second_401_is_not_retried_and_the_error_holds_no_token(
    server: FakeGitHubServer, client: InstallationClient
) -> None:
    run = server.add_run(REPO)
    client.get_run(REPO, run["id"])
    # A buggy upstream that echoes the credential back must not get it into our exception either.
    echo = {"message": f"Bad credentials: {server.issued_tokens[0]}"}
    server.fail_next(r"/actions/runs/\d+$", 401, body=echo, times=5)
    with pytest.raises(GitHubError) as caught:
        client.get_run(REPO, run["id"])
    assert caught.value.status == 401
    assert server.mints[INSTALLATION] == 2
    assert api_requests(server, r"/actions/runs/\d+$") == 3
    text = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert server.issued_tokens
    for token in server.issued_tokens:
        assert token not in text
        assert token[:24] not in text


# ---- resilience -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers"),
    [(400, {}), (404, {}), (410, {}), (422, {}), (451, {}), (403, {})],
)
def test_client_errors_are_not_retried(
    server: FakeGitHubServer,
    client: InstallationClient,
    sleeps: list[float],
    status: int,
    headers: dict[str, str],
) -> None:
    run = server.add_run(REPO)
    server.fail_next(r"/actions/runs/\d+$", status, headers=headers, times=3)
    with pytest.raises(GitHubError) as caught:
        client.get_run(REPO, run["id"])
    assert caught.value.status == status
    assert api_requests(server, r"/actions/runs/\d+$") == 1
    assert sleeps == []


def test_server_errors_are_retried_with_growing_waits(
    server: FakeGitHubServer, client: InstallationClient, sleeps: list[float]
) -> None:
    run = server.add_run(REPO)
    server.fail_next(r"/actions/runs/\d+$", 500, times=2)
    assert client.get_run(REPO, run["id"]).id == run["id"]
    assert sleeps == [1.0, 2.0]
    assert api_requests(server, r"/actions/runs/\d+$") == 3


def test_429_waits_for_retry_after(
    server: FakeGitHubServer, client: InstallationClient, sleeps: list[float]
) -> None:
    run = server.add_run(REPO)
    server.fail_next(r"/actions/runs/\d+$", 429, headers={"retry-after": "7"})
    assert client.get_run(REPO, run["id"]).id == run["id"]
    assert sleeps == [7.0]


def test_primary_rate_limit_waits_until_the_reset(
    server: FakeGitHubServer, client: InstallationClient, sleeps: list[float], clock: FakeClock
) -> None:
    run = server.add_run(REPO)
    reset = int(clock()) + 30
    server.fail_next(
        r"/actions/runs/\d+$", 403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
    )
    assert client.get_run(REPO, run["id"]).id == run["id"]
    assert sleeps == [31.0]


def test_a_reset_too_far_away_fails_fast_as_rate_limited(
    server: FakeGitHubServer, client: InstallationClient, sleeps: list[float], clock: FakeClock
) -> None:
    run = server.add_run(REPO)
    reset = int(clock()) + 3000
    server.fail_next(
        r"/actions/runs/\d+$", 403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
    )
    with pytest.raises(RateLimited) as caught:
        client.get_run(REPO, run["id"])
    assert caught.value.rate_limited and caught.value.reset_at == reset + 1
    assert sleeps == []

    server.fail_next(r"/actions/runs/\d+$", 429, headers={"retry-after": "1200"})
    with pytest.raises(RateLimited) as later:
        client.get_run(REPO, run["id"])
    assert later.value.reset_at == clock() + 1200


def test_secondary_rate_limit_waits_a_minute_then_backs_off_and_gives_up(
    server: FakeGitHubServer, client: InstallationClient, sleeps: list[float]
) -> None:
    run = server.add_run(REPO)
    body = {"message": SECONDARY_RATE_LIMIT_MESSAGE}
    server.fail_next(r"/actions/runs/\d+$", 403, body=body, times=2)
    assert client.get_run(REPO, run["id"]).id == run["id"]
    assert sleeps == [60.0, 120.0]

    sleeps.clear()
    server.fail_next(r"/actions/runs/\d+$", 403, body=body, times=50)
    with pytest.raises(GitHubError) as caught:
        client.get_run(REPO, run["id"])
    # GitHub did not say when it lifts: an ordinary failure, retried like any other.
    assert caught.value.rate_limited and not isinstance(caught.value, RateLimited)
    assert sleeps == [60.0, 120.0, 240.0, 480.0]


def test_content_writes_are_not_repeated_after_a_server_error(
    server: FakeGitHubServer, client: InstallationClient, sleeps: list[float]
) -> None:
    server.add_issue(REPO, "existing")
    server.fail_next(r"/issues/1/comments$", 502, method="POST")
    with pytest.raises(GitHubError):
        client.add_issue_comment(REPO, 1, "hello")
    assert api_requests(server, r"/issues/1/comments$", "POST") == 1
    assert sleeps == []


def test_content_writes_are_retried_after_a_rate_limit(
    server: FakeGitHubServer, client: InstallationClient, sleeps: list[float]
) -> None:
    server.add_issue(REPO, "existing")
    server.fail_next(r"/issues/1/comments$", 429, headers={"retry-after": "3"}, method="POST")
    comment = client.add_issue_comment(REPO, 1, "hello")
    assert comment.body == "hello"
    assert sleeps == [3.0]
    assert len(server.repo(REPO).comments) == 1


def test_content_writes_are_spaced(server: FakeGitHubServer, keys: tuple[str, str], clock: FakeClock) -> None:
    waits: list[float] = []
    spaced = GitHubApp(
        APP_ID, keys[0], base_url=server.api_url, clock=clock, sleep=waits.append, write_interval=1.0
    )
    client = spaced.client(INSTALLATION)
    client.create_issue(REPO, "one", "body")
    client.create_issue(REPO, "two", "body")
    client.update_issue(REPO, 1, title="renamed")
    assert waits == [1.0]
    spaced.close()


def test_write_gate_keeps_under_the_hourly_limit() -> None:
    now = [0.0]
    waits: list[float] = []
    gate = WriteGate(min_interval=1.0, per_minute=80, per_hour=3, clock=lambda: now[0], sleep=waits.append)
    for _ in range(3):
        with gate.write(creates_content=True):
            pass
        now[0] += 10
    assert gate.delay(now[0]) == pytest.approx(3600 - 30)
    assert gate.delay(3600.0) == 0.0


def test_metrics_hook_hears_every_operation_and_the_remaining_quota(
    server: FakeGitHubServer, client: InstallationClient, calls: list[ApiCall]
) -> None:
    run = server.add_run(REPO)
    client.get_run(REPO, run["id"])
    server.fail_next(r"/actions/runs/\d+$", 404)
    with pytest.raises(GitHubError):
        client.get_run(REPO, run["id"])
    assert [(c.operation, c.ok, c.status) for c in calls] == [
        ("get run", True, None),
        ("get run", False, 404),
    ]
    assert calls[0].rate_remaining == server.rate_remaining + 1


# ---- runs, jobs and logs ----------------------------------------------------------------------------


def test_get_run_reports_fork_and_pull_requests(server: FakeGitHubServer, client: InstallationClient) -> None:
    run = server.add_run(
        REPO, head_repository="evil/fork", pull_requests=[12], run_attempt=2, event="pull_request"
    )
    got = client.get_run(REPO, run["id"])
    assert (got.head_repository, got.repository, got.from_fork) == ("evil/fork", REPO, True)
    assert (got.pull_requests, got.run_attempt, got.conclusion, got.event) == (
        (12,),
        2,
        "failure",
        "pull_request",
    )


def test_list_failed_jobs_per_attempt(server: FakeGitHubServer, client: InstallationClient) -> None:
    run = server.add_run(REPO, run_attempt=2)
    server.add_job(REPO, run["id"], name="lint", conclusion="failure", attempt=1)
    server.add_job(REPO, run["id"], name="lint", conclusion="success", attempt=2)
    server.add_job(REPO, run["id"], name="test", conclusion="timed_out", attempt=2)
    server.add_job(REPO, run["id"], name="docs", conclusion="skipped", attempt=2)
    latest = client.list_failed_jobs(REPO, run["id"])
    assert [(j.name, j.conclusion, j.run_attempt) for j in latest] == [("test", "timed_out", 2)]
    first = client.list_failed_jobs(REPO, run["id"], attempt=1)
    assert [(j.name, j.run_attempt) for j in first] == [("lint", 1)]
    assert [s.name for s in first[0].failed_steps] == ["Run tests"]


def test_list_jobs_follows_pagination(server: FakeGitHubServer, client: InstallationClient) -> None:
    run = server.add_run(REPO)
    for index in range(130):
        server.add_job(REPO, run["id"], name=f"shard-{index}")
    assert len(client.list_jobs(REPO, run["id"])) == 130
    assert api_requests(server, r"/jobs$") == 2


def test_last_successful_run_on_the_branch_before_the_failure(
    server: FakeGitHubServer, client: InstallationClient, clock: FakeClock
) -> None:
    good = server.add_run(REPO, conclusion="success", created_at=clock() - 300)
    server.add_run(REPO, conclusion="success", head_branch="other", created_at=clock() - 200)
    server.add_run(REPO, conclusion="failure", created_at=clock() - 100)
    failed = server.add_run(REPO, conclusion="failure", created_at=clock() - 50)
    server.add_run(REPO, conclusion="success", created_at=clock())
    found = client.last_successful_run(REPO, good["workflow_id"], "main", before_run_id=failed["id"])
    assert found is not None and found.id == good["id"]
    assert client.last_successful_run(REPO, good["workflow_id"], "main", before_run_id=good["id"]) is None


def test_a_fork_run_on_a_branch_of_the_same_name_is_not_the_last_green_run(
    server: FakeGitHubServer, client: InstallationClient, clock: FakeClock
) -> None:
    good = server.add_run(REPO, conclusion="success", created_at=clock() - 300)
    fork = server.add_run(
        REPO,
        conclusion="success",
        event="pull_request",
        head_repository="mallory/octo-repo",
        created_at=clock() - 200,
    )
    failed = server.add_run(REPO, conclusion="failure", created_at=clock() - 100)
    assert fork["head_branch"] == "main" and fork["id"] > good["id"]
    found = client.last_successful_run(REPO, good["workflow_id"], "main", before_run_id=failed["id"])
    assert found is not None and found.id == good["id"]
    assert found.head_repository == REPO


def test_download_job_log_follows_the_redirect_without_the_token(
    server: FakeGitHubServer, client: InstallationClient
) -> None:
    run = server.add_run(REPO)
    job = server.add_job(REPO, run["id"], log="one\ntwo\nboom\n")
    download = client.download_job_log(REPO, job["id"])
    try:
        assert download.path.read_bytes() == b"one\ntwo\nboom\n"
        assert (download.size, download.truncated) == (13, False)
    finally:
        download.path.unlink()
    blob_requests = server.requests_to(r"^/_blobs/")
    assert len(blob_requests) == 1
    assert "authorization" not in blob_requests[0].headers


def test_an_expired_log_url_is_requested_again_once(
    server: FakeGitHubServer, client: InstallationClient
) -> None:
    run = server.add_run(REPO)
    job = server.add_job(REPO, run["id"], log="the log\n")
    server.fail_next(r"^/_blobs/", 403)
    download = client.download_job_log(REPO, job["id"])
    assert download.path.read_bytes() == b"the log\n"
    download.path.unlink()
    assert api_requests(server, r"/actions/jobs/\d+/logs$") == 2

    server.log_url_ttl = 0
    with pytest.raises(GitHubError, match="expired"):
        client.download_job_log(REPO, job["id"])
    assert api_requests(server, r"/actions/jobs/\d+/logs$") == 4


def test_log_download_remints_a_revoked_token_once(
    server: FakeGitHubServer, client: InstallationClient
) -> None:
    run = server.add_run(REPO)
    job = server.add_job(REPO, run["id"], log="after re-mint\n")
    client.get_run(REPO, run["id"])
    server.revoke_all_tokens()
    download = client.download_job_log(REPO, job["id"])
    assert download.path.read_bytes() == b"after re-mint\n"
    download.path.unlink()
    assert server.mints[INSTALLATION] == 2


def test_a_log_download_that_fails_midway_leaves_no_temp_file(
    server: FakeGitHubServer, client: InstallationClient, tmp_path: Path
) -> None:
    run = server.add_run(REPO)
    job = server.add_job(REPO, run["id"], log="x")
    server.fail_next(r"^/_blobs/", 500, times=10)
    with pytest.raises(GitHubError) as caught:
        client.download_job_log(REPO, job["id"], directory=tmp_path)
    assert caught.value.status == 500
    assert list(tmp_path.iterdir()) == []


def test_a_big_log_stops_at_the_cap(server: FakeGitHubServer, client: InstallationClient) -> None:
    run = server.add_run(REPO)
    big = b"".join(b"line %07d of a long and noisy log\n" % i for i in range(120_000))
    job = server.add_job(REPO, run["id"], log=big)
    download = client.download_job_log(REPO, job["id"], max_bytes=1_000_000)
    try:
        assert download.truncated
        assert download.size == 1_000_000
        assert download.path.read_bytes() == big[:1_000_000]
    finally:
        download.path.unlink()


def test_run_logs_archive_download(server: FakeGitHubServer, client: InstallationClient) -> None:
    run = server.add_run(REPO)
    server.add_job(REPO, run["id"], log="job log\n")
    download = client.download_run_logs(REPO, run["id"])
    try:
        assert download.path.read_bytes()[:2] == b"PK"
    finally:
        download.path.unlink()


def test_enterprise_base_url_with_api_v3_prefix(keys: tuple[str, str], clock: FakeClock) -> None:
    with FakeGitHubServer(app_id=APP_ID, public_key_pem=keys[1], clock=clock, api_prefix="/api/v3") as ghe:
        ghe.add_installation(INSTALLATION)
        ghe.add_repo(REPO, INSTALLATION)
        run = ghe.add_run(REPO)
        job = ghe.add_job(REPO, run["id"], log="enterprise\n")
        enterprise = GitHubApp(APP_ID, keys[0], base_url=f"{ghe.url}/api/v3", clock=clock)
        client = enterprise.client(INSTALLATION)
        assert client.get_run(REPO, run["id"]).id == run["id"]
        download = client.download_job_log(REPO, job["id"])
        assert download.path.read_bytes() == b"enterprise\n"
        download.path.unlink()
        assert all(r.path.startswith(("/api/v3/", "/_blobs/")) for r in ghe.requests)
        enterprise.close()


# ---- repository content --------------------------------------------------------------------------------


def test_get_file_reads_text_and_refuses_the_rest(
    server: FakeGitHubServer, client: InstallationClient
) -> None:
    server.set_file(REPO, ".mendbot.yml", "enabled: true\n")
    server.set_file(REPO, ".mendbot.yml", "enabled: false\n", ref="feature")
    server.set_file(REPO, "big.txt", "x" * 5000)
    server.set_file(REPO, "logo.png", b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert client.get_default_branch_file(REPO, ".mendbot.yml") == "enabled: true\n"
    assert client.get_file(REPO, ".mendbot.yml", ref="feature") == "enabled: false\n"
    assert client.get_file(REPO, "missing.yml", ref="main") is None
    assert client.get_file(REPO, "big.txt", ref="main", max_bytes=1000) is None
    assert client.get_file(REPO, "logo.png", ref="main") is None


def test_recent_commits_have_subjects_and_files(server: FakeGitHubServer, client: InstallationClient) -> None:
    server.add_commit(REPO, "Oldest", files=["old.py"])
    middle = server.add_commit(REPO, "Bump pytest\n\nBecause.", files=["requirements.txt"])
    server.add_commit(REPO, "Newest", files=["new.py"])
    commits = client.recent_commits(REPO, middle["sha"], n=5)
    assert [(c.subject, c.files) for c in commits] == [
        ("Bump pytest", ("requirements.txt",)),
        ("Oldest", ("old.py",)),
    ]
    assert len(client.recent_commits(REPO, "main", n=2)) == 2


# ---- issues, comments, labels ----------------------------------------------------------------------------


def test_find_issue_by_hidden_marker(server: FakeGitHubServer, client: InstallationClient) -> None:
    marker = "<!-- mendbot:fingerprint:3f2a9c -->"
    server.add_issue(REPO, "unrelated", body="mendbot fingerprint 3f2a9c mentioned in prose", user=BOT)
    server.add_issue(REPO, "old", body=f"done\n{marker}", state="closed", user=BOT)
    target = server.add_issue(
        REPO, "CI: pytest fails", body=f"Diagnosis\n{marker}", labels=["mendbot"], user=BOT
    )
    found = client.find_issue_by_marker(REPO, marker, author=BOT)
    assert found is not None and found.number == target["number"]
    assert found.labels == ("mendbot",) and found.author == BOT
    assert client.find_issue_by_marker(REPO, "<!-- mendbot:fingerprint:nothing -->", author=BOT) is None
    [search] = server.requests_to(r"^/search/issues$")[-1:]
    assert "author:app/mendbot" in search.query["q"][0]


def test_find_issue_scans_labelled_issues_when_search_lags(
    server: FakeGitHubServer, client: InstallationClient
) -> None:
    marker = "<!-- mendbot:fingerprint:fresh -->"
    target = server.add_issue(REPO, "new", body=marker, labels=["mendbot"], user=BOT)
    empty = {"total_count": 0, "incomplete_results": False, "items": [], "search_type": "lexical"}
    server.fail_next(r"^/search/issues$", 200, body=empty, times=2)
    assert client.find_issue_by_marker(REPO, marker, author=BOT) is None
    found = client.find_issue_by_marker(REPO, marker, author=BOT, label="mendbot")
    assert found is not None and found.number == target["number"]


@pytest.mark.parametrize("search", ["exact", "ignores author", "lags"])
def test_an_issue_someone_else_planted_the_marker_in_is_never_found(
    server: FakeGitHubServer, client: InstallationClient, search: str
) -> None:
    marker = "<!-- mendbot:fingerprint:3f2a9c -->"
    ours = server.add_issue(REPO, "CI: pytest fails", body=marker, labels=["mendbot"], user=BOT)
    # Newer, so search and the labelled listing both meet them before ours.
    lookalike = server.add_issue(REPO, "bot lookalike", body=marker, labels=["mendbot"], user="mendbot")
    planted = server.add_issue(REPO, "pwned", body=f"click here\n{marker}", labels=["mendbot"], user="mallory")
    if search != "exact":
        items = [] if search == "lags" else [planted, lookalike, ours]
        body = {"total_count": len(items), "incomplete_results": False, "items": items}
        server.fail_next(r"^/search/issues$", 200, body=body, times=1)
    found = client.find_issue_by_marker(REPO, marker, author=BOT, label="mendbot")
    assert found is not None and found.number == ours["number"] and found.author == BOT


def test_issue_and_comment_round_trip(server: FakeGitHubServer, client: InstallationClient) -> None:
    issue = client.create_issue(REPO, "CI broken", "first body", labels=["mendbot", "ci"])
    assert (issue.title, issue.labels, issue.state) == ("CI broken", ("mendbot", "ci"), "open")
    updated = client.update_issue(REPO, issue.number, body="second body", state="closed")
    assert (updated.body, updated.state) == ("second body", "closed")
    comment = client.add_issue_comment(REPO, issue.number, "a diagnosis")
    edited = client.edit_comment(REPO, comment.id, "a better diagnosis")
    assert edited.body == "a better diagnosis"
    assert [c.body for c in client.list_issue_comments(REPO, issue.number)] == ["a better diagnosis"]
    assert server.repo(REPO).issues[issue.number]["body"] == "second body"


def test_ensure_labels_creates_only_missing_ones(
    server: FakeGitHubServer, client: InstallationClient
) -> None:
    server.add_label(REPO, "mendbot")
    created = client.ensure_labels(REPO, [LabelSpec("mendbot"), LabelSpec("flaky", "#ff0000", "Flaky test")])
    assert created == ["flaky"]
    assert server.repo(REPO).labels["flaky"]["color"] == "ff0000"
    assert client.ensure_labels(REPO, [LabelSpec("flaky")]) == []


# ---- checks -----------------------------------------------------------------------------------------------


def test_check_run_annotations_go_in_batches_of_50(
    server: FakeGitHubServer, client: InstallationClient
) -> None:
    annotations = [Annotation(f"src/f{i}.py", i + 1, i + 1, "failure", f"problem {i}") for i in range(120)]
    check = client.create_check_run(
        REPO, "a" * 40, "mendbot", "Diagnosis", "summary " * 10_000, annotations=annotations
    )
    assert check.annotations == 120
    posts = server.requests_to(r"/check-runs$", "POST")
    patches = server.requests_to(r"/check-runs/\d+$", "PATCH")
    assert [len(r.json()["output"]["annotations"]) for r in posts + patches] == [50, 50, 20]
    stored = server.annotations(REPO, check.id)
    assert [a["message"] for a in stored] == [f"problem {i}" for i in range(120)]
    assert len(posts[0].json()["output"]["summary"]) <= 65535


# ---- people and pull requests ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "maintain", "write", "triage", "read", "none"])
def test_get_permission_returns_the_role(
    server: FakeGitHubServer, client: InstallationClient, role: str
) -> None:
    server.set_role(REPO, "someone", role)
    assert client.get_permission(REPO, "someone") == role


def test_get_permission_of_an_unknown_user_is_none(client: InstallationClient) -> None:
    assert client.get_permission(REPO, "ghost-account") == "none"


def test_pull_requests(server: FakeGitHubServer, client: InstallationClient) -> None:
    pull = server.add_pull(REPO, head_ref="fix/ci", head_repo="evil/fork", number=9)
    got = client.get_pull_request(REPO, 9)
    assert (got.head_ref, got.head_sha, got.head_repository) == ("fix/ci", pull["head"]["sha"], "evil/fork")
    found = client.pull_requests_for_branch(REPO, "evil", "fix/ci")
    assert [p.number for p in found] == [9]


# ---- async callers ---------------------------------------------------------------------------------


def test_run_blocking_keeps_the_event_loop_free() -> None:
    ticks: list[float] = []

    def blocking_call(seconds: float) -> float:
        time.sleep(seconds)
        return time.monotonic()

    async def ticker() -> None:
        for _ in range(5):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> float:
        task = asyncio.create_task(ticker())
        finished = await run_blocking(blocking_call, 0.2)
        await task
        return finished

    finished = asyncio.run(main())
    # Had the call blocked the loop, no tick after the first could happen before it finished.
    assert sum(tick < finished for tick in ticks) == 5
