"""Which handlers run for which (event, action), dispatched in the order they were registered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from bot.events import Event

C = TypeVar("C")


class Outcome(StrEnum):
    """What a handler did with an event: worked on it, or found nothing to do."""

    DONE = "done"
    IGNORED = "ignored"


Handler = Callable[[Event, C], Outcome]
# What a handler can tell from the payload alone that it has work to do: a green run never needs diagnosing.
Wants = Callable[[Event], bool]
ANY_ACTION = "*"


def _always(_event: Event) -> bool:
    return True


@dataclass
class Router(Generic[C]):
    """Handlers keyed by event name and action; `*` matches every action of an event."""

    _routes: list[tuple[str, str, Handler[C], Wants]] = field(default_factory=list)

    def add(self, event: str, actions: tuple[str, ...], handler: Handler[C], wants: Wants = _always) -> None:
        for action in actions or (ANY_ACTION,):
            self._routes.append((event, action, handler, wants))

    def on(self, event: str, *actions: str) -> Callable[[Handler[C]], Handler[C]]:
        def register(handler: Handler[C]) -> Handler[C]:
            self.add(event, actions, handler)
            return handler

        return register

    def _matching(self, event: str, action: str | None) -> list[tuple[Handler[C], Wants]]:
        return [
            (handler, wants)
            for name, wanted, handler, wants in self._routes
            if name == event and wanted in (ANY_ACTION, action)
        ]

    def handlers_for(self, event: str, action: str | None) -> list[Handler[C]]:
        return [handler for handler, _ in self._matching(event, action)]

    def handles(self, event: str, action: str | None) -> bool:
        return bool(self._matching(event, action))

    def wants(self, event: Event) -> bool:
        """Whether some handler may have work for this event, judged from its payload alone (no I/O)."""
        return any(wants(event) for _, wants in self._matching(event.name, event.action))

    def dispatch(self, event: Event, context: C) -> Outcome:
        """Run every matching handler in registration order; DONE if any of them did work."""
        outcomes = [handler(event, context) for handler in self.handlers_for(event.name, event.action)]
        return Outcome.DONE if Outcome.DONE in outcomes else Outcome.IGNORED
