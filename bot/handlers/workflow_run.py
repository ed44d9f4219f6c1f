"""workflow_run completed: diagnose a failed or timed-out run and post the answer."""

from __future__ import annotations

from bot.events import Event
from bot.plan import RunInfo
from bot.routing import Outcome, Router
from bot.services import Services

DIAGNOSED_CONCLUSIONS = frozenset({"failure", "timed_out"})


def on_completed(event: Event, services: Services) -> Outcome:
    run = event.payload.get("workflow_run")
    if not isinstance(run, dict) or run.get("conclusion") not in DIAGNOSED_CONCLUSIONS:
        return Outcome.IGNORED
    installation_id = event.installation_id
    if installation_id is None:
        return Outcome.IGNORED
    return services.handle_failed_run(RunInfo.from_payload(event.payload, installation_id), event.delivery_id)


def register(router: Router[Services]) -> None:
    router.add("workflow_run", ("completed",), on_completed)
