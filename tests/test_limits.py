"""Spending policy: prices, hourly and daily caps on a real store, and the API circuit breaker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.adapters.store import Store, Usage, migrate
from bot.core import templates
from bot.core.prompt import TokenUsage
from bot.policy.limits import (
    HOURLY_SCOPE,
    CircuitBreaker,
    LimitsConfig,
    ModelPrices,
    PriceTable,
    check,
    cost_usd,
    hour_start,
    record,
)

pytest_plugins = ["tests.servers"]

NOW = datetime(2025, 3, 10, 12, 20, tzinfo=UTC)
REPO = "octo/app"
MILLION = 1_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    migrate(url)
    opened = Store(url)
    yield opened
    opened.close()


def spend(store: Store, dollars: float, *, repository: str = REPO, installation_id: int | None = 7,
          now: datetime = NOW) -> None:
    record(store, repository, installation_id, TokenUsage(input_tokens=100), dollars, now)


# Prices


def test_cost_counts_each_kind_of_token_at_its_own_price() -> None:
    prices = PriceTable()
    sonnet = "claude-sonnet-4-5-20250929"
    assert cost_usd(TokenUsage(input_tokens=MILLION), sonnet, prices) == pytest.approx(3.0)
    assert cost_usd(TokenUsage(output_tokens=MILLION), sonnet, prices) == pytest.approx(15.0)
    assert cost_usd(TokenUsage(cache_write_tokens=MILLION), sonnet, prices) == pytest.approx(3.75)
    assert cost_usd(TokenUsage(cache_read_tokens=MILLION), sonnet, prices) == pytest.approx(0.30)
    mixed = TokenUsage(input_tokens=2000, output_tokens=300, cache_read_tokens=1000, cache_write_tokens=500)
    expected = (2000 * 3 + 300 * 15 + 1000 * 0.3 + 500 * 3.75) / MILLION
    assert cost_usd(mixed, sonnet, prices) == pytest.approx(expected)


def test_the_most_specific_family_wins_and_an_unknown_model_is_priced_high() -> None:
    prices = PriceTable()
    one_million_out = TokenUsage(output_tokens=MILLION)
    assert cost_usd(one_million_out, "claude-opus-4-5", prices) == pytest.approx(25.0)
    assert cost_usd(one_million_out, "claude-opus-4-1-20250805", prices) == pytest.approx(75.0)
    assert cost_usd(one_million_out, "claude-haiku-4-5", prices) == pytest.approx(5.0)
    assert cost_usd(one_million_out, "claude-3-5-haiku-latest", prices) == pytest.approx(4.0)
    assert cost_usd(one_million_out, "some-new-model", prices) == pytest.approx(75.0)


def test_the_price_table_comes_from_config() -> None:
    prices = PriceTable.model_validate(
        {"models": {"sonnet": {"input": 1, "output": 2, "cache_write": 0, "cache_read": 0}},
         "unknown_model": {"input": 9, "output": 9, "cache_write": 9, "cache_read": 9}}
    )
    usage = TokenUsage(input_tokens=MILLION, output_tokens=MILLION)
    assert cost_usd(usage, "claude-sonnet-5", prices) == pytest.approx(3.0)
    assert cost_usd(usage, "claude-haiku-4-5", prices) == pytest.approx(18.0)
    with pytest.raises(ValueError):
        ModelPrices(input=-1, output=0, cache_write=0, cache_read=0)


# Caps


def test_the_eleventh_diagnosis_in_an_hour_is_refused_and_the_next_hour_is_fresh(store: Store) -> None:
    for _ in range(10):
        assert check(store, REPO, 7, NOW).allowed
        spend(store, 0.01)
    decision = check(store, REPO, 7, NOW + timedelta(minutes=30))
    assert not decision.allowed
    assert decision.reasons == [f"{REPO} has had 10 model diagnoses this hour (limit 10)"]
    assert check(store, "octo/other", 7, NOW).allowed
    assert check(store, REPO, 7, NOW + timedelta(hours=1)).allowed
    assert store.get_count(HOURLY_SCOPE, REPO, hour_start(NOW)) == 10


def test_the_repository_dollar_cap_refuses_once_the_day_has_spent_it(store: Store) -> None:
    spend(store, 1.99)
    assert check(store, REPO, 7, NOW).allowed
    spend(store, 0.02)
    decision = check(store, REPO, 7, NOW)
    assert not decision.allowed
    assert decision.reasons == [f"{REPO} has spent $2.01 of its $2.00 daily model budget"]
    # A new UTC day starts a new budget.
    assert check(store, REPO, 7, NOW + timedelta(days=1)).allowed


def test_the_installation_cap_covers_all_its_repositories(store: Store) -> None:
    config = LimitsConfig(usd_per_day_per_installation=1.0)
    spend(store, 0.6, repository="octo/one")
    spend(store, 0.5, repository="octo/two")
    spend(store, 5.0, repository="other/repo", installation_id=8)
    decision = check(store, "octo/three", 7, NOW, config)
    assert not decision.allowed
    assert decision.reasons == ["this installation has spent $1.10 of its $1.00 daily model budget"]
    assert check(store, "octo/three", 9, NOW, config).allowed
    # A CLI run has no installation, so only its repository's caps apply.
    assert check(store, "octo/three", None, NOW, config).allowed


def test_every_reason_is_given_when_several_caps_are_reached(store: Store) -> None:
    config = LimitsConfig(diagnoses_per_hour_per_repository=1, usd_per_day_per_repository=0.5,
                          usd_per_day_per_installation=0.5)
    spend(store, 1.0)
    decision = check(store, REPO, 7, NOW, config)
    assert not decision.allowed
    assert len(decision.reasons) == 3


def test_a_zero_cap_refuses_everything(store: Store) -> None:
    assert not check(store, REPO, 7, NOW, LimitsConfig(diagnoses_per_hour_per_repository=0)).allowed
    assert not check(store, REPO, None, NOW, LimitsConfig(usd_per_day_per_repository=0)).allowed


def test_record_adds_tokens_cost_and_calls_to_the_day(store: Store) -> None:
    usage = TokenUsage(input_tokens=1200, output_tokens=180, cache_read_tokens=900, cache_write_tokens=40)
    record(store, REPO, 7, usage, 0.0123456, NOW, calls=2)
    record(store, REPO, 7, usage, 0.0000001, NOW)
    total = store.usage_since(NOW.date(), repository=REPO)
    assert total == Usage(input_tokens=2400, output_tokens=360, cache_read_tokens=1800,
                          cache_write_tokens=80, cost_micro_usd=12346 + 1, calls=3)
    assert store.usage_since(NOW.date(), installation_id=7).cost_micro_usd == 12347


def test_a_store_that_cannot_be_read_refuses(tmp_path: Path) -> None:
    broken = Store(f"sqlite:///{tmp_path / 'missing' / 'state.db'}")
    try:
        decision = check(broken, REPO, 7, NOW)
    finally:
        broken.close()
    assert not decision.allowed
    assert decision.reasons == [templates.CAP_STORE_REASON]


def test_an_unmigrated_store_refuses_too(tmp_path: Path) -> None:
    empty = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        assert not check(empty, REPO, 7, NOW).allowed
    finally:
        empty.close()


# Circuit breaker


def breaker() -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, window=timedelta(minutes=1), cool_down=timedelta(minutes=5))


def test_the_breaker_opens_after_consecutive_failures_and_stays_open_for_the_cool_down() -> None:
    guard = breaker()
    for seconds in (0, 10, 20):
        assert guard.allow(NOW + timedelta(seconds=seconds))
        guard.failure(NOW + timedelta(seconds=seconds))
    opened = NOW + timedelta(seconds=20)
    assert guard.state(opened) == "open"
    assert guard.open_until == opened + timedelta(minutes=5)
    assert not guard.allow(opened + timedelta(minutes=4, seconds=59))


def test_failures_spread_beyond_the_window_or_broken_by_a_success_do_not_open_it() -> None:
    guard = breaker()
    guard.failure(NOW)
    guard.failure(NOW + timedelta(seconds=30))
    guard.failure(NOW + timedelta(seconds=90))  # the streak started more than a minute ago: a new one
    assert guard.state(NOW + timedelta(seconds=90)) == "closed"
    guard.failure(NOW + timedelta(seconds=100))
    guard.success(NOW + timedelta(seconds=101))
    guard.failure(NOW + timedelta(seconds=102))
    assert guard.state(NOW + timedelta(seconds=102)) == "closed"
    guard.failure(NOW + timedelta(seconds=103))
    guard.failure(NOW + timedelta(seconds=104))
    assert guard.state(NOW + timedelta(seconds=104)) == "open"


def opened_breaker() -> CircuitBreaker:
    guard = breaker()
    for _ in range(3):
        guard.failure(NOW)
    return guard


def test_after_the_cool_down_one_trial_goes_and_its_success_closes_the_breaker() -> None:
    guard = opened_breaker()
    later = NOW + timedelta(minutes=5)
    assert guard.allow(later)
    assert guard.state(later) == "half_open"
    assert not guard.allow(later)  # only one trial at a time
    guard.success(later)
    assert guard.state(later) == "closed"
    assert guard.allow(later) and guard.allow(later)


def test_a_failed_trial_opens_the_breaker_for_another_cool_down() -> None:
    guard = opened_breaker()
    later = NOW + timedelta(minutes=5)
    assert guard.allow(later)
    guard.failure(later + timedelta(seconds=3))
    assert guard.state(later + timedelta(seconds=3)) == "open"
    assert not guard.allow(later + timedelta(minutes=5))
    assert guard.allow(later + timedelta(minutes=5, seconds=3))


def test_a_trial_that_never_reports_is_replaced_after_another_cool_down() -> None:
    guard = opened_breaker()
    assert guard.allow(NOW + timedelta(minutes=5))
    assert not guard.allow(NOW + timedelta(minutes=9))
    assert guard.allow(NOW + timedelta(minutes=10))


def test_the_breaker_needs_a_positive_threshold() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
