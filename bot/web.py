"""The App's HTTP face: signed webhook intake that persists then answers 202, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from bot.adapters.queue import QueueUnavailable, requeue_unfinished
from bot.adapters.store import DELIVERY_LEASE, FINISHED, DeliveryStatus, StoreUnavailable
from bot.events import DELIVERY_HEADER, EVENT_HEADER, UNSTORED_EVENTS, Event, IntakeError, event_from_http
from bot.metrics import CONTENT_TYPE
from bot.settings import Settings, load_settings
from bot.wiring import Components, build_components

log = logging.getLogger(__name__)

#: How often the in-process worker looks for deliveries that were stored but never queued or finished.
SWEEP_INTERVAL_SECONDS = 60.0
#: A delivery untouched this long is presumed lost by its worker (or never queued) and is queued again: a
#: worker renews the lease of the delivery in hand far more often than this.
SWEEP_AGE = DELIVERY_LEASE
#: Threads that store and queue accepted deliveries, off the event loop. SQLite takes one writer at a time,
#: so a few are plenty; PostgreSQL gets this many writes in flight.
INTAKE_THREADS = 8


def _printable(value: str | None, limit: int = 100) -> str:
    """A header value that is safe to put in a log line."""
    return repr((value or "")[:limit])


async def _read_capped(request: Request, cap: int) -> bytes | None:
    """The raw body, or None as soon as it is longer than `cap` (checked before and while reading)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    settings: Settings | None = None,
    *,
    components: Components | None = None,
    worker: bool = False,
    worker_threads: int | None = None,
) -> FastAPI:
    """The ASGI app. With `worker`, it also processes the queue in background threads (`mendbot serve`)."""
    settings = settings or load_settings()
    owned = components is None
    parts = components or build_components(settings, registry=CollectorRegistry())
    secret = settings.webhook_secret_bytes()
    store, queue, metrics, router = parts.store, parts.queue, parts.metrics, parts.router
    # A plain executor: handing a delivery to it costs about half the CPU of anyio's run_in_threadpool.
    intake = ThreadPoolExecutor(INTAKE_THREADS, thread_name_prefix="intake")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        consumer = None
        sweeper = None
        if worker:
            requeued = await run_in_threadpool(requeue_unfinished, store, queue)
            if requeued:
                log.info("picked up %d unfinished deliveries after a restart", len(requeued))
            consumer = queue.start_consumer(workers=worker_threads or settings.workers)
            sweeper = asyncio.create_task(_sweep(parts))
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            if consumer is not None:
                await run_in_threadpool(consumer.stop, True)
            intake.shutdown(wait=True)
            if owned:
                parts.close()

    app = FastAPI(title="Mendbot", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.components = parts

    @app.post("/webhook")
    async def webhook(request: Request) -> Response:
        name = request.headers.get(EVENT_HEADER, "")
        body = await _read_capped(request, settings.max_body_bytes)
        try:
            if body is None:
                raise IntakeError(413, f"body exceeds the {settings.max_body_bytes}-byte cap")
            event = event_from_http(request.headers, body, secret, settings.max_body_bytes)
        except IntakeError as refused:
            log.warning(
                "refused webhook delivery %s (%s): %s",
                _printable(request.headers.get(DELIVERY_HEADER)),
                _printable(name, 40),
                refused.reason,
            )
            metrics.delivery("invalid", f"rejected_{refused.status}")
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        if event.name in UNSTORED_EVENTS or not router.handles(event.name, event.action):
            metrics.delivery(event.name, "ignored")
            return JSONResponse({"status": "ignored"}, status_code=200)
        try:
            status = await asyncio.get_running_loop().run_in_executor(intake, _persist_and_queue, parts, event, body)
        except StoreUnavailable as down:
            log.error("cannot store delivery %s: %s", event.delivery_id, down)
            metrics.delivery(event.name, "store_unavailable")
            return JSONResponse({"error": "state store unavailable; redeliver later"}, status_code=503)
        metrics.delivery(event.name, status)
        code = 200 if status == "duplicate" else 202
        return JSONResponse({"status": status, "delivery": event.delivery_id}, status_code=code)

    @app.get("/healthz")
    async def healthz() -> Response:
        database = await run_in_threadpool(store.ping)
        queued = await run_in_threadpool(queue.ping)
        body = {"database": "ok" if database else "unreachable", "queue": "ok" if queued else "unreachable"}
        return JSONResponse(body, status_code=200 if database and queued else 503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    return app


def _persist_and_queue(parts: Components, event: Event, body: bytes) -> str:
    """Store the delivery (the durable part), then queue it if a handler may have work for it. Returns the
    intake outcome."""
    now = parts.services.clock()
    # Stored either way, so a replay is still known as one; only a delivery with work goes through the queue.
    needed = parts.router.wants(event)
    saved = parts.store.save_delivery(
        event.delivery_id,
        event=event.name,
        action=event.action,
        installation_id=event.installation_id,
        repository=event.repository,
        payload=body.decode("utf-8"),
        now=now,
        status=DeliveryStatus.PENDING if needed else DeliveryStatus.IGNORED,
    )
    if saved and not needed:
        return "ignored"
    if not saved:
        record = parts.store.get_delivery(event.delivery_id)
        if record is None or record.status in FINISHED:
            return "duplicate"
        if record.status is not DeliveryStatus.FAILED:
            return "already_queued"
        # GitHub redelivers a failed delivery under the same id: run it once more.
    try:
        parts.queue.enqueue(event.delivery_id)
    except QueueUnavailable as down:
        # The delivery is on disk, so 2xx stays true; the sweep queues it when the queue is back.
        log.error("stored delivery %s but could not queue it: %s", event.delivery_id, down)
        return "stored"
    return "queued" if saved else "requeued"


async def _sweep(parts: Components) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
        try:
            now = parts.services.clock()
            await run_in_threadpool(requeue_unfinished, parts.store, parts.queue, older_than=now - SWEEP_AGE)
            # Finished deliveries are kept the 3 days GitHub may redeliver them in, then dropped.
            await run_in_threadpool(parts.store.prune, now)
        except (StoreUnavailable, QueueUnavailable) as down:
            log.warning("sweep for unfinished deliveries skipped: %s", down)
