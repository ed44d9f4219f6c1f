"""The job queue: huey on SQLite or Redis running one task, processing a stored webhook delivery."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from huey import Huey, RedisHuey, SqliteHuey
from huey.api import TaskWrapper
from huey.consumer import Consumer
from huey.exceptions import RetryTask
from huey.serializer import SignedSerializer
from huey.storage import SqliteStorage
from sqlalchemy.engine import make_url

from bot.adapters.github import RateLimited
from bot.adapters.store import (
    DEFAULT_MAX_ATTEMPTS,
    DELIVERY_LEASE,
    FINISHED,
    DeliveryRecord,
    DeliveryStatus,
    Store,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

QUEUE_NAME = "mendbot"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
SQLITE_PREFIX = "sqlite:///"
MAX_ERROR_CHARS = 2000
#: How often a worker renews the lease of the delivery in hand: a missed renewal or two keeps the lease.
HEARTBEAT_SECONDS = 5.0
#: GitHub's primary rate limits reset every hour; a reset said to be further away is not believed.
MAX_RATE_LIMIT_WAIT = timedelta(hours=2)

#: Called with the delivery as `start_delivery` took it (so it need not be read again); may return IGNORED
#: to say the delivery needed no work. Raising means the attempt failed and should be retried, so the
#: handler must be idempotent (see the side-effect ledger).
Handler = Callable[[DeliveryRecord], DeliveryStatus | None]


class QueueUnavailable(RuntimeError):
    """The queue backend (Redis or the SQLite file) cannot be reached."""


class _SqliteStorage(SqliteStorage):
    """huey's SQLite storage, committing with synchronous=NORMAL instead of a flush per commit.

    In WAL mode NORMAL loses no commit when a process dies, only the last ones when the machine does
    (power loss, kernel crash), and the store makes that loss harmless: every delivery is committed
    there before its 202, and `requeue_unfinished` queues again each one that is pending, running or
    failed with attempts left, at every start of a worker and in the `mendbot serve` sweep. A lost
    dequeue runs a task twice, and `start_delivery` refuses the second run of a finished delivery.
    """

    def _create_connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection = super()._create_connection()
        connection.execute("PRAGMA synchronous = NORMAL")
        return connection


class _SqliteHuey(SqliteHuey):
    storage_class = _SqliteStorage


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
    return _SqliteHuey(name, filename=sqlite_path, timeout=30, **options)


def sqlite_queue_path(database_url: str, default: str) -> str:
    """Where the SQLite queue lives: beside a SQLite database (`x.db` -> `x-queue.db`), else `default`."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return default
    database = Path(str(url.database))
    return str(database.with_name(f"{database.stem}-queue.db"))


