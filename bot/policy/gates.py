"""Policy gates: whether a run is diagnosed and whether each planned step may go ahead, with every reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.adapters.store import Store
from bot.core.diagnose import severity_at_least
from bot.core.models import Severity
from bot.plan import RunInfo
from bot.policy.repo_config import RepoConfig
from bot.ports import TargetCheck

OWN_BRANCH_PREFIX = "mendbot/"
FAILED_CONCLUSIONS = frozenset({"failure", "timed_out"})
RATE_SCOPE = "gates"


@dataclass(frozen=True)
class Decision:
    """Allowed or refused, and why, in words a maintainer can read."""

    allowed: bool
    reasons: tuple[str, ...] = ()

    @classmethod
    def allow(cls, *reasons: str) -> Decision:
        return cls(True, reasons)

    @classmethod
    def refuse(cls, *reasons: str) -> Decision:
        return cls(False, reasons)

    def __bool__(self) -> bool:
        return self.allowed


def run_gate(run: RunInfo, config: RepoConfig, bot_login: str) -> Decision:
    """Whether a completed run should be diagnosed at all; every refusal reason is collected."""
    refusals = []
    if run.conclusion not in FAILED_CONCLUSIONS:
        refusals.append(f"the run concluded {run.conclusion!r}, not failure or timed_out")
    if bot_login and bot_login.lower() in {(run.actor or "").lower(), (run.triggering_actor or "").lower()}:
        refusals.append(f"the run was started by Mendbot itself ({bot_login}); loop guard")
    if (run.head_branch or "").startswith(OWN_BRANCH_PREFIX):
        refusals.append(f"the run is on Mendbot's own branch {run.head_branch!r}; loop guard")
    if run.from_fork and not config.diagnose_forks:
        refusals.append(
            f"the run comes from the fork {run.head_repository} and the config sets diagnose_forks: false"
        )
    if not config.workflows.watches(run.workflow_name, run.workflow_path):
        refusals.append(f"the config does not watch the workflow {run.workflow_name!r} ({run.workflow_path})")
    if refusals:
        return Decision.refuse(*refusals)
    reasons = [f"run {run.run_id} of {run.workflow_name!r} failed ({run.conclusion})"]
    if run.from_fork:
        reasons.append(f"from the fork {run.head_repository}: diagnosed, but never fixed")
    return Decision.allow(*reasons)


def fix_pr_gate(run: RunInfo) -> Decision:
    """Whether a fix PR may ever be proposed for a run (SECURITY item 14: never for a fork)."""
    if run.from_fork:
        return Decision.refuse(
            f"the run comes from the fork {run.head_repository}, which is attacker-controlled"
        )
    if (run.head_branch or "").startswith(OWN_BRANCH_PREFIX):
        return Decision.refuse("the run is on Mendbot's own branch; fixing it again could loop")
    return Decision.allow("the run is from this repository")


def issue_gate(severity: Severity, config: RepoConfig) -> Decision:
    """Whether a failure outside a pull request is severe enough for an incident issue."""
    if severity_at_least(severity, config.severity_threshold):
        return Decision.allow(f"severity {severity} is at or above the threshold {config.severity_threshold}")
    return Decision.refuse(f"severity {severity} is below the threshold {config.severity_threshold}")


def notify_gate(targets: Sequence[str], checks: Sequence[TargetCheck]) -> tuple[tuple[str, ...], Decision]:
    """The notify targets an alert may go to, from the notifier's check of each (in the same order).

    Refused when every target was refused; either way the reasons name each refused target and why.
    """
    usable = tuple(url for url, check in zip(targets, checks, strict=True) if not check.refusal)
    reasons = [f"notify target {check.target} refused: {check.refusal}" for check in checks if check.refusal]
    if not usable:
        return (), Decision.refuse(*(reasons or ["the config lists no notify targets"]))
    return usable, Decision.allow(*reasons)


class RateGate:
    """Counts actions per hour in the store, so every process and restart shares the same budget."""

    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock

    def take(self, action: str, key: str, limit: int, *, for_work: str | None = None) -> Decision:
        """Spend one unit of `action` for `key` this hour if `limit` allows it.

        With `for_work`, a retry of the same work (a delivery that failed half-way) reuses the unit its
        first attempt spent, so a transient error does not cost a run its place under the cap."""
        now = self.clock()
        hour = now.replace(minute=0, second=0, microsecond=0)
        spent_key = f"rate:{action}:{for_work}@{hour:%Y-%m-%dT%H}" if for_work else None
        if spent_key is not None and self.store.get_effect(spent_key) is not None:
            return Decision.allow(f"{action} for {for_work} was already counted this hour")
        if limit <= 0:
            return Decision.refuse(f"{action} is switched off for {key} (limit 0)")
        if self.store.get_count(RATE_SCOPE, f"{action}:{key}", hour) >= limit:
            return Decision.refuse(f"{action} limit of {limit} per hour reached for {key}")
        used = self.store.incr(RATE_SCOPE, f"{action}:{key}", hour)
        if used > limit:
            # Another worker took the last unit between our read and our increment.
            return Decision.refuse(f"{action} limit of {limit} per hour reached for {key}")
        if spent_key is not None:
            self.store.record_effect(spent_key, kind="rate", repository=key, now=now, target=str(used))
        return Decision.allow(f"{action} {used} of {limit} this hour for {key}")
