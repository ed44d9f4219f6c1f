"""GitHub adapter: App JWT, cached installation tokens, rate-limit-aware calls and the operations we need."""

from __future__ import annotations

import base64
import re
import ssl
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from itertools import islice
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

import anyio.to_thread
import httpx
import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from github import Auth, Github, GithubException, GithubIntegration
from github.Commit import Commit
from github.ContentFile import ContentFile
from github.Issue import Issue as GhIssue
from github.IssueComment import IssueComment
from github.PaginatedList import PaginatedList
from github.Repository import Repository
from github.WorkflowJob import WorkflowJob
from github.WorkflowRun import WorkflowRun as GhWorkflowRun
from tenacity import RetryCallState, Retrying, retry_if_exception

T = TypeVar("T")

DEFAULT_API_URL = "https://api.github.com"
# GitHub allows for clock drift by accepting an iat in the past; exp may be at most 10 minutes ahead.
JWT_BACKDATE_SECONDS = 60
JWT_LIFETIME_SECONDS = 9 * 60
TOKEN_REFRESH_MARGIN_SECONDS = 5 * 60
MAX_LOG_BYTES = 100 * 1024 * 1024
MAX_FILE_BYTES = 1024 * 1024
ANNOTATIONS_PER_REQUEST = 50
CHECK_TEXT_LIMIT = 65535
FAILED_CONCLUSIONS = frozenset({"failure", "timed_out", "startup_failure"})
ROLES = ("admin", "maintain", "write", "triage", "read")
# A token handed to us belongs to no installation we know of; its cache and clients use this id.
TOKEN_INSTALLATION_ID = 0
_API_VERSION_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
_SECRET_PATTERNS = re.compile(
    r"gh[pousr]_[A-Za-z0-9_.\-]+|github_pat_[A-Za-z0-9_]+|eyJ[\w-]+\.[\w-]+\.[\w-]*"
    r"|-----BEGIN[^-]*PRIVATE KEY-----"
)


def app_jwt(app_id: str, private_key_pem: str | RSAPrivateKey, now: float) -> str:
    """The App's own credential: RS256, backdated a minute, valid for nine more.

    Takes the PEM text or, to skip the slow RSA key check on every call, the loaded key."""
    claims = {"iat": int(now) - JWT_BACKDATE_SECONDS, "exp": int(now) + JWT_LIFETIME_SECONDS, "iss": app_id}
    return jwt.encode(claims, private_key_pem, algorithm="RS256")


async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking adapter call in a worker thread so the event loop stays free."""
    return await anyio.to_thread.run_sync(fn, *args)


# ---- plain results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowRun:
    id: int
    name: str
    workflow_id: int
    head_branch: str | None
    head_sha: str
    event: str
    status: str | None
    conclusion: str | None
    run_attempt: int
    html_url: str
    repository: str
    head_repository: str | None
    actor: str | None
    pull_requests: tuple[int, ...]
    created_at: str

    @property
    def from_fork(self) -> bool:
        return self.head_repository is not None and self.head_repository != self.repository


@dataclass(frozen=True)
class JobStep:
    number: int
    name: str
    status: str | None
    conclusion: str | None


@dataclass(frozen=True)
class Job:
    id: int
    run_id: int
    run_attempt: int
    name: str
    status: str | None
    conclusion: str | None
    html_url: str
    steps: tuple[JobStep, ...]

    @property
    def failed_steps(self) -> tuple[JobStep, ...]:
        return tuple(step for step in self.steps if step.conclusion in FAILED_CONCLUSIONS)


@dataclass(frozen=True)
class LogDownload:
    """A downloaded log in a temporary file the caller owns and deletes."""

    path: Path
    size: int
    truncated: bool


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    subject: str
    author: str | None
    files: tuple[str, ...]


@dataclass(frozen=True)
class Issue:
    number: int
    title: str
    body: str
    state: str
    labels: tuple[str, ...]
    html_url: str
    author: str | None


@dataclass(frozen=True)
class Comment:
    id: int
    body: str
    author: str | None
    html_url: str


@dataclass(frozen=True)
class Annotation:
    path: str
    start_line: int
    end_line: int
    level: str  # notice, warning or failure
    message: str
    title: str | None = None

    def to_api(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "annotation_level": self.level,
            "message": self.message,
        }
        if self.title:
            data["title"] = self.title
        return data


@dataclass(frozen=True)
class CheckRun:
    id: int
    html_url: str
    annotations: int


@dataclass(frozen=True)
class LabelSpec:
    name: str
    color: str = "ededed"
    description: str = ""


@dataclass(frozen=True)
class PullRequest:
    number: int
    state: str
    draft: bool
    head_ref: str
    head_sha: str
    head_repository: str | None
    base_ref: str
    author: str | None


@dataclass(frozen=True)
class ApiCall:
    """What the metrics hook hears after every adapter operation."""

    operation: str
    ok: bool
    status: int | None
    rate_remaining: int | None


class GitHubError(Exception):
    """A GitHub operation failed. The message names the operation and status, never a credential."""

    def __init__(self, operation: str, status: int | None, detail: str, rate_limited: bool = False) -> None:
        self.operation = operation
        self.status = status
        self.detail = detail
        self.rate_limited = rate_limited
        super().__init__(f"GitHub {operation} failed ({status or 'no response'}): {detail}")


class RateLimited(GitHubError):
    """A rate limit that lifts later than one call may wait: the whole job can be run again at `reset_at`
    (a Unix time), without counting this try as a failure."""

    def __init__(self, operation: str, status: int | None, detail: str, reset_at: float) -> None:
        super().__init__(operation, status, detail, rate_limited=True)
        self.reset_at = reset_at


# ---- resilience -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying one call. Waits double after each failure of the same kind."""

    attempts: int = 5
    server_error_wait: float = 1.0
    secondary_rate_limit_wait: float = 60.0
    max_wait: float = 15 * 60.0

    def longest_call(self, timeout: float) -> float:
        """Seconds one call can take before it returns or gives up: every try times out, every wait is capped."""
        return self.attempts * timeout + (self.attempts - 1) * self.max_wait


