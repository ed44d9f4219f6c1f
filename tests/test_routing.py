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


def test_wants_asks_each_matching_handler_about_the_payload() -> None:
    router: Router[None] = Router()
    router.add("workflow_run", ("completed",), lambda e, c: Outcome.DONE, wants=lambda e: e.payload.get("red") is True)
    red = Event("workflow_run", "completed", "d-1", {"red": True})
    green = Event("workflow_run", "completed", "d-2", {"red": False})
    assert router.wants(red)
    assert not router.wants(green)
    assert not router.wants(Event("workflow_run", "requested", "d-3", {"red": True}))
    # A handler that says nothing about the payload wants every event it is routed.
    router.add("push", (), lambda e, c: Outcome.DONE)
    assert router.wants(event("push", None))


def test_the_app_wants_failed_and_timed_out_runs_only() -> None:
    from bot.wiring import build_router

    router = build_router()

    def run(conclusion: str | None) -> Event:
        return Event("workflow_run", "completed", "d", {"workflow_run": {"conclusion": conclusion}})

    assert router.wants(run("failure")) and router.wants(run("timed_out"))
    assert not any(router.wants(run(c)) for c in ("success", "cancelled", "skipped", "neutral", None))
