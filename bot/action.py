"""`mendbot action`: diagnose a workflow run's failed jobs inside GitHub Actions; job summary, outputs, PR comment."""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bot.adapters.github import TOKEN_INSTALLATION_ID, GitHubError, InstallationClient, TokenAccess
from bot.adapters.store import Store, StoreUnavailable
from bot.core import templates
from bot.core.excerpt import DEFAULT_BUDGET, Excerpter
from bot.core.logs import LogError, read_log
from bot.core.models import Diagnosis
from bot.core.render import render_markdown
from bot.diagnosers import OfflineDiagnoser
from bot.executor import Executor, KeyedLocks
from bot.plan import Report, RunInfo, StickyComment
from bot.policy.repo_config import CONFIG_PATH, LoadedConfig, parse_repo_config
from bot.ports import Diagnoser, DiagnosisResult, FailureFacts
from bot.services import PULL_REQUEST_EVENTS, Options, Services, run_info_from_api
from bot.settings import SettingsError, load_settings

# The inputs action.yml declares; the runner passes each as INPUT_<NAME> with the name upper-cased.
INPUTS = (
    "github-token",
    "run-id",
    "log-path",
    "budget",
    "anthropic-api-key",
    "comment",
    "comment-author",
    "fail-on-error",
)
OUTPUTS = ("category", "severity", "fingerprint", "summary", "source")
DEFAULT_API_URL = "https://api.github.com"
# The account GITHUB_TOKEN posts as; only its own earlier comment is ever edited.
ACTIONS_BOT = "github-actions[bot]"
MIN_BUDGET = 64
TRUE_WORDS = frozenset({"true", "True", "TRUE"})
FALSE_WORDS = frozenset({"false", "False", "FALSE", ""})
_REPOSITORY_RE = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")



class ActionError(Exception):
    """Something the user must fix. The message is one line and never holds a credential."""


@dataclass(frozen=True)
class ActionInputs:
    """What the workflow asked for, read once from the Actions environment."""

    repository: str
    api_url: str
    token: str = field(repr=False)
    run_id: int | None
    current_run_id: int | None
    log_path: Path | None
    budget: int
    anthropic_key: str | None = field(repr=False)
    comment: bool
    comment_author: str
    event: dict[str, Any] = field(repr=False)
    summary_path: Path | None
    output_path: Path | None

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(secret for secret in (self.token, self.anthropic_key) if secret)


@dataclass(frozen=True)
class Outcome:
    """What the Action found: the Markdown for the job summary and the primary diagnosis, if any."""

    markdown: str
    result: DiagnosisResult | None = None
    commented: tuple[str, ...] = ()

    @property
    def diagnosis(self) -> Diagnosis | None:
        return self.result.diagnosis if self.result else None

    def outputs(self) -> dict[str, str]:
        if self.diagnosis is None:
            return {}
        diagnosis = self.diagnosis
        return {
            "category": str(diagnosis.category),
            "severity": str(diagnosis.severity),
            "fingerprint": diagnosis.fingerprint,
            "summary": diagnosis.summary,
            "source": diagnosis.source,
        }


# ---- reading the environment ------------------------------------------------------------------------


def input_value(env: Mapping[str, str], name: str) -> str:
    """An input as the runner passes it: INPUT_<NAME>, hyphens kept; the underscore spelling also works."""
    upper = name.upper()
    value = env.get(f"INPUT_{upper}")
    if value is None:
        value = env.get(f"INPUT_{upper.replace('-', '_')}", "")
    return value.strip()


def parse_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = input_value(env, name)
    if not value:
        return default
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ActionError(f"input {name} must be true or false, not {value!r}")


