"""The delivery queue on a real SQLite file and a real Redis server, with real huey consumers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from huey import RedisHuey, SqliteHuey

from bot.adapters.github import GitHubApp, InstallationClient, RetryPolicy
from bot.adapters.queue import Queue, QueueUnavailable, make_huey, requeue_unfinished, sqlite_queue_path
from bot.adapters.store import DELIVERY_LEASE, DeliveryRecord, DeliveryStatus, Store, migrate
from tests.app_support import APP_ID, INSTALLATION, REPO, fake_github, rsa_keys

if TYPE_CHECKING:
    from tests.servers import RedisServer

pytest_plugins = ["tests.servers"]  # fixtures that start real PostgreSQL and Redis servers

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@dataclass
class Backend:
    queue_url: str | None
    sqlite_path: str

    def queue(self, store: Store, *, retry_delay: float = 30, max_attempts: int = 5) -> Queue:
        """A queue on a new huey instance, as a freshly started process would build it."""
        return Queue(make_huey(self.queue_url, self.sqlite_path), store, poll_interval=0.05,
                     retry_delay=retry_delay, max_attempts=max_attempts)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    queue_url = str(request.getfixturevalue("redis_url")) if request.param == "redis" else None
    return Backend(queue_url, str(tmp_path / "queue.db"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    store = Store(url)
    yield store
    store.close()


class Recorder:
    """A handler that records its calls and fails the first `failures` of them."""

    def __init__(self, failures: int = 0, outcome: DeliveryStatus | None = None) -> None:
        self.calls: list[str] = []
        self.received: list[DeliveryRecord] = []
        self.failures = failures
        self.outcome = outcome
        self.lock = threading.Lock()

    def __call__(self, delivery: DeliveryRecord) -> DeliveryStatus | None:
        with self.lock:
            self.calls.append(delivery.delivery_id)
            self.received.append(delivery)
            if len(self.calls) <= self.failures:
                raise ConnectionError(f"GitHub timed out (call {len(self.calls)})")
        return self.outcome


def save(store: Store, delivery_id: str) -> None:
    assert store.save_delivery(delivery_id, event="workflow_run", action="completed", installation_id=7,
                               repository="octo/app", payload="{}", now=NOW)


def status(store: Store, delivery_id: str) -> DeliveryStatus:
    delivery = store.get_delivery(delivery_id)
    assert delivery is not None
    return delivery.status


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the queue")
        time.sleep(0.02)


def run_until(queue: Queue, condition: Callable[[], bool], linger: float = 0.3) -> None:
    """Run a consumer in background threads until `condition`, then a little longer to catch repeats."""
    consumer = queue.start_consumer()
    try:
        wait_for(condition)
        time.sleep(linger)
    finally:
        consumer.stop(graceful=True)


def test_make_huey_picks_the_backend(tmp_path: Path) -> None:
    on_file = make_huey(None, str(tmp_path / "a.db"))
    assert isinstance(on_file, SqliteHuey)
    assert (tmp_path / "a.db").exists()
    make_huey(f"sqlite:///{tmp_path / 'b.db'}", str(tmp_path / "unused.db"))
    assert (tmp_path / "b.db").exists() and not (tmp_path / "unused.db").exists()
    assert isinstance(make_huey("redis://127.0.0.1:1/0", "unused.db"), RedisHuey)
    with pytest.raises(ValueError):
        make_huey("amqp://broker", "unused.db")


def test_a_delivery_is_handled_once_and_marked_done(backend: Backend, store: Store) -> None:
    save(store, "d-1")
    handler = Recorder()
    queue = backend.queue(store)
    queue.register(handler)
    queue.enqueue("d-1")
    assert queue.depth() == 1

    run_until(queue, lambda: status(store, "d-1") is DeliveryStatus.DONE)

    assert handler.calls == ["d-1"]
    assert queue.depth() == 0
    assert store.get_delivery("d-1").attempts == 1  # type: ignore[union-attr]
    # The handler gets the delivery as the queue took it, payload and all, without reading it again.
    [given] = handler.received
    assert (given.status, given.attempts, given.payload, given.repository) == (
        DeliveryStatus.RUNNING, 1, "{}", "octo/app")


def test_queued_work_survives_a_restart(backend: Backend, store: Store) -> None:
    save(store, "d-1")
    before_crash = backend.queue(store)
    before_crash.register(Recorder())
    before_crash.enqueue("d-1")
    del before_crash  # the process dies before any consumer ran

    handler = Recorder()
    after_restart = backend.queue(store)
    after_restart.register(handler)
    assert after_restart.waiting() == {"d-1"}
    assert requeue_unfinished(store, after_restart) == []  # already waiting: not queued twice
    run_until(after_restart, lambda: status(store, "d-1") is DeliveryStatus.DONE)
    assert handler.calls == ["d-1"]


def test_a_task_lost_with_its_worker_is_recovered_from_the_store(backend: Backend, store: Store) -> None:
    save(store, "d-1")
    dying = backend.queue(store)
    dying.register(Recorder())
    dying.enqueue("d-1")
    assert dying.huey.dequeue() is not None  # a worker took the task, then was killed
    assert dying.depth() == 0

    handler = Recorder()
    restarted = backend.queue(store)
    restarted.register(handler)
    assert requeue_unfinished(store, restarted) == ["d-1"]
    run_until(restarted, lambda: status(store, "d-1") is DeliveryStatus.DONE)
    assert handler.calls == ["d-1"]


def test_a_failing_handler_is_retried_after_a_delay(backend: Backend, store: Store) -> None:
    save(store, "d-1")
    handler = Recorder(failures=1)
    queue = backend.queue(store, retry_delay=1)
    queue.register(handler)
    queue.enqueue("d-1")

    consumer = queue.start_consumer()
    try:
        wait_for(lambda: status(store, "d-1") is DeliveryStatus.FAILED)
        failed = store.get_delivery("d-1")
        assert failed is not None
        assert failed.last_error == "ConnectionError: GitHub timed out (call 1)"
        assert handler.calls == ["d-1"]  # not yet: the retry waits for its delay
        wait_for(lambda: status(store, "d-1") is DeliveryStatus.DONE)
    finally:
        consumer.stop(graceful=True)

    done = store.get_delivery("d-1")
    assert done is not None
    assert (done.attempts, done.last_error, handler.calls) == (2, None, ["d-1", "d-1"])


def test_retries_stop_after_max_attempts(backend: Backend, store: Store) -> None:
    save(store, "d-1")
    handler = Recorder(failures=100)
    queue = backend.queue(store, retry_delay=0, max_attempts=3)
    queue.register(handler)
    queue.enqueue("d-1")

    run_until(queue, lambda: len(handler.calls) == 3)

    delivery = store.get_delivery("d-1")
    assert delivery is not None
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 3)
    assert handler.calls == ["d-1"] * 3
    assert requeue_unfinished(store, queue) == []


def test_requeue_enqueues_deliveries_saved_but_never_enqueued(backend: Backend, store: Store) -> None:
    for delivery_id in ("saved-only", "finished", "skipped"):
        save(store, delivery_id)
    store.mark_delivery("finished", "done", now=NOW)
    store.mark_delivery("skipped", "ignored", now=NOW)
    handler = Recorder()
    queue = backend.queue(store)
    queue.register(handler)

    assert requeue_unfinished(store, queue) == ["saved-only"]
    assert queue.depth() == 1
    run_until(queue, lambda: status(store, "saved-only") is DeliveryStatus.DONE)
    assert handler.calls == ["saved-only"]


def test_finished_deliveries_are_not_rerun_and_ignored_is_recorded(backend: Backend, store: Store) -> None:
    save(store, "replayed")
    store.mark_delivery("replayed", "done", now=NOW)
    save(store, "not-for-us")
    handler = Recorder(outcome=DeliveryStatus.IGNORED)
    queue = backend.queue(store)
    queue.register(handler)
    queue.enqueue("replayed")
    queue.enqueue("not-for-us")

    run_until(queue, lambda: status(store, "not-for-us") is DeliveryStatus.IGNORED)
    assert handler.calls == ["not-for-us"]


def test_immediate_mode_runs_inside_enqueue(tmp_path: Path, store: Store) -> None:
    save(store, "d-1")
    handler = Recorder()
    queue = Queue(make_huey(None, str(tmp_path / "queue.db"), immediate=True), store)
    queue.register(handler)
    queue.enqueue("d-1")
    assert handler.calls == ["d-1"]
    assert status(store, "d-1") is DeliveryStatus.DONE
    assert not (tmp_path / "queue.db").exists()


def test_a_stopped_redis_fails_ping_and_enqueue(own_redis: RedisServer, store: Store) -> None:
    queue = Queue(make_huey(own_redis.url, "unused.db"), store)
    queue.register(Recorder())
    assert queue.ping() is True
    own_redis.stop()
    assert queue.ping() is False
    with pytest.raises(QueueUnavailable):
        queue.enqueue("d-1")


def test_a_handler_can_be_registered_only_once(backend: Backend, store: Store) -> None:
    queue = backend.queue(store)
    with pytest.raises(RuntimeError):
        queue.enqueue("d-1")
    queue.register(Recorder())
    with pytest.raises(RuntimeError):
        queue.register(Recorder())


def test_the_sqlite_queue_sits_beside_a_sqlite_database() -> None:
    assert sqlite_queue_path("sqlite:///data/state.db", "fallback.db") == "data/state-queue.db"
    assert sqlite_queue_path("sqlite:////var/lib/mendbot/state.db", "x") == "/var/lib/mendbot/state-queue.db"
    assert sqlite_queue_path("postgresql+psycopg://db/mendbot", "/data/queue.db") == "/data/queue.db"
    assert sqlite_queue_path("sqlite://", "/data/queue.db") == "/data/queue.db"


def test_a_signed_queue_drops_tasks_it_did_not_sign(backend: Backend, store: Store) -> None:
    save(store, "forged")
    save(store, "genuine")
    forger = Queue(make_huey(backend.queue_url, backend.sqlite_path, secret="not-ours"), store)
    forger.register(Recorder())
    forger.enqueue("forged")

    handler = Recorder()
    signed = make_huey(backend.queue_url, backend.sqlite_path, secret="ours")
    worker = Queue(signed, store, poll_interval=0.05)
    worker.register(handler)
    worker.enqueue("genuine")
    run_until(worker, lambda: status(store, "genuine") is DeliveryStatus.DONE)
    assert handler.calls == ["genuine"]
    assert status(store, "forged") is DeliveryStatus.PENDING


class RateLimitedOnce:
    """A handler that reads a run through the real GitHub adapter; the fake server rate-limits the first try."""

    def __init__(self, client: InstallationClient, run_id: int) -> None:
        self.client = client
        self.run_id = run_id
        self.calls: list[float] = []

    def __call__(self, delivery: DeliveryRecord) -> DeliveryStatus | None:
        self.calls.append(time.time())
        self.client.get_run(REPO, self.run_id)
        return None


def test_a_rate_limit_that_resets_later_postpones_the_delivery_without_spending_an_attempt(
    backend: Backend, store: Store
) -> None:
    fake = fake_github()
    app = GitHubApp(APP_ID, rsa_keys()[0], fake.api_url, retry=RetryPolicy(max_wait=0.5))
    try:
        run = fake.add_run(REPO)
        reset = int(time.time()) + 2
        # Further away than one call may wait (max_wait), so the call gives up at once.
        fake.fail_next(r"/actions/runs/\d+$", 403,
                       headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)})
        save(store, "d-1")
        handler = RateLimitedOnce(app.client(INSTALLATION), run["id"])
        # A single attempt allowed: a rate limit must not use it up.
        queue = backend.queue(store, retry_delay=0, max_attempts=1)
        queue.register(handler)
        queue.enqueue("d-1")

        consumer = queue.start_consumer()
        try:
            # Back to pending, and in huey's schedule for after the reset.
            wait_for(lambda: len(handler.calls) == 1 and status(store, "d-1") is DeliveryStatus.PENDING
                     and queue.waiting() == {"d-1"})
            postponed = store.get_delivery("d-1")
            assert postponed is not None and postponed.attempts == 0
            assert postponed.last_error is not None and "rate limit" in postponed.last_error
            wait_for(lambda: status(store, "d-1") is DeliveryStatus.DONE)
        finally:
            consumer.stop(graceful=True)
    finally:
        app.close()
        fake.stop()
    done = store.get_delivery("d-1")
    assert done is not None and (done.attempts, done.last_error) == (1, None)
    assert len(handler.calls) == 2 and handler.calls[1] >= reset


class Blocking:
    """A handler that works until released, like one waiting out a long GitHub call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()

    def __call__(self, delivery: DeliveryRecord) -> DeliveryStatus | None:
        self.calls.append(delivery.delivery_id)
        assert self.release.wait(10)
        return None


