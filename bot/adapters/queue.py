"""The job queue: huey on SQLite or Redis running one task, processing a stored webhook delivery."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from huey import Huey, RedisHuey, SqliteHuey
from huey.consumer import Consumer
from huey.serializer import SignedSerializer
from sqlalchemy.engine import make_url

from bot.adapters.store import DEFAULT_MAX_ATTEMPTS, FINISHED, DeliveryStatus, Store

log = logging.getLogger(__name__)

QUEUE_NAME = "mendbot"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
SQLITE_PREFIX = "sqlite:///"
MAX_ERROR_CHARS = 2000

#: Called with a delivery id; may return IGNORED to say the delivery needed no work. Raising means the
#: attempt failed and should be retried, so the handler must be idempotent (see the side-effect ledger).
Handler = Callable[[str], DeliveryStatus | None]


class QueueUnavailable(RuntimeError):
    """The queue backend (Redis or the SQLite file) cannot be reached."""


def make_huey(queue_url: str | None, sqlite_path: str, immediate: bool = False, *,
              name: str = QUEUE_NAME, secret: str | None = None) -> Huey:
    """Huey on Redis for a redis:// URL, else on SQLite (`sqlite_path`, or the path in a sqlite:/// URL).

    `immediate` runs each task inside `enqueue`, in memory, for one-shot commands with no worker.
    Task results are not kept: the store records the outcome of every delivery. Huey pickles tasks, so
    anyone who can write to a shared Redis could run code in the worker; with a `secret`, tasks are
    signed and a worker drops any task whose signature does not match.
    """
    options: dict[str, Any] = {"results": False, "immediate": immediate}
    if secret:
        options["serializer"] = SignedSerializer(secret=secret, salt=name)
    if queue_url is not None and queue_url.startswith(REDIS_SCHEMES):
        # Timeouts keep a dead Redis from hanging a webhook reply; the read timeout must exceed the
        # 1-second blocking pop that the consumer uses.
        pool = redis.ConnectionPool.from_url(queue_url, socket_connect_timeout=5, socket_timeout=10,
                                             health_check_interval=30)
        return RedisHuey(name, connection_pool=pool, **options)
    if queue_url is not None:
        if not queue_url.startswith(SQLITE_PREFIX):
            raise ValueError("queue URL must start with redis://, rediss://, unix:// or sqlite:///")
        sqlite_path = queue_url.removeprefix(SQLITE_PREFIX)
    return SqliteHuey(name, filename=sqlite_path, timeout=30, **options)


def sqlite_queue_path(database_url: str, default: str) -> str:
    """Where the SQLite queue lives: beside a SQLite database (`x.db` -> `x-queue.db`), else `default`."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return default
    database = Path(str(url.database))
    return str(database.with_name(f"{database.stem}-queue.db"))


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _HostedConsumer(Consumer):
    """A consumer that runs inside another server (uvicorn), which keeps its own signal handlers."""

    def _set_signal_handlers(self) -> None:
        pass


class Queue:
    """Runs the registered handler for each enqueued delivery, recording the outcome in the store.

    A delivery is marked running before the handler, done (or ignored) only after it returned, and
    failed with the error if it raised; huey then retries it after `retry_delay` seconds, doubling the
    delay each time, for `max_attempts` attempts in all. A delivery already finished is not run again.
    """

    def __init__(self, huey: Huey, store: Store, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 retry_delay: float = 30.0, poll_interval: float = 1.0,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self.huey = huey
        self.store = store
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.poll_interval = poll_interval
        self.clock = clock
        self._task: Callable[[str], object] | None = None

    def register(self, handler: Handler) -> None:
        if self._task is not None:
            raise RuntimeError("a delivery handler is already registered")

        def process_delivery(delivery_id: str) -> None:
            self._process(handler, delivery_id)

        # The task's registered name is this module plus the function name, so a new process finds
        # the tasks an old one left in the queue.
        register = self.huey.task(retries=self.max_attempts - 1, retry_delay=self.retry_delay,
                                  retry_backoff=2, name="process_delivery")
        self._task = register(process_delivery)

    def _process(self, handler: Handler, delivery_id: str) -> None:
        delivery = self.store.get_delivery(delivery_id)
        if delivery is None:
            log.warning("delivery %s is not in the store; nothing to do", delivery_id)
            return
        if delivery.status in FINISHED:
            log.info("delivery %s is already %s; not running it again", delivery_id, delivery.status)
            return
        self.store.mark_delivery(delivery_id, DeliveryStatus.RUNNING, now=self.clock())
        try:
            outcome = handler(delivery_id)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
            self.store.mark_delivery(delivery_id, DeliveryStatus.FAILED, now=self.clock(), error=reason)
            raise
        finished = DeliveryStatus.IGNORED if outcome is DeliveryStatus.IGNORED else DeliveryStatus.DONE
        self.store.mark_delivery(delivery_id, finished, now=self.clock())

    def enqueue(self, delivery_id: str) -> None:
        if self._task is None:
            raise RuntimeError("register a delivery handler before enqueueing")
        try:
            self._task(delivery_id)
        except (redis.RedisError, OSError) as error:
            raise QueueUnavailable(f"cannot enqueue delivery {delivery_id}: {error}") from error

    def waiting(self) -> set[str]:
        """Delivery ids queued to run now or scheduled for a retry."""
        tasks = self.huey.pending() + self.huey.scheduled()
        return {str(task.args[0]) for task in tasks if task.args}

    def depth(self) -> int:
        """Tasks waiting, including retries scheduled for later."""
        return int(self.huey.pending_count()) + int(self.huey.scheduled_count())

    def ping(self) -> bool:
        try:
            self.huey.pending_count()
        except Exception:
            log.warning("queue backend is not answering", exc_info=True)
            return False
        return True

    def _consumer(self, consumer_class: type[Consumer], workers: int) -> Consumer:
        return consumer_class(self.huey, workers=workers, worker_type="thread", periodic=False,
                              max_delay=self.poll_interval, scheduler_interval=1)

    def run_consumer(self, workers: int = 1) -> None:
        """Process tasks until SIGINT or SIGTERM (`mendbot worker`); call from the main thread."""
        self._consumer(Consumer, workers).run()

    def start_consumer(self, workers: int = 1) -> Consumer:
        """Process tasks in background threads of this process (`mendbot serve`).

        Stop it with `.stop(graceful=True)`, which waits for the task in hand.
        """
        consumer = self._consumer(_HostedConsumer, workers)
        consumer.start()
        return consumer


def requeue_unfinished(store: Store, queue: Queue, *, older_than: datetime | None = None) -> list[str]:
    """Enqueue the deliveries a crash or an outage left unfinished; returns their ids.

    Run it at startup. Deliveries already waiting in the queue are left alone; one that is enqueued
    twice anyway (the web process enqueueing it at that moment) is skipped once it is finished.
    """
    waiting = queue.waiting()
    requeued = []
    for delivery_id in store.unfinished_deliveries(older_than=older_than, max_attempts=queue.max_attempts):
        if delivery_id not in waiting:
            queue.enqueue(delivery_id)
            requeued.append(delivery_id)
    if requeued:
        log.info("requeued %d unfinished deliveries", len(requeued))
    return requeued
