"""The failure pipeline: gather facts, diagnose through the port, plan, pass the gates, execute."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Protocol

from bot.adapters.github import GitHubError, InstallationClient, Job, LogDownload, WorkflowRun
from bot.adapters.store import Store
from bot.core import templates
from bot.core.excerpt import DEFAULT_BUDGET, PassingIndex
from bot.core.logs import LogError, parse_lines
from bot.core.models import Excerpt
from bot.core.prompt import CommitInfo, SourceSnippet
from bot.core.references import file_references
from bot.core.render import issue_title, neutralize, one_line, plain_text
from bot.core.scan import excerpt_stream
from bot.diagnosers import OfflineDiagnoser
from bot.executor import Done, Executor, KeyedLocks
from bot.plan import (
    Annotation,
    CheckRunStep,
    ConfigProblemIssue,
    IncidentIssue,
    IssueAlert,
    JobDiagnosis,
    NotifyProblemIssue,
    Plan,
    Report,
    RunInfo,
    Step,
    StickyComment,
    rank_jobs,
)
from bot.policy import gates
from bot.policy.repo_config import CONFIG_PATH, LoadedConfig, parse_repo_config
from bot.ports import Diagnoser, FailureFacts, Notifier, TargetCheck
from bot.routing import Outcome

log = logging.getLogger(__name__)

MAX_JOBS = 3
MAX_SOURCE_FILES = 8
MAX_SOURCE_BYTES = 200 * 1024
SNIPPET_RADIUS = 15
MAX_SNIPPETS = 12
RECENT_COMMITS = 5
MAX_GREEN_DIFF_LINES = 60
MAX_ANNOTATIONS = 20
# Runs of these events have no pull request to answer on; their failures become incident issues.
ISSUE_EVENTS = frozenset({"push", "schedule", "workflow_dispatch", "repository_dispatch", "merge_group"})
PULL_REQUEST_EVENTS = frozenset({"pull_request", "pull_request_target"})


def run_info_from_api(
    run: WorkflowRun, repository: str, installation_id: int, *, default_branch: str = "", attempt: int | None = None
) -> RunInfo:
    """RunInfo for a run read over the API rather than from a webhook payload (the Action, issue links)."""
    return RunInfo(
        repository=repository,
        installation_id=installation_id,
        run_id=run.id,
        attempt=attempt or run.run_attempt,
        workflow_id=run.workflow_id,
        workflow_name=run.name,
        workflow_path="",
        head_branch=run.head_branch,
        head_sha=run.head_sha,
        event=run.event,
        conclusion=run.conclusion,
        html_url=run.html_url,
        default_branch=default_branch,
        actor=run.actor,
        head_repository=run.head_repository,
        pull_requests=run.pull_requests,
    )

class GitHubClients(Protocol):
    def client(self, installation_id: int) -> InstallationClient: ...


@dataclass(frozen=True)
class Options:
    """The deployment settings the pipeline needs, separate from how they were read."""

    bot_login: str = "mendbot[bot]"
    dry_run: bool = False
    log_max_bytes: int = 100 * 1024 * 1024
    excerpt_budget: int = DEFAULT_BUDGET
    download_dir: Path | None = None
    # Bot logins allowed to ask for a diagnosis by label (SECURITY item 13: other bots never may).
    trigger_bots: tuple[str, ...] = ()


@dataclass
class Services:
    """Everything a handler needs, wired once by the entry point."""

    store: Store
    github: GitHubClients
    diagnoser: Diagnoser = field(default_factory=OfflineDiagnoser)
    options: Options = field(default_factory=Options)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    print_plan: Callable[[str], None] = print
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    # None: no alerts at all (the Action and the CLI); the App wires the apprise adapter.
    notifier: Notifier | None = None

    def handle_failed_run(self, run: RunInfo, delivery_id: str) -> Outcome:
        """Diagnose one failed run and post the answer where people look; IGNORED when a gate refuses."""
        handled_key = f"handled:{run.repository}:{run.run_id}.{run.attempt}"
        effect = self.store.get_effect(handled_key)
        if effect is not None and effect.completed:
            # The same failure under another delivery id: its answer is already posted.
            log.info("run %s attempt %s was already handled", run.run_id, run.attempt)
            return Outcome.IGNORED
        client = self.github.client(run.installation_id)
        loaded = parse_repo_config(client.get_default_branch_file(run.repository, CONFIG_PATH))
        decision = gates.run_gate(run, loaded.config, self.options.bot_login)
        if not decision:
            log.info(
                "not diagnosing run %s of %s: %s", run.run_id, run.repository, "; ".join(decision.reasons)
            )
            return Outcome.IGNORED
        rate = gates.RateGate(self.store, self.clock)
        dry_run = self.options.dry_run or loaded.config.dry_run
        if not dry_run:
            allowed = rate.take(
                "diagnoses", run.repository, loaded.config.rate_limits.diagnoses_per_hour,
                for_work=f"{run.repository}:{run.run_id}.{run.attempt}",
            )
            if not allowed:
                log.warning("not diagnosing run %s: %s", run.run_id, "; ".join(allowed.reasons))
                return Outcome.IGNORED
        report = self.diagnose_run(client, run, loaded)
        if report is None:
            return Outcome.IGNORED
        notify = loaded.config.notify
        checks = self.notifier.check(notify) if self.notifier is not None and notify else None
        plan = plan_steps(report, self._pull_requests(client, run), loaded, checks)
        for reason in plan.refused:
            log.info("run %s: %s", run.run_id, reason)
        if dry_run:
            for line in describe_plan(run, plan):
                self.print_plan(line)
            return Outcome.DONE
        executor = Executor(
            client,
            self.store,
            clock=self.clock,
            delivery_id=delivery_id,
            config=loaded.config,
            bot_login=self.options.bot_login,
            locks=self.locks,
            rate=rate,
            notifier=self.notifier,
        )
        results = executor.run(plan.steps)
        for result in results:
            log.info(
                "%s: %s %s %s", result.step, result.action, result.target or "", "; ".join(result.reasons)
            )
        self.store.record_effect(
            handled_key,
            kind="handled",
            repository=run.repository,
            now=self.clock(),
            target=_summary(results),
            delivery_id=delivery_id,
        )
        return Outcome.DONE

    # ---- gathering ----------------------------------------------------------------------------------

    def diagnose_run(self, client: InstallationClient, run: RunInfo, loaded: LoadedConfig) -> Report | None:
        """The diagnosis of each failed job of the run's attempt, most severe first; None if none failed."""
        failed = client.list_failed_jobs(run.repository, run.run_id, run.attempt)
        if not failed:
            log.info("run %s attempt %s has no failed jobs", run.run_id, run.attempt)
            return None
        notes: list[str] = []
        if len(failed) > MAX_JOBS:
            names = ", ".join(job.name for job in failed[MAX_JOBS:])
            notes.append(templates.SKIPPED_JOBS_NOTE.format(count=len(failed) - MAX_JOBS, names=names))
        green_jobs = self._green_jobs(client, run, notes)
        commits = self._commits(client, run, notes)
        files: dict[str, str | None] = {}
        rules = loaded.rules if loaded.config.rules else None
        jobs = []
        for job in failed[:MAX_JOBS]:
            passing = self._passing_index(client, run.repository, green_jobs.get(job.name))
            excerpt = self._excerpt(client, run.repository, job, passing, notes)
            if excerpt is None:
                continue
            sources, fetched = self._sources(client, run, excerpt, files)
            facts = FailureFacts(
                repository=run.repository,
                excerpt=excerpt,
                installation_id=run.installation_id,
                job=job.name,
                step=next((step.name for step in job.failed_steps), ""),
                workflow=run.workflow_name,
                sources=sources,
                commits=commits,
                green_diff=green_diff(excerpt, passing),
                fetched_files=fetched,
                rules=rules,
            )
            result = self.diagnoser.diagnose(facts, self.clock())
            jobs.append(JobDiagnosis(job.name, job.html_url, excerpt, result, fetched))
        if not jobs:
            return None
        return Report(run, rank_jobs(jobs), tuple(notes))

    def _download(self, client: InstallationClient, repository: str, job_id: int) -> LogDownload:
        return client.download_job_log(
            repository, job_id, self.options.log_max_bytes, self.options.download_dir
        )

    def _excerpt(
        self,
        client: InstallationClient,
        repository: str,
        job: Job,
        passing: PassingIndex | None,
        notes: list[str],
    ) -> Excerpt | None:
        download = self._download(client, repository, job.id)
        try:
            if download.truncated:
                notes.append(templates.LOG_TRUNCATED_NOTE.format(job=job.name, limit=download.size))
            with download.path.open("rb") as stream:
                excerpt = excerpt_stream(stream, self.options.excerpt_budget, passing, job=job.name).finish()
        except LogError as exc:
            notes.append(templates.LOG_UNREADABLE_NOTE.format(job=job.name, reason=exc))
            return None
        finally:
            download.path.unlink(missing_ok=True)
        # An empty excerpt is still diagnosed: saying that the log explains nothing beats silence.
        return excerpt

    def _green_jobs(self, client: InstallationClient, run: RunInfo, notes: list[str]) -> dict[str, Job]:
        """The jobs of the last successful run of the same workflow on the same branch, by name."""
        if not run.head_branch:
            return {}
        try:
            green = client.last_successful_run(run.repository, run.workflow_id, run.head_branch, run.run_id)
            if green is None:
                return {}
            return {job.name: job for job in client.list_jobs(run.repository, green.id)}
        except GitHubError as exc:
            log.warning("could not find the last green run of %s: %s", run.workflow_name, exc)
            return {}

    def _passing_index(
        self, client: InstallationClient, repository: str, job: Job | None
    ) -> PassingIndex | None:
        if job is None or job.conclusion != "success":
            return None
        try:
            download = self._download(client, repository, job.id)
        except GitHubError as exc:
            log.warning("could not download the passing log of %s: %s", job.name, exc)
            return None
        try:
            with download.path.open("rb") as stream:
                return PassingIndex.build(parse_lines(stream, job=job.name))
        except LogError:
            return None
        finally:
            download.path.unlink(missing_ok=True)

    def _commits(self, client: InstallationClient, run: RunInfo, notes: list[str]) -> list[CommitInfo]:
        try:
            found = client.recent_commits(run.repository, run.head_sha, RECENT_COMMITS)
        except GitHubError as exc:
            log.warning("could not list recent commits of %s: %s", run.repository, exc)
            return []
        return [CommitInfo(commit.sha, commit.subject, commit.files) for commit in found]

    def _sources(
        self, client: InstallationClient, run: RunInfo, excerpt: Excerpt, cache: dict[str, str | None]
    ) -> tuple[list[SourceSnippet], dict[str, str]]:
        """Snippets around each `file:line` the excerpt names, from the files at the run's head commit."""
        references = [
            (path, line)
            for path, line in file_references(line.text for line in excerpt.lines)
            if safe_repo_path(path)
        ]
        fetched: dict[str, str] = {}
        for path in dict.fromkeys(path for path, _ in references):
            if path not in cache:
                if sum(1 for text in cache.values() if text is not None) >= MAX_SOURCE_FILES:
                    break
                cache[path] = None
                with suppress(GitHubError):
                    cache[path] = client.get_file(run.repository, path, run.head_sha, MAX_SOURCE_BYTES)
            text = cache[path]
            if text is not None:
                fetched[path] = text
        return snippets(references, fetched), fetched

    def _pull_requests(self, client: InstallationClient, run: RunInfo) -> tuple[int, ...]:
        if run.pull_requests:
            return run.pull_requests
        # GitHub leaves pull_requests empty for runs from forks; look the pull request up by its head.
        if run.event in PULL_REQUEST_EVENTS and run.from_fork and run.head_branch:
            try:
                found = client.pull_requests_for_branch(run.repository, run.head_owner, run.head_branch)
            except GitHubError as exc:
                log.warning("could not find the pull request of fork run %s: %s", run.run_id, exc)
                return ()
            return tuple(pull.number for pull in found if pull.head_sha == run.head_sha)
        return ()


