"""Tests for the fake GitHub server: responses match GitHub's OpenAPI shapes; auth and faults behave."""

from __future__ import annotations

import base64
import functools
import gzip
import io
import json
import ssl
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.app_support import FakeClock, rsa_keys
from tests.fakes.github_server import FakeGitHubServer

APP_ID = "4242"
REPO = "octo-org/octo-repo"
INSTALLATION = 7
# Building a TLS context is slow and these clients only speak plain HTTP to 127.0.0.1: build it once.
TLS = ssl.create_default_context()


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return rsa_keys()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(verify=TLS) as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(keys: tuple[str, str], clock: FakeClock) -> Iterator[FakeGitHubServer]:
    with FakeGitHubServer(app_id=APP_ID, public_key_pem=keys[1], clock=clock, log_url_ttl=60) as fake:
        fake.add_installation(INSTALLATION)
        fake.add_repo(REPO, INSTALLATION)
        yield fake


def app_token(private_key: str, now: float, **claims: Any) -> str:
    payload = {"iat": int(now - 60), "exp": int(now + 540), "iss": APP_ID, **claims}
    return jwt.encode(payload, private_key, algorithm="RS256")


@pytest.fixture
def token(http: httpx.Client, server: FakeGitHubServer, keys: tuple[str, str], clock: FakeClock) -> str:
    reply = http.post(
        f"{server.api_url}/app/installations/{INSTALLATION}/access_tokens",
        headers={"Authorization": f"Bearer {app_token(keys[0], clock())}"},
    )
    assert reply.status_code == 201
    return str(reply.json()["token"])


@pytest.fixture
def api(server: FakeGitHubServer, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.api_url, headers={"Authorization": f"token {token}"}, verify=TLS
    ) as client:
        yield client


def _nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 says `nullable: true`; JSON Schema says the type may be null."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_to_json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        if "type" in node and not {"allOf", "anyOf", "oneOf", "$ref"} & node.keys():
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _load_spec(path: Path) -> tuple[dict[str, Any], Registry]:
    with gzip.open(path) as handle:
        spec = _nullable_to_json_schema(json.load(handle))
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return spec, Registry().with_resource("urn:github", resource)


@pytest.fixture
def openapi_check(github_fixtures: Path) -> Callable[[str, str, int, Any], None]:
    spec, registry = _load_spec(github_fixtures / "openapi" / "github-rest-subset.json.gz")

    def check(path: str, method: str, status: int, body: Any) -> None:
        response = spec["paths"][path][method]["responses"][str(status)]
        schema = response["content"]["application/json"]["schema"]
        # Local refs point into the whole spec, which the registry holds under urn:github.
        rooted = json.loads(json.dumps(schema).replace('"#/components', '"urn:github#/components'))
        validator = Draft202012Validator(rooted, registry=registry)
        errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(body)]
        assert not errors, f"{method.upper()} {path} -> {status}: {errors[:5]}"

    return check


def seed(server: FakeGitHubServer) -> dict[str, Any]:
    run = server.add_run(REPO, pull_requests=[3], head_branch="feature")
    job = server.add_job(REPO, run["id"], log="line one\nboom\n")
    server.add_commit(REPO, "Old change", files=["a.py"])
    commit = server.add_commit(REPO, "Break the build\n\nLong body", files=["src/app.py", "README.md"])
    server.set_file(REPO, ".mendbot.yml", "enabled: true\n")
    issue = server.add_issue(REPO, "CI broken", body="<!-- mendbot:fp:abc -->\nDetails", labels=["mendbot"])
    server.add_pull(REPO, head_ref="feature", number=3)
    server.set_role(REPO, "alice", "maintain")
    return {"run": run, "job": job, "commit": commit, "issue": issue}


