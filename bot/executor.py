"""Carry out approved plan steps through the GitHub adapter, once each, keyed in the side-effect ledger."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.adapters.github import Annotation as GhAnnotation
from bot.adapters.github import Comment, InstallationClient, Issue
from bot.adapters.store import EffectRecord, Store
from bot.core import templates
from bot.core.render import marker
from bot.plan import (
    CheckRunStep,
    ConfigProblemIssue,
    IncidentIssue,
    IssueAlert,
    NotifyProblemIssue,
    Step,
    StickyComment,
    alert_key,
)
from bot.policy.gates import Decision, RateGate
from bot.policy.repo_config import RepoConfig
from bot.ports import Notifier

log = logging.getLogger(__name__)

#: Added to the longest a GitHub call can block, for the work around the call.
CLAIM_MARGIN = timedelta(minutes=5)


class EffectBusy(RuntimeError):
    """Another worker holds the claim on a side effect; the delivery is retried later."""


class KeyedLocks:
    """One lock per side-effect key, so two threads of one process never race on the same effect."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


@dataclass(frozen=True)
class Done:
    """What one step did: `created`, `edited`, `skipped`, … and the GitHub object it touched."""

    step: str
    action: str
    target: str | None = None
    reasons: tuple[str, ...] = ()


class Executor:
    """Runs each step at most once per key; finds its own earlier work by hidden markers after a crash."""

    def __init__(
        self,
        client: InstallationClient,
        store: Store,
        *,
        clock: Callable[[], datetime],
        delivery_id: str,
        config: RepoConfig,
        bot_login: str,
        locks: KeyedLocks,
        rate: RateGate | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.clock = clock
        self.delivery_id = delivery_id
        self.config = config
        self.bot_login = bot_login
        self.locks = locks
        self.rate = rate or RateGate(store, clock)
        self.notifier = notifier
        #: Keys of the incident issues whose opening the plan asks to alert about.
        self._announced: frozenset[str] = frozenset()
        #: The plan's incident steps by key, so an alert can tell which run attempt may have reopened its issue.
        self._incidents: dict[str, IncidentIssue] = {}
        #: How long a claim made outside the queue (no lease to renew) is trusted to be in progress.
        self.claim_timeout = timedelta(seconds=client.longest_call) + CLAIM_MARGIN

    def run(self, steps: Sequence[Step]) -> list[Done]:
        self._announced = frozenset(step.issue_key for step in steps if isinstance(step, IssueAlert))
        self._incidents = {step.key: step for step in steps if isinstance(step, IncidentIssue)}
        # One at a time, in plan order: SECURITY item 9 wants writes serialised anyway.
        return [self._run_one(step) for step in steps]

    def _run_one(self, step: Step) -> Done:
        if isinstance(step, StickyComment):
            return self.sticky_comment(step)
        if isinstance(step, CheckRunStep):
            return self.check_run(step)
        if isinstance(step, IncidentIssue):
            return self.incident_issue(step)
        if isinstance(step, IssueAlert):
            return self.issue_alert(step)
        return self.config_issue(step)

    # ---- ledger ------------------------------------------------------------------------------------

    def _claim(self, key: str, kind: str, repository: str) -> str | None:
        """Claim `key`. Returns None when we may act, or the target when the work is already done.

        Raises EffectBusy when another delivery holds the claim and may still be acting on it.
        """
        now = self.clock()
        if self.store.record_effect(
            key, kind=kind, repository=repository, now=now, delivery_id=self.delivery_id
        ):
            return None
        effect = self.store.get_effect(key)
        assert effect is not None
        if effect.completed:
            return effect.target or ""
        if effect.delivery_id == self.delivery_id:
            return None
        if self._still_acting(effect, now):
            raise EffectBusy(f"side effect {key} is being carried out by delivery {effect.delivery_id}")
        # Re-stamp the claim so the holder, should it come back, sees it is no longer its own.
        if not self.store.take_over_effect(key, holder=effect.delivery_id, delivery_id=self.delivery_id, now=now):
            raise EffectBusy(f"side effect {key} was just taken over by another delivery")
        return None

    def _still_acting(self, effect: EffectRecord, now: datetime) -> bool:
        """Whether the delivery that claimed the effect may still be acting on it."""
        holder = self.store.get_delivery(effect.delivery_id) if effect.delivery_id else None
        if holder is not None:
            # A queued delivery renews its lease while it works, however long one GitHub call blocks.
            return holder.held(now)
        return now - effect.created_at < self.claim_timeout

    def _complete(self, key: str, target: str) -> None:
        self.store.complete_effect(key, target=target, now=self.clock())

    def _limit(self, action: str, key: str, limit: int, for_work: str | None = None) -> Decision:
        decision = self.rate.take(action, key, limit, for_work=for_work)
        if not decision:
            log.warning("refused %s for %s: %s", action, key, "; ".join(decision.reasons))
        return decision

    # ---- steps --------------------------------------------------------------------------------------

    def sticky_comment(self, step: StickyComment) -> Done:
        with self.locks.hold(step.key):
            mine = self._own_comment(step.repository, step.pull_request, step.marker)
            if mine is not None:
                body = step.body(mine.body)
                if body == mine.body:
                    self._record_target(step.key, "comment", step.repository, str(mine.id))
                    return Done(step.describe(), "unchanged", str(mine.id))
                allowed = self._limit("comments", step.repository, self.config.rate_limits.comments_per_hour)
                if not allowed:
                    return Done(step.describe(), "refused", str(mine.id), allowed.reasons)
                self.client.edit_comment(step.repository, mine.id, body)
                self._record_target(step.key, "comment", step.repository, str(mine.id))
                return Done(step.describe(), "edited", str(mine.id))
            done = self._claim(step.key, "comment", step.repository)
            if done:
                # The ledger says we posted it, but it is gone (deleted by a person): post it again.
                log.info("sticky comment %s was deleted; posting a new one", done)
            allowed = self._limit("comments", step.repository, self.config.rate_limits.comments_per_hour)
            if not allowed:
                return Done(step.describe(), "refused", None, allowed.reasons)
            comment = self.client.add_issue_comment(step.repository, step.pull_request, step.body(None))
            self._record_target(step.key, "comment", step.repository, str(comment.id))
            return Done(step.describe(), "created", str(comment.id))

    def _own_comment(self, repository: str, number: int, sticky_marker: str) -> Comment | None:
        for comment in self.client.list_issue_comments(repository, number):
            # Only our own comments: anyone can paste the marker into theirs.
            if sticky_marker in comment.body.splitlines() and (comment.author or "") == self.bot_login:
                return comment
        return None

    def _record_target(self, key: str, kind: str, repository: str, target: str) -> None:
        if not self.store.record_effect(
            key,
            kind=kind,
            repository=repository,
            now=self.clock(),
            target=target,
            delivery_id=self.delivery_id,
        ):
            effect = self.store.get_effect(key)
            if effect is None or effect.target != target:
                self._complete(key, target)

    def check_run(self, step: CheckRunStep) -> Done:
        with self.locks.hold(step.key):
            done = self._claim(step.key, "check_run", step.repository)
            if done is not None:
                return Done(step.describe(), "skipped", done, ("already created for this run attempt",))
            # No marker can be searched for on a check run; after a crash mid-call it may be created twice,
            # which shows as two identical check runs and harms nothing.
            check = self.client.create_check_run(
                step.repository,
                step.head_sha,
                templates.CHECK_RUN_NAME,
                step.title,
                step.summary,
                step.text,
                conclusion="neutral",
                annotations=[
                    GhAnnotation(a.path, a.line, a.line, "failure", a.message, a.title)
                    for a in step.annotations
                ],
                external_id=step.key[:100],
            )
            self._complete(step.key, str(check.id))
            return Done(step.describe(), "created", str(check.id))

    def incident_issue(self, step: IncidentIssue) -> Done:
        with self.locks.hold(step.key):
            occurrence = self.store.get_effect(step.occurrence_key)
            if occurrence is not None and occurrence.completed:
                return Done(step.describe(), "skipped", occurrence.target, ("this run was already counted",))
            now = self.clock()
            before = self.store.get_incident(step.repository, step.fingerprint)
            last_seen = before.last_seen if before is not None else None
            if occurrence is None:
                # Count the sighting once per run attempt, even if this delivery is retried.
                diagnosis = step.job.diagnosis
                self.store.upsert_incident(
                    step.repository,
                    step.fingerprint,
                    category=str(diagnosis.category),
                    severity=str(diagnosis.severity),
                    title=step.title,
                    excerpt_hash=None,
                    now=now,
                )
                # A retry finds the incident already stamped with this sighting; the one before it, which the
                # dedup window is measured from, is kept with the claim.
                self.store.record_effect(
                    step.occurrence_key,
                    kind="occurrence",
                    repository=step.repository,
                    now=now,
                    delivery_id=self.delivery_id,
                    detail={"last_seen": last_seen.isoformat() if last_seen else None},
                )
            elif occurrence.detail is not None and "last_seen" in occurrence.detail:
                stored = occurrence.detail["last_seen"]
                last_seen = datetime.fromisoformat(stored) if stored else None
            incident = self.store.get_incident(step.repository, step.fingerprint)
            assert incident is not None
            number = before.issue_number if before is not None else None
            if number is None:
                # After the store was lost, the hidden marker still leads to the open issue we opened.
                found = self._own_open_issue(step)
                if found is None:
                    return self._open(step, step.key, incident.count, now)
                number = found.number
                self._record_target(step.key, "issue", step.repository, str(number))
                self.store.link_incident(step.repository, step.fingerprint, issue_number=number)
            return self._add_occurrence(step, number, incident.count, last_seen, now)

    def _open(self, step: IncidentIssue, key: str, count: int, now: datetime) -> Done:
        earlier = self.store.get_effect(key)
        done = self._claim(key, "issue", step.repository)
        found = None
        if not done and earlier is not None and key != step.key:
            # An earlier attempt may have opened the issue and been killed before recording it. (The first
            # issue of a fingerprint was looked for by marker already.)
            found = self._own_open_issue(step)
        if done:
            number = int(done)
        elif found is not None:
            number = found.number
            self._complete(key, str(number))
        else:
            allowed = self._limit("issues", step.repository, self.config.rate_limits.issues_per_hour)
            if not allowed:
                return Done(step.describe(), "refused", None, allowed.reasons)
            issue = self.client.create_issue(step.repository, step.title, step.body(count, now), step.labels)
            number = issue.number
            self._arm_alert(step, number, issue.html_url)
            self._complete(key, str(number))
        self.store.link_incident(step.repository, step.fingerprint, issue_number=number)
        self._complete(step.occurrence_key, str(number))
        return Done(step.describe(), "created", str(number))

    def _own_open_issue(self, step: IncidentIssue) -> Issue | None:
        label = step.labels[0] if step.labels else None
        return self.client.find_issue_by_marker(
            step.repository, marker(step.fingerprint), author=self.bot_login, label=label
        )

    def _arm_alert(self, step: IncidentIssue, number: int, url: str, reopened_by: str | None = None) -> None:
        """Arm the alert about opening (or reopening) an issue, if the plan asks for one.

        Armed before the issue's own claim is completed, so a retry after a crash from here on still finds
        the alert to send; a quiet repeat of the failure never arms one.
        """
        if step.key not in self._announced:
            return
        self.store.record_effect(
            alert_key(step.repository, number, reopened_by),
            kind="alert",
            repository=step.repository,
            now=self.clock(),
            delivery_id=self.delivery_id,
            detail={"url": url},
        )

    def _add_occurrence(
        self, step: IncidentIssue, number: int, count: int, last_seen: datetime | None, now: datetime
    ) -> Done:
        quiet = last_seen is not None and now - last_seen > step.dedup_window
        if self.store.get_effect(step.reopen_key(number)) is not None:
            # An earlier attempt of this delivery had started reopening the issue: finish that.
            return self._reopen(step, number, count, now)
        # Read before writing: a closed issue's body is not edited as if it were still open.
        if self.client.get_issue(step.repository, number).state == "closed":
            if last_seen is None or quiet:
                # Back after a quiet spell longer than the window: a new incident, not the closed one.
                return self._open(step, f"{step.key}:after-{number}", count, now)
            # Back inside the window after a person closed it: the fix did not hold.
            return self._reopen(step, number, count, now)
        allowed = self._limit(
            "issue_updates", f"{step.repository}#{number}", self.config.rate_limits.issue_updates_per_hour
        )
        if not allowed and not quiet:
            # Counted in the store; the next update that is allowed shows the total.
            self._complete(step.occurrence_key, str(number))
            return Done(step.describe(), "counted", str(number), allowed.reasons)
        self.client.update_issue(step.repository, number, body=step.body(count, now))
        if quiet:
            self.client.add_issue_comment(step.repository, number, step.occurrence_comment(count, last_seen))
        self._complete(step.occurrence_key, str(number))
        return Done(step.describe(), "occurrence", str(number))

    def _reopen(self, step: IncidentIssue, number: int, count: int, now: datetime) -> Done:
        """Reopen a closed incident issue with a comment saying the failure is back, once per run attempt."""
        key = step.reopen_key(number)
        # Reopening stands in for the new issue a regression used to get, so the same hourly cap applies;
        # keyed by the reopening, so a retry after a crash does not spend a second unit.
        allowed = self._limit("issues", step.repository, self.config.rate_limits.issues_per_hour, for_work=key)
        if not allowed:
            # Counted in the store; the next occurrence inside the window tries the reopening again.
            self._complete(step.occurrence_key, str(number))
            return Done(step.describe(), "refused", str(number), allowed.reasons)
        done = self._claim(key, "reopen", step.repository)
        if done is None:
            issue = self.client.update_issue(step.repository, number, body=step.body(count, now), state="open")
            self._arm_alert(step, number, issue.html_url, reopened_by=step.run_attempt)
            # A retry after a crash may find the comment already posted, under this run attempt's marker.
            if self._own_comment(step.repository, number, step.occurrence_marker) is None:
                self.client.add_issue_comment(step.repository, number, step.regression_comment(count))
            self._complete(key, str(number))
        self._complete(step.occurrence_key, str(number))
        return Done(step.describe(), "reopened", str(number))

    def issue_alert(self, step: IssueAlert) -> Done:
        """Send the alert armed when the issue was opened or reopened, once; nothing for a quiet repeat."""
        incident = self.store.get_incident(step.repository, step.fingerprint)
        number = incident.issue_number if incident is not None else None
        if number is None:
            return Done(step.describe(), "skipped", None, ("no issue was opened",))
        key = alert_key(step.repository, number)
        title = step.title
        incident_step = self._incidents.get(step.issue_key)
        if incident_step is not None:
            reopened = alert_key(step.repository, number, reopened_by=incident_step.run_attempt)
            if self.store.get_effect(reopened) is not None:
                key, title = reopened, step.reopened_title
        with self.locks.hold(key):
            armed = self.store.get_effect(key)
            if armed is None:
                return Done(step.describe(), "skipped", str(number), ("the issue is not new",))
            if armed.completed:
                return Done(step.describe(), "skipped", armed.target, ("already alerted",))
            if self._claim(key, "alert", step.repository) is not None:
                return Done(step.describe(), "skipped", None, ("already alerted",))
            if self.notifier is None:
                self._complete(key, "no notifier")
                return Done(step.describe(), "skipped", None, ("no notifier is wired",))
            # Keyed by the alert, so a retry after a crash mid-send does not spend a second unit.
            allowed = self._limit(
                "notifications", step.repository, self.config.rate_limits.notifications_per_hour, for_work=key
            )
            if not allowed:
                # Not kept for later: an alert hours late about an issue people have seen helps nobody.
                self._complete(key, "refused")
                return Done(step.describe(), "refused", None, allowed.reasons)
            url = str((armed.detail or {}).get("url") or "")
            results = self.notifier.send(step.targets, title, step.body(url))
            sent = sum(result.sent for result in results)
            # A target that failed is logged and reported, never retried: the delivery must not fail for it.
            self._complete(key, f"sent {sent}/{len(results)}")
            failures = tuple(f"{result.target}: {result.reason}" for result in results if not result.sent)
            return Done(step.describe(), "sent" if sent else "failed", f"{sent}/{len(results)}", failures)

    def config_issue(self, step: ConfigProblemIssue | NotifyProblemIssue) -> Done:
        with self.locks.hold(step.key):
            done = self._claim(step.key, "config_issue", step.repository)
            if done:
                return Done(step.describe(), "skipped", done, ("already reported",))
            found = self.client.find_issue_by_marker(
                step.repository, step.marker, author=self.bot_login, label="mendbot", include_closed=True
            )
            if found is None:
                allowed = self._limit("issues", step.repository, self.config.rate_limits.issues_per_hour)
                if not allowed:
                    return Done(step.describe(), "refused", None, allowed.reasons)
                found = self.client.create_issue(step.repository, step.title, step.body(), ["mendbot"])
            self._complete(step.key, str(found.number))
            return Done(step.describe(), "created", str(found.number))
