"""Durable state in SQLite or PostgreSQL: deliveries, incidents, the side-effect ledger, counters, usage."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random

#: GitHub lets a delivery be redelivered for 3 days; a replay inside that window must still be recognised.
DELIVERY_RETENTION = timedelta(days=3)
#: How many times a delivery is tried before it is left alone as failed.
DEFAULT_MAX_ATTEMPTS = 5
#: A running delivery whose worker renewed it this recently is still held by that worker. Short, so the work
#: of a killed worker is taken up soon after a restart; workers renew it every few seconds.
DELIVERY_LEASE = timedelta(seconds=20)
#: Lets the web process and the worker wait for each other's SQLite write lock instead of failing.
SQLITE_BUSY_TIMEOUT_SECONDS = 30
_MIGRATION_LOCK_ID = 0x6D656E64  # any constant; serialises concurrent `migrate` runs on PostgreSQL


_SAVED_DELIVERY_COLUMNS = ("delivery_id", "event", "action", "installation_id", "repository", "payload", "status",
                           "attempts", "received_at", "updated_at")


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or is not answering; the web app turns this into a 503."""


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    IGNORED = "ignored"


FINISHED = (DeliveryStatus.DONE, DeliveryStatus.IGNORED)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones, so it stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware datetime")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_status_updated_at", "status", "updated_at"),)

    delivery_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    event: Mapped[str] = mapped_column(String(100))
    action: Mapped[str | None] = mapped_column(String(100))
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    repository: Mapped[str | None] = mapped_column(String(255))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Incident(Base):
    __tablename__ = "incidents"
    __table_args__ = (
        UniqueConstraint("repository", "fingerprint", name="uq_incidents_repository_fingerprint"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repository: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(128))
    category: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    count: Mapped[int] = mapped_column(Integer)
    issue_number: Mapped[int | None] = mapped_column(Integer)
    comment_id: Mapped[int | None] = mapped_column(BigInteger)
    muted_until: Mapped[datetime | None]
    last_excerpt_hash: Mapped[str | None] = mapped_column(String(128))


class SideEffect(Base):
    __tablename__ = "side_effects"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    repository: Mapped[str] = mapped_column(String(255))
    target: Mapped[str | None] = mapped_column(String(255))
    delivery_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    detail: Mapped[dict[str, Any] | None]


class Counter(Base):
    __tablename__ = "counters"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class ModelUsage(Base):
    __tablename__ = "model_usage"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    repository: Mapped[str] = mapped_column(String(255), primary_key=True)
    installation_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_micro_usd: Mapped[int] = mapped_column(BigInteger)


@dataclass(frozen=True)
class DeliveryRecord:
    delivery_id: str
    event: str
    action: str | None
    installation_id: int | None
    repository: str | None
    payload: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    received_at: datetime
    updated_at: datetime

    def held(self, now: datetime, lease: timedelta = DELIVERY_LEASE) -> bool:
        """Whether a live worker is processing it: running, and refreshed within the lease."""
        return self.status is DeliveryStatus.RUNNING and now - self.updated_at < lease


@dataclass(frozen=True)
class IncidentRecord:
    repository: str
    fingerprint: str
    category: str
    severity: str
    title: str
    first_seen: datetime
    last_seen: datetime
    count: int
    issue_number: int | None
    comment_id: int | None
    muted_until: datetime | None
    last_excerpt_hash: str | None


@dataclass(frozen=True)
class Sighting:
    """What `upsert_incident` saw: the incident after counting this sighting, and how it compares."""

    incident: IncidentRecord
    first: bool
    excerpt_changed: bool


@dataclass(frozen=True)
class EffectRecord:
    key: str
    kind: str
    repository: str
    target: str | None
    delivery_id: str | None
    created_at: datetime
    completed_at: datetime | None
    detail: dict[str, Any] | None

    @property
    def completed(self) -> bool:
        return self.completed_at is not None


@dataclass(frozen=True)
class Usage:
    """Model usage: one call by default when recorded, summed over calls when read back."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_micro_usd: int = 0
    calls: int = 1


USAGE_FIELDS = tuple(field.name for field in dataclasses.fields(Usage))
R = TypeVar("R", DeliveryRecord, IncidentRecord, EffectRecord)


def _record(record_type: type[R], row: Base) -> R:
    names = [field.name for field in dataclasses.fields(record_type)]
    return record_type(**{name: getattr(row, name) for name in names})


def _affected(session: Session, statement: Any, column: Any) -> int:
    """Rows a write touched, counted through RETURNING: rowcount is not reliable for every driver."""
    return len(session.execute(statement.returning(column)).all())


_DELIVERIES = Base.metadata.tables[Delivery.__tablename__]


#: The columns of a DeliveryRecord in the order of its fields, so a row builds one by position: going
#: through `Row._asdict` cost as much CPU as the rest of `start_delivery`.
_RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(DeliveryRecord))
_RECORD_COLUMNS = tuple(_DELIVERIES.c[name] for name in _RECORD_FIELDS)
_STATUS_AT = _RECORD_FIELDS.index("status")


def _delivery_record(row: Row[Any]) -> DeliveryRecord:
    values = list(row)
    values[_STATUS_AT] = DeliveryStatus(values[_STATUS_AT])
    return DeliveryRecord(*values)


def _mark_delivery_statement(status: DeliveryStatus) -> Any:
    """UPDATE ... RETURNING for `mark_delivery` to `status`, with parameters id, now and error."""
    columns = _DELIVERIES.c
    values: dict[str, Any] = {"status": status.value, "updated_at": bindparam("now", type_=columns.updated_at.type)}
    if status is DeliveryStatus.FAILED:
        values["last_error"] = bindparam("error", type_=columns.last_error.type)
    elif status in FINISHED:
        values["last_error"] = None
    if status is DeliveryStatus.RUNNING:
        values["attempts"] = columns.attempts + 1
    return update(_DELIVERIES).where(columns.delivery_id == bindparam("id")).values(values).returning(*_RECORD_COLUMNS)


def _start_delivery_statement() -> Any:
    """UPDATE ... RETURNING for `start_delivery`, with parameters id, now and held_after (now minus the lease)."""
    columns = _DELIVERIES.c
    held = (columns.status == DeliveryStatus.RUNNING.value) & (
        columns.updated_at > bindparam("held_after", type_=columns.updated_at.type))
    # One comparison per finished status rather than IN (...), which SQLAlchemy expands on every execution.
    unfinished = [columns.status != status.value for status in FINISHED]
    return update(_DELIVERIES).where(columns.delivery_id == bindparam("id"), *unfinished, ~held).values(
        status=DeliveryStatus.RUNNING.value, attempts=columns.attempts + 1,
        updated_at=bindparam("now", type_=columns.updated_at.type)).returning(*_RECORD_COLUMNS)


def migrations_config() -> Config:
    """Alembic configuration that finds the migrations inside the installed package; no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", "bot:migrations")
    return config


def migrate(url: str) -> None:
    """Bring the database at `url` up to the newest schema (`alembic upgrade head`); safe to repeat."""
    store = Store(url)
    try:
        store.migrate()
    finally:
        store.close()


@retry(retry=retry_if_exception(lambda error: "locked" in str(error)), reraise=True,
       wait=wait_random(0.01, 0.1), stop=stop_after_delay(SQLITE_BUSY_TIMEOUT_SECONDS))
def _switch_to_wal(cursor: Any) -> None:
    # SQLite does not call the busy handler while it changes the journal mode, so when the web process and
    # the worker open a new database file at the same moment, one of them gets "database is locked" at once.
    # WAL is a property of the file: once one connection has switched it, the others find it set.
    cursor.execute("PRAGMA journal_mode = WAL")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver opens no transactions of its own: a lone statement commits by itself and the store
        # opens every longer transaction with BEGIN IMMEDIATE (`Store._session`).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            _switch_to_wal(cursor)
        # In WAL mode NORMAL syncs to the disk at checkpoints, not at every commit: a commit survives the
        # process dying, but one made just before the machine goes down (power loss) can be lost. FULL would
        # close that gap for about 0.25 ms of CPU and 0.5-2 ms of held write lock per commit; see
        # docs/configuration.md ("Durability") for the choice and for PostgreSQL, which syncs every commit.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()


class Store:
    """All durable state. Every method is one transaction; times are passed in by the caller.

    Side-effect ledger contract (claim, act, complete):
      1. `record_effect(key, ...)` without a target claims the key before acting. It returns False when
         the key was already claimed: look at `get_effect(key)`. If it is completed, the work is done;
         skip it. If it is only claimed, an earlier attempt may have crashed between acting and
         recording, so search GitHub for the hidden `<!-- mendbot:KEY -->` marker that every body we
         write carries; found: `complete_effect` with what was found; not found: act now.
      2. Act, putting the marker in the body.
      3. `complete_effect(key, target=...)` records the issue, comment or check id.
    `record_effect(..., target=...)` does 1 and 3 at once, for effects that are recorded after the fact.
    """

    def __init__(self, url: str, *, connect_timeout: int = 5) -> None:
        parsed = make_url(url)
        if parsed.drivername in ("postgres", "postgresql"):  # psycopg 3 is the driver we ship
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            self.engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
            _configure_sqlite(self.engine)
        elif self.dialect == "postgresql":
            self.engine = create_engine(parsed, pool_pre_ping=True,
                                        connect_args={"connect_timeout": connect_timeout})
        else:
            raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}; use sqlite/postgresql")
        self._where = parsed.render_as_string(hide_password=True)
        # SQLite lets one writer in at a time and makes the others poll for the lock, sleeping 1, 2, 5, 10 ms
        # and longer between tries; threads of one process queue on this lock instead and go in as soon as it
        # is free. Other processes (a separate `mendbot worker`) still meet the busy timeout.
        self._one_writer: AbstractContextManager[Any] = threading.Lock() if self.dialect == "sqlite" else nullcontext()
        # The statements every delivery runs are built once with bound parameters: building one per call cost
        # more CPU than running it, and the web process and the worker share that CPU.
        columns = _DELIVERIES.c
        self._save_delivery = self._insert()(_DELIVERIES).values(
            {name: bindparam(name, type_=columns[name].type) for name in _SAVED_DELIVERY_COLUMNS}
        ).on_conflict_do_nothing(index_elements=["delivery_id"]).returning(columns.delivery_id)
        self._get_delivery = select(*_RECORD_COLUMNS).where(columns.delivery_id == bindparam("id"))
        self._start_delivery = _start_delivery_statement()
        self._mark_delivery = {status: _mark_delivery_statement(status) for status in DeliveryStatus}

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._unavailable_on_failure(), Session(self.engine, expire_on_commit=False) as session, \
                session.begin():
            if self.dialect == "sqlite":
                # A deferred transaction that reads, then writes, fails at once with SQLITE_BUSY when another
                # process wrote in between; taking the lock at BEGIN makes it wait for the busy timeout instead.
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session

    def _first_row(self, statement: Any, parameters: Mapping[str, Any]) -> Row[Any] | None:
        """Run one prebuilt statement in its own transaction on a bare connection, cheaper than a Session.

        On SQLite the statement runs alone, which makes it a transaction by itself: it waits for the write
        lock through the busy timeout like BEGIN IMMEDIATE would, without the cost of a second statement.
        No engine-wide `begin` hook does that work either: any engine event makes every execution dearer.
        """
        with self._one_writer, self._unavailable_on_failure(), self.engine.connect() as connection:
            row = connection.execute(statement, parameters).first()
            connection.commit()
        return row

    @contextmanager
    def _unavailable_on_failure(self) -> Iterator[None]:
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            raise StoreUnavailable(f"state store {self._where} is unavailable: {reason}") from error
        except sa_exc.StatementError as error:
            if isinstance(error.orig, ValueError):  # a bad argument, e.g. a naive datetime
                raise error.orig from None
            raise

    def _insert(self) -> Any:
        return postgresql.insert if self.dialect == "postgresql" else sqlite.insert

    def migrate(self) -> None:
        config = migrations_config()
        with self._session() as session:
            connection = session.connection()
            if self.dialect == "postgresql":
                # The web process and the worker may both migrate at startup.
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def ping(self) -> bool:
        try:
            with self._session() as session:
                session.execute(text("SELECT 1"))
        except StoreUnavailable:
            return False
        return True

    # Deliveries

    def save_delivery(self, delivery_id: str, *, event: str, action: str | None, installation_id: int | None,
                      repository: str | None, payload: str, now: datetime,
                      status: DeliveryStatus = DeliveryStatus.PENDING) -> bool:
        """Persist a new delivery, pending unless told it needs no work; False when this delivery id was already
        saved (a replay)."""
        values = {"delivery_id": delivery_id, "event": event, "action": action, "installation_id": installation_id,
                  "repository": repository, "payload": payload, "status": status.value,
                  "attempts": 0, "received_at": now, "updated_at": now}
        return self._first_row(self._save_delivery, values) is not None

    def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        row = self._first_row(self._get_delivery, {"id": delivery_id})
        return None if row is None else _delivery_record(row)

    def mark_delivery(self, delivery_id: str, status: DeliveryStatus | str, *, now: datetime,
                      error: str | None = None) -> DeliveryRecord:
        """Set the status; `running` counts an attempt, `failed` records the error and finishing clears it."""
        statement = self._mark_delivery[DeliveryStatus(status)]
        row = self._first_row(statement, {"id": delivery_id, "now": now, "error": error})
        if row is None:
            raise KeyError(f"no delivery {delivery_id!r}")
        return _delivery_record(row)

    def start_delivery(self, delivery_id: str, *, now: datetime,
                       lease: timedelta = DELIVERY_LEASE) -> DeliveryRecord | None:
        """Take the delivery for one attempt: mark it running and count the attempt, in one statement so two
        workers cannot both take it. None when it is missing, finished, or held by a worker under its lease."""
        row = self._first_row(self._start_delivery, {"id": delivery_id, "now": now, "held_after": now - lease})
        return None if row is None else _delivery_record(row)

    def touch_delivery(self, delivery_id: str, *, now: datetime) -> bool:
        """Renew the lease of a running delivery; False when it is no longer running."""
        statement = update(Delivery).where(
            Delivery.delivery_id == delivery_id, Delivery.status == DeliveryStatus.RUNNING.value,
        ).values(updated_at=now)
        with self._session() as session:
            return bool(_affected(session, statement, Delivery.delivery_id))

    def postpone_delivery(self, delivery_id: str, *, now: datetime, reason: str) -> DeliveryRecord:
        """Put a running delivery back to pending without counting the attempt it was in: it waited on
        something outside it (a rate limit) and did not fail."""
        statement = update(Delivery).where(Delivery.delivery_id == delivery_id).values(
            status=DeliveryStatus.PENDING.value, attempts=case((Delivery.attempts > 0, Delivery.attempts - 1), else_=0),
            last_error=reason, updated_at=now)
        with self._session() as session:
            row = session.execute(statement.returning(*_RECORD_COLUMNS)).first()
        if row is None:
            raise KeyError(f"no delivery {delivery_id!r}")
        return _delivery_record(row)

    def unfinished_deliveries(self, *, older_than: datetime | None = None,
                              max_attempts: int = DEFAULT_MAX_ATTEMPTS, limit: int = 1000) -> list[str]:
        """Ids of deliveries to (re)process, oldest first: pending, running (its worker died) and failed
        with attempts left. `older_than` skips those touched since, which a live worker may still hold."""
        in_flight = Delivery.status.in_([DeliveryStatus.PENDING.value, DeliveryStatus.RUNNING.value])
        failed = (Delivery.status == DeliveryStatus.FAILED.value) & (Delivery.attempts < max_attempts)
        retryable = in_flight | failed
        query = select(Delivery.delivery_id).where(retryable).order_by(Delivery.received_at).limit(limit)
        if older_than is not None:
            query = query.where(Delivery.updated_at < older_than)
        with self._session() as session:
            return list(session.scalars(query))

    def prune(self, now: datetime, keep: timedelta = DELIVERY_RETENTION) -> int:
        """Delete finished (done or ignored) deliveries untouched for `keep`; returns how many went."""
        if keep < DELIVERY_RETENTION:
            raise ValueError(f"deliveries must be kept at least {DELIVERY_RETENTION}")
        statement = delete(Delivery).where(
            Delivery.status.in_([status.value for status in FINISHED]), Delivery.updated_at < now - keep)
        with self._session() as session:
            return _affected(session, statement, Delivery.delivery_id)

    # Incidents

    def upsert_incident(self, repository: str, fingerprint: str, *, category: str, severity: str, title: str,
                        excerpt_hash: str | None, now: datetime) -> Sighting:
        """Count one sighting of a failure, creating the incident on the first one."""
        insert = self._insert()(Incident).values(
            repository=repository, fingerprint=fingerprint, category=category, severity=severity, title=title,
            first_seen=now, last_seen=now, count=1, last_excerpt_hash=excerpt_hash,
        ).on_conflict_do_nothing(index_elements=["repository", "fingerprint"])
        key = (Incident.repository == repository) & (Incident.fingerprint == fingerprint)
        with self._session() as session:
            if _affected(session, insert, Incident.id):
                row = session.scalars(select(Incident).where(key)).one()
                return Sighting(_record(IncidentRecord, row), first=True, excerpt_changed=True)
            previous_hash = session.scalars(
                select(Incident.last_excerpt_hash).where(key).with_for_update()).one()
            session.execute(update(Incident).where(key).values(
                count=Incident.count + 1, last_seen=now, category=category,
                severity=severity, title=title, last_excerpt_hash=excerpt_hash))
            row = session.scalars(select(Incident).where(key).execution_options(populate_existing=True)).one()
            changed = excerpt_hash is None or excerpt_hash != previous_hash
            return Sighting(_record(IncidentRecord, row), first=False, excerpt_changed=changed)

    def get_incident(self, repository: str, fingerprint: str) -> IncidentRecord | None:
        query = select(Incident).where(Incident.repository == repository, Incident.fingerprint == fingerprint)
        with self._session() as session:
            row = session.scalars(query).one_or_none()
            return None if row is None else _record(IncidentRecord, row)

    def link_incident(self, repository: str, fingerprint: str, *, issue_number: int | None = None,
                      comment_id: int | None = None) -> None:
        """Remember the issue and/or comment that tracks an incident (arguments left None are kept)."""
        values = {name: value for name, value in (("issue_number", issue_number), ("comment_id", comment_id))
                  if value is not None}
        self._update_incident(repository, fingerprint, values)

    def mute_incident(self, repository: str, fingerprint: str, until: datetime | None) -> None:
        """Silence an incident until the given time; None unmutes it."""
        self._update_incident(repository, fingerprint, {"muted_until": until})

    def _update_incident(self, repository: str, fingerprint: str, values: Mapping[str, Any]) -> None:
        statement = update(Incident).where(
            Incident.repository == repository, Incident.fingerprint == fingerprint).values(dict(values))
        with self._session() as session:
            if values and not _affected(session, statement, Incident.id):
                raise KeyError(f"no incident {fingerprint!r} in {repository!r}")

    # Side effects

    def record_effect(self, key: str, *, kind: str, repository: str, now: datetime, target: str | None = None,
                      delivery_id: str | None = None, detail: Mapping[str, Any] | None = None) -> bool:
        """Claim `key` (or record a finished effect when `target` is given); False if it already exists."""
        statement = self._insert()(SideEffect).values(
            key=key, kind=kind, repository=repository, target=target, delivery_id=delivery_id, created_at=now,
            completed_at=now if target is not None else None,
            detail=dict(detail) if detail is not None else None,
        ).on_conflict_do_nothing(index_elements=["key"])
        with self._session() as session:
            return bool(_affected(session, statement, SideEffect.key))

    def complete_effect(self, key: str, *, target: str, now: datetime,
                        detail: Mapping[str, Any] | None = None) -> None:
        values: dict[str, Any] = {"target": target, "completed_at": now}
        if detail is not None:
            values["detail"] = dict(detail)
        with self._session() as session:
            statement = update(SideEffect).where(SideEffect.key == key).values(values)
            if not _affected(session, statement, SideEffect.key):
                raise KeyError(f"side effect {key!r} was never claimed")

    def take_over_effect(self, key: str, *, holder: str | None, delivery_id: str, now: datetime) -> bool:
        """Move an unfinished claim from `holder`, which stopped working on it, to `delivery_id`. False when
        the claim is finished or no longer the holder's: someone else took it over first."""
        held_by = SideEffect.delivery_id.is_(None) if holder is None else SideEffect.delivery_id == holder
        statement = update(SideEffect).where(
            SideEffect.key == key, SideEffect.completed_at.is_(None), held_by,
        ).values(delivery_id=delivery_id, created_at=now)
        with self._session() as session:
            return bool(_affected(session, statement, SideEffect.key))

    def get_effect(self, key: str) -> EffectRecord | None:
        with self._session() as session:
            row = session.get(SideEffect, key)
            return None if row is None else _record(EffectRecord, row)

    # Counters and usage

    def incr(self, scope: str, key: str, window_start: datetime, amount: int = 1) -> int:
        """Add `amount` to a counter atomically and return its new value."""
        insert = self._insert()(Counter).values(scope=scope, key=key, window_start=window_start, value=amount)
        statement = insert.on_conflict_do_update(
            index_elements=["scope", "key", "window_start"], set_={"value": Counter.value + amount},
        ).returning(Counter.value)
        with self._session() as session:
            return int(session.execute(statement).scalar_one())

    def get_count(self, scope: str, key: str, window_start: datetime) -> int:
        query = select(Counter.value).where(
            Counter.scope == scope, Counter.key == key, Counter.window_start == window_start)
        with self._session() as session:
            return int(session.scalars(query).one_or_none() or 0)

    def record_usage(self, repository: str, installation_id: int | None, usage: Usage, *,
                     now: datetime) -> None:
        """Add one model call's usage to the day's totals (`installation_id` None when not an App install)."""
        values = {name: getattr(usage, name) for name in USAGE_FIELDS}
        insert = self._insert()(ModelUsage).values(
            day=now.astimezone(UTC).date(), repository=repository, installation_id=installation_id or 0,
            **values)
        statement = insert.on_conflict_do_update(
            index_elements=["day", "repository", "installation_id"],
            set_={name: getattr(ModelUsage, name) + value for name, value in values.items()},
        )
        with self._session() as session:
            session.execute(statement)

    def usage_since(self, day: date, *, repository: str | None = None,
                    installation_id: int | None = None) -> Usage:
        """Usage summed from the start of the UTC `day` on, for one repository and/or one installation."""
        columns = [func.coalesce(func.sum(getattr(ModelUsage, name)), 0) for name in USAGE_FIELDS]
        query = select(*columns).where(ModelUsage.day >= day)
        if repository is not None:
            query = query.where(ModelUsage.repository == repository)
        if installation_id is not None:
            query = query.where(ModelUsage.installation_id == installation_id)
        with self._session() as session:
            totals = session.execute(query).one()
        return Usage(**{name: int(value) for name, value in zip(USAGE_FIELDS, totals, strict=True)})