def read_inputs(env: Mapping[str, str]) -> ActionInputs:
    """Validate everything up front, so a mistake is one clear line before any work is done."""
    log_path = Path(input_value(env, "log-path")) if input_value(env, "log-path") else None
    if log_path is not None and "GITHUB_WORKSPACE" in env and not log_path.is_absolute():
        log_path = Path(env["GITHUB_WORKSPACE"]) / log_path
    repository = env.get("GITHUB_REPOSITORY", "").strip()
    token = input_value(env, "github-token")
    event_name = env.get("GITHUB_EVENT_NAME", "").strip()
    event = _event(env.get("GITHUB_EVENT_PATH", "").strip())
    current_run_id = _run_id(env.get("GITHUB_RUN_ID", ""), "GITHUB_RUN_ID")
    run_id: int | None = None
    if log_path is None:
        if not repository:
            raise ActionError("GITHUB_REPOSITORY is not set: run this inside GitHub Actions, or give log-path")
        if not _REPOSITORY_RE.fullmatch(repository):
            raise ActionError(f"GITHUB_REPOSITORY must look like owner/name, not {repository!r}")
        if not token:
            raise ActionError("the github-token input is empty: pass ${{ github.token }} or a token")
        run_id = _run_id(input_value(env, "run-id"), "run-id") or _triggering_run(event_name, event)
        run_id = run_id or current_run_id
        if run_id is None:
            raise ActionError("no run to diagnose: set the run-id input, or run inside GitHub Actions")
    api_url = env.get("GITHUB_API_URL", "").strip() or DEFAULT_API_URL
    if not api_url.startswith(("http://", "https://")):
        raise ActionError(f"GITHUB_API_URL must start with http:// or https://, not {api_url!r}")
    return ActionInputs(
        repository=repository,
        api_url=api_url.rstrip("/"),
        token=token,
        run_id=run_id,
        current_run_id=current_run_id,
        log_path=log_path,
        budget=_budget(input_value(env, "budget")),
        anthropic_key=input_value(env, "anthropic-api-key") or None,
        comment=parse_bool(env, "comment", default=False),
        comment_author=input_value(env, "comment-author") or ACTIONS_BOT,
        event=event,
        summary_path=_file_path(env, "GITHUB_STEP_SUMMARY"),
        output_path=_file_path(env, "GITHUB_OUTPUT"),
    )


