"""Build the App's parts from Settings once: store, queue, GitHub, diagnoser, router and services."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from bot.adapters.github import GitHubApp
from bot.adapters.queue import DEFAULT_MAX_ATTEMPTS, Queue, make_huey, sqlite_queue_path
from bot.adapters.store import DeliveryStatus, Store
from bot.diagnosers import OfflineDiagnoser
from bot.events import event_from_stored
from bot.handlers import workflow_run
from bot.metrics import Metrics
from bot.ports import Diagnoser
from bot.routing import Outcome, Router
from bot.services import Options, Services
from bot.settings import DEFAULT_QUEUE_FILE, Settings

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def build_diagnoser(settings: Settings, store: Store) -> Diagnoser:
    """The one place that chooses the diagnoser. The Claude diagnoser will be chosen here when an
    Anthropic key is set; until it is wired in, every deployment diagnoses offline from the rules."""
    return OfflineDiagnoser()


def build_router() -> Router[Services]:
    router: Router[Services] = Router()
    workflow_run.register(router)
    return router


@dataclass
class Components:
    """Everything the server and the worker share."""

    settings: Settings
    store: Store
    queue: Queue
    github: GitHubApp
    metrics: Metrics
    router: Router[Services]
    services: Services

    def handle_delivery(self, delivery_id: str) -> DeliveryStatus | None:
        """The queue's task: load the stored delivery and dispatch it; raising means retry later."""
        record = self.store.get_delivery(delivery_id)
        if record is None:
            return DeliveryStatus.IGNORED
        event = event_from_stored(record.delivery_id, record.event, record.payload)
        with self.metrics.job(event.name) as labels:
            outcome = self.router.dispatch(event, self.services)
            labels["outcome"] = str(outcome)
        return DeliveryStatus.IGNORED if outcome is Outcome.IGNORED else None

    def close(self) -> None:
        self.github.close()
        self.store.close()


def build_components(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], datetime] = utc_now,
    migrate: bool = True,
    print_plan: Callable[[str], None] = print,
) -> Components:
    """Wire the parts; `migrate` brings the database schema up to date first (safe to repeat)."""
    settings.require_app()
    store = Store(settings.database_url)
    if migrate:
        store.migrate()
    metrics = Metrics(registry)
    github = GitHubApp(
        str(settings.app_id),
        settings.private_key_pem(),
        settings.github_api_url,
        write_interval=settings.write_interval,
        on_api_call=metrics.on_api_call,
    )
    queue_file = sqlite_queue_path(settings.database_url, DEFAULT_QUEUE_FILE)
    huey = make_huey(settings.queue_url, queue_file, secret=settings.task_secret())
    queue = Queue(
        huey, store, max_attempts=DEFAULT_MAX_ATTEMPTS, retry_delay=settings.retry_delay, clock=clock
    )
    metrics.watch_queue(queue.depth)
    services = Services(
        store=store,
        github=github,
        diagnoser=build_diagnoser(settings, store),
        options=Options(
            bot_login=settings.bot_login, dry_run=settings.dry_run, log_max_bytes=settings.log_max_bytes
        ),
        clock=clock,
        print_plan=print_plan,
    )
    components = Components(settings, store, queue, github, metrics, build_router(), services)
    queue.register(components.handle_delivery)
    return components