def test_a_delivery_in_hand_keeps_its_lease_and_is_not_run_twice(backend: Backend, store: Store) -> None:
    save(store, "d-1")
    handler = Blocking()
    queue = Queue(make_huey(backend.queue_url, backend.sqlite_path), store, poll_interval=0.05,
                  lease=timedelta(seconds=1), heartbeat=0.1)
    queue.register(handler)
    queue.enqueue("d-1")
    consumer = queue.start_consumer(workers=2)
    try:
        wait_for(lambda: handler.calls == ["d-1"])
        started = store.get_delivery("d-1")
        assert started is not None
        # The same delivery again (a sweep, a redelivery) while the first worker is still at it.
        queue.enqueue("d-1")
        time.sleep(2.5)  # more than twice the lease
        renewed = store.get_delivery("d-1")
        assert renewed is not None and renewed.updated_at > started.updated_at + timedelta(seconds=1.5)
        assert handler.calls == ["d-1"] and renewed.attempts == 1
        assert requeue_unfinished(store, queue) == []
        handler.release.set()
        wait_for(lambda: status(store, "d-1") is DeliveryStatus.DONE)
        wait_for(lambda: queue.depth() == 0)  # the deferred copy ran, saw it finished and stopped
    finally:
        handler.release.set()
        consumer.stop(graceful=True)
    assert handler.calls == ["d-1"]