@dataclass(frozen=True)
class _Failure:
    status: int | None
    headers: dict[str, str]
    message: str


def _failure(exc: BaseException) -> _Failure | None:
    if isinstance(exc, GithubException):
        data = exc.data if isinstance(exc.data, dict) else {}
        headers = {str(k).lower(): str(v) for k, v in (exc.headers or {}).items()}
        return _Failure(exc.status, headers, str(data.get("message") or ""))
    if isinstance(exc, requests.RequestException | httpx.TransportError):
        return _Failure(None, {}, type(exc).__name__)
    return None


def _is_rate_limit(failure: _Failure) -> bool:
    if failure.status == 429:
        return True
    return failure.status == 403 and (
        failure.headers.get("x-ratelimit-remaining") == "0"
        or "retry-after" in failure.headers
        or "rate limit" in failure.message.lower()
    )


class _Resilience:
    """Retries per SECURITY item 8, with an injectable clock and sleep so tests can check the waits."""

    def __init__(
        self, policy: RetryPolicy, clock: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.sleep = sleep

    def wait_for(self, failure: _Failure, attempt: int) -> float:
        if "retry-after" in failure.headers:
            return float(failure.headers["retry-after"])
        reset = failure.headers.get("x-ratelimit-reset")
        if failure.headers.get("x-ratelimit-remaining") == "0" and reset:
            # The reset is a whole second; waiting one more avoids waking just before it.
            return max(float(reset) - self.clock(), 0.0) + 1.0
        if _is_rate_limit(failure):
            return self.policy.secondary_rate_limit_wait * 2 ** (attempt - 1)
        return self.policy.server_error_wait * 2 ** (attempt - 1)

    def lifts_at(self, failure: _Failure) -> float | None:
        """When a rate limit lifts, as a Unix time, if GitHub said when; None for any other failure."""
        dated = "retry-after" in failure.headers or (
            failure.headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in failure.headers
        )
        if not (_is_rate_limit(failure) and dated):
            return None
        return self.clock() + self.wait_for(failure, 1)

    def run(self, fn: Callable[[], T], idempotent: bool) -> T:
        def retryable(exc: BaseException) -> bool:
            failure = _failure(exc)
            if failure is None:
                return False
            if _is_rate_limit(failure):
                return True
            # A write that died with a 5xx may have landed; repeating it could post twice.
            return idempotent and (failure.status is None or failure.status >= 500)

        def wait(state: RetryCallState) -> float:
            failure = _failure(_outcome_error(state))
            return 0.0 if failure is None else self.wait_for(failure, state.attempt_number)

        def stop(state: RetryCallState) -> bool:
            # Give up after the bounded tries, or at once when the wait would outlast the job.
            return state.attempt_number >= self.policy.attempts or wait(state) > self.policy.max_wait

        retrying = Retrying(
            retry=retry_if_exception(retryable),
            wait=wait,
            stop=stop,
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(fn)


def _outcome_error(state: RetryCallState) -> BaseException:
    assert state.outcome is not None
    error = state.outcome.exception()
    assert error is not None
    return error


class WriteGate:
    """Sends writes one at a time and spaces content-creating ones (SECURITY item 9)."""

    def __init__(
        self,
        min_interval: float,
        per_minute: int,
        per_hour: int,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.min_interval = min_interval
        self.windows = ((per_minute, 60.0), (per_hour, 3600.0))
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._created: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds until one more content-creating write stays within every limit."""
        while self._created and self._created[0] <= now - 3600.0:
            self._created.popleft()
        wait = (self._created[-1] + self.min_interval - now) if self._created else 0.0
        for limit, period in self.windows:
            recent = [t for t in self._created if t > now - period]
            if len(recent) >= limit:
                wait = max(wait, recent[-limit] + period - now)
        return max(wait, 0.0)

    @contextmanager
    def write(self, creates_content: bool) -> Iterator[None]:
        with self._lock:
            if creates_content:
                wait = self.delay(self.clock())
                if wait > 0:
                    self.sleep(wait)
                self._created.append(self.clock())
            yield


# ---- tokens -----------------------------------------------------------------------------------------


class InstallationTokens:
    """Installation tokens cached per installation until shortly before they expire."""

    def __init__(
        self,
        mint: Callable[[int], tuple[str, float]],
        clock: Callable[[], float],
        refresh_margin: float = TOKEN_REFRESH_MARGIN_SECONDS,
    ) -> None:
        self._mint = mint
        self._clock = clock
        self._margin = refresh_margin
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[str, float]] = {}

    def get(self, installation_id: int) -> str:
        with self._lock:
            cached = self._cache.get(installation_id)
            if cached is None or cached[1] - self._margin <= self._clock():
                cached = self._mint(installation_id)
                self._cache[installation_id] = cached
            return cached[0]

    def invalidate(self, installation_id: int) -> None:
        with self._lock:
            self._cache.pop(installation_id, None)

    def known(self) -> list[str]:
        with self._lock:
            return [token for token, _ in self._cache.values()]


class _ClockedAppAuth(Auth.AppAuth):
    """PyGithub's App auth, but the JWT comes from app_jwt and the injected clock."""

    def __init__(self, app_id: str, private_key: str, clock: Callable[[], float]) -> None:
        super().__init__(app_id, private_key)
        key = load_pem_private_key(private_key.encode(), password=None)
        if not isinstance(key, RSAPrivateKey):
            raise ValueError("the GitHub App private key must be an RSA key")
        self._key = key
        self._clock = clock

    def create_jwt(self, expiration: int | None = None) -> str:
        return app_jwt(str(self.app_id), self._key, self._clock())


class _InstallationAuth(Auth.Auth):
    """Asks the token cache on every request, so a re-minted token is picked up at once."""

    def __init__(self, tokens: InstallationTokens, installation_id: int) -> None:
        self._tokens = tokens
        self._installation_id = installation_id

    @property
    def token_type(self) -> str:
        return "token"

    @property
    def token(self) -> str:
        return self._tokens.get(self._installation_id)


@cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle takes a noticeable fraction of a second; one context serves every client.
    return ssl.create_default_context()


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return _SECRET_PATTERNS.sub("[REDACTED]", text)[:300]


# ---- the App ----------------------------------------------------------------------------------------


class TransportOptions(TypedDict, total=False):
    """How the App and a handed-over token talk to GitHub: clock, retries, write spacing, timeout, agent."""

    clock: Callable[[], float]
    sleep: Callable[[float], None]
    retry: RetryPolicy | None
    write_interval: float
    writes_per_minute: int
    writes_per_hour: int
    on_api_call: Callable[[ApiCall], None] | None
    timeout: int
    user_agent: str


class _Access:
    """What the App and a handed-over token share: retries, write spacing, the HTTP client and the tokens."""

    def __init__(
        self,
        mint: Callable[[int], tuple[str, float]],
        base_url: str,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        retry: RetryPolicy | None = None,
        write_interval: float = 1.0,
        writes_per_minute: int = 60,
        writes_per_hour: int = 400,
        on_api_call: Callable[[ApiCall], None] | None = None,
        timeout: int = 30,
        user_agent: str = "mendbot",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.on_api_call = on_api_call
        self.timeout = timeout
        self.user_agent = user_agent
        self.resilience = _Resilience(retry or RetryPolicy(), clock, sleep)
        self.writes = WriteGate(write_interval, writes_per_minute, writes_per_hour, clock, sleep)
        self.tokens = InstallationTokens(mint, clock)
        self.http = httpx.Client(
            timeout=timeout, headers={"User-Agent": user_agent, **_API_VERSION_HEADERS}, verify=_tls_context()
        )


class GitHubApp(_Access):
    """One GitHub App: mints and caches installation tokens and hands out per-installation clients."""

    def __init__(
        self,
        app_id: str,
        private_key: str,
        base_url: str = DEFAULT_API_URL,
        **transport: Unpack[TransportOptions],
    ) -> None:
        self.app_id = str(app_id)
        super().__init__(self._mint, base_url, **transport)
        self._app_auth = _ClockedAppAuth(self.app_id, private_key, self.clock)
        self._integration = GithubIntegration(
            auth=self._app_auth,
            base_url=self.base_url,
            timeout=self.timeout,
            user_agent=self.user_agent,
            retry=None,
            seconds_between_requests=None,
            seconds_between_writes=None,
        )
        self._clients: dict[int, InstallationClient] = {}
        self._lock = threading.Lock()

    def jwt(self) -> str:
        return self._app_auth.create_jwt()

    def _mint(self, installation_id: int) -> tuple[str, float]:
        def mint() -> tuple[str, float]:
            grant = self._integration.get_access_token(installation_id)
            return grant.token, grant.expires_at.timestamp()

        try:
            return self.resilience.run(mint, idempotent=True)
        except (GithubException, requests.RequestException) as exc:
            raise _as_error("mint installation token", exc, [], self.resilience) from None

    def installation_token(self, installation_id: int) -> str:
        """A current token, e.g. for git over HTTPS. Never log it."""
        return self.tokens.get(installation_id)

    def installation_for_repo(self, repo: str) -> int:
        owner, name = repo.split("/", 1)
        try:
            installation = self.resilience.run(
                lambda: self._integration.get_repo_installation(owner, name), idempotent=True
            )
        except (GithubException, requests.RequestException) as exc:
            raise _as_error("find installation", exc, [], self.resilience) from None
        return int(installation.id)

    def client(self, installation_id: int) -> InstallationClient:
        with self._lock:
            if installation_id not in self._clients:
                self._clients[installation_id] = InstallationClient(self, installation_id)
            return self._clients[installation_id]

    def close(self) -> None:
        self.http.close()
        self._integration.close()
        for client in self._clients.values():
            client.gh.close()


class TokenAccess(_Access):
    """A token someone handed us (the Actions GITHUB_TOKEN, a PAT) behind the App's retries and write spacing.

    There is no key to mint a new token with: after a 401 the one retry sends the same token and fails the same
    way, so a bad token ends as a GitHubError with status 401 after two requests."""

    def __init__(
        self, token: str, base_url: str = DEFAULT_API_URL, **transport: Unpack[TransportOptions]
    ) -> None:
        if not token:
            raise ValueError("the GitHub token is empty")
        super().__init__(lambda _installation: (token, float("inf")), base_url, **transport)
        # Cached from the start, so every error message is scrubbed of it even before the first call.
        self.tokens.get(TOKEN_INSTALLATION_ID)
        self._client: InstallationClient | None = None

    def client(self, installation_id: int = TOKEN_INSTALLATION_ID) -> InstallationClient:
        """The one client of this token; the installation id is ignored (the token decides what it sees)."""
        if self._client is None:
            self._client = InstallationClient(self, TOKEN_INSTALLATION_ID)
        return self._client

    def close(self) -> None:
        self.http.close()
        if self._client is not None:
            self._client.gh.close()

    def __enter__(self) -> TokenAccess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_error(
    operation: str, exc: BaseException, secrets: Iterable[str], resilience: _Resilience
) -> GitHubError:
    failure = _failure(exc) or _Failure(None, {}, type(exc).__name__)
    detail = _scrub(failure.message or "no message", secrets)
    reset_at = resilience.lifts_at(failure)
    if reset_at is not None:
        return RateLimited(operation, failure.status, detail, reset_at)
    return GitHubError(operation, failure.status, detail, rate_limited=_is_rate_limit(failure))


# ---- one installation ---------------------------------------------------------------------------------


class InstallationClient:
    """The operations Mendbot needs, for one installation, returning plain data."""

    def __init__(self, app: GitHubApp | TokenAccess, installation_id: int) -> None:
        self.app = app
        self.installation_id = installation_id
        self.gh = Github(
            auth=_InstallationAuth(app.tokens, installation_id),
            base_url=app.base_url,
            timeout=app.timeout,
            user_agent=app.user_agent,
            per_page=100,
            retry=None,
            lazy=True,
            seconds_between_requests=None,
            seconds_between_writes=None,
        )

    @property
    def longest_call(self) -> float:
        """Seconds one operation can block, retries included (a new token after a 401 aside)."""
        return self.app.resilience.policy.longest_call(self.app.timeout)

    # -- plumbing --

    def _call(self, operation: str, fn: Callable[[], T], idempotent: bool = True) -> T:
        """Run fn with retries; on a 401 mint a new token once and run it again."""
        try:
            try:
                result = self.app.resilience.run(fn, idempotent)
            except GithubException as exc:
                if exc.status != 401:
                    raise
                self.app.tokens.invalidate(self.installation_id)
                result = self.app.resilience.run(fn, idempotent)
        except (GithubException, requests.RequestException, httpx.TransportError) as exc:
            error = _as_error(operation, exc, self.app.tokens.known(), self.app.resilience)
            self._report(operation, error.status, exc)
            raise error from None
        self._report(operation, None, None)
        return result

    def _write(self, operation: str, fn: Callable[[], T], creates_content: bool) -> T:
        with self.app.writes.write(creates_content):
            return self._call(operation, fn, idempotent=not creates_content)

    def _report(self, operation: str, status: int | None, exc: BaseException | None) -> None:
        if self.app.on_api_call is None:
            return
        remaining: int | None = self.gh.requester.rate_limiting[0]
        failure = _failure(exc) if exc is not None else None
        if failure is not None and "x-ratelimit-remaining" in failure.headers:
            remaining = int(failure.headers["x-ratelimit-remaining"])
        self.app.on_api_call(
            ApiCall(
                operation,
                exc is None,
                status,
                remaining if remaining is not None and remaining >= 0 else None,
            )
        )

    def _repo(self, repo: str) -> Repository:
        return self.gh.get_repo(repo)

    # -- runs and jobs --

    def get_run(self, repo: str, run_id: int) -> WorkflowRun:
        return self._call("get run", lambda: _run(self._repo(repo).get_workflow_run(run_id).raw_data))

    def list_jobs(self, repo: str, run_id: int, attempt: int | None = None) -> list[Job]:
        """Jobs of one attempt of a run; the latest attempt when none is given."""
        gh_repo = self._repo(repo)
        if attempt is None:
            url, params = f"{gh_repo.url}/actions/runs/{run_id}/jobs", {"filter": "latest"}
        else:
            url, params = f"{gh_repo.url}/actions/runs/{run_id}/attempts/{attempt}/jobs", {}

        def fetch() -> list[Job]:
            pages = PaginatedList(WorkflowJob, gh_repo.requester, url, params, list_item="jobs")
            return [_job(job.raw_data) for job in pages]

        return self._call("list jobs", fetch)

    def list_failed_jobs(self, repo: str, run_id: int, attempt: int | None = None) -> list[Job]:
        return [job for job in self.list_jobs(repo, run_id, attempt) if job.conclusion in FAILED_CONCLUSIONS]

    def last_successful_run(
        self, repo: str, workflow_id: int | str, branch: str, before_run_id: int
    ) -> WorkflowRun | None:
        """The newest successful run of the workflow on the branch that started before the given run.

        Only runs of the repository's own branch count: the branch filter also matches pull request runs
        from forks whose branch has the same name, and their logs are whatever the fork's author wrote."""

        def find() -> WorkflowRun | None:
            runs = self._repo(repo).get_workflow(workflow_id).get_runs(branch=branch, status="success")
            run: GhWorkflowRun
            for run in islice(runs, 200):
                found = _run(run.raw_data)
                if found.id < before_run_id and (found.head_repository or "").lower() == repo.lower():
                    return found
            return None

        return self._call("find last successful run", find)

    def download_job_log(
        self, repo: str, job_id: int, max_bytes: int = MAX_LOG_BYTES, directory: Path | None = None
    ) -> LogDownload:
        return self._download(
            "download job log", f"/repos/{repo}/actions/jobs/{job_id}/logs", max_bytes, directory
        )

    def download_run_logs(
        self, repo: str, run_id: int, max_bytes: int = MAX_LOG_BYTES, directory: Path | None = None
    ) -> LogDownload:
        """The run's zip archive of job and step logs."""
        return self._download(
            "download run logs", f"/repos/{repo}/actions/runs/{run_id}/logs", max_bytes, directory
        )

    def _download(self, operation: str, path: str, max_bytes: int, directory: Path | None) -> LogDownload:
        # The redirect target is a signed URL that expires about a minute after it is issued: if it has
        # expired by the time we use it, ask the API for a fresh one, once.
        download = self._call(operation, lambda: self._fetch_redirected(path, max_bytes, directory))
        if download is None:
            download = self._call(operation, lambda: self._fetch_redirected(path, max_bytes, directory))
        if download is None:
            raise GitHubError(operation, 403, "the signed download URL expired twice")
        return download

    def _fetch_redirected(self, path: str, max_bytes: int, directory: Path | None) -> LogDownload | None:
        token = self.app.tokens.get(self.installation_id)
        headers = {"Authorization": f"token {token}"}
        with self.app.http.stream("GET", self.app.base_url + path, headers=headers) as reply:
            _raise_for_api_status(reply)
            if not reply.is_redirect:
                return _save(reply.iter_bytes(), max_bytes, directory)
            location = reply.headers["location"]
        # The signed URL carries its own authorisation; the installation token must not travel with it.
        with self.app.http.stream("GET", location) as blob:
            if blob.status_code in (401, 403, 404, 410):
                return None
            _raise_for_api_status(blob)
            return _save(blob.iter_bytes(), max_bytes, directory)

    # -- repository content --

    def get_file(
        self, repo: str, path: str, ref: str | None = None, max_bytes: int = MAX_FILE_BYTES
    ) -> str | None:
        """A text file at ref (default branch if None); None if missing, not a file, too big or binary."""

        def fetch() -> str | None:
            try:
                found = (
                    self._repo(repo).get_contents(path, ref=ref)
                    if ref
                    else self._repo(repo).get_contents(path)
                )
            except GithubException as exc:
                if exc.status == 404:
                    return None
                raise
            if not isinstance(found, ContentFile) or found.type != "file" or found.size > max_bytes:
                return None
            if found.encoding != "base64":
                return None
            try:
                return base64.b64decode(found.raw_data["content"]).decode("utf-8")
            except UnicodeDecodeError:
                return None

        return self._call("get file", fetch)

    def get_default_branch_file(self, repo: str, path: str, max_bytes: int = MAX_FILE_BYTES) -> str | None:
        # Without a ref the contents API reads the default branch, which saves fetching the repository.
        return self.get_file(repo, path, None, max_bytes)

    def recent_commits(self, repo: str, sha: str, n: int = 5) -> list[CommitInfo]:
        """The n commits up to and including sha, newest first, with the files each one changed."""

        def fetch() -> list[CommitInfo]:
            gh_repo = self._repo(repo)
            listed = PaginatedList(
                Commit, gh_repo.requester, f"{gh_repo.url}/commits", {"sha": sha, "per_page": n}
            )
            result = []
            commit: Commit
            for commit in islice(listed, n):
                full = gh_repo.get_commit(commit.sha)
                data = full.raw_data
                result.append(
                    CommitInfo(
                        sha=data["sha"],
                        subject=str(data["commit"]["message"]).split("\n", 1)[0],
                        author=(data.get("author") or {}).get("login"),
                        files=tuple(f["filename"] for f in data.get("files") or []),
                    )
                )
            return result

        return self._call("list recent commits", fetch)

    # -- issues and comments --

    def find_issue_by_marker(
        self, repo: str, marker: str, *, author: str, label: str | None = None, include_closed: bool = False
    ) -> Issue | None:
        """The issue opened by `author` whose body carries marker. Anyone can paste the marker into an issue
        of their own, so the author is part of the match. Search is fuzzy and lags, so every hit is checked,
        and with a label the labelled issues are scanned when search finds nothing."""
        state = "" if include_closed else " is:open"
        phrase = marker.replace(chr(34), " ")
        query = f'repo:{repo} is:issue{state} {_author_qualifier(author)} in:body "{phrase}"'

        def ours(found: GhIssue) -> bool:
            login = found.user.login if found.user else ""
            return login.lower() == author.lower() and marker in (found.body or "")

        def search() -> Issue | None:
            found: GhIssue
            for found in islice(self.gh.search_issues(query), 50):
                if ours(found):
                    return _issue(found)
            return None

        def scan() -> Issue | None:
            assert label is not None
            issues = self._repo(repo).get_issues(state="all" if include_closed else "open", labels=[label])
            for found in issues:
                if ours(found):
                    return _issue(found)
            return None

        # islice, not [:n]: PyGithub's slices raise IndexError on an empty result.
        hit = self._call("search issues", search)
        if hit is None and label is not None:
            hit = self._call("scan labelled issues", scan)
        return hit

    def get_issue(self, repo: str, number: int) -> Issue:
        return self._call("get issue", lambda: _issue(self._repo(repo).get_issue(number)))

    def create_issue(self, repo: str, title: str, body: str, labels: Sequence[str] = ()) -> Issue:
        return self._write(
            "create issue",
            lambda: _issue(self._repo(repo).create_issue(title=title, body=body, labels=list(labels))),
            creates_content=True,
        )

    def update_issue(
        self,
        repo: str,
        number: int,
        title: str | None = None,
        body: str | None = None,
        state: str | None = None,
        labels: Sequence[str] | None = None,
    ) -> Issue:
        changes: dict[str, Any] = {"title": title, "body": body, "state": state}
        changes = {k: v for k, v in changes.items() if v is not None}
        if labels is not None:
            changes["labels"] = list(labels)

        def update() -> Issue:
            issue = self._repo(repo).get_issue(number)
            issue.edit(**changes)
            return _issue(issue)

        return self._write("update issue", update, creates_content=False)

    def add_issue_comment(self, repo: str, number: int, body: str) -> Comment:
        return self._write(
            "add comment",
            lambda: _comment(self._repo(repo).get_issue(number).create_comment(body)),
            creates_content=True,
        )

    def edit_comment(self, repo: str, comment_id: int, body: str) -> Comment:
        def edit() -> Comment:
            gh_repo = self._repo(repo)
            comment = IssueComment(gh_repo.requester, url=f"{gh_repo.url}/issues/comments/{comment_id}")
            comment.edit(body)
            return _comment(comment)

        return self._write("edit comment", edit, creates_content=False)

    def list_issue_comments(self, repo: str, number: int) -> list[Comment]:
        return self._call(
            "list comments",
            lambda: [_comment(c) for c in self._repo(repo).get_issue(number).get_comments()],
        )

    def ensure_labels(self, repo: str, labels: Sequence[LabelSpec]) -> list[str]:
        """Create the labels that do not exist yet; returns the names created."""
        existing = self._call("list labels", lambda: {label.name for label in self._repo(repo).get_labels()})
        created = []
        for spec in labels:
            if spec.name in existing:
                continue
            try:
                self._write("create label", partial(self._create_label, repo, spec), creates_content=True)
            except GitHubError as exc:
                # Someone else created it between our listing and our write.
                if exc.status != 422:
                    raise
                continue
            created.append(spec.name)
        return created

    def _create_label(self, repo: str, spec: LabelSpec) -> None:
        self._repo(repo).create_label(spec.name, spec.color.lstrip("#"), spec.description)

    # -- checks --

    def create_check_run(
        self,
        repo: str,
        head_sha: str,
        name: str,
        title: str,
        summary: str,
        text: str = "",
        conclusion: str = "neutral",
        annotations: Sequence[Annotation] = (),
        details_url: str | None = None,
        external_id: str | None = None,
    ) -> CheckRun:
        """A completed check run; annotations go in batches of 50, the most the API takes per request."""
        batches = [
            [a.to_api() for a in annotations[start : start + ANNOTATIONS_PER_REQUEST]]
            for start in range(0, len(annotations), ANNOTATIONS_PER_REQUEST)
        ] or [[]]
        output = {"title": title, "summary": _clip(summary), "text": _clip(text)}
        extra: dict[str, Any] = {}
        if details_url:
            extra["details_url"] = details_url
        if external_id:
            extra["external_id"] = external_id

        check = self._write(
            "create check run",
            lambda: self._repo(repo).create_check_run(
                name=name,
                head_sha=head_sha,
                status="completed",
                conclusion=conclusion,
                output={**output, "annotations": batches[0]},
                **extra,
            ),
            creates_content=True,
        )
        for batch in batches[1:]:
            self._write(
                "add check run annotations",
                partial(check.edit, output={**output, "annotations": batch}),
                creates_content=False,
            )
        return CheckRun(id=check.id, html_url=check.html_url, annotations=len(annotations))

    # -- people and pull requests --

    def get_permission(self, repo: str, user: str) -> str:
        """The user's role: admin, maintain, write, triage, read or none (also for unknown users)."""

        def fetch() -> str:
            gh_repo = self._repo(repo)
            try:
                role = gh_repo.get_collaborator_role_name(user)
                if role in ROLES:
                    return role
                # A custom role: fall back to the base permission it grants.
                permission = gh_repo.get_collaborator_permission(user)
            except GithubException as exc:
                if exc.status == 404:
                    return "none"
                raise
            return permission if permission in ROLES else "none"

        return self._call("get permission", fetch)

    def get_pull_request(self, repo: str, number: int) -> PullRequest:
        return self._call("get pull request", lambda: _pull(self._repo(repo).get_pull(number).raw_data))

    def pull_requests_for_branch(
        self, repo: str, owner: str, branch: str, state: str = "open"
    ) -> list[PullRequest]:
        return self._call(
            "list pull requests",
            lambda: [
                _pull(p.raw_data) for p in self._repo(repo).get_pulls(state=state, head=f"{owner}:{branch}")
            ],
        )


# ---- mapping and helpers -----------------------------------------------------------------------------


def _raise_for_api_status(reply: httpx.Response) -> None:
    if reply.status_code < 400:
        return
    reply.read()
    try:
        data = reply.json()
    except ValueError:
        data = {"message": reply.reason_phrase}
    raise GithubException(reply.status_code, data if isinstance(data, dict) else {}, dict(reply.headers))


def _save(chunks: Iterable[bytes], max_bytes: int, directory: Path | None) -> LogDownload:
    size, truncated = 0, False
    with tempfile.NamedTemporaryFile(prefix="mendbot-log-", dir=directory, delete=False) as out:
        try:
            for chunk in chunks:
                room = max_bytes - size
                if len(chunk) > room:
                    # Stop reading here: the rest may be hundreds of megabytes, or a decompression bomb.
                    out.write(chunk[:room])
                    size += room
                    truncated = True
                    break
                out.write(chunk)
                size += len(chunk)
        except BaseException:
            Path(out.name).unlink(missing_ok=True)
            raise
    return LogDownload(Path(out.name), size, truncated)


def _clip(text: str) -> str:
    if len(text) <= CHECK_TEXT_LIMIT:
        return text
    note = "\n\n…(truncated)"
    return text[: CHECK_TEXT_LIMIT - len(note)] + note


def _author_qualifier(login: str) -> str:
    # Search names an App's bot account `app/<slug>`, not by its `<slug>[bot]` login.
    if login.lower().endswith("[bot]"):
        return f"author:app/{login[:-5]}"
    return f"author:{login}"


def _login(user: dict[str, Any] | None) -> str | None:
    return None if not user else str(user.get("login"))


def _run(data: dict[str, Any]) -> WorkflowRun:
    head_repo = data.get("head_repository") or {}
    return WorkflowRun(
        id=int(data["id"]),
        name=str(data.get("name") or ""),
        workflow_id=int(data["workflow_id"]),
        head_branch=data.get("head_branch"),
        head_sha=str(data["head_sha"]),
        event=str(data["event"]),
        status=data.get("status"),
        conclusion=data.get("conclusion"),
        run_attempt=int(data.get("run_attempt") or 1),
        html_url=str(data["html_url"]),
        repository=str((data.get("repository") or {}).get("full_name", "")),
        head_repository=head_repo.get("full_name"),
        actor=_login(data.get("actor")),
        pull_requests=tuple(int(p["number"]) for p in data.get("pull_requests") or []),
        created_at=str(data.get("created_at") or ""),
    )


def _job(data: dict[str, Any]) -> Job:
    return Job(
        id=int(data["id"]),
        run_id=int(data["run_id"]),
        run_attempt=int(data.get("run_attempt") or 1),
        name=str(data["name"]),
        status=data.get("status"),
        conclusion=data.get("conclusion"),
        html_url=str(data.get("html_url") or ""),
        steps=tuple(
            JobStep(int(s["number"]), str(s["name"]), s.get("status"), s.get("conclusion"))
            for s in data.get("steps") or []
        ),
    )


def _issue(issue: GhIssue) -> Issue:
    # Attributes, not raw_data: PyGithub updates attributes, not raw_data, after an edit.
    return Issue(
        number=issue.number,
        title=issue.title,
        body=issue.body or "",
        state=issue.state,
        labels=tuple(label.name for label in issue.labels),
        html_url=issue.html_url,
        author=issue.user.login if issue.user else None,
    )


def _comment(comment: IssueComment) -> Comment:
    return Comment(
        id=comment.id,
        body=comment.body or "",
        author=comment.user.login if comment.user else None,
        html_url=comment.html_url,
    )


def _pull(data: dict[str, Any]) -> PullRequest:
    head, base = data["head"], data["base"]
    return PullRequest(
        number=int(data["number"]),
        state=str(data["state"]),
        draft=bool(data.get("draft")),
        head_ref=str(head["ref"]),
        head_sha=str(head["sha"]),
        head_repository=(head.get("repo") or {}).get("full_name"),
        base_ref=str(base["ref"]),
        author=_login(data.get("user")),
    )
