"""The App's Prometheus metrics: the documented names and labels, scraped from a registry of their own."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot.adapters.github import ApiCall
from bot.metrics import Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> Samples:
    """Every sample on the instance's registry, by name and label set, as a scraper would read it."""
    text = generate_latest(metrics.registry).decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def test_deliveries_are_counted_by_event_and_outcome() -> None:
    metrics = Metrics()
    metrics.delivery("workflow_run", "queued")
    metrics.delivery("workflow_run", "queued")
    metrics.delivery("issues", "ignored")
    metrics.delivery("", "rejected_401")  # no event header at all

    samples = scrape(metrics)
    assert samples["mendbot_webhook_deliveries_total", labels(event="workflow_run", outcome="queued")] == 2
    assert samples["mendbot_webhook_deliveries_total", labels(event="issues", outcome="ignored")] == 1
    assert samples["mendbot_webhook_deliveries_total", labels(event="unknown", outcome="rejected_401")] == 1


def test_api_calls_are_counted_and_the_last_known_rate_limit_is_kept() -> None:
    metrics = Metrics()
    metrics.on_api_call(ApiCall("add comment", ok=True, status=201, rate_remaining=4_990))
    metrics.on_api_call(ApiCall("add comment", ok=True, status=201, rate_remaining=4_989))
    # A failed call without rate-limit headers must not reset what we know.
    metrics.on_api_call(ApiCall("download log", ok=False, status=None, rate_remaining=None))

    samples = scrape(metrics)
    assert samples["mendbot_github_api_calls_total", labels(operation="add comment", outcome="ok")] == 2
    assert samples["mendbot_github_api_calls_total", labels(operation="download log", outcome="error")] == 1
    assert samples["mendbot_github_rate_limit_remaining", labels()] == 4_989


def test_job_duration_is_observed_with_the_outcome_the_caller_set() -> None:
    metrics = Metrics()
    with metrics.job("workflow_run") as job:
        job["outcome"] = "done"

    samples = scrape(metrics)
    assert samples["mendbot_job_duration_seconds_count", labels(event="workflow_run", outcome="done")] == 1
    assert samples["mendbot_job_duration_seconds_sum", labels(event="workflow_run", outcome="done")] >= 0
    assert samples["mendbot_job_duration_seconds_bucket", labels(event="workflow_run", outcome="done", le="+Inf")] == 1


def test_a_job_that_raises_is_observed_as_an_error() -> None:
    metrics = Metrics()
    with pytest.raises(RuntimeError), metrics.job("issues"):
        raise RuntimeError("worker crashed before deciding")

    samples = scrape(metrics)
    assert samples["mendbot_job_duration_seconds_count", labels(event="issues", outcome="error")] == 1
    assert not any(dict(pairs).get("outcome") == "done" for _, pairs in samples)


def test_queue_depth_is_read_at_scrape_time_and_nan_when_the_queue_is_down() -> None:
    metrics = Metrics()
    depth = {"now": 3}
    metrics.watch_queue(lambda: depth["now"])
    assert scrape(metrics)["mendbot_queue_depth", labels()] == 3
    depth["now"] = 7
    assert scrape(metrics)["mendbot_queue_depth", labels()] == 7

    def broken() -> int:
        raise ConnectionError("redis is down")

    metrics.watch_queue(broken)
    assert math.isnan(scrape(metrics)["mendbot_queue_depth", labels()])


def test_two_instances_do_not_share_state() -> None:
    first, second = Metrics(), Metrics()  # on one shared registry the second would raise: duplicated series
    first.delivery("workflow_run", "queued")
    first.on_api_call(ApiCall("add comment", ok=True, status=201, rate_remaining=10))

    samples = scrape(second)
    assert not any(name == "mendbot_webhook_deliveries_total" for name, _ in samples)
    assert not any(name == "mendbot_github_api_calls_total" for name, _ in samples)
    assert samples["mendbot_github_rate_limit_remaining", labels()] == 0
    assert first.registry is not second.registry


def test_a_given_registry_is_the_one_recorded_into_and_rendered() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.delivery("workflow_run", "queued")

    assert metrics.registry is registry
    text = metrics.render().decode("utf-8")
    assert text == generate_latest(registry).decode("utf-8")
    assert 'mendbot_webhook_deliveries_total{event="workflow_run",outcome="queued"} 1.0' in text
