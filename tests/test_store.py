"""The state store against real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bot.adapters.store import (
    DEFAULT_MAX_ATTEMPTS,
    DELIVERY_LEASE,
    Base,
    DeliveryStatus,
    Store,
    StoreUnavailable,
    Usage,
    migrate,
)

if TYPE_CHECKING:
    from tests.servers import PostgresServer

pytest_plugins = ["tests.servers"]  # fixtures that start real PostgreSQL and Redis servers

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    migrate(store_url)
    store = Store(store_url)
    yield store
    store.close()


def save(store: Store, delivery_id: str, now: datetime = NOW, payload: str = "{}") -> bool:
    return store.save_delivery(delivery_id, event="workflow_run", action="completed", installation_id=7,
                               repository="octo/app", payload=payload, now=now)


def test_migrations_run_twice_and_match_the_models(store_url: str) -> None:
    migrate(store_url)
    migrate(store_url)
    engine = sa.create_engine(store_url)
    with engine.connect() as connection:
        versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert versions == ["0001"]
    assert differences == []


def test_concurrent_migrations_do_not_collide(store_url: str) -> None:
    # The web process and the worker both migrate when they start.
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(store_url)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = Store(store_url)
    assert save(store, "d-1") is True
    store.close()


def test_a_delivery_is_saved_once(store: Store) -> None:
    assert save(store, "d-1", payload='{"first": true}') is True
    assert save(store, "d-1", payload='{"second": true}') is False
    delivery = store.get_delivery("d-1")
    assert delivery is not None
    assert delivery.payload == '{"first": true}'
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.attempts == 0
    assert delivery.received_at == NOW
    assert store.get_delivery("d-2") is None


def test_status_transitions_count_attempts_and_keep_the_last_error(store: Store) -> None:
    save(store, "d-1")
    later = NOW + timedelta(minutes=1)
    assert store.mark_delivery("d-1", DeliveryStatus.RUNNING, now=later).attempts == 1
    failed = store.mark_delivery("d-1", "failed", now=later, error="GitHub said 502")
    assert (failed.status, failed.last_error, failed.attempts) == ("failed", "GitHub said 502", 1)
    running = store.mark_delivery("d-1", "running", now=later)
    assert (running.attempts, running.last_error) == (2, "GitHub said 502")
    finished = later + timedelta(seconds=5)
    done = store.mark_delivery("d-1", "done", now=finished)
    assert (done.status, done.last_error, done.updated_at) == (DeliveryStatus.DONE, None, finished)
    assert store.get_delivery("d-1") == done

    with pytest.raises(KeyError):
        store.mark_delivery("missing", "running", now=later)
    with pytest.raises(ValueError):
        store.mark_delivery("d-1", "exploded", now=later)


def test_unfinished_deliveries_are_those_a_restart_must_pick_up(store: Store) -> None:
    for number in range(7):
        save(store, f"d-{number}", now=NOW + timedelta(seconds=number))
    store.mark_delivery("d-1", "running", now=NOW)
    store.mark_delivery("d-2", "running", now=NOW)
    store.mark_delivery("d-2", "failed", now=NOW, error="boom")
    for _ in range(DEFAULT_MAX_ATTEMPTS):
        store.mark_delivery("d-3", "running", now=NOW)
    store.mark_delivery("d-3", "failed", now=NOW, error="gave up")
    store.mark_delivery("d-4", "done", now=NOW)
    store.mark_delivery("d-5", "ignored", now=NOW)
    store.mark_delivery("d-6", "running", now=NOW + timedelta(hours=1))

    assert store.unfinished_deliveries() == ["d-0", "d-1", "d-2", "d-6"]
    assert store.unfinished_deliveries(older_than=NOW + timedelta(minutes=10)) == ["d-0", "d-1", "d-2"]
    more_attempts = store.unfinished_deliveries(max_attempts=DEFAULT_MAX_ATTEMPTS + 1)
    assert more_attempts == ["d-0", "d-1", "d-2", "d-3", "d-6"]


def test_a_delivery_is_started_by_one_worker_until_its_lease_lapses(store: Store) -> None:
    save(store, "d-1")
    started = store.start_delivery("d-1", now=NOW)
    assert started is not None and (started.status, started.attempts) == (DeliveryStatus.RUNNING, 1)
    assert started.held(NOW + DELIVERY_LEASE - timedelta(seconds=1))
    # A second worker, even much later, is refused while the first renews the lease.
    renewed = NOW + timedelta(hours=1)
    assert store.touch_delivery("d-1", now=renewed)
    assert store.start_delivery("d-1", now=renewed + DELIVERY_LEASE - timedelta(seconds=1)) is None
    # Its worker died: the lease lapses and another worker takes it, counting a new attempt.
    retaken = store.start_delivery("d-1", now=renewed + DELIVERY_LEASE)
    assert retaken is not None and retaken.attempts == 2
    store.mark_delivery("d-1", DeliveryStatus.DONE, now=renewed + DELIVERY_LEASE)
    assert store.start_delivery("d-1", now=renewed + timedelta(days=1)) is None
    assert not store.touch_delivery("d-1", now=renewed + timedelta(days=1))  # finished: nothing to renew
    assert store.start_delivery("missing", now=NOW) is None


def test_two_workers_racing_to_start_a_delivery_start_it_once(store_url: str, store: Store) -> None:
    save(store, "d-1")
    stores = [Store(store_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    started: list[bool] = []

    def start(other: Store) -> None:
        barrier.wait()
        started.append(other.start_delivery("d-1", now=NOW) is not None)

    threads = [threading.Thread(target=start, args=(other,)) for other in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for other in stores:
        other.close()
    assert sorted(started) == [False, False, False, True]


def test_a_delivery_write_waits_for_another_process_holding_the_sqlite_write_lock(tmp_path: Path) -> None:
    # The per-delivery statements run without BEGIN IMMEDIATE; a lone write must still wait its turn (busy
    # timeout), not fail with "database is locked", while another process (here another connection) writes.
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    store = Store(url)
    save(store, "d-1")
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE deliveries SET last_error = 'held' WHERE delivery_id = 'd-1'")
    release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    release.start()
    try:
        started = time.monotonic()
        assert save(store, "d-2") is True
        running = store.start_delivery("d-1", now=NOW)
        waited = time.monotonic() - started
    finally:
        release.join()
        other.close()
        store.close()
    assert waited >= 0.4
    assert running is not None and running.last_error == "held"  # it ran after the other commit


def test_a_postponed_delivery_is_pending_again_without_spending_an_attempt(store: Store) -> None:
    save(store, "d-1")
    store.start_delivery("d-1", now=NOW)
    later = NOW + timedelta(minutes=1)
    postponed = store.postpone_delivery("d-1", now=later, reason="rate limited until 13:00")
    assert (postponed.status, postponed.attempts, postponed.last_error) == (
        DeliveryStatus.PENDING, 0, "rate limited until 13:00")
    assert postponed.updated_at == later and not postponed.held(later)
    with pytest.raises(KeyError):
        store.postpone_delivery("missing", now=later, reason="x")


def test_an_unfinished_claim_is_taken_over_once_and_only_from_its_holder(store: Store) -> None:
    store.record_effect("issue:x", kind="issue", repository="octo/app", now=NOW, delivery_id="dead")
    assert not store.take_over_effect("issue:x", holder="someone-else", delivery_id="d-2", now=NOW)
    later = NOW + timedelta(minutes=1)
    assert store.take_over_effect("issue:x", holder="dead", delivery_id="d-2", now=later)
    assert not store.take_over_effect("issue:x", holder="dead", delivery_id="d-3", now=later)
    effect = store.get_effect("issue:x")
    assert effect is not None and (effect.delivery_id, effect.created_at) == ("d-2", later)
    store.complete_effect("issue:x", target="12", now=later)
    assert not store.take_over_effect("issue:x", holder="d-2", delivery_id="d-3", now=later)
    store.record_effect("issue:y", kind="issue", repository="octo/app", now=NOW)
    assert store.take_over_effect("issue:y", holder=None, delivery_id="d-3", now=later)


def test_prune_keeps_every_delivery_for_three_days(store: Store) -> None:
    ages = {"old-done": 4, "old-ignored": 4, "young-done": 2.9, "old-failed": 4, "old-pending": 4}
    for delivery_id, days in ages.items():
        save(store, delivery_id, now=NOW - timedelta(days=days))
        status = delivery_id.split("-")[1]
        if status != "pending":
            store.mark_delivery(delivery_id, status, now=NOW - timedelta(days=days))

    assert store.prune(NOW) == 2
    assert {d for d in ages if store.get_delivery(d)} == {"young-done", "old-failed", "old-pending"}
    assert save(store, "young-done") is False  # a replay inside the window is still recognised
    with pytest.raises(ValueError):
        store.prune(NOW, keep=timedelta(days=1))


def test_incident_sightings_are_counted(store: Store) -> None:
    first = store.upsert_incident("octo/app", "fp1", category="test", severity="error", title="Tests fail",
                                  excerpt_hash="h1", now=NOW)
    assert (first.first, first.excerpt_changed, first.incident.count) == (True, True, 1)

    later = NOW + timedelta(hours=2)
    repeat = store.upsert_incident("octo/app", "fp1", category="test", severity="error", title="Tests fail",
                                   excerpt_hash="h1", now=later)
    assert (repeat.first, repeat.excerpt_changed) == (False, False)
    assert (repeat.incident.count, repeat.incident.first_seen, repeat.incident.last_seen) == (2, NOW, later)

    changed = store.upsert_incident("octo/app", "fp1", category="build", severity="critical", title="Build",
                                    excerpt_hash="h2", now=later)
    assert changed.excerpt_changed is True
    incident = changed.incident
    assert (incident.count, incident.category, incident.last_excerpt_hash) == (3, "build", "h2")

    other_repo = store.upsert_incident("octo/lib", "fp1", category="test", severity="error",
                                       title="Tests fail", excerpt_hash="h1", now=NOW)
    assert other_repo.first is True

    store.link_incident("octo/app", "fp1", issue_number=12)
    store.link_incident("octo/app", "fp1", comment_id=9_000_000_001)
    store.mute_incident("octo/app", "fp1", until=later + timedelta(days=1))
    linked = store.get_incident("octo/app", "fp1")
    assert linked is not None
    assert (linked.issue_number, linked.comment_id, linked.muted_until) == (
        12, 9_000_000_001, later + timedelta(days=1))
    store.mute_incident("octo/app", "fp1", until=None)
    assert store.get_incident("octo/app", "fp1").muted_until is None  # type: ignore[union-attr]
    assert store.get_incident("octo/other", "fp1") is None
    with pytest.raises(KeyError):
        store.link_incident("octo/other", "fp1", issue_number=1)


def test_side_effects_are_claimed_once_then_completed(store: Store) -> None:
    key = "comment:octo/app:pr42:wf7"
    assert store.record_effect(key, kind="comment", repository="octo/app", now=NOW, delivery_id="d-1")
    assert not store.record_effect(key, kind="comment", repository="octo/app", now=NOW, delivery_id="d-2")
    claimed = store.get_effect(key)
    assert claimed is not None
    assert (claimed.completed, claimed.target, claimed.delivery_id) == (False, None, "d-1")

    store.complete_effect(key, target="comment/555", now=NOW + timedelta(seconds=3), detail={"url": "u"})
    done = store.get_effect(key)
    assert done is not None
    assert (done.completed, done.target, done.completed_at, done.detail) == (
        True, "comment/555", NOW + timedelta(seconds=3), {"url": "u"})

    assert store.record_effect("issue:octo/app:fp1", kind="issue", repository="octo/app", target="issue/3",
                               now=NOW) is True
    assert store.get_effect("issue:octo/app:fp1").completed  # type: ignore[union-attr]
    assert store.get_effect("nothing") is None
    with pytest.raises(KeyError):
        store.complete_effect("never-claimed", target="x", now=NOW)


def test_counters_are_atomic_under_concurrent_increments(store_url: str, store: Store) -> None:
    # Two Store objects on one database, like the web process and the worker.
    stores = [store, Store(store_url)]
    seen: list[int] = []
    lock = threading.Lock()

    def bump(worker: int) -> None:
        for _ in range(25):
            value = stores[worker % 2].incr("diagnoses", "octo/app", NOW)
            with lock:
                seen.append(value)

    threads = [threading.Thread(target=bump, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stores[1].close()

    assert sorted(seen) == list(range(1, 201))
    assert store.get_count("diagnoses", "octo/app", NOW) == 200
    assert store.incr("diagnoses", "octo/app", NOW, 50) == 250
    assert store.get_count("diagnoses", "octo/app", NOW + timedelta(hours=1)) == 0
    assert store.get_count("diagnoses", "octo/lib", NOW) == 0


def test_model_usage_is_summed_per_repository_installation_and_day(store: Store) -> None:
    call = Usage(input_tokens=1000, output_tokens=200, cache_read_tokens=50, cache_write_tokens=5,
                 cost_micro_usd=4_200)
    store.record_usage("octo/app", 7, call, now=NOW)
    store.record_usage("octo/app", 7, call, now=NOW + timedelta(hours=1))
    store.record_usage("octo/lib", 7, call, now=NOW)
    store.record_usage("octo/app", 7, call, now=NOW - timedelta(days=1))
    store.record_usage("local/cli", None, call, now=NOW)

    today = NOW.date()
    assert store.usage_since(today, repository="octo/app") == Usage(
        input_tokens=2000, output_tokens=400, cache_read_tokens=100, cache_write_tokens=10,
        cost_micro_usd=8_400, calls=2)
    assert store.usage_since(today, installation_id=7).cost_micro_usd == 12_600
    assert store.usage_since(today - timedelta(days=1), installation_id=7).calls == 4
    assert store.usage_since(today).calls == 4
    assert store.usage_since(today, repository="nobody/else") == Usage(calls=0)


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        save(store, "d-1", now=datetime(2025, 1, 1))


def test_sqlite_is_shared_through_wal(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    store.close()


@pytest.mark.parametrize("url", [
    "sqlite:////nonexistent-directory/state.db",
    "postgresql+psycopg://nobody@127.0.0.1:9/mendbot",  # the discard port: nothing listens there
])
def test_an_unreachable_database_is_reported_as_unavailable(url: str) -> None:
    store = Store(url, connect_timeout=2)
    assert store.ping() is False
    with pytest.raises(StoreUnavailable, match="unavailable"):
        save(store, "d-1")
    with pytest.raises(StoreUnavailable):
        store.migrate()


def test_a_stopped_postgres_is_unavailable_until_it_returns(own_postgres: PostgresServer) -> None:
    store = Store(own_postgres.create_database(), connect_timeout=2)
    store.migrate()
    assert save(store, "d-1") is True

    own_postgres.stop()
    assert store.ping() is False
    with pytest.raises(StoreUnavailable):
        store.get_delivery("d-1")

    own_postgres.start()
    assert store.ping() is True
    assert save(store, "d-1") is False
    store.close()


def test_an_unknown_url_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Store("mysql://localhost/mendbot")


def test_a_plain_postgres_url_uses_psycopg(postgres_url: str) -> None:
    store = Store(postgres_url.replace("postgresql+psycopg://", "postgres://"))
    store.migrate()
    assert store.engine.url.drivername == "postgresql+psycopg"
    assert store.ping() is True
    store.close()
