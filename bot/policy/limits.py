"""Spending policy for model diagnoses: prices, hourly and daily caps, and a circuit breaker for the API."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from bot.adapters.store import Store, Usage
from bot.core import templates

log = logging.getLogger(__name__)

HOURLY_SCOPE = "model_diagnoses_hourly"
MICRO = 1_000_000


class TokenCounts(Protocol):
    """Anything that carries the four token counts: a TokenUsage from the model, or the store's Usage."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...


class ModelPrices(BaseModel):
    """US dollars per million tokens of each kind."""

    model_config = ConfigDict(frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float = Field(ge=0)
    cache_read: float = Field(ge=0)


def _prices(input_: float, output: float) -> ModelPrices:
    # Anthropic's published ratios: a 5-minute cache write costs 1.25x input, a cache read 0.1x.
    return ModelPrices(input=input_, output=output, cache_write=input_ * 1.25, cache_read=input_ / 10)


# Keys are matched as substrings of the model name; the longest match wins, so "opus-4-1" beats "opus".
DEFAULT_MODEL_PRICES: Mapping[str, ModelPrices] = {
    "opus": _prices(5.0, 25.0),
    "opus-4-1": _prices(15.0, 75.0),
    "opus-4-2025": _prices(15.0, 75.0),
    "3-opus": _prices(15.0, 75.0),
    "sonnet": _prices(3.0, 15.0),
    "haiku": _prices(1.0, 5.0),
    "3-5-haiku": _prices(0.8, 4.0),
    "3-haiku": _prices(0.25, 1.25),
}


class PriceTable(BaseModel):
    """Prices by model family, configurable; a model it does not name is priced at `unknown_model`."""

    model_config = ConfigDict(frozen=True)

    models: dict[str, ModelPrices] = Field(default_factory=lambda: dict(DEFAULT_MODEL_PRICES))
    # The highest tier Anthropic has listed, so an unpriced model makes the caps trip early, never late.
    unknown_model: ModelPrices = Field(default_factory=lambda: _prices(15.0, 75.0))

    def for_model(self, model: str) -> ModelPrices:
        name = model.lower()
        matches = [key for key in self.models if key.lower() in name]
        return self.models[max(matches, key=len)] if matches else self.unknown_model


def cost_usd(usage: TokenCounts, model: str, prices: PriceTable) -> float:
    """What one call (or a sum of calls) cost in US dollars at the table's prices."""
    price = prices.for_model(model)
    total = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_write_tokens * price.cache_write
        + usage.cache_read_tokens * price.cache_read
    )
    return total / MICRO


class LimitsConfig(BaseModel):
    """The caps on model use; a cap of 0 refuses every model diagnosis."""

    model_config = ConfigDict(frozen=True)

    diagnoses_per_hour_per_repository: int = Field(default=10, ge=0)
    usd_per_day_per_repository: float = Field(default=2.0, ge=0)
    usd_per_day_per_installation: float = Field(default=20.0, ge=0)


@dataclass(frozen=True)
class Decision:
    """Allowed or refused, with every reason for a refusal so it can be shown to a person."""

    allowed: bool
    reasons: list[str] = field(default_factory=list)


