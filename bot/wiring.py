"""Build the App's parts from Settings once: store, queue, GitHub, diagnoser, router and services."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from prometheus_client import CollectorRegistry

from bot.adapters.anthropic import ClaudeDiagnoser
from bot.adapters.github import GitHubApp
from bot.adapters.queue import DEFAULT_MAX_ATTEMPTS, Queue, make_huey, sqlite_queue_path
from bot.adapters.store import DeliveryRecord, DeliveryStatus, Store
from bot.diagnosers import OfflineDiagnoser, RememberingDiagnoser
from bot.events import event_from_stored
from bot.handlers import issues, workflow_run
from bot.metrics import Metrics
from bot.model_diagnoser import ModelClient, ModelDiagnoser
from bot.policy.limits import DEFAULT_MODEL_PRICES, CircuitBreaker, LimitsConfig, PriceTable
from bot.ports import Diagnoser
from bot.routing import Outcome, Router
from bot.services import Options, Services
from bot.settings import DEFAULT_QUEUE_FILE, Settings, SettingsError

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


@cache
def process_breaker() -> CircuitBreaker:
    """The one circuit breaker of this process: it tracks the model API's health across every delivery."""
    return CircuitBreaker()


def model_client(settings: Settings) -> ClaudeDiagnoser:
    """The Claude adapter from the settings; the caller closes it (or lets the process end)."""
    key = settings.anthropic_key()
    if key is None:
        raise SettingsError("set MENDBOT_ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY)")
    return ClaudeDiagnoser(
        key,
        base_url=settings.anthropic_base_url,
        model=settings.anthropic_model,
        max_tokens=settings.anthropic_max_tokens,
        timeout=settings.anthropic_timeout,
    )


def build_diagnoser(
    settings: Settings,
    store: Store,
    *,
    client: ModelClient | None = None,
    breaker: CircuitBreaker | None = None,
) -> Diagnoser:
    """The one place that chooses the diagnoser: Claude behind the spending caps when an Anthropic key is
    set, otherwise the rules. `client` and `breaker` default to a new adapter and the process breaker."""
    if settings.anthropic_key() is None:
        return OfflineDiagnoser()
    limits = LimitsConfig(
        diagnoses_per_hour_per_repository=settings.model_diagnoses_per_hour,
        usd_per_day_per_repository=settings.model_usd_per_day_per_repository,
        usd_per_day_per_installation=settings.model_usd_per_day_per_installation,
    )
    prices = PriceTable(models={**DEFAULT_MODEL_PRICES, **settings.model_prices})
    model = ModelDiagnoser(
        client or model_client(settings),
        store,
        limits,
        prices,
        OfflineDiagnoser(),
        breaker or process_breaker(),
    )
    return RememberingDiagnoser(model, store)


def build_router() -> Router[Services]:
    router: Router[Services] = Router()
    workflow_run.register(router)
    issues.register(router)
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

    def handle_delivery(self, record: DeliveryRecord) -> DeliveryStatus | None:
        """The queue's task: dispatch the stored delivery the queue took; raising means retry later."""
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
    # Imported here: apprise takes a fifth of a second to load, and `mendbot diagnose` needs none of it.
    from bot.adapters.notify import AppriseNotifier

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
            bot_login=settings.bot_login,
            dry_run=settings.dry_run,
            log_max_bytes=settings.log_max_bytes,
            trigger_bots=settings.trigger_bots,
        ),
        clock=clock,
        print_plan=print_plan,
        notifier=AppriseNotifier(
            settings.notify_schemes,
            allow_private=settings.notify_allow_private,
            timeout=settings.notify_timeout,
        ),
    )
    components = Components(settings, store, queue, github, metrics, build_router(), services)
    queue.register(components.handle_delivery)
    return components