def test_the_sweep_leaves_a_live_lease_alone_and_takes_over_a_lapsed_one(
    backend: Backend, store: Store
) -> None:
    now = datetime.now(UTC)
    for delivery_id in ("live", "lapsed"):
        save(store, delivery_id)
    store.start_delivery("live", now=now - DELIVERY_LEASE / 2)
    store.start_delivery("lapsed", now=now - DELIVERY_LEASE - timedelta(seconds=1))
    handler = Recorder()
    queue = backend.queue(store)
    queue.register(handler)

    assert requeue_unfinished(store, queue) == ["lapsed"]
    # The live one is only looked at again when its lease would end, in case its worker dies.
    assert queue.waiting() == {"live", "lapsed"}
    [deferred] = [task for task in queue.huey.pending() if task.args == ("live",)]
    lease_end = now - DELIVERY_LEASE / 2 + DELIVERY_LEASE
    assert abs(deferred.eta.replace(tzinfo=UTC) - lease_end) < timedelta(seconds=1)
    assert requeue_unfinished(store, queue, older_than=now - DELIVERY_LEASE) == []
    run_until(queue, lambda: status(store, "lapsed") is DeliveryStatus.DONE)
    assert handler.calls == ["lapsed"]
    assert status(store, "live") is DeliveryStatus.RUNNING