def hour_start(now: datetime) -> datetime:
    """The clock hour (UTC) that the hourly counter is kept for."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def check(
    store: Store,
    repository: str,
    installation_id: int | None,
    now: datetime,
    config: LimitsConfig | None = None,
) -> Decision:
    """May a model diagnosis run now? Fails closed: a store that cannot be read refuses.

    The hourly cap counts whole clock hours. Check and record are separate steps, so workers running at
    the same moment can each pass the check and overshoot a cap by at most one diagnosis per worker.
    """
    config = config or LimitsConfig()
    try:
        count = store.get_count(HOURLY_SCOPE, repository, hour_start(now))
        today = now.astimezone(UTC).date()
        repository_spent = store.usage_since(today, repository=repository).cost_micro_usd / MICRO
        # An installation id of None is a CLI or Action run: it has no installation budget to share.
        installation_spent = (
            store.usage_since(today, installation_id=installation_id).cost_micro_usd / MICRO
            if installation_id is not None
            else 0.0
        )
    except Exception as error:  # any failure to read the records must refuse, not wave the call through
        log.warning("spending caps could not be checked: %s", type(error).__name__)
        return Decision(False, [templates.CAP_STORE_REASON])

    reasons = []
    hourly = config.diagnoses_per_hour_per_repository
    if count >= hourly:
        reasons.append(templates.CAP_HOURLY_REASON.format(repository=repository, count=count, limit=hourly))
    if repository_spent >= config.usd_per_day_per_repository:
        reasons.append(
            templates.CAP_REPOSITORY_DAILY_REASON.format(
                repository=repository, spent=repository_spent, limit=config.usd_per_day_per_repository
            )
        )
    if installation_id is not None and installation_spent >= config.usd_per_day_per_installation:
        reasons.append(
            templates.CAP_INSTALLATION_DAILY_REASON.format(
                spent=installation_spent, limit=config.usd_per_day_per_installation
            )
        )
    return Decision(not reasons, reasons)


def record(
    store: Store,
    repository: str,
    installation_id: int | None,
    usage: TokenCounts,
    cost: float,
    now: datetime,
    *,
    calls: int = 1,
) -> None:
    """Count one model diagnosis this hour and add its tokens and cost to the day's usage."""
    store.incr(HOURLY_SCOPE, repository, hour_start(now))
    store.record_usage(
        repository,
        installation_id,
        Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            # Rounded up: a cap may trip a micro-dollar early but never late.
            cost_micro_usd=math.ceil(cost * MICRO),
            calls=calls,
        ),
        now=now,
    )


class CircuitBreaker:
    """Stop calling the model API after `failure_threshold` failures in a row within `window`.

    Open for `cool_down`, then half-open: one caller gets a trial call and the rest stay refused. A trial
    that succeeds closes the breaker; one that fails opens it for another cool-down; one that never
    reports back is replaced by a new trial after a further cool-down.

    State is kept in memory, per process, rather than in the store: it describes the API's health right
    now, which each process learns within a few failed calls, so there is nothing worth surviving a
    restart; and a breaker in the store would add writes to every model call and depend on the store
    being up. pybreaker was considered and not used: it holds one lock across the guarded call, which
    would serialise every model call in a worker, and it reads the wall clock where this code passes
    `now` in.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        window: timedelta = timedelta(minutes=2),
        cool_down: timedelta = timedelta(minutes=5),
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.window = window
        self.cool_down = cool_down
        self._lock = threading.Lock()
        self._failures = 0
        self._streak_start: datetime | None = None
        self._open_until: datetime | None = None
        self._trial = False

    def state(self, now: datetime) -> str:
        """"closed", "open" or "half_open" (a trial call is out, or the next caller would get one)."""
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "open" if now < self._open_until and not self._trial else "half_open"

    @property
    def open_until(self) -> datetime | None:
        """When the next trial call may be made, while the breaker is not closed."""
        return self._open_until

    def allow(self, now: datetime) -> bool:
        """May a call go out now? In the half-open state only the first caller gets True."""
        with self._lock:
            if self._open_until is None:
                return True
            if now < self._open_until:
                return False
            self._open_until = now + self.cool_down
            self._trial = True
            return True

    def success(self, now: datetime) -> None:
        with self._lock:
            self._failures = 0
            self._streak_start = None
            self._open_until = None
            self._trial = False

    def failure(self, now: datetime) -> None:
        with self._lock:
            if self._open_until is not None:  # the trial failed, or a call from before the opening did
                self._open_until = now + self.cool_down
                self._trial = False
                return
            if self._streak_start is None or now - self._streak_start > self.window:
                self._streak_start, self._failures = now, 0
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open_until = now + self.cool_down
                self._failures = 0
                self._streak_start = None