def test_responses_match_the_openapi_schemas(
    http: httpx.Client,
    server: FakeGitHubServer,
    api: httpx.Client,
    keys: tuple[str, str],
    clock: FakeClock,
    openapi_check: Callable[[str, str, int, Any], None],
) -> None:
    facts = seed(server)
    run_id, job_id, sha = facts["run"]["id"], facts["job"]["id"], facts["commit"]["sha"]
    repo_path = "/repos/{owner}/{repo}"
    reads = [
        (repo_path, f"/repos/{REPO}"),
        (repo_path + "/actions/runs/{run_id}", f"/repos/{REPO}/actions/runs/{run_id}"),
        (repo_path + "/actions/runs/{run_id}/jobs", f"/repos/{REPO}/actions/runs/{run_id}/jobs"),
        (repo_path + "/actions/runs", f"/repos/{REPO}/actions/runs?branch=feature"),
        (repo_path + "/actions/workflows/{workflow_id}/runs", f"/repos/{REPO}/actions/workflows/ci.yml/runs"),
        (repo_path + "/actions/jobs/{job_id}", f"/repos/{REPO}/actions/jobs/{job_id}"),
        (repo_path + "/contents/{path}", f"/repos/{REPO}/contents/.mendbot.yml"),
        (repo_path + "/commits", f"/repos/{REPO}/commits?sha=main&per_page=5"),
        (repo_path + "/commits/{ref}", f"/repos/{REPO}/commits/{sha}"),
        (repo_path + "/issues", f"/repos/{REPO}/issues"),
        (repo_path + "/issues/{issue_number}", f"/repos/{REPO}/issues/1"),
        (repo_path + "/labels", f"/repos/{REPO}/labels"),
        (repo_path + "/pulls/{pull_number}", f"/repos/{REPO}/pulls/3"),
        (repo_path + "/pulls", f"/repos/{REPO}/pulls?head=octo-org:feature"),
        (repo_path + "/collaborators/{username}/permission", f"/repos/{REPO}/collaborators/alice/permission"),
        ("/search/issues", f'/search/issues?q=repo:{REPO} is:issue in:body "mendbot:fp:abc"'),
        ("/rate_limit", "/rate_limit"),
    ]
    for template, url in reads:
        reply = api.get(url)
        assert reply.status_code == 200, url
        openapi_check(template, "get", 200, reply.json())

    comment = api.post(f"/repos/{REPO}/issues/1/comments", json={"body": "hello"})
    openapi_check(repo_path + "/issues/{issue_number}/comments", "post", 201, comment.json())
    edited = api.patch(f"/repos/{REPO}/issues/comments/{comment.json()['id']}", json={"body": "edited"})
    openapi_check(repo_path + "/issues/comments/{comment_id}", "patch", 200, edited.json())
    listed = api.get(f"/repos/{REPO}/issues/1/comments")
    openapi_check(repo_path + "/issues/{issue_number}/comments", "get", 200, listed.json())
    created = api.post(f"/repos/{REPO}/issues", json={"title": "t", "body": "b", "labels": ["ci"]})
    openapi_check(repo_path + "/issues", "post", 201, created.json())
    patched = api.patch(f"/repos/{REPO}/issues/1", json={"state": "closed"})
    openapi_check(repo_path + "/issues/{issue_number}", "patch", 200, patched.json())
    labels = api.post(f"/repos/{REPO}/issues/1/labels", json={"labels": ["flaky"]})
    openapi_check(repo_path + "/issues/{issue_number}/labels", "post", 200, labels.json())
    label = api.post(f"/repos/{REPO}/labels", json={"name": "new", "color": "ff0000"})
    openapi_check(repo_path + "/labels", "post", 201, label.json())
    output = {
        "title": "t",
        "summary": "s",
        "annotations": [
            {"path": "a.py", "start_line": 1, "end_line": 1, "annotation_level": "failure", "message": "m"}
        ],
    }
    check = api.post(f"/repos/{REPO}/check-runs", json={"name": "mendbot", "head_sha": sha, "output": output})
    openapi_check(repo_path + "/check-runs", "post", 201, check.json())
    check_patch = api.patch(f"/repos/{REPO}/check-runs/{check.json()['id']}", json={"conclusion": "failure"})
    openapi_check(repo_path + "/check-runs/{check_run_id}", "patch", 200, check_patch.json())
    check_list = api.get(f"/repos/{REPO}/commits/{sha}/check-runs")
    openapi_check(repo_path + "/commits/{ref}/check-runs", "get", 200, check_list.json())

    bearer = {"Authorization": f"Bearer {app_token(keys[0], clock())}"}
    app = http.get(f"{server.api_url}/app", headers=bearer)
    openapi_check("/app", "get", 200, app.json())
    installation = http.get(f"{server.api_url}/repos/{REPO}/installation", headers=bearer)
    openapi_check(repo_path + "/installation", "get", 200, installation.json())
    minted = http.post(f"{server.api_url}/app/installations/{INSTALLATION}/access_tokens", headers=bearer)
    openapi_check("/app/installations/{installation_id}/access_tokens", "post", 201, minted.json())


