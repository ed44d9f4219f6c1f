"""Prometheus metrics for the App: deliveries, queue depth, job durations and GitHub API use."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bot.adapters.github import ApiCall

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """All of Mendbot's metrics on one registry of its own, so two apps in one process never clash."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "mendbot_webhook_deliveries",
            "Webhook deliveries by event and intake outcome",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "mendbot_queue_depth", "Deliveries waiting in the queue, retries included", registry=self.registry
        )
        self.job_duration = Histogram(
            "mendbot_job_duration_seconds",
            "Time to process one delivery in the worker",
            ["event", "outcome"],
            registry=self.registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.github_calls = Counter(
            "mendbot_github_api_calls",
            "GitHub API operations by outcome",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.rate_limit_remaining = Gauge(
            "mendbot_github_rate_limit_remaining",
            "Requests left in the current GitHub rate-limit window",
            registry=self.registry,
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth at scrape time rather than tracking it; NaN while the queue is down."""

        def read() -> float:
            try:
                return float(depth())
            except Exception:
                return math.nan

        self.queue_depth.set_function(read)

    def delivery(self, event: str, outcome: str) -> None:
        self.deliveries.labels(event=event or "unknown", outcome=outcome).inc()

    def on_api_call(self, call: ApiCall) -> None:
        self.github_calls.labels(operation=call.operation, outcome="ok" if call.ok else "error").inc()
        if call.rate_remaining is not None:
            self.rate_limit_remaining.set(call.rate_remaining)

    @contextmanager
    def job(self, event: str) -> Iterator[dict[str, str]]:
        """Time one delivery; the caller sets `outcome` in the yielded dict (an exception counts as error)."""
        labels = {"outcome": "error"}
        start = time.perf_counter()
        try:
            yield labels
        finally:
            self.job_duration.labels(event=event, outcome=labels["outcome"]).observe(
                time.perf_counter() - start
            )

    def render(self) -> bytes:
        return generate_latest(self.registry)