# ---- pure planning ---------------------------------------------------------------------------------


def safe_repo_path(path: str) -> bool:
    """A relative path inside the repository: no traversal, no absolute or drive paths, no .git."""
    if not path or path.startswith(("/", "\\")) or ":" in path or "\\" in path or "\x00" in path:
        return False
    parts = PurePosixPath(path).parts
    return ".." not in parts and ".git" not in parts and len(path) <= 300


def snippets(references: Iterable[tuple[str, int]], files: dict[str, str]) -> list[SourceSnippet]:
    found = []
    for path, number in references:
        text = files.get(path)
        if text is None:
            continue
        lines = text.splitlines()
        if not 1 <= number <= len(lines):
            continue
        start = max(number - SNIPPET_RADIUS, 1)
        found.append(SourceSnippet(path, start, "\n".join(lines[start - 1 : number + SNIPPET_RADIUS])))
        if len(found) >= MAX_SNIPPETS:
            break
    return found


def green_diff(excerpt: Excerpt, passing: PassingIndex | None) -> list[str]:
    """Excerpt lines that the last green run of the same job never printed."""
    if passing is None:
        return []
    return [line.text for line in excerpt.lines if line.text.strip() and line.text not in passing][
        :MAX_GREEN_DIFF_LINES
    ]