def _quiet_per_task_logs() -> None:
    """Keep huey's warnings and errors but not the two INFO lines it logs for every task: at hundreds of
    deliveries a second they cost CPU and bury the rest, and the store records every outcome anyway.
    The consumer's start and stop lines stay, and a level the deployment set itself is left alone."""
    huey_log = logging.getLogger("huey")
    if huey_log.level == logging.NOTSET:
        huey_log.setLevel(logging.WARNING)
        consumer_log = logging.getLogger("huey.consumer")
        if consumer_log.level == logging.NOTSET:
            consumer_log.setLevel(logging.INFO)


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

    While the handler works, the delivery's lease is renewed every `heartbeat` seconds; a delivery that
    another worker holds under a live lease is not run, but looked at again when that lease would end.
    A GitHub rate limit that lifts later than a call may wait puts the delivery back to pending and runs
    it again after the reset, without counting the attempt.
    """

    def __init__(self, huey: Huey, store: Store, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 retry_delay: float = 30.0, poll_interval: float = 1.0,
                 clock: Callable[[], datetime] = _utc_now, lease: timedelta = DELIVERY_LEASE,
                 heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.huey = huey
        self.store = store
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.poll_interval = poll_interval
        self.clock = clock
        self.lease = lease
        self.heartbeat = heartbeat
        self._task: TaskWrapper | None = None
        self._in_hand: set[str] = set()
        self._in_hand_lock = threading.Lock()
        self._renewer: threading.Thread | None = None

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
        started = self.store.start_delivery(delivery_id, now=self.clock(), lease=self.lease)
        if started is None:
            self._not_started(delivery_id)
            return
        try:
            with self._renewing_lease(delivery_id):
                outcome = handler(started)
        except RateLimited as limited:
            now = self.clock()
            resume = min(datetime.fromtimestamp(limited.reset_at, UTC), now + MAX_RATE_LIMIT_WAIT)
            reason = f"waiting for GitHub's rate limit to reset at {resume:%H:%M:%S} UTC: {limited}"
            self.store.postpone_delivery(delivery_id, now=now, reason=reason[:MAX_ERROR_CHARS])
            log.warning("delivery %s: %s", delivery_id, reason)
            # huey runs it again at `eta` and leaves its retry count alone.
            raise RetryTask(eta=resume) from limited
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
            self.store.mark_delivery(delivery_id, DeliveryStatus.FAILED, now=self.clock(), error=reason)
            raise
        finished = DeliveryStatus.IGNORED if outcome is DeliveryStatus.IGNORED else DeliveryStatus.DONE
        self.store.mark_delivery(delivery_id, finished, now=self.clock())

    def _not_started(self, delivery_id: str) -> None:
        delivery = self.store.get_delivery(delivery_id)
        if delivery is None:
            log.warning("delivery %s is not in the store; nothing to do", delivery_id)
        elif delivery.status in FINISHED:
            log.info("delivery %s is already %s; not running it again", delivery_id, delivery.status)
        else:
            # Another worker holds it. If that worker dies, its lease runs out and this task takes over.
            log.info("delivery %s is being processed by another worker; looking again later", delivery_id)
            raise RetryTask(eta=delivery.updated_at + self.lease)

    @contextmanager
    def _renewing_lease(self, delivery_id: str) -> Iterator[None]:
        """Renew the delivery's lease while the handler works, since one GitHub call may block for minutes.

        One thread renews every delivery in hand: starting and joining a thread per delivery cost ~0.1 ms
        of CPU and 0.4 ms of wall time, on each of the many deliveries that need no work.
        """
        with self._in_hand_lock:
            self._in_hand.add(delivery_id)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_leases, name="lease-renewer", daemon=True)
                self._renewer.start()
        try:
            yield
        finally:
            with self._in_hand_lock:
                self._in_hand.discard(delivery_id)

    def _renew_leases(self) -> None:
        """Renew every lease in hand each heartbeat; the thread ends when a heartbeat finds none."""
        while True:
            time.sleep(self.heartbeat)
            with self._in_hand_lock:
                in_hand = sorted(self._in_hand)
                if not in_hand:
                    self._renewer = None
                    return
            for delivery_id in in_hand:
                try:
                    self.store.touch_delivery(delivery_id, now=self.clock())
                except StoreUnavailable as down:
                    log.warning("cannot renew the lease of delivery %s: %s", delivery_id, down)

    def enqueue(self, delivery_id: str, at: datetime | None = None) -> None:
        """Queue the delivery to run now, or at `at`."""
        if self._task is None:
            raise RuntimeError("register a delivery handler before enqueueing")
        try:
            if at is None:
                self._task(delivery_id)
            else:
                self._task.schedule(args=(delivery_id,), eta=at)
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
        _quiet_per_task_logs()
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
    """Enqueue the deliveries a crash or an outage left unfinished; returns the ids queued to run now.

    Run it at startup. Deliveries already waiting in the queue are left alone; one that is enqueued
    twice anyway (the web process enqueueing it at that moment) is skipped once it is finished. A running
    delivery whose lease is live belongs to a worker that is still at it: it is only scheduled for when
    that lease would end, in case the worker dies, and is run then only if the lease really lapsed.
    """
    waiting = queue.waiting()
    now = queue.clock()
    requeued = []
    for delivery_id in store.unfinished_deliveries(older_than=older_than, max_attempts=queue.max_attempts):
        if delivery_id in waiting:
            continue
        delivery = store.get_delivery(delivery_id)
        if delivery is not None and delivery.held(now, queue.lease):
            queue.enqueue(delivery_id, at=delivery.updated_at + queue.lease)
            continue
        queue.enqueue(delivery_id)
        requeued.append(delivery_id)
    if requeued:
        log.info("requeued %d unfinished deliveries", len(requeued))
    return requeued
