"""issues labeled `claude-ready`: diagnose the run or the logs an issue points to, when the labeler may ask."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from bot.adapters.github import GitHubError, InstallationClient
from bot.core import templates
from bot.core.excerpt import Excerpter
from bot.core.logs import lines_from_text
from bot.core.prompt import sanitize_untrusted
from bot.core.render import render_markdown
from bot.events import Event
from bot.plan import Report
from bot.policy.gates import Decision, RateGate
from bot.policy.repo_config import CONFIG_PATH, LoadedConfig, parse_repo_config
from bot.ports import FailureFacts
from bot.routing import Outcome, Router
from bot.services import Services, run_info_from_api

log = logging.getLogger(__name__)

CLAUDE_READY = "claude-ready"
# GitHub's own roles that may push; triage may add labels, which is exactly why the labeler is checked.
WRITE_ROLES = frozenset({"admin", "maintain", "write"})
RUN_PATH = r"/actions/runs/(\d{1,20})(?:/attempts/(\d{1,5}))?"
EFFECT_KIND = "issue_diagnosis"


@dataclass(frozen=True)
class LabeledIssue:
    """The facts of an `issues` `labeled` delivery that the diagnosis needs."""

    repository: str
    repository_url: str
    default_branch: str
    installation_id: int
    number: int
    title: str
    body: str
    author: str | None
    label: str
    sender: str | None
    sender_type: str

    @classmethod
    def from_payload(cls, payload: dict[str, Any], installation_id: int) -> LabeledIssue | None:
        issue, repository = payload.get("issue"), payload.get("repository")
        if not isinstance(issue, dict) or not isinstance(repository, dict):
            return None
        sender = payload.get("sender")
        sender = sender if isinstance(sender, dict) else {}
        login = sender.get("login") if isinstance(sender.get("login"), str) else None
        return cls(
            repository=str(repository.get("full_name") or ""),
            repository_url=str(repository.get("html_url") or ""),
            default_branch=str(repository.get("default_branch") or "main"),
            installation_id=installation_id,
            number=int(issue["number"]),
            title=str(issue.get("title") or ""),
            body=str(issue.get("body") or ""),
            author=(issue.get("user") or {}).get("login"),
            label=str((payload.get("label") or {}).get("name") or ""),
            sender=login,
            sender_type=str(sender.get("type") or ""),
        )


def may_trigger(
    issue: LabeledIssue, bot_login: str, allowed_bots: Collection[str], permission: Callable[[str], str]
) -> Decision:
    """SECURITY item 13: authorize the person who added the label, never the text of the issue.

    Bots are refused unless their exact login is allowlisted (GitHub reserves `[bot]` logins for Apps, so
    an exact match is trustworthy where a suffix alone proves nothing); Mendbot itself is always refused.
    Everyone else needs admin, maintain or write; `permission` answers "none" for unknown or deleted users.
    """
    sender = issue.sender
    if not sender:
        return Decision.refuse("the delivery names no sender")
    if sender.lower() == bot_login.lower():
        return Decision.refuse(f"the label was added by Mendbot itself ({sender}); loop guard")
    if issue.sender_type == "Bot" or sender.lower().endswith("[bot]"):
        if sender.lower() in {name.lower() for name in allowed_bots}:
            return Decision.allow(f"{sender} is an allowlisted bot")
        return Decision.refuse(f"{sender} is a bot that is not allowlisted (MENDBOT_TRIGGER_BOTS)")
    role = permission(sender)
    if role not in WRITE_ROLES:
        return Decision.refuse(f"{sender} has {role!r} access; admin, maintain or write is needed")
    return Decision.allow(f"{sender} has {role} access")


def run_link(text: str, repository_url: str) -> tuple[int, int | None] | None:
    """The first run of this repository that `text` links to: (run id, attempt or None).

    Matched against the repository's own web address, so GitHub Enterprise hosts work and links to other
    repositories (including ones whose name merely starts with this one's) are never followed.
    """
    if not repository_url.startswith(("https://", "http://")):
        return None
    pattern = re.escape(repository_url.rstrip("/")) + RUN_PATH + r"(?![\w-])"
    found = re.search(pattern, text, re.IGNORECASE)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2)) if found.group(2) else None


def on_labeled(event: Event, services: Services) -> Outcome:
    installation_id = event.installation_id
    if installation_id is None:
        return Outcome.IGNORED
    issue = LabeledIssue.from_payload(event.payload, installation_id)
    if issue is None or issue.label != CLAUDE_READY or not issue.repository:
        return Outcome.IGNORED
    return diagnose_issue(issue, event.delivery_id, services)


def diagnose_issue(issue: LabeledIssue, delivery_id: str, services: Services) -> Outcome:
    """Post one diagnosis comment per label event; a replay or a refused labeler posts nothing."""
    key = f"claude-ready:{issue.repository}#{issue.number}:{delivery_id}"
    marker = templates.ISSUE_DIAGNOSIS_MARKER.format(delivery=delivery_id)
    store, options = services.store, services.options
    effect = store.get_effect(key)
    if effect is not None and effect.completed:
        return Outcome.IGNORED
    client = services.github.client(issue.installation_id)
    decision = may_trigger(
        issue,
        options.bot_login,
        options.trigger_bots,
        lambda user: client.get_permission(issue.repository, user),
    )
    if not decision:
        log.info("not diagnosing %s#%s: %s", issue.repository, issue.number, "; ".join(decision.reasons))
        return Outcome.IGNORED
    with services.locks.hold(key):
        if effect is not None and _find_own_comment(client, issue, marker, options.bot_login, services, key):
            return Outcome.IGNORED  # posted before a crash, recorded now
        loaded = parse_repo_config(client.get_default_branch_file(issue.repository, CONFIG_PATH))
        dry_run = options.dry_run or loaded.config.dry_run
        rate = RateGate(store, services.clock)
        limits = loaded.config.rate_limits
        if not dry_run:
            allowed = rate.take("diagnoses", issue.repository, limits.diagnoses_per_hour, for_work=key)
            if not allowed:
                log.warning("not diagnosing %s#%s: %s", issue.repository, issue.number, allowed.reasons)
                return Outcome.IGNORED
        body = f"{diagnosis_markdown(issue, client, loaded, services)}\n{marker}"
        if dry_run:
            services.print_plan(f"dry run: would comment on {issue.repository}#{issue.number}")
            return Outcome.DONE
        allowed = rate.take("comments", issue.repository, limits.comments_per_hour)
        if not allowed:
            log.warning("no comment on %s#%s: %s", issue.repository, issue.number, allowed.reasons)
            return Outcome.IGNORED
        store.record_effect(
            key, kind=EFFECT_KIND, repository=issue.repository, now=services.clock(), delivery_id=delivery_id
        )
        comment = client.add_issue_comment(issue.repository, issue.number, body)
        store.complete_effect(key, target=str(comment.id), now=services.clock())
    return Outcome.DONE


def diagnosis_markdown(
    issue: LabeledIssue, client: InstallationClient, loaded: LoadedConfig, services: Services
) -> str:
    """The diagnosis of the run the issue links to, or else of the issue's own text read as a log."""
    link = run_link(issue.body, issue.repository_url)
    if link is not None:
        report = _run_report(issue, link, client, loaded, services)
        if report is not None:
            intro = templates.ISSUE_FROM_RUN.format(run_id=report.run.run_id, run_url=report.run.html_url)
            return f"{intro}\n\n{report.markdown()}"
    # What a reader of the rendered issue sees: no HTML comments, hidden characters or image alt text.
    text = sanitize_untrusted(issue.body)
    excerpter = Excerpter(services.options.excerpt_budget)
    for line in lines_from_text(text):
        excerpter.feed(line)
    excerpt = excerpter.finish()
    facts = FailureFacts(
        repository=issue.repository,
        excerpt=excerpt,
        installation_id=issue.installation_id,
        issue_body=f"{issue.title}\n\n{text}",
        rules=loaded.rules if loaded.config.rules else None,
    )
    result = services.diagnoser.diagnose(facts, services.clock())
    body = render_markdown(result.diagnosis, excerpt, usage=result.usage_for_footer())
    return f"{templates.ISSUE_FROM_BODY}\n\n{body}"


def _run_report(
    issue: LabeledIssue,
    link: tuple[int, int | None],
    client: InstallationClient,
    loaded: LoadedConfig,
    services: Services,
) -> Report | None:
    run_id, attempt = link
    try:
        run = client.get_run(issue.repository, run_id)
        info = run_info_from_api(
            run, issue.repository, issue.installation_id, default_branch=issue.default_branch, attempt=attempt
        )
        return services.diagnose_run(client, info, loaded)
    except GitHubError as exc:
        # A deleted run or expired logs: the issue's own text is still worth diagnosing.
        log.info("run %s linked from %s#%s cannot be read: %s", run_id, issue.repository, issue.number, exc)
        return None


def _find_own_comment(
    client: InstallationClient, issue: LabeledIssue, marker: str, bot_login: str, services: Services, key: str
) -> bool:
    """After a crash between posting and recording, find the posted comment by its marker and record it."""
    for comment in client.list_issue_comments(issue.repository, issue.number):
        if marker in comment.body.splitlines() and (comment.author or "").lower() == bot_login.lower():
            services.store.complete_effect(key, target=str(comment.id), now=services.clock())
            return True
    return False


def register(router: Router[Services]) -> None:
    router.add("issues", ("labeled",), on_labeled)