def test_the_sqlite_queue_commits_without_a_flush_per_commit(tmp_path: Path) -> None:
    huey = make_huey(None, str(tmp_path / "queue.db"))
    # 1 is NORMAL: in WAL mode a commit survives the process dying; the store re-queues what a machine crash loses.
    assert huey.storage.conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert huey.storage.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_consumer_keeps_huey_errors_but_not_its_per_task_lines(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("huey", "huey.consumer"):  # as a fresh process has them; restored after the test
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    save(store, "d-1")
    save(store, "d-2")
    queue = Queue(make_huey(None, str(tmp_path / "queue.db")), store, poll_interval=0.05, retry_delay=0.05)
    queue.register(Recorder(failures=1))
    queue.enqueue("d-1")
    queue.enqueue("d-2")

    with caplog.at_level(logging.INFO):
        run_until(queue, lambda: {status(store, "d-1"), status(store, "d-2")} == {DeliveryStatus.DONE})

    from_huey = [record for record in caplog.records if record.name.startswith("huey")]
    assert not [record.getMessage() for record in from_huey
                if record.name == "huey" and record.levelno < logging.WARNING]
    assert any(record.levelno == logging.ERROR and "ConnectionError" in (record.exc_text or "")
               for record in from_huey)
    assert any(record.name == "huey.consumer" and "consumer started" in record.getMessage() for record in from_huey)


def test_a_huey_log_level_the_deployment_set_is_left_alone(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("huey"), "level", logging.DEBUG)
    queue = Queue(make_huey(None, str(tmp_path / "queue.db")), store, poll_interval=0.05)
    queue.register(Recorder())
    queue.start_consumer().stop(graceful=True)
    assert logging.getLogger("huey").level == logging.DEBUG
