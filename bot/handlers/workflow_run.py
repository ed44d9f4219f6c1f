"""workflow_run completed: diagnose a failed or timed-out run and post the answer."""

from __future__ import annotations

from bot.events import Event
from bot.plan import RunInfo
from bot.routing import Outcome, Router
from bot.services import Services

DIAGNOSED_CONCLUSIONS = frozenset({"failure", "timed_out"})


def is_failed_run(event: Event) -> bool:
    """A run that failed or timed out; most completed runs are green and need nothing."""
    run = event.payload.get("workflow_run")
    return isinstance(run, dict) and run.get("conclusion") in DIAGNOSED_CONCLUSIONS


def on_completed(event: Event, services: Services) -> Outcome:
    if not is_failed_run(event):
        return Outcome.IGNORED
    installation_id = event.installation_id
    if installation_id is None:
        return Outcome.IGNORED
    return services.handle_failed_run(RunInfo.from_payload(event.payload, installation_id), event.delivery_id)


def register(router: Router[Services]) -> None:
    router.add("workflow_run", ("completed",), on_completed, wants=is_failed_run)
