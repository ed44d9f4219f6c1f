"""A local GitHub REST API for tests: in-memory state, real HTTP on 127.0.0.1, GitHub's own shapes."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import secrets
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import jwt

# Response templates are GitHub's own OpenAPI examples (octokit, MIT; see tests/fixtures/github/LICENSE).
TEMPLATES_PATH = Path(__file__).resolve().parent.parent / "fixtures" / "github" / "rest-examples.json"

PRIMARY_RATE_LIMIT_MESSAGE = "API rate limit exceeded for installation ID 1."
SECONDARY_RATE_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
    "If you reach out to GitHub Support for help, please include the request ID."
)
DOCS_URL = "https://docs.github.com/rest"
ROLE_TO_PERMISSION = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}
MAX_ANNOTATIONS_PER_REQUEST = 50
MAX_OUTPUT_CHARS = 65535
_REPO_URL_RE = re.compile(r'(https://api\.github\.com/repos/|https://github\.com/)[^/"{]+/[^/"{]+')


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_sha() -> str:
    return secrets.token_hex(20)


@dataclass
class RecordedRequest:
    """One request as the server saw it, for assertions."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    time: float

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Fault:
    pattern: re.Pattern[str]
    status: int
    headers: dict[str, str]
    body: Any
    times: int
    method: str | None


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


class ApiError(Exception):
    """Raised inside a handler to answer with a GitHub-style error document."""

    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


@dataclass
class Token:
    installation_id: int
    expires_at: float
    revoked: bool = False


@dataclass
class Blob:
    data: bytes
    content_type: str
    expires_at: float
    uses_left: int | None


@dataclass
class RepoState:
    full_name: str
    installation_id: int
    data: dict[str, Any]
    roles: dict[str, str] = field(default_factory=dict)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    job_logs: dict[int, bytes] = field(default_factory=dict)
    run_logs: dict[int, bytes] = field(default_factory=dict)
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    check_runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def default_branch(self) -> str:
        return str(self.data["default_branch"])


Handler = Callable[["Call"], Reply]


