"""Handlers are found by (event, action) and run in registration order."""

from __future__ import annotations

from bot.events import Event
from bot.routing import Outcome, Router


def event(name: str, action: str | None) -> Event:
    return Event(name, action, "d-1", {"action": action})


def test_dispatch_by_event_and_action_in_order() -> None:
    calls: list[str] = []
    router: Router[list[str]] = Router()

    @router.on("workflow_run", "completed")
    def first(e: Event, log: list[str]) -> Outcome:
        log.append("first")
        return Outcome.IGNORED

    @router.on("workflow_run")
    def any_action(e: Event, log: list[str]) -> Outcome:
        log.append(f"any:{e.action}")
        return Outcome.DONE

    assert router.dispatch(event("workflow_run", "completed"), calls) is Outcome.DONE
    assert calls == ["first", "any:completed"]
    calls.clear()
    assert router.dispatch(event("workflow_run", "requested"), calls) is Outcome.DONE
    assert calls == ["any:requested"]


def test_unknown_events_and_actions_are_not_handled() -> None:
    router: Router[None] = Router()
    router.add("workflow_run", ("completed",), lambda e, c: Outcome.DONE)
    assert router.handles("workflow_run", "completed")
    assert not router.handles("workflow_run", "requested")
    assert not router.handles("issues", "opened")
    assert router.dispatch(event("issues", "opened"), None) is Outcome.IGNORED


def test_all_ignored_means_ignored() -> None:
    router: Router[None] = Router()
    router.add("push", (), lambda e, c: Outcome.IGNORED)
    assert router.dispatch(event("push", None), None) is Outcome.IGNORED


def test_the_app_routes_workflow_run_completed() -> None:
    from bot.wiring import build_router

    router = build_router()
    assert router.handles("workflow_run", "completed")
    assert not router.handles("workflow_run", "requested")
    assert not router.handles("workflow_job", "completed")