def check_annotations(report: Report) -> tuple[Annotation, ...]:
    """Annotations at the source lines the evidence points to, for files that exist at the head commit."""
    found: dict[tuple[str, int], Annotation] = {}
    for job in report.jobs:
        diagnosis = job.diagnosis
        for evidence in diagnosis.evidence:
            if not evidence.file or not evidence.file_line or not safe_repo_path(evidence.file):
                continue
            text = job.fetched_files.get(evidence.file)
            if text is None or evidence.file_line > len(text.splitlines()):
                continue
            message = f"{diagnosis.summary}\n\n{job.job}, log line {evidence.line}: {evidence.text}"
            found.setdefault(
                (evidence.file, evidence.file_line),
                Annotation(
                    evidence.file,
                    evidence.file_line,
                    templates.ANNOTATION_TITLE.format(category=diagnosis.category),
                    message[:600],
                ),
            )
    return tuple(found.values())[:MAX_ANNOTATIONS]


def plan_steps(
    report: Report, pulls: Sequence[int], loaded: LoadedConfig, notify_checks: Sequence[TargetCheck] | None = None
) -> Plan:
    """What to post for a diagnosed run: PR comments and a check run, or incident issues and their alerts.

    `notify_checks` is the notifier's check of each `notify` URL; None when no notifier is wired.
    """
    run, config = report.run, loaded.config
    steps: list[Step] = []
    refused: list[str] = []
    if loaded.problems and loaded.digest:
        steps.append(ConfigProblemIssue(run.repository, loaded.digest, loaded.problems))
    alert_targets: tuple[str, ...] = ()
    if notify_checks is not None and config.notify:
        alert_targets, decision = gates.notify_gate(config.notify, notify_checks)
        problems = tuple(f"{check.target}: {check.refusal}" for check in notify_checks if check.refusal)
        if problems:
            # Reported once per distinct set of refusals, like an invalid config; logged on every run.
            refused += decision.reasons
            steps.append(NotifyProblemIssue(run.repository, problems))
    if pulls:
        steps += [StickyComment(run.repository, number, run.workflow_id, report) for number in pulls]
    if pulls or run.event in PULL_REQUEST_EVENTS:
        primary = report.primary.diagnosis
        steps.append(
            CheckRunStep(
                run.repository,
                run.head_sha,
                run.run_id,
                run.attempt,
                title=templates.CHECK_RUN_TITLE.format(
                    category=primary.category, summary=plain_text(primary.summary)
                )[:200],
                summary=f"**{primary.severity}** · {neutralize(primary.root_cause)}",
                text=report.markdown(),
                annotations=check_annotations(report),
            )
        )
        if alert_targets:
            # Fork authors can fail pull-request runs at will; the sticky comment reaches the people involved.
            refused.append("no alert for a pull-request failure: alerts are for new incident issues")
        return Plan(steps, refused)
    if run.event not in ISSUE_EVENTS or (run.event == "push" and run.head_branch != run.default_branch):
        refused.append(
            f"no issue: a {run.event} run on {run.head_branch!r} is neither a pull request "
            f"nor the default branch"
        )
        return Plan(steps, refused)
    seen: set[str] = set()
    for job in report.jobs:
        diagnosis = job.diagnosis
        if diagnosis.fingerprint in seen:
            continue
        seen.add(diagnosis.fingerprint)
        decision = gates.issue_gate(diagnosis.severity, config)
        if not decision:
            refused += [f"no issue for {job.job}: {reason}" for reason in decision.reasons]
            continue
        issue = IncidentIssue(
            run.repository,
            diagnosis.fingerprint,
            issue_title(diagnosis),
            config.labels.for_issue(diagnosis.severity, diagnosis.category),
            report,
            job,
            run.run_id,
            run.attempt,
            run.html_url,
            config.dedup_window,
        )
        steps.append(issue)
        if alert_targets:
            steps.append(
                IssueAlert(
                    run.repository,
                    diagnosis.fingerprint,
                    issue.key,
                    alert_targets,
                    one_line(diagnosis, run.repository),
                )
            )
    return Plan(steps, refused)


def describe_plan(run: RunInfo, plan: Plan) -> list[str]:
    """The dry-run printout: what would be done, and what the gates refused and why."""
    lines = [f"dry run: {run.repository} run {run.run_id} attempt {run.attempt} ({run.workflow_name})"]
    lines += [f"  would {step.describe()}" for step in plan.steps] or ["  would post nothing"]
    lines += [f"  refused {reason}" for reason in plan.refused]
    return lines


def _summary(results: Sequence[Done]) -> str:
    return ",".join(f"{result.action}:{result.target or '-'}" for result in results)[:250]