@dataclass
class Call:
    """A routed request: path parameters, query, parsed body and the caller's auth."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    body: Any
    installation_id: int | None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


class FakeGitHubServer:
    """GitHub's REST API for the endpoints Mendbot uses, served from memory.

    Use as a context manager; `api_url` is what a client takes as its base URL. `clock` drives token expiry,
    JWT checks, signed-URL expiry and rate-limit resets so tests can move time forward.
    """

    def __init__(
        self,
        app_id: str = "12345",
        public_key_pem: str | None = None,
        clock: Callable[[], float] = time.time,
        api_prefix: str = "",
        log_url_ttl: float = 60.0,
        log_url_max_uses: int | None = None,
    ) -> None:
        self.app_id = app_id
        self.public_key_pem = public_key_pem
        self.clock = clock
        self.api_prefix = api_prefix.rstrip("/")
        self.log_url_ttl = log_url_ttl
        self.log_url_max_uses = log_url_max_uses
        self.rate_limit = 5000
        self.rate_remaining = 5000
        self.requests: list[RecordedRequest] = []
        self.jwt_claims: list[dict[str, Any]] = []
        self.issued_tokens: list[str] = []
        self.mints: dict[int, int] = {}
        self._templates: dict[str, Any] = json.loads(TEMPLATES_PATH.read_text())
        self._tokens: dict[str, Token] = {}
        self._installations: dict[int, dict[str, Any]] = {}
        self._repos: dict[str, RepoState] = {}
        self._users: set[str] = {"octocat"}
        self._blobs: dict[str, Blob] = {}
        self._faults: list[Fault] = []
        self._ids = 1000
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self._routes = self._build_routes()

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> FakeGitHubServer:
        server = self

        class _Handler(_RequestHandler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeGitHubServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        return self.url + self.api_prefix

    # ---- seeding ---------------------------------------------------------------------------------------

    def next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def add_installation(self, installation_id: int, account: str = "octo-org") -> dict[str, Any]:
        data = self._template("installation")
        data.update(id=installation_id, app_id=int(self.app_id) if self.app_id.isdigit() else 1)
        data["account"] = self._user(account)
        data["access_tokens_url"] = f"{self.api_url}/app/installations/{installation_id}/access_tokens"
        data["suspended_at"] = None
        data["suspended_by"] = None
        self._installations[installation_id] = data
        self.mints.setdefault(installation_id, 0)
        return data

    def add_user(self, login: str) -> None:
        self._users.add(login)

    def add_repo(
        self,
        full_name: str,
        installation_id: int,
        default_branch: str = "main",
        private: bool = False,
    ) -> RepoState:
        owner, name = full_name.split("/")
        data = self._template("full-repository", full_name)
        data.update(
            id=self.next_id(),
            name=name,
            full_name=full_name,
            private=private,
            visibility="private" if private else "public",
            default_branch=default_branch,
            has_discussions=False,
            fork=False,
        )
        data["owner"] = self._user(owner)
        for key in ("template_repository", "parent", "source", "organization", "permissions"):
            data.pop(key, None)
        self._users.add(owner)
        state = RepoState(full_name=full_name, installation_id=installation_id, data=data)
        self._repos[full_name] = state
        return state

    def repo(self, full_name: str) -> RepoState:
        return self._repos[full_name]

    def set_role(self, full_name: str, login: str, role: str) -> None:
        """Give a user a repository role: admin, maintain, write, triage, read or none."""
        assert role in ROLE_TO_PERMISSION, role
        self._users.add(login)
        self._repos[full_name].roles[login] = role

    def set_file(self, full_name: str, path: str, content: str | bytes, ref: str | None = None) -> None:
        repo = self._repos[full_name]
        raw = content.encode() if isinstance(content, str) else content
        repo.files[(ref or repo.default_branch, path)] = raw

    def add_commit(
        self,
        full_name: str,
        message: str,
        files: Iterable[str] = (),
        sha: str | None = None,
        author: str = "octocat",
    ) -> dict[str, Any]:
        """Add a commit on top of the (linear) history of the repository."""
        repo = self._repos[full_name]
        sha = sha or random_sha()
        data = self._template("commit", full_name)
        parent = repo.commits[0]["sha"] if repo.commits else None
        data.update(sha=sha, node_id=f"C_{sha[:12]}")
        data["url"] = f"{self._repo_api(full_name)}/commits/{sha}"
        data["html_url"] = f"https://github.com/{full_name}/commit/{sha}"
        data["comments_url"] = f"{data['url']}/comments"
        data["commit"]["message"] = message
        data["commit"]["url"] = f"{self._repo_api(full_name)}/git/commits/{sha}"
        data["commit"]["verification"] = {
            "verified": False,
            "reason": "unsigned",
            "payload": None,
            "signature": None,
            "verified_at": None,
        }
        data["author"] = self._user(author)
        data["committer"] = self._user(author)
        data["parents"] = (
            []
            if parent is None
            else [{"sha": parent, "url": f"{self._repo_api(full_name)}/commits/{parent}"}]
        )
        changed = list(files)
        data["files"] = [self._file_change(full_name, sha, path) for path in changed]
        data["stats"] = {"additions": len(changed), "deletions": 0, "total": len(changed)}
        repo.commits.insert(0, data)
        return data

    def add_run(
        self,
        full_name: str,
        run_id: int | None = None,
        name: str = "CI",
        workflow_id: int = 161335,
        workflow_path: str = ".github/workflows/ci.yml",
        head_branch: str = "main",
        head_sha: str | None = None,
        event: str = "push",
        status: str = "completed",
        conclusion: str | None = "failure",
        run_attempt: int = 1,
        pull_requests: Iterable[int] = (),
        head_repository: str | None = None,
        actor: str = "octocat",
        created_at: float | None = None,
    ) -> dict[str, Any]:
        repo = self._repos[full_name]
        run_id = run_id or self.next_id()
        head_sha = head_sha or random_sha()
        data = self._template("workflow-run", full_name)
        api = self._repo_api(full_name)
        run_url = f"{api}/actions/runs/{run_id}"
        created = iso(created_at if created_at is not None else self.clock())
        data.update(
            id=run_id,
            name=name,
            node_id=f"WFR_{run_id}",
            workflow_id=workflow_id,
            path=workflow_path,
            head_branch=head_branch,
            head_sha=head_sha,
            event=event,
            status=status,
            conclusion=conclusion,
            run_attempt=run_attempt,
            run_number=run_id % 1000,
            display_title=f"{name} on {head_branch}",
            created_at=created,
            updated_at=created,
            run_started_at=created,
            url=run_url,
            html_url=f"https://github.com/{full_name}/actions/runs/{run_id}",
            jobs_url=f"{run_url}/jobs",
            logs_url=f"{run_url}/logs",
            cancel_url=f"{run_url}/cancel",
            rerun_url=f"{run_url}/rerun",
            artifacts_url=f"{run_url}/artifacts",
            workflow_url=f"{api}/actions/workflows/{workflow_id}",
            previous_attempt_url=f"{run_url}/attempts/{run_attempt - 1}" if run_attempt > 1 else None,
        )
        data["head_commit"]["id"] = head_sha
        data["actor"] = self._user(actor)
        data["triggering_actor"] = self._user(actor)
        data["repository"] = self._minimal_repo(full_name, repo.data["id"])
        if head_repository and head_repository != full_name:
            data["head_repository"] = self._minimal_repo(head_repository, self.next_id())
        else:
            data["head_repository"] = self._minimal_repo(full_name, repo.data["id"])
        data["head_repository_id"] = data["head_repository"]["id"]
        data["pull_requests"] = [
            self._pull_ref(full_name, number, head_branch, head_sha) for number in pull_requests
        ]
        repo.runs[run_id] = data
        return data

    def add_job(
        self,
        full_name: str,
        run_id: int,
        name: str = "build",
        conclusion: str | None = "failure",
        steps: Iterable[tuple[str, str | None]] = (("Set up job", "success"), ("Run tests", "failure")),
        log: bytes | str | None = None,
        attempt: int | None = None,
        job_id: int | None = None,
    ) -> dict[str, Any]:
        repo = self._repos[full_name]
        run = repo.runs[run_id]
        job_id = job_id or self.next_id()
        api = self._repo_api(full_name)
        now = iso(self.clock())
        data = self._template("job", full_name)
        data.update(
            id=job_id,
            node_id=f"JOB_{job_id}",
            run_id=run_id,
            run_url=run["url"],
            run_attempt=attempt or run["run_attempt"],
            head_sha=run["head_sha"],
            head_branch=run["head_branch"],
            workflow_name=run["name"],
            name=name,
            status="completed" if conclusion else "in_progress",
            conclusion=conclusion,
            created_at=now,
            started_at=now,
            completed_at=now if conclusion else None,
            url=f"{api}/actions/jobs/{job_id}",
            html_url=f"https://github.com/{full_name}/actions/runs/{run_id}/job/{job_id}",
            check_run_url=f"{api}/check-runs/{job_id}",
            labels=["ubuntu-latest"],
        )
        data["steps"] = [
            {
                "name": step_name,
                "number": number,
                "status": "completed" if step_conclusion else "in_progress",
                "conclusion": step_conclusion,
                "started_at": now,
                "completed_at": now if step_conclusion else None,
            }
            for number, (step_name, step_conclusion) in enumerate(steps, start=1)
        ]
        repo.jobs[job_id] = data
        if log is not None:
            repo.job_logs[job_id] = log.encode() if isinstance(log, str) else log
        return data

    def set_run_logs(self, full_name: str, run_id: int, archive: bytes) -> None:
        self._repos[full_name].run_logs[run_id] = archive

    def add_issue(
        self,
        full_name: str,
        title: str,
        body: str = "",
        labels: Iterable[str] = (),
        state: str = "open",
        user: str = "octocat",
    ) -> dict[str, Any]:
        with self._lock:
            return self._create_issue(self._repos[full_name], title, body, list(labels), user, state)

    def add_label(
        self, full_name: str, name: str, color: str = "ededed", description: str = ""
    ) -> dict[str, Any]:
        with self._lock:
            return self._create_label(self._repos[full_name], name, color, description)

    def add_pull(
        self,
        full_name: str,
        head_ref: str,
        head_sha: str | None = None,
        base_ref: str | None = None,
        number: int | None = None,
        head_repo: str | None = None,
        state: str = "open",
        draft: bool = False,
        user: str = "octocat",
    ) -> dict[str, Any]:
        repo = self._repos[full_name]
        number = number or self._next_number(repo)
        head_sha = head_sha or random_sha()
        api = self._repo_api(full_name)
        data = self._template("pull-request", full_name)
        data.update(
            id=self.next_id(),
            number=number,
            state=state,
            draft=draft,
            title=f"Change {head_ref}",
            url=f"{api}/pulls/{number}",
            html_url=f"https://github.com/{full_name}/pull/{number}",
            issue_url=f"{api}/issues/{number}",
            requested_teams=[],
            merged=False,
            merged_at=None,
            closed_at=None,
        )
        data["user"] = self._user(user)
        head_full = head_repo or full_name
        head_repo_data = self._template("full-repository", head_full)
        head_repo_data.update(full_name=head_full, name=head_full.split("/")[1], id=self.next_id())
        head_repo_data["owner"] = self._user(head_full.split("/")[0])
        for key in ("template_repository", "parent", "source", "organization", "permissions"):
            head_repo_data.pop(key, None)
        data["head"].update(ref=head_ref, sha=head_sha, label=f"{head_full.split('/')[0]}:{head_ref}")
        data["head"]["repo"] = repo.data if head_full == full_name else head_repo_data
        data["head"]["user"] = self._user(head_full.split("/")[0])
        base = base_ref or repo.default_branch
        data["base"].update(ref=base, sha=random_sha(), label=f"{full_name.split('/')[0]}:{base}")
        data["base"]["repo"] = repo.data
        data["base"]["user"] = self._user(full_name.split("/")[0])
        repo.pulls[number] = data
        return data

    # ---- test hooks ------------------------------------------------------------------------------------

    def fail_next(
        self,
        path_regex: str,
        status: int,
        headers: dict[str, str] | None = None,
        body: Any = None,
        times: int = 1,
        method: str | None = None,
    ) -> None:
        """Answer the next `times` matching requests with `status` instead of the real response."""
        if body is None:
            body = {"message": _default_message(status, headers or {}), "documentation_url": DOCS_URL}
        with self._lock:
            self._faults.append(
                Fault(
                    re.compile(path_regex),
                    status,
                    dict(headers or {}),
                    body,
                    times,
                    method and method.upper(),
                )
            )

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens[token].revoked = True

    def revoke_all_tokens(self) -> None:
        with self._lock:
            for token in self._tokens.values():
                token.revoked = True

    def expire_log_urls(self) -> None:
        with self._lock:
            for blob in self._blobs.values():
                blob.expires_at = float("-inf")

    def requests_to(self, path_regex: str, method: str | None = None) -> list[RecordedRequest]:
        pattern = re.compile(path_regex)
        return [
            r
            for r in list(self.requests)
            if pattern.search(r.path) and (method is None or r.method == method.upper())
        ]

    def annotations(self, full_name: str, check_run_id: int) -> list[dict[str, Any]]:
        return list(self._repos[full_name].annotations.get(check_run_id, []))

    # ---- building shapes -------------------------------------------------------------------------------

    def _template(self, name: str, full_name: str | None = None) -> dict[str, Any]:
        text = json.dumps(self._templates[name])
        if full_name:
            text = _REPO_URL_RE.sub(lambda m: m.group(1) + full_name, text)
        text = text.replace("https://api.github.com", self.api_url)
        result: dict[str, Any] = json.loads(text)
        return result

    def _repo_api(self, full_name: str) -> str:
        return f"{self.api_url}/repos/{full_name}"

    def _user(self, login: str) -> dict[str, Any]:
        data = self._template("simple-user")
        base = f"{self.api_url}/users/{login}"
        data.update(
            login=login,
            id=abs(hash(login)) % 10_000_000,
            node_id=f"U_{login}",
            url=base,
            html_url=f"https://github.com/{login}",
            type="Bot" if login.endswith("[bot]") else "User",
        )
        return data

    def _minimal_repo(self, full_name: str, repo_id: int) -> dict[str, Any]:
        data = self._template("minimal-repository", full_name)
        data.update(full_name=full_name, name=full_name.split("/")[1], id=repo_id, node_id=f"R_{repo_id}")
        data["owner"] = self._user(full_name.split("/")[0])
        return data

    def _pull_ref(self, full_name: str, number: int, head_ref: str, head_sha: str) -> dict[str, Any]:
        api = self._repo_api(full_name)
        repo_ref = {"id": self._repos[full_name].data["id"], "url": api, "name": full_name.split("/")[1]}
        return {
            "id": self.next_id(),
            "number": number,
            "url": f"{api}/pulls/{number}",
            "head": {"ref": head_ref, "sha": head_sha, "repo": repo_ref},
            "base": {"ref": self._repos[full_name].default_branch, "sha": random_sha(), "repo": repo_ref},
        }

    def _file_change(self, full_name: str, sha: str, path: str) -> dict[str, Any]:
        api = self._repo_api(full_name)
        return {
            "sha": random_sha(),
            "filename": path,
            "status": "modified",
            "additions": 1,
            "deletions": 0,
            "changes": 1,
            "blob_url": f"https://github.com/{full_name}/blob/{sha}/{path}",
            "raw_url": f"https://github.com/{full_name}/raw/{sha}/{path}",
            "contents_url": f"{api}/contents/{quote(path)}?ref={sha}",
            "patch": "@@ -1 +1 @@\n-old\n+new",
        }

    def _next_number(self, repo: RepoState) -> int:
        return max([0, *repo.issues, *repo.pulls]) + 1

    def _create_label(self, repo: RepoState, name: str, color: str, description: str) -> dict[str, Any]:
        label_id = self.next_id()
        data = {
            "id": label_id,
            "node_id": f"LA_{label_id}",
            "url": f"{self._repo_api(repo.full_name)}/labels/{quote(name)}",
            "name": name,
            "description": description,
            "color": color,
            "default": False,
        }
        repo.labels[name] = data
        return data

    def _labels_for(self, repo: RepoState, names: Iterable[str]) -> list[dict[str, Any]]:
        result = []
        for name in names:
            if name not in repo.labels:
                self._create_label(repo, name, "ededed", "")
            result.append(repo.labels[name])
        return result

    def _create_issue(
        self, repo: RepoState, title: str, body: str | None, labels: list[str], user: str, state: str = "open"
    ) -> dict[str, Any]:
        number = self._next_number(repo)
        api = self._repo_api(repo.full_name)
        now = iso(self.clock())
        data = self._template("issue", repo.full_name)
        data.update(
            id=self.next_id(),
            node_id=f"I_{number}",
            number=number,
            title=title,
            body=body,
            state=state,
            state_reason=None,
            locked=False,
            comments=0,
            created_at=now,
            updated_at=now,
            closed_at=now if state == "closed" else None,
            closed_by=None,
            assignee=None,
            assignees=[],
            milestone=None,
            pull_request=None,
            url=f"{api}/issues/{number}",
            html_url=f"https://github.com/{repo.full_name}/issues/{number}",
            comments_url=f"{api}/issues/{number}/comments",
            events_url=f"{api}/issues/{number}/events",
            labels_url=f"{api}/issues/{number}/labels{{/name}}",
            repository_url=api,
            author_association="NONE",
        )
        data.pop("pull_request")
        data["user"] = self._user(user)
        data["labels"] = self._labels_for(repo, labels)
        repo.issues[number] = data
        return data

    # ---- HTTP plumbing ---------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Reply:
        split = urlsplit(raw_path)
        path = split.path
        query = parse_qs(split.query)
        with self._lock:
            self.requests.append(RecordedRequest(method, path, query, headers, body, self.clock()))
            if path.startswith("/_blobs/"):
                # Signed URLs need no token, but they can be made to fail (e.g. look expired) on demand.
                blob_fault = self._take_fault(method, path)
                if blob_fault is not None:
                    return Reply(blob_fault.status, blob_fault.body, dict(blob_fault.headers))
                return self._serve_blob(path.removeprefix("/_blobs/"), query)
            if not path.startswith(self.api_prefix + "/"):
                return _error(404, "Not Found")
            path = path.removeprefix(self.api_prefix)
            try:
                installation_id = self._authenticate(path, headers.get("authorization", ""))
            except ApiError as exc:
                return self._finish(_error(exc.status, exc.message), counted=False)
            fault = self._take_fault(method, path)
            if fault is not None:
                reply = Reply(fault.status, fault.body, dict(fault.headers))
                return self._finish(reply, counted=True, overrides=fault.headers)
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                return self._finish(_error(400, "Problems parsing JSON"), counted=True)
            for route_method, pattern, handler in self._routes:
                match = pattern.match(path)
                if match and route_method == method:
                    params = {k: unquote(v) for k, v in match.groupdict().items()}
                    call = Call(method, path, params, query, parsed, installation_id)
                    try:
                        reply = handler(call)
                    except ApiError as exc:
                        reply = _error(exc.status, exc.message, exc.errors)
                    return self._finish(reply, counted=path != "/rate_limit")
            return self._finish(_error(404, "Not Found"), counted=True)

    def _finish(self, reply: Reply, counted: bool, overrides: dict[str, str] | None = None) -> Reply:
        if counted and self.rate_remaining > 0:
            self.rate_remaining -= 1
        rate = {
            "x-ratelimit-limit": str(self.rate_limit),
            "x-ratelimit-remaining": str(self.rate_remaining),
            "x-ratelimit-used": str(self.rate_limit - self.rate_remaining),
            "x-ratelimit-reset": str(int(self.clock()) + 3600),
            "x-ratelimit-resource": "core",
            "x-github-api-version-selected": "2022-11-28",
            "x-github-request-id": secrets.token_hex(8).upper(),
        }
        rate.update({k.lower(): v for k, v in (overrides or {}).items()})
        reply.headers = {**rate, **{k.lower(): v for k, v in reply.headers.items()}}
        return reply

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.times > 0 and fault.pattern.search(path) and fault.method in (None, method):
                fault.times -= 1
                return fault
        return None

    def _authenticate(self, path: str, authorization: str) -> int | None:
        scheme, _, credential = authorization.partition(" ")
        if not credential or scheme.lower() not in ("token", "bearer"):
            raise ApiError(401, "Requires authentication")
        if (
            path == "/app"
            or path.startswith("/app/")
            or re.fullmatch(r"/repos/[^/]+/[^/]+/installation", path)
        ):
            self._verify_app_jwt(credential)
            return None
        token = self._tokens.get(credential)
        if token is None or token.revoked or token.expires_at <= self.clock():
            raise ApiError(401, "Bad credentials")
        return token.installation_id

    def _verify_app_jwt(self, credential: str) -> None:
        if self.public_key_pem is None:
            raise ApiError(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(
                credential,
                self.public_key_pem,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False, "require": ["iat", "exp", "iss"]},
            )
        except jwt.PyJWTError:
            raise ApiError(401, "A JSON web token could not be decoded") from None
        self.jwt_claims.append(claims)
        now = self.clock()
        if str(claims["iss"]) != str(self.app_id):
            raise ApiError(
                401, "'Issuer' claim ('iss') must be an Integer or a String representing the App ID"
            )
        if claims["iat"] > now:
            raise ApiError(
                401, "'Issued at' claim ('iat') must be an Integer representing a time in the past"
            )
        if claims["exp"] <= now:
            raise ApiError(
                401, "'Expiration time' claim ('exp') must be a numeric value representing the future time"
            )
        if claims["exp"] > now + 600:
            raise ApiError(401, "'Expiration time' claim ('exp') is too far in the future")

    def _serve_blob(self, key: str, query: dict[str, list[str]]) -> Reply:
        blob = self._blobs.get(key)
        signature = (query.get("sig") or [""])[0]
        expired = blob is None or blob.expires_at <= self.clock() or blob.uses_left == 0
        if expired or not secrets.compare_digest(signature, _blob_signature(key)):
            message = (
                b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
                b"<Message>Server failed to authenticate the request. Signed expiry time has passed."
                b"</Message></Error>"
            )
            return Reply(403, raw=message, headers={"content-type": "application/xml"})
        assert blob is not None
        if blob.uses_left is not None:
            blob.uses_left -= 1
        return Reply(200, raw=blob.data, headers={"content-type": blob.content_type})

    def _signed_url(self, data: bytes, content_type: str) -> str:
        key = secrets.token_urlsafe(16)
        self._blobs[key] = Blob(data, content_type, self.clock() + self.log_url_ttl, self.log_url_max_uses)
        expires = quote(iso(self.clock() + self.log_url_ttl))
        return (
            f"{self.url}/_blobs/{key}?urlExpires={expires}&urlSigningMethod=HMACV1&sig={_blob_signature(key)}"
        )

    # ---- routes ----------------------------------------------------------------------------------------

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], Handler]]:
        repo = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
        table: list[tuple[str, str, Handler]] = [
            ("GET", r"/app", self._get_app),
            ("POST", r"/app/installations/(?P<id>\d+)/access_tokens", self._mint_token),
            ("GET", r"/rate_limit", self._rate_limit),
            ("GET", r"/search/issues", self._search_issues),
            ("GET", repo, self._get_repo),
            ("GET", repo + r"/installation", self._repo_installation),
            ("GET", repo + r"/actions/runs", self._list_runs),
            ("GET", repo + r"/actions/workflows/(?P<workflow>[^/]+)/runs", self._list_runs),
            ("GET", repo + r"/actions/runs/(?P<run>\d+)", self._get_run),
            ("GET", repo + r"/actions/runs/(?P<run>\d+)/jobs", self._list_jobs),
            ("GET", repo + r"/actions/runs/(?P<run>\d+)/attempts/(?P<attempt>\d+)/jobs", self._list_jobs),
            ("GET", repo + r"/actions/runs/(?P<run>\d+)/logs", self._run_logs),
            ("GET", repo + r"/actions/jobs/(?P<job>\d+)", self._get_job),
            ("GET", repo + r"/actions/jobs/(?P<job>\d+)/logs", self._job_logs),
            ("GET", repo + r"/contents/(?P<path>.+)", self._get_contents),
            ("GET", repo + r"/commits", self._list_commits),
            ("GET", repo + r"/commits/(?P<ref>[^/]+)", self._get_commit),
            ("GET", repo + r"/commits/(?P<ref>[^/]+)/check-runs", self._list_check_runs),
            ("GET", repo + r"/issues", self._list_issues),
            ("POST", repo + r"/issues", self._post_issue),
            ("GET", repo + r"/issues/(?P<number>\d+)", self._get_issue),
            ("PATCH", repo + r"/issues/(?P<number>\d+)", self._patch_issue),
            ("GET", repo + r"/issues/(?P<number>\d+)/comments", self._list_comments),
            ("POST", repo + r"/issues/(?P<number>\d+)/comments", self._post_comment),
            ("GET", repo + r"/issues/comments/(?P<comment>\d+)", self._get_comment),
            ("PATCH", repo + r"/issues/comments/(?P<comment>\d+)", self._patch_comment),
            ("POST", repo + r"/issues/(?P<number>\d+)/labels", self._add_issue_labels),
            ("GET", repo + r"/labels", self._list_labels),
            ("POST", repo + r"/labels", self._post_label),
            ("POST", repo + r"/check-runs", self._post_check_run),
            ("PATCH", repo + r"/check-runs/(?P<check>\d+)", self._patch_check_run),
            ("GET", repo + r"/pulls", self._list_pulls),
            ("GET", repo + r"/pulls/(?P<number>\d+)", self._get_pull),
            ("GET", repo + r"/collaborators/(?P<user>[^/]+)/permission", self._permission),
        ]
        return [(method, re.compile(pattern + "$"), handler) for method, pattern, handler in table]

    def _repo_for(self, call: Call) -> RepoState:
        full_name = f"{call.params['owner']}/{call.params['repo']}"
        repo = self._repos.get(full_name)
        # An installation token only sees the repositories of its installation; others look absent.
        if repo is None or (
            call.installation_id is not None and repo.installation_id != call.installation_id
        ):
            raise ApiError(404, "Not Found")
        return repo

    def _page(self, call: Call, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        per_page = min(int(call.arg("per_page", "30") or 30), 100)
        page = max(int(call.arg("page", "1") or 1), 1)
        last = max((len(items) + per_page - 1) // per_page, 1)
        links = []

        def link(number: int, rel: str) -> str:
            query = {k: v[0] for k, v in call.query.items()}
            query.update(page=str(number), per_page=str(per_page))
            return f'<{self.api_url}{call.path}?{urlencode(query)}>; rel="{rel}"'

        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        headers = {"link": ", ".join(links)} if links else {}
        return items[(page - 1) * per_page : page * per_page], headers

    def _get_app(self, call: Call) -> Reply:
        data = self._template("integration")
        data.update(id=int(self.app_id) if self.app_id.isdigit() else 1, slug="mendbot", name="Mendbot")
        return Reply(200, data)

    def _mint_token(self, call: Call) -> Reply:
        installation_id = int(call.params["id"])
        if installation_id not in self._installations:
            raise ApiError(404, "Not Found")
        self.mints[installation_id] += 1
        count = sum(self.mints.values())
        token = _new_token(with_dots=count % 2 == 0)
        expires_at = self.clock() + 3600
        self._tokens[token] = Token(installation_id, expires_at)
        self.issued_tokens.append(token)
        data = self._template("installation-token")
        data.update(token=token, expires_at=iso(expires_at), repository_selection="all")
        data.pop("repositories", None)
        return Reply(201, data)

    def _rate_limit(self, call: Call) -> Reply:
        data = self._template("rate-limit-overview")
        reset = int(self.clock()) + 3600
        core = {
            "limit": self.rate_limit,
            "remaining": self.rate_remaining,
            "reset": reset,
            "used": self.rate_limit - self.rate_remaining,
        }
        data["resources"]["core"] = core
        data["rate"] = dict(core)
        return Reply(200, data)

    def _get_repo(self, call: Call) -> Reply:
        return Reply(200, self._repo_for(call).data)

    def _repo_installation(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        return Reply(200, self._installations[repo.installation_id])

    def _list_runs(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        runs = sorted(repo.runs.values(), key=lambda r: (r["created_at"], r["id"]), reverse=True)
        workflow = call.params.get("workflow")
        if workflow is not None:
            runs = [r for r in runs if workflow in (str(r["workflow_id"]), r["path"].rsplit("/", 1)[-1])]
        branch, status, event = call.arg("branch"), call.arg("status"), call.arg("event")
        head_sha = call.arg("head_sha")
        runs = [
            r
            for r in runs
            if (branch is None or r["head_branch"] == branch)
            and (status is None or status in (r["status"], r["conclusion"]))
            and (event is None or r["event"] == event)
            and (head_sha is None or r["head_sha"] == head_sha)
        ]
        items, headers = self._page(call, runs)
        return Reply(200, {"total_count": len(runs), "workflow_runs": items}, headers)

    def _get_run(self, call: Call) -> Reply:
        run = self._repo_for(call).runs.get(int(call.params["run"]))
        if run is None:
            raise ApiError(404, "Not Found")
        return Reply(200, run)

    def _list_jobs(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        run = repo.runs.get(int(call.params["run"]))
        if run is None:
            raise ApiError(404, "Not Found")
        jobs = sorted((j for j in repo.jobs.values() if j["run_id"] == run["id"]), key=lambda j: j["id"])
        if "attempt" in call.params:
            jobs = [j for j in jobs if j["run_attempt"] == int(call.params["attempt"])]
        elif call.arg("filter", "latest") == "latest":
            jobs = [j for j in jobs if j["run_attempt"] == run["run_attempt"]]
        items, headers = self._page(call, jobs)
        return Reply(200, {"total_count": len(jobs), "jobs": items}, headers)

    def _get_job(self, call: Call) -> Reply:
        job = self._repo_for(call).jobs.get(int(call.params["job"]))
        if job is None:
            raise ApiError(404, "Not Found")
        return Reply(200, job)

    def _job_logs(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        log = repo.job_logs.get(int(call.params["job"]))
        if log is None:
            raise ApiError(404, "Not Found")
        return Reply(302, None, {"location": self._signed_url(log, "text/plain")})

    def _run_logs(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        run_id = int(call.params["run"])
        if run_id not in repo.runs:
            raise ApiError(404, "Not Found")
        archive = repo.run_logs.get(run_id) or self._build_run_archive(repo, repo.runs[run_id])
        return Reply(302, None, {"location": self._signed_url(archive, "application/zip")})

    def _build_run_archive(self, repo: RepoState, run: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        jobs = [
            j
            for j in repo.jobs.values()
            if j["run_id"] == run["id"] and j["run_attempt"] == run["run_attempt"]
        ]
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for index, job in enumerate(sorted(jobs, key=lambda j: j["id"])):
                log = repo.job_logs.get(job["id"], b"")
                archive.writestr(f"{index}_{job['name']}.txt", log)
                for step in job["steps"]:
                    archive.writestr(f"{job['name']}/{step['number']}_{step['name']}.txt", b"")
        return buffer.getvalue()

    def _get_contents(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        path = call.params["path"]
        ref = call.arg("ref") or repo.default_branch
        ref = self._branch_for_sha(repo, ref)
        content = repo.files.get((ref, path))
        if content is None:
            raise ApiError(404, "Not Found")
        api = self._repo_api(repo.full_name)
        data = self._template("content-file", repo.full_name)
        sha = random_sha()
        data.update(
            type="file",
            encoding="base64",
            size=len(content),
            name=path.rsplit("/", 1)[-1],
            path=path,
            content=base64.encodebytes(content).decode(),
            sha=sha,
            url=f"{api}/contents/{quote(path)}?ref={quote(ref)}",
            git_url=f"{api}/git/blobs/{sha}",
            html_url=f"https://github.com/{repo.full_name}/blob/{ref}/{path}",
            download_url=f"https://raw.githubusercontent.com/{repo.full_name}/{ref}/{path}",
        )
        data["_links"] = {"self": data["url"], "git": data["git_url"], "html": data["html_url"]}
        return Reply(200, data)

    def _branch_for_sha(self, repo: RepoState, ref: str) -> str:
        # Files are stored per branch name; a commit SHA of the linear history reads the default branch.
        if any(c["sha"] == ref for c in repo.commits) and not any(k[0] == ref for k in repo.files):
            return repo.default_branch
        return ref

    def _list_commits(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        start = call.arg("sha") or repo.default_branch
        commits = repo.commits
        shas = [c["sha"] for c in commits]
        if start in shas:
            commits = commits[shas.index(start) :]
        elif re.fullmatch(r"[0-9a-f]{40}", start):
            raise ApiError(404, "No commit found for SHA: " + start)
        listed = [{k: v for k, v in c.items() if k not in ("files", "stats")} for c in commits]
        items, headers = self._page(call, listed)
        return Reply(200, items, headers)

    def _get_commit(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        ref = call.params["ref"]
        for commit in repo.commits:
            if commit["sha"] == ref or (ref == repo.default_branch and commit is repo.commits[0]):
                return Reply(200, commit)
        raise ApiError(422, f"No commit found for SHA: {ref}")

    def _issue(self, repo: RepoState, call: Call) -> dict[str, Any]:
        issue = repo.issues.get(int(call.params["number"]))
        if issue is None:
            raise ApiError(404, "Not Found")
        return issue

    def _list_issues(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        state = call.arg("state", "open")
        wanted = [name for name in (call.arg("labels") or "").split(",") if name]
        issues = [
            i
            for i in sorted(repo.issues.values(), key=lambda i: i["number"], reverse=True)
            if state in ("all", i["state"])
            and all(name in {lb["name"] for lb in i["labels"]} for name in wanted)
        ]
        items, headers = self._page(call, issues)
        return Reply(200, items, headers)

    def _post_issue(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        body = call.body or {}
        if not body.get("title"):
            raise ApiError(
                422, "Validation Failed", [{"resource": "Issue", "field": "title", "code": "missing_field"}]
            )
        issue = self._create_issue(
            repo, body["title"], body.get("body"), list(body.get("labels") or []), "mendbot[bot]"
        )
        return Reply(201, issue)

    def _get_issue(self, call: Call) -> Reply:
        return Reply(200, self._issue(self._repo_for(call), call))

    def _patch_issue(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        issue = self._issue(repo, call)
        body = call.body or {}
        for key in ("title", "body", "state_reason"):
            if key in body:
                issue[key] = body[key]
        if "state" in body:
            if body["state"] != issue["state"]:
                # As GitHub records it: a reopening says so, and a close defaults to "completed".
                reason = "reopened" if body["state"] == "open" else "completed"
                issue["state_reason"] = body.get("state_reason") or reason
            issue["state"] = body["state"]
            issue["closed_at"] = iso(self.clock()) if body["state"] == "closed" else None
        if "labels" in body:
            issue["labels"] = self._labels_for(repo, [_label_name(x) for x in body["labels"]])
        issue["updated_at"] = iso(self.clock())
        return Reply(200, issue)

    def _list_comments(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        issue = self._issue(repo, call)
        comments = [c for c in repo.comments.values() if c["issue_url"] == issue["url"]]
        items, headers = self._page(call, sorted(comments, key=lambda c: c["id"]))
        return Reply(200, items, headers)

    def _post_comment(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        issue = self._issue(repo, call)
        text = (call.body or {}).get("body")
        if not text:
            raise ApiError(
                422,
                "Validation Failed",
                [{"resource": "IssueComment", "field": "body", "code": "missing_field"}],
            )
        comment_id = self.next_id()
        now = iso(self.clock())
        data = self._template("issue-comment", repo.full_name)
        data.update(
            id=comment_id,
            node_id=f"IC_{comment_id}",
            body=text,
            url=f"{self._repo_api(repo.full_name)}/issues/comments/{comment_id}",
            html_url=f"{issue['html_url']}#issuecomment-{comment_id}",
            issue_url=issue["url"],
            created_at=now,
            updated_at=now,
            author_association="NONE",
        )
        data["user"] = self._user("mendbot[bot]")
        repo.comments[comment_id] = data
        issue["comments"] += 1
        return Reply(201, data)

    def _comment(self, call: Call) -> tuple[RepoState, dict[str, Any]]:
        repo = self._repo_for(call)
        comment = repo.comments.get(int(call.params["comment"]))
        if comment is None:
            raise ApiError(404, "Not Found")
        return repo, comment

    def _get_comment(self, call: Call) -> Reply:
        return Reply(200, self._comment(call)[1])

    def _patch_comment(self, call: Call) -> Reply:
        _, comment = self._comment(call)
        text = (call.body or {}).get("body")
        if not text:
            raise ApiError(422, "Validation Failed")
        comment.update(body=text, updated_at=iso(self.clock()))
        return Reply(200, comment)

    def _add_issue_labels(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        issue = self._issue(repo, call)
        body = call.body
        names = body.get("labels", []) if isinstance(body, dict) else body or []
        current = [lb["name"] for lb in issue["labels"]]
        issue["labels"] = self._labels_for(
            repo, current + [_label_name(n) for n in names if _label_name(n) not in current]
        )
        return Reply(200, issue["labels"])

    def _list_labels(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        items, headers = self._page(call, list(repo.labels.values()))
        return Reply(200, items, headers)

    def _post_label(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        body = call.body or {}
        name = body.get("name")
        if not name:
            raise ApiError(
                422, "Validation Failed", [{"resource": "Label", "field": "name", "code": "missing_field"}]
            )
        if name in repo.labels:
            raise ApiError(
                422, "Validation Failed", [{"resource": "Label", "field": "name", "code": "already_exists"}]
            )
        color = str(body.get("color", "ededed")).lstrip("#")
        return Reply(201, self._create_label(repo, name, color, body.get("description") or ""))

    def _search_issues(self, call: Call) -> Reply:
        query = call.arg("q") or ""
        matches = [
            self._search_item(repo, issue)
            for repo in self._repos.values()
            if call.installation_id in (None, repo.installation_id)
            for issue in sorted(repo.issues.values(), key=lambda i: i["number"], reverse=True)
            if _search_matches(query, repo.full_name, issue)
        ]
        items, headers = self._page(call, matches)
        body = {
            "total_count": len(matches),
            "incomplete_results": False,
            "items": items,
            "search_type": "lexical",
        }
        return Reply(200, body, {**headers, "x-ratelimit-resource": "search"})

    def _search_item(self, repo: RepoState, issue: dict[str, Any]) -> dict[str, Any]:
        item = copy.deepcopy(issue)
        item["score"] = 1.0
        return item

    def _check_output(self, repo: RepoState, check_id: int, output: dict[str, Any] | None) -> dict[str, Any]:
        output = output or {}
        for key in ("summary", "text"):
            if len(output.get(key) or "") > MAX_OUTPUT_CHARS:
                raise ApiError(
                    422,
                    f"Invalid request.\n\nOnly {MAX_OUTPUT_CHARS} characters are allowed; {key} is too long.",
                )
        annotations = output.get("annotations") or []
        if len(annotations) > MAX_ANNOTATIONS_PER_REQUEST:
            raise ApiError(422, "Invalid request.\n\nOnly 50 annotations are allowed per request.")
        for annotation in annotations:
            missing = {"path", "start_line", "end_line", "annotation_level", "message"} - set(annotation)
            if missing:
                raise ApiError(422, f"Invalid request.\n\n{sorted(missing)} are required for annotations.")
        repo.annotations.setdefault(check_id, []).extend(annotations)
        return {
            "title": output.get("title"),
            "summary": output.get("summary"),
            "text": output.get("text"),
            "annotations_count": len(repo.annotations[check_id]),
            "annotations_url": f"{self._repo_api(repo.full_name)}/check-runs/{check_id}/annotations",
        }

    def _post_check_run(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        body = call.body or {}
        if not body.get("name") or not body.get("head_sha"):
            raise ApiError(422, 'Invalid request.\n\n"name", "head_sha" weren\'t supplied.')
        check_id = self.next_id()
        data = self._template("check-run", repo.full_name)
        conclusion = body.get("conclusion")
        data.update(
            id=check_id,
            node_id=f"CR_{check_id}",
            name=body["name"],
            head_sha=body["head_sha"],
            external_id=body.get("external_id", ""),
            details_url=body.get("details_url", "https://mendbot.example"),
            status="completed" if conclusion else body.get("status", "queued"),
            conclusion=conclusion,
            started_at=body.get("started_at", iso(self.clock())),
            completed_at=body.get("completed_at", iso(self.clock()) if conclusion else None),
            url=f"{self._repo_api(repo.full_name)}/check-runs/{check_id}",
            html_url=f"https://github.com/{repo.full_name}/runs/{check_id}",
            pull_requests=[],
        )
        repo.annotations[check_id] = []
        data["output"] = self._check_output(repo, check_id, body.get("output"))
        data["app"] = self._get_app(call).body
        repo.check_runs[check_id] = data
        return Reply(201, data)

    def _patch_check_run(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        check = repo.check_runs.get(int(call.params["check"]))
        if check is None:
            raise ApiError(404, "Not Found")
        body = call.body or {}
        for key in ("name", "details_url", "external_id", "status", "started_at", "completed_at"):
            if key in body:
                check[key] = body[key]
        if "conclusion" in body:
            check.update(conclusion=body["conclusion"], status="completed")
        if "output" in body:
            check["output"] = self._check_output(repo, check["id"], body["output"])
        return Reply(200, check)

    def _list_check_runs(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        runs = [c for c in repo.check_runs.values() if c["head_sha"] == call.params["ref"]]
        if call.arg("check_name"):
            runs = [c for c in runs if c["name"] == call.arg("check_name")]
        items, headers = self._page(call, runs)
        return Reply(200, {"total_count": len(runs), "check_runs": items}, headers)

    def _get_pull(self, call: Call) -> Reply:
        pull = self._repo_for(call).pulls.get(int(call.params["number"]))
        if pull is None:
            raise ApiError(404, "Not Found")
        return Reply(200, pull)

    def _list_pulls(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        state, head, base = call.arg("state", "open"), call.arg("head"), call.arg("base")
        pulls = [
            p
            for p in sorted(repo.pulls.values(), key=lambda p: p["number"], reverse=True)
            if state in ("all", p["state"])
            and (head is None or p["head"]["label"] == head)
            and (base is None or p["base"]["ref"] == base)
        ]
        simple_keys = set(self._templates["pull-request-simple"])
        listed = [{k: v for k, v in p.items() if k in simple_keys} for p in pulls]
        items, headers = self._page(call, listed)
        return Reply(200, items, headers)

    def _permission(self, call: Call) -> Reply:
        repo = self._repo_for(call)
        login = call.params["user"]
        if login not in self._users:
            raise ApiError(404, f"{login} is not a user")
        role = repo.roles.get(login, "none" if repo.data["private"] else "read")
        data = self._template("repository-collaborator-permission")
        data.update(permission=ROLE_TO_PERMISSION[role], role_name=role)
        user = self._user(login)
        user.update(
            permissions={
                "admin": role == "admin",
                "maintain": role in ("admin", "maintain"),
                "push": role in ("admin", "maintain", "write"),
                "triage": role in ("admin", "maintain", "write", "triage"),
                "pull": role != "none",
            },
            role_name=role,
        )
        data["user"] = user
        return Reply(200, data)


class _RequestHandler(BaseHTTPRequestHandler):
    fake: FakeGitHubServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, delayed ACKs add ~40 ms per request.
    disable_nagle_algorithm = True

    def _dispatch(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.fake.handle(self.command, self.path, headers, body)
        if reply.raw is not None:
            payload = reply.raw
        elif reply.body is None:
            payload = b""
        else:
            payload = json.dumps(reply.body).encode()
            reply.headers.setdefault("content-type", "application/json; charset=utf-8")
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        try:
            for chunk in _chunks(payload, 64 * 1024):
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            # A client that stops reading a large body (a size cap) just hangs up.
            self.close_connection = True

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _error(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> Reply:
    body: dict[str, Any] = {"message": message, "documentation_url": DOCS_URL, "status": str(status)}
    if errors:
        body["errors"] = errors
    return Reply(status, body)


def _default_message(status: int, headers: dict[str, str]) -> str:
    lowered = {k.lower(): v for k, v in headers.items()}
    if status in (403, 429) and lowered.get("x-ratelimit-remaining") == "0":
        return PRIMARY_RATE_LIMIT_MESSAGE
    if status in (403, 429):
        return (
            SECONDARY_RATE_LIMIT_MESSAGE
            if status == 429 or "retry-after" in lowered
            else "Resource not accessible by integration"
        )
    return {
        400: "Problems parsing JSON",
        401: "Bad credentials",
        404: "Not Found",
        410: "Gone",
        422: "Validation Failed",
        451: "Repository access blocked",
        500: "Server Error",
        502: "Server Error",
        503: "Service Unavailable",
    }.get(status, "Error")


def _new_token(with_dots: bool) -> str:
    # New-style GitHub tokens can be hundreds of characters long and carry dots; clients must not care.
    if with_dots:
        parts = [secrets.token_urlsafe(n) for n in (36, 120, 64)]
        return "ghs_" + ".".join(parts)
    return "ghs_" + secrets.token_urlsafe(96)


def _blob_signature(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()[::-1]).decode().rstrip("=")


def _label_name(label: Any) -> str:
    return str(label["name"]) if isinstance(label, dict) else str(label)


def _search_matches(query: str, full_name: str, issue: dict[str, Any]) -> bool:
    """A small subset of GitHub's issue search: qualifiers plus quoted phrases and bare words."""
    tokens = re.findall(r'(?:[\w-]+:)?"[^"]*"|\S+', query)
    fields = {"title", "body"}
    terms: list[str] = []
    labels = {lb["name"] for lb in issue["labels"]}
    for token in tokens:
        key, sep, value = token.partition(":")
        value = value.strip('"')
        if not sep or token.startswith('"'):
            terms.append(token.strip('"').lower())
            continue
        refused = (
            (key == "repo" and value.lower() != full_name.lower())
            or (key == "is" and value in ("open", "closed") and issue["state"] != value)
            or (key == "is" and value == "pr")
            or (key == "state" and issue["state"] != value)
            or (key == "label" and value not in labels)
            or (key == "author" and _search_login(value) != str((issue.get("user") or {}).get("login")).lower())
        )
        if refused:
            return False
        if key == "in":
            fields = set(value.split(","))
    haystack = " ".join(str(issue.get(name) or "") for name in fields).lower()
    return all(term in haystack for term in terms)


def _search_login(value: str) -> str:
    """The login an `author:` search qualifier names: `app/<slug>` is the App's `<slug>[bot]` account."""
    return (f"{value[4:]}[bot]" if value.startswith("app/") else value).lower()