def test_job_log_redirect_expires_after_its_ttl(
    http: httpx.Client, server: FakeGitHubServer, api: httpx.Client, clock: FakeClock
) -> None:
    facts = seed(server)
    reply = api.get(f"/repos/{REPO}/actions/jobs/{facts['job']['id']}/logs")
    assert reply.status_code == 302
    location = reply.headers["location"]
    assert http.get(location).content == b"line one\nboom\n"
    clock.now += 61
    expired = http.get(location)
    assert expired.status_code == 403
    assert b"AuthenticationFailed" in expired.content
    fresh = api.get(f"/repos/{REPO}/actions/jobs/{facts['job']['id']}/logs").headers["location"]
    assert fresh != location
    assert http.get(fresh).status_code == 200


def test_job_log_redirect_can_be_single_use(
    http: httpx.Client, server: FakeGitHubServer, api: httpx.Client
) -> None:
    facts = seed(server)
    server.log_url_max_uses = 1
    location = api.get(f"/repos/{REPO}/actions/jobs/{facts['job']['id']}/logs").headers["location"]
    assert http.get(location).status_code == 200
    assert http.get(location).status_code == 403


def test_a_tampered_signature_is_refused(
    http: httpx.Client, server: FakeGitHubServer, api: httpx.Client
) -> None:
    facts = seed(server)
    location = api.get(f"/repos/{REPO}/actions/jobs/{facts['job']['id']}/logs").headers["location"]
    assert http.get(location.replace("sig=", "sig=x")).status_code == 403


def test_run_logs_redirect_to_a_zip_of_job_and_step_logs(
    http: httpx.Client, server: FakeGitHubServer, api: httpx.Client
) -> None:
    facts = seed(server)
    reply = api.get(f"/repos/{REPO}/actions/runs/{facts['run']['id']}/logs")
    assert reply.status_code == 302
    archive = zipfile.ZipFile(io.BytesIO(http.get(reply.headers["location"]).content))
    assert archive.read("0_build.txt") == b"line one\nboom\n"
    assert "build/2_Run tests.txt" in archive.namelist()


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"iss": "999"}, "'Issuer' claim"),
        ({"exp": None}, "too far in the future"),
        ({"iat": None}, "'Issued at' claim"),
    ],
)
def test_app_jwt_rules_are_enforced(
    http: httpx.Client,
    server: FakeGitHubServer,
    keys: tuple[str, str],
    clock: FakeClock,
    claims: dict[str, Any],
    message: str,
) -> None:
    now = clock()
    defaults = {"exp": int(now + 700), "iat": int(now + 30)}
    claims = {key: defaults[key] if value is None else value for key, value in claims.items()}
    reply = http.post(
        f"{server.api_url}/app/installations/{INSTALLATION}/access_tokens",
        headers={"Authorization": f"Bearer {app_token(keys[0], now, **claims)}"},
    )
    assert reply.status_code == 401
    assert message in reply.json()["message"]
    assert server.mints[INSTALLATION] == 0