def _event(path: str) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ActionError(f"GITHUB_EVENT_PATH: cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ActionError(f"GITHUB_EVENT_PATH: {path} is not a JSON event payload") from None
    return data if isinstance(data, dict) else {}


def _run_id(value: str, name: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    if not value.isdigit() or int(value) <= 0:
        raise ActionError(f"{name} must be a workflow run id (a positive number), not {value!r}")
    return int(value)


def _triggering_run(event_name: str, event: dict[str, Any]) -> int | None:
    """In a workflow_run workflow, the run that triggered it is the one that failed."""
    if event_name != "workflow_run":
        return None
    run_id = (event.get("workflow_run") or {}).get("id")
    return int(run_id) if isinstance(run_id, int) and run_id > 0 else None


def _budget(value: str) -> int:
    if not value:
        return DEFAULT_BUDGET
    if not value.isdigit() or int(value) < MIN_BUDGET:
        raise ActionError(f"input budget must be a number of bytes, at least {MIN_BUDGET}, not {value!r}")
    return int(value)


def _file_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "").strip()
    return Path(value) if value else None


# ---- diagnosing -------------------------------------------------------------------------------------


@contextmanager
def scratch_store() -> Iterator[Store]:
    """A SQLite store for this one run: the side-effect ledger and the model's spending records."""
    with tempfile.TemporaryDirectory(prefix="mendbot-action-") as scratch:
        store = Store(f"sqlite:///{Path(scratch) / 'state.db'}")
        try:
            store.migrate()
            yield store
        finally:
            store.close()


@contextmanager
def chosen_diagnoser(inputs: ActionInputs, store: Store) -> Iterator[Diagnoser]:
    """Claude through the App's own wiring when an Anthropic key is given, else the rules."""
    if inputs.anthropic_key is None:
        yield OfflineDiagnoser()
        return
    from bot.wiring import build_diagnoser, model_client

    # The other model settings (model name, caps, API root) come from MENDBOT_* variables, as for the App.
    settings = load_settings().model_copy(update={"anthropic_api_key": SecretStr(inputs.anthropic_key)})
    with model_client(settings) as client:
        yield build_diagnoser(settings, store, client=client)


def diagnose_log(inputs: ActionInputs, diagnoser: Diagnoser, now: datetime) -> Outcome:
    """log-path mode: one local log, read the way `mendbot diagnose` reads it; no network."""
    assert inputs.log_path is not None
    path = inputs.log_path
    if not path.is_file():
        raise ActionError(f"log-path: no such file: {path}")
    excerpter = Excerpter(inputs.budget)
    try:
        with path.open("rb") as stream:
            for line in read_log(stream):
                excerpter.feed(line)
    except (LogError, OSError) as exc:
        raise ActionError(f"log-path: {path}: {exc}") from None
    excerpt = excerpter.finish()
    if not excerpt.lines:
        raise ActionError(f"log-path: {path} is empty; there is nothing to diagnose")
    result = diagnoser.diagnose(FailureFacts(repository=inputs.repository or "local", excerpt=excerpt), now)
    return Outcome(render_markdown(result.diagnosis, excerpt, usage=result.usage_for_footer()), result)


@dataclass(frozen=True)
class RunDiagnosis:
    """Run mode's findings: the run, the report on its failed jobs (None: none failed) and the repo config."""

    run: RunInfo
    report: Report | None
    loaded: LoadedConfig

    def outcome(self) -> Outcome:
        if self.report is None:
            return Outcome(templates.ACTION_NO_FAILED_JOBS.format(run_id=self.run.run_id, attempt=self.run.attempt))
        return Outcome(self.report.markdown(), self.report.primary.result)


def diagnose_run(
    inputs: ActionInputs,
    github: TokenAccess,
    store: Store,
    diagnoser: Diagnoser,
    clock: Callable[[], datetime],
    say: Callable[[str], None],
) -> RunDiagnosis:
    """Run mode: the App's own pipeline (Services.diagnose_run) over the run's failed jobs."""
    assert inputs.run_id is not None
    client = github.client()
    run = run_info_from_api(client.get_run(inputs.repository, inputs.run_id), inputs.repository, TOKEN_INSTALLATION_ID)
    say(f"mendbot: diagnosing run {run.run_id} attempt {run.attempt} of {run.repository}")
    loaded = _repo_config(client, run.repository, say)
    options = Options(bot_login=inputs.comment_author, excerpt_budget=inputs.budget)
    services = Services(store, github, diagnoser, options, clock)
    return RunDiagnosis(run, services.diagnose_run(client, run, loaded), loaded)


def _repo_config(client: InstallationClient, repository: str, say: Callable[[str], None]) -> LoadedConfig:
    """The repository's .github/mendbot.yml, for its rules; without contents access, the defaults."""
    try:
        return parse_repo_config(client.get_default_branch_file(repository, CONFIG_PATH))
    except GitHubError as exc:
        say(f"mendbot: using the default rules: {CONFIG_PATH} could not be read ({exc.status})")
        return parse_repo_config(None)


def pull_requests_of(inputs: ActionInputs, client: InstallationClient, run: RunInfo) -> tuple[int, ...]:
    """Open pull requests whose head is the run's commit: the ones a comment about this run belongs on."""
    candidates = list(run.pull_requests)
    pull = inputs.event.get("pull_request") or {}
    if not candidates and run.run_id == inputs.current_run_id and isinstance(pull.get("number"), int):
        candidates.append(pull["number"])
    if not candidates and run.event in PULL_REQUEST_EVENTS and run.from_fork and run.head_branch:
        # GitHub lists no pull requests on runs from forks; look them up by the head branch.
        found = client.pull_requests_for_branch(run.repository, run.head_owner, run.head_branch)
        return tuple(found_pull.number for found_pull in found if found_pull.head_sha == run.head_sha)
    # A run can list pull requests of other repositories that share the branch, or that moved on since.
    pulls = [client.get_pull_request(run.repository, number) for number in dict.fromkeys(candidates)]
    return tuple(found.number for found in pulls if found.state == "open" and found.head_sha == run.head_sha)


def comment(
    inputs: ActionInputs,
    client: InstallationClient,
    store: Store,
    clock: Callable[[], datetime],
    run: RunInfo,
    report: Report,
    loaded: LoadedConfig,
) -> tuple[str, ...]:
    """The sticky comment on each pull request of the run, edited in place on later failures."""
    pulls = pull_requests_of(inputs, client, run)
    if not pulls:
        return ()
    executor = Executor(
        client,
        store,
        clock=clock,
        delivery_id=f"action-{run.run_id}.{run.attempt}",
        config=loaded.config,
        bot_login=inputs.comment_author,
        locks=KeyedLocks(),
    )
    done = []
    for number in pulls:
        step = StickyComment(run.repository, number, run.workflow_id, report)
        try:
            result = executor.run([step])[0]
        except GitHubError as exc:
            raise ActionError(templates.ACTION_COMMENT_REFUSED.format(number=number, reason=exc)) from None
        done.append(f"#{number} {result.action}")
    return tuple(done)


# ---- writing the results ----------------------------------------------------------------------------


def format_outputs(outputs: Mapping[str, str]) -> str:
    """GITHUB_OUTPUT lines: name=value, or a heredoc with a fresh delimiter when the value spans lines."""
    lines = []
    for name, value in outputs.items():
        if "\n" in value or "\r" in value:
            delimiter = f"ghadelimiter_{uuid.uuid4()}"
            lines += [f"{name}<<{delimiter}", value, delimiter]
        else:
            lines.append(f"{name}={value}")
    return "".join(line + "\n" for line in lines)


def append(path: Path | None, text: str, what: str) -> None:
    if path is None or not text:
        return
    try:
        with path.open("a", encoding="utf-8") as sink:
            sink.write(text)
    except OSError as exc:
        raise ActionError(f"cannot write the {what} to {path}: {exc.strerror}") from None


def escape_command(text: str) -> str:
    """Escape a workflow command's message the way the runner unescapes it."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def mask(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """One masked line, fit for a workflow command."""
    return " ".join(mask(text, secrets).split())


def run(env: Mapping[str, str], say: Callable[[str], None] = print, clock: Callable[[], datetime] | None = None) -> int:
    """The whole Action; returns the exit status. Every problem becomes one `::error::` line, never a traceback."""
    now = clock or (lambda: datetime.now(UTC))
    secrets = tuple(
        value for value in (input_value(env, "github-token"), input_value(env, "anthropic-api-key")) if value
    )
    try:
        fail_on_error = parse_bool(env, "fail-on-error", default=False)
    except ActionError as exc:
        say(f"::error title=Mendbot::{escape_command(str(exc))}")
        return 1
    try:
        inputs = read_inputs(env)
        outcome = act(inputs, now, say)
    except ActionError as exc:
        say(f"::error title=Mendbot::{escape_command(scrub(str(exc), secrets))}")
        return 1 if fail_on_error else 0
    except Exception as exc:  # the Action must end with one readable line, whatever broke
        reason = scrub(f"{type(exc).__name__}: {exc}", secrets)
        say(f"::error title=Mendbot::{escape_command('mendbot failed unexpectedly: ' + reason)}")
        return 1 if fail_on_error else 0
    diagnosis = outcome.diagnosis
    if diagnosis is not None:
        # Never start a line with log text: the runner reads lines that start with :: as commands.
        say(f"mendbot: [{diagnosis.severity}] {diagnosis.category}: {scrub(diagnosis.summary, secrets)}")
        say(f"mendbot: fingerprint {diagnosis.fingerprint}, diagnosed by {_source(outcome, inputs)}")
    for done in outcome.commented:
        say(f"mendbot: comment {done}")
    return 0


def act(inputs: ActionInputs, now: Callable[[], datetime], say: Callable[[str], None]) -> Outcome:
    """Diagnose, write the job summary and outputs, then comment: a refused comment leaves the summary written."""
    try:
        with scratch_store() as store, chosen_diagnoser(inputs, store) as diagnoser:
            if inputs.log_path is not None:
                outcome = diagnose_log(inputs, diagnoser, now())
                publish(inputs, outcome)
                return outcome
            try:
                github = TokenAccess(inputs.token, inputs.api_url, user_agent="mendbot-action")
            except ValueError as exc:
                raise ActionError(str(exc)) from None
            with github:
                try:
                    found = diagnose_run(inputs, github, store, diagnoser, now, say)
                except GitHubError as exc:
                    hint = " (is github-token valid for this repository?)" if exc.status == 401 else ""
                    raise ActionError(f"{exc}{hint}") from None
                outcome = found.outcome()
                publish(inputs, outcome)
                if not inputs.comment or found.report is None:
                    return outcome
                done = comment(inputs, github.client(), store, now, found.run, found.report, found.loaded)
                return Outcome(outcome.markdown, outcome.result, done)
    except (StoreUnavailable, SettingsError) as exc:
        raise ActionError(str(exc)) from None


def publish(inputs: ActionInputs, outcome: Outcome) -> None:
    """Append the job summary and the outputs, with our own credentials masked should a log have echoed them."""
    markdown = mask(outcome.markdown, inputs.secrets)
    outputs = {name: mask(value, inputs.secrets) for name, value in outcome.outputs().items()}
    append(inputs.summary_path, markdown.rstrip("\n") + "\n", "job summary")
    append(inputs.output_path, format_outputs(outputs), "outputs")


def _source(outcome: Outcome, inputs: ActionInputs) -> str:
    result = outcome.result
    if result is not None and result.model:
        return f"the model ({result.model})"
    return "the rules" if inputs.anthropic_key else "the rules (no anthropic-api-key)"
