"""Plain data between the core and the executor: the failed run, its diagnoses, and the steps to take."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bot.core import templates
from bot.core.models import Diagnosis, Excerpt
from bot.core.render import MAX_BODY_CHARS, find_fingerprint, neutralize, one_line, plain_text, render_markdown
from bot.ports import DiagnosisResult

# A config problem names the key it is about; a key can be as long as the file allows.
MAX_PROBLEM_CHARS = 500
# An alert is a one-line summary, not the diagnosis: chat services cut long messages anyway.
MAX_ALERT_LINE_CHARS = 400
_MARKDOWN_LINK_RE = re.compile(r"\]\s*\(")


@dataclass(frozen=True)
class RunInfo:
    """The facts of a completed workflow run that the webhook payload states."""

    repository: str
    installation_id: int
    run_id: int
    attempt: int
    workflow_id: int
    workflow_name: str
    workflow_path: str
    head_branch: str | None
    head_sha: str
    event: str
    conclusion: str | None
    html_url: str
    default_branch: str
    actor: str | None = None
    triggering_actor: str | None = None
    head_repository: str | None = None
    pull_requests: tuple[int, ...] = ()

    @property
    def from_fork(self) -> bool:
        return self.head_repository is not None and self.head_repository != self.repository

    @property
    def head_owner(self) -> str:
        return (self.head_repository or self.repository).split("/", 1)[0]

    @classmethod
    def from_payload(cls, payload: dict[str, Any], installation_id: int) -> RunInfo:
        run = payload["workflow_run"]
        repository = payload["repository"]
        full_name = str(repository["full_name"])
        # GitHub also lists pull requests of other repositories that share the branch; keep ours.
        pulls = tuple(
            int(pull["number"])
            for pull in run.get("pull_requests") or []
            if (pull.get("base") or {}).get("repo", {}).get("id") in (None, repository.get("id"))
        )
        workflow = payload.get("workflow") or {}
        return cls(
            repository=full_name,
            installation_id=installation_id,
            run_id=int(run["id"]),
            attempt=int(run.get("run_attempt") or 1),
            workflow_id=int(run["workflow_id"]),
            workflow_name=str(run.get("name") or workflow.get("name") or ""),
            workflow_path=str(run.get("path") or workflow.get("path") or ""),
            head_branch=run.get("head_branch"),
            head_sha=str(run["head_sha"]),
            event=str(run.get("event") or ""),
            conclusion=run.get("conclusion"),
            html_url=str(run.get("html_url") or ""),
            default_branch=str(repository.get("default_branch") or "main"),
            actor=(run.get("actor") or {}).get("login"),
            triggering_actor=(run.get("triggering_actor") or {}).get("login"),
            head_repository=(run.get("head_repository") or {}).get("full_name"),
            pull_requests=pulls,
        )


@dataclass(frozen=True)
class JobDiagnosis:
    """One failed job, the excerpt of its log and what the diagnoser made of it."""

    job: str
    job_url: str
    excerpt: Excerpt
    result: DiagnosisResult
    fetched_files: dict[str, str] = field(default_factory=dict)

    @property
    def diagnosis(self) -> Diagnosis:
        return self.result.diagnosis


@dataclass(frozen=True)
class Report:
    """Everything said about one run: the most severe job first, then the others."""

    run: RunInfo
    jobs: tuple[JobDiagnosis, ...]
    notes: tuple[str, ...] = ()

    @property
    def primary(self) -> JobDiagnosis:
        return self.jobs[0]

    def log_urls(self) -> dict[str, str]:
        return {job.job: job.job_url for job in self.jobs if job.job_url}

    def markdown(
        self,
        job: JobDiagnosis | None = None,
        previous: str | None = None,
        trailer: str = "",
        lead: Sequence[str] = (),
    ) -> str:
        """The diagnosis of one job (the primary by default), with the other failed jobs listed after it.

        `lead` lines (Mendbot's own Markdown) come first among those after the diagnosis.
        """
        chosen = job or self.primary
        others = [
            templates.OTHER_JOB_LINE.format(
                job=neutralize(plain_text(other.job)), line=neutralize(one_line(other.diagnosis))
            )
            for other in self.jobs
            if other is not chosen
        ]
        notes = [f"> {neutralize(note)}" for note in self.notes]
        extra: list[str] = []
        for section in (list(lead), [templates.OTHER_JOBS_HEADING, *others] if others else [], notes):
            if section:
                extra += ["", *section] if extra else section
        # render_markdown puts these before the footer, so the fingerprint marker stays last, and counts
        # them against GitHub's size limit.
        return render_markdown(
            chosen.diagnosis,
            chosen.excerpt,
            log_urls=self.log_urls(),
            usage=chosen.result.usage_for_footer(),
            previous=previous,
            extra=extra,
            trailer=trailer,
        )


def rank_jobs(jobs: Sequence[JobDiagnosis]) -> tuple[JobDiagnosis, ...]:
    """Most severe first; among equals, the order GitHub listed the jobs."""
    order = sorted(enumerate(jobs), key=lambda pair: (-pair[1].diagnosis.severity.rank, pair[0]))
    return tuple(job for _, job in order)


# ---- steps -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StickyComment:
    """One comment per (pull request, workflow), edited in place on later failures."""

    repository: str
    pull_request: int
    workflow_id: int
    report: Report

    @property
    def key(self) -> str:
        return f"sticky:{self.repository}#{self.pull_request}:workflow-{self.workflow_id}"

    @property
    def marker(self) -> str:
        return templates.STICKY_MARKER.format(workflow_id=self.workflow_id)

    def body(self, previous: str | None) -> str:
        """The new body; an earlier body with a different fingerprint is kept below, collapsed."""
        stale = previous if previous and find_fingerprint(previous) != self.fingerprint else None
        stale = stale.replace(self.marker, "") if stale else None
        return self.report.markdown(previous=stale, trailer=self.marker)

    @property
    def fingerprint(self) -> str:
        return self.report.primary.diagnosis.fingerprint

    def describe(self) -> str:
        return f"comment on {self.repository}#{self.pull_request} (sticky for workflow {self.workflow_id})"


@dataclass(frozen=True)
class Annotation:
    path: str
    line: int
    title: str
    message: str


@dataclass(frozen=True)
class CheckRunStep:
    """A completed check run on the head commit with the summary and source annotations."""

    repository: str
    head_sha: str
    run_id: int
    attempt: int
    title: str
    summary: str
    text: str
    annotations: tuple[Annotation, ...]

    @property
    def key(self) -> str:
        return f"check:{self.repository}:{self.run_id}.{self.attempt}"

    def describe(self) -> str:
        return (
            f"check run {templates.CHECK_RUN_NAME!r} on {self.head_sha[:12]} "
            f"with {len(self.annotations)} annotation(s): {self.title}"
        )


@dataclass(frozen=True)
class IncidentIssue:
    """One open issue per fingerprint: created on first sight, updated with occurrences after."""

    repository: str
    fingerprint: str
    title: str
    labels: tuple[str, ...]
    report: Report
    job: JobDiagnosis
    run_id: int
    attempt: int
    run_url: str
    dedup_window: timedelta

    @property
    def key(self) -> str:
        return f"issue:{self.repository}:{self.fingerprint}"

    @property
    def run_attempt(self) -> str:
        return f"{self.run_id}.{self.attempt}"

    @property
    def occurrence_key(self) -> str:
        return f"occurrence:{self.repository}:{self.fingerprint}:{self.run_attempt}"

    def reopen_key(self, issue_number: int) -> str:
        """The ledger key of reopening issue `issue_number` for this run attempt."""
        return f"reopen:{self.repository}#{issue_number}:{self.run_attempt}"

    def body(self, count: int, now: datetime) -> str:
        line = templates.OCCURRENCE_LINE.format(
            count=count,
            plural="" if count == 1 else "s",
            run_url=self.run_url,
            when=f"{now:%Y-%m-%d %H:%M} UTC",
        )
        return self.report.markdown(self.job, lead=[line])

    def occurrence_comment(self, count: int, since: datetime | None) -> str:
        quiet = f" after a quiet period since {since:%Y-%m-%d %H:%M} UTC" if since else ""
        return templates.OCCURRENCE_COMMENT.format(
            run_url=self.run_url,
            count=count,
            quiet=quiet,
            marker=self.occurrence_marker,
        )

    def regression_comment(self, count: int) -> str:
        return templates.REGRESSION_COMMENT.format(run_url=self.run_url, count=count, marker=self.occurrence_marker)

    @property
    def occurrence_marker(self) -> str:
        return templates.OCCURRENCE_MARKER.format(run=self.run_attempt)

    def describe(self) -> str:
        return (
            f"issue for fingerprint {self.fingerprint} in {self.repository}: {self.title} {list(self.labels)}"
        )


@dataclass(frozen=True)
class ConfigProblemIssue:
    """An invalid .github/mendbot.yml, reported once per version of the file."""

    repository: str
    digest: str
    problems: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"config:{self.repository}:{self.digest}"

    @property
    def marker(self) -> str:
        return templates.CONFIG_MARKER.format(digest=self.digest)

    @property
    def title(self) -> str:
        return templates.CONFIG_ISSUE_TITLE

    def body(self) -> str:
        """The problems as a list, as many as fit in GitHub's body limit."""
        room = MAX_BODY_CHARS - len(templates.CONFIG_ISSUE_BODY.format(problems="", marker=self.marker)) - 100
        listed: list[str] = []
        for problem in self.problems:
            item = f"- {neutralize(plain_text(problem)[:MAX_PROBLEM_CHARS])}"
            if len(item) + 1 > room:
                break
            listed.append(item)
            room -= len(item) + 1
        if len(listed) < len(self.problems):
            listed.append(f"- … and {len(self.problems) - len(listed)} more")
        return templates.CONFIG_ISSUE_BODY.format(problems="\n".join(listed), marker=self.marker)

    def describe(self) -> str:
        return f"issue about the invalid .github/mendbot.yml in {self.repository}: {'; '.join(self.problems)}"


def chat_text(text: str) -> str:
    """Untrusted text made inert for chat services: one line, no mentions, no links, no control characters.

    plain_text already defuses `@` mentions (so `@everyone`, `@here` and Discord's `<@id>` notify nobody)
    and HTML comments. Angle brackets go too, since Slack reads `<!channel>` and `<https://x|label>`, and
    so do Markdown links and `scheme://`, so nothing in the text becomes a link someone could click.
    """
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf"))
    text = plain_text(text).replace("<", "‹").replace(">", "›")
    text = _MARKDOWN_LINK_RE.sub("] (", text).replace("://", ":\u200b//")
    return text if len(text) <= MAX_ALERT_LINE_CHARS else text[: MAX_ALERT_LINE_CHARS - 1] + "…"


@dataclass(frozen=True)
class IssueAlert:
    """Alert the repository's notify targets once when the incident issue of `fingerprint` is newly opened,
    or reopened because the failure came back after a person closed it.

    The executor arms the alert in the ledger when it opens or reopens the issue; a repeat on an open issue,
    inside or after the dedup window, finds nothing armed and sends nothing.
    """

    repository: str
    fingerprint: str
    issue_key: str
    targets: tuple[str, ...]
    line: str

    @property
    def title(self) -> str:
        return templates.ALERT_TITLE.format(repository=self.repository)

    @property
    def reopened_title(self) -> str:
        return templates.ALERT_REOPENED_TITLE.format(repository=self.repository)

    def body(self, issue_url: str) -> str:
        return templates.ALERT_BODY.format(line=chat_text(self.line), url=issue_url)

    def describe(self) -> str:
        return (
            f"alert {len(self.targets)} notify target(s) if the issue for fingerprint {self.fingerprint} "
            f"is newly opened or reopened: {chat_text(self.line)}"
        )


def alert_key(repository: str, issue_number: int, reopened_by: str | None = None) -> str:
    """The ledger key of the one alert about one issue's opening, or about its reopening by a run attempt."""
    key = f"alert:{repository}#{issue_number}"
    return f"{key}:reopened-{reopened_by}" if reopened_by else key


@dataclass(frozen=True)
class NotifyProblemIssue:
    """Notify targets that may not be used, reported once per distinct set of refusals."""

    repository: str
    problems: tuple[str, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(sorted(self.problems)).encode("utf-8")).hexdigest()[:16]

    @property
    def key(self) -> str:
        return f"notify-refused:{self.repository}:{self.digest}"

    @property
    def marker(self) -> str:
        return templates.NOTIFY_MARKER.format(digest=self.digest)

    @property
    def title(self) -> str:
        return templates.NOTIFY_ISSUE_TITLE

    def body(self) -> str:
        listed = "\n".join(f"- {neutralize(plain_text(problem)[:MAX_PROBLEM_CHARS])}" for problem in self.problems)
        return templates.NOTIFY_ISSUE_BODY.format(problems=listed, marker=self.marker)

    def describe(self) -> str:
        return f"issue about refused notify targets in {self.repository}: {'; '.join(self.problems)}"


Step = StickyComment | CheckRunStep | IncidentIssue | ConfigProblemIssue | IssueAlert | NotifyProblemIssue


@dataclass(frozen=True)
class Plan:
    """The steps approved so far and, in words, what the gates refused."""

    steps: list[Step]
    refused: list[str] = field(default_factory=list)