def test_a_jwt_signed_by_another_key_is_refused(
    http: httpx.Client, server: FakeGitHubServer, clock: FakeClock
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    reply = http.post(
        f"{server.api_url}/app/installations/{INSTALLATION}/access_tokens",
        headers={"Authorization": f"Bearer {app_token(pem, clock())}"},
    )
    assert reply.status_code == 401


def test_tokens_are_long_sometimes_dotted_and_expire_in_an_hour(
    http: httpx.Client, server: FakeGitHubServer, keys: tuple[str, str], clock: FakeClock
) -> None:
    bearer = {"Authorization": f"Bearer {app_token(keys[0], clock())}"}
    url = f"{server.api_url}/app/installations/{INSTALLATION}/access_tokens"
    minted = [http.post(url, headers=bearer).json() for _ in range(2)]
    assert all(len(m["token"]) > 100 for m in minted)
    assert any("." in m["token"] for m in minted)
    assert minted[0]["expires_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock() + 3600))
    assert server.mints[INSTALLATION] == 2
    # An installation token is not accepted on /app, which needs the JWT.
    assert (
        http.get(
            f"{server.api_url}/app", headers={"Authorization": f"token {minted[0]['token']}"}
        ).status_code
        == 401
    )


def test_revoked_and_expired_tokens_get_401(
    http: httpx.Client, server: FakeGitHubServer, api: httpx.Client, token: str, clock: FakeClock
) -> None:
    assert api.get(f"/repos/{REPO}").status_code == 200
    server.revoke_token(token)
    reply = api.get(f"/repos/{REPO}")
    assert reply.status_code == 401
    assert reply.json()["message"] == "Bad credentials"
    assert http.get(f"{server.api_url}/repos/{REPO}").status_code == 401


def test_tokens_expire_after_an_hour(server: FakeGitHubServer, api: httpx.Client, clock: FakeClock) -> None:
    assert api.get(f"/repos/{REPO}").status_code == 200
    clock.now += 3600
    assert api.get(f"/repos/{REPO}").status_code == 401


def test_a_token_sees_only_its_installation_repositories(server: FakeGitHubServer, api: httpx.Client) -> None:
    server.add_installation(8)
    server.add_repo("other/private", 8, private=True)
    assert api.get("/repos/other/private").status_code == 404


def test_fail_next_injects_faults_then_recovers(
    server: FakeGitHubServer, api: httpx.Client, clock: FakeClock
) -> None:
    server.fail_next(r"/repos/.*/issues$", 429, headers={"retry-after": "7"}, times=2)
    server.fail_next(r"/repos/", 403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "123"})
    first = api.get(f"/repos/{REPO}/issues")
    assert (first.status_code, first.headers["retry-after"]) == (429, "7")
    assert api.get(f"/repos/{REPO}/issues").status_code == 429
    limited = api.get(f"/repos/{REPO}/issues")
    assert limited.status_code == 403
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert limited.headers["x-ratelimit-reset"] == "123"
    assert limited.json()["message"].startswith("API rate limit exceeded")
    assert api.get(f"/repos/{REPO}/issues").status_code == 200
    assert len(server.requests_to(r"/issues$", "GET")) == 4


def test_every_response_carries_rate_limit_headers(server: FakeGitHubServer, api: httpx.Client) -> None:
    before = api.get(f"/repos/{REPO}")
    after = api.get(f"/repos/{REPO}/labels")
    assert int(after.headers["x-ratelimit-remaining"]) == int(before.headers["x-ratelimit-remaining"]) - 1
    assert {"x-ratelimit-limit", "x-ratelimit-reset", "x-ratelimit-used"} <= set(after.headers)


def test_pagination_follows_link_headers(server: FakeGitHubServer, api: httpx.Client) -> None:
    run = server.add_run(REPO)
    for index in range(5):
        server.add_job(REPO, run["id"], name=f"job{index}")
    first = api.get(f"/repos/{REPO}/actions/runs/{run['id']}/jobs", params={"per_page": 2})
    assert [j["name"] for j in first.json()["jobs"]] == ["job0", "job1"]
    assert first.json()["total_count"] == 5
    next_url = first.links["next"]["url"]
    second = api.get(next_url)
    assert [j["name"] for j in second.json()["jobs"]] == ["job2", "job3"]
    assert 'rel="last"' in first.headers["link"]


def test_jobs_filter_latest_and_attempts(server: FakeGitHubServer, api: httpx.Client) -> None:
    run = server.add_run(REPO, run_attempt=2)
    server.add_job(REPO, run["id"], name="old", attempt=1)
    server.add_job(REPO, run["id"], name="new", attempt=2)
    base = f"/repos/{REPO}/actions/runs/{run['id']}"
    assert [j["name"] for j in api.get(f"{base}/jobs").json()["jobs"]] == ["new"]
    assert [j["name"] for j in api.get(f"{base}/jobs?filter=all").json()["jobs"]] == ["old", "new"]
    assert [j["name"] for j in api.get(f"{base}/attempts/1/jobs").json()["jobs"]] == ["old"]


def test_search_finds_an_issue_by_hidden_marker(server: FakeGitHubServer, api: httpx.Client) -> None:
    server.add_issue(REPO, "other", body="nothing here")
    server.add_issue(REPO, "closed", body="<!-- mendbot:fp:abc -->", state="closed")
    target = server.add_issue(REPO, "target", body="text\n<!-- mendbot:fp:abc -->", labels=["mendbot"])
    query = f'repo:{REPO} is:issue is:open label:mendbot in:body "mendbot:fp:abc"'
    found = api.get("/search/issues", params={"q": query}).json()
    assert [item["number"] for item in found["items"]] == [target["number"]]
    assert (
        api.get("/search/issues", params={"q": 'repo:other/repo "mendbot:fp:abc"'}).json()["total_count"] == 0
    )


def test_check_runs_refuse_more_than_50_annotations(server: FakeGitHubServer, api: httpx.Client) -> None:
    annotation = {
        "path": "a.py",
        "start_line": 1,
        "end_line": 1,
        "annotation_level": "failure",
        "message": "m",
    }
    output = {"title": "t", "summary": "s", "annotations": [annotation] * 51}
    reply = api.post(f"/repos/{REPO}/check-runs", json={"name": "n", "head_sha": "a" * 40, "output": output})
    assert reply.status_code == 422


def test_contents_are_base64_and_missing_files_404(server: FakeGitHubServer, api: httpx.Client) -> None:
    server.set_file(REPO, "docs/a b.md", "héllo")
    server.set_file(REPO, "docs/a b.md", "other branch", ref="dev")
    main = api.get(f"/repos/{REPO}/contents/docs/a%20b.md").json()
    assert base64.b64decode(main["content"]).decode() == "héllo"
    dev = api.get(f"/repos/{REPO}/contents/docs/a%20b.md", params={"ref": "dev"}).json()
    assert base64.b64decode(dev["content"]) == b"other branch"
    assert api.get(f"/repos/{REPO}/contents/missing.txt").status_code == 404


def test_permission_reports_role_and_legacy_permission(server: FakeGitHubServer, api: httpx.Client) -> None:
    server.set_role(REPO, "tri", "triage")
    server.add_user("stranger")
    tri = api.get(f"/repos/{REPO}/collaborators/tri/permission").json()
    assert (tri["permission"], tri["role_name"]) == ("read", "triage")
    assert api.get(f"/repos/{REPO}/collaborators/stranger/permission").json()["permission"] == "read"
    assert api.get(f"/repos/{REPO}/collaborators/ghost/permission").status_code == 404
