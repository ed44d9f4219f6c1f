"""The `mendbot` command: diagnose logs, batch-excerpt datasets, evaluate, and run the App."""

from __future__ import annotations

import io
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO, TypeVar, cast

import typer
from rich.console import Console

from bot.core.excerpt import DEFAULT_BUDGET
from bot.core.logs import MAX_ZIP_TOTAL_BYTES, LogError

if TYPE_CHECKING:
    from rich.progress import Progress

    from bot.core.excerpt import Excerpter
    from bot.core.models import Excerpt
    from bot.ports import DiagnosisResult
    from bot.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    name="mendbot",
    help="Diagnose failed CI runs: find the lines that explain a failure and say why it failed.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Measure Mendbot on a dataset of failed CI logs.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

err = Console(stderr=True)
# Show a progress bar only when a log is big enough to take noticeable time.
PROGRESS_MIN_BYTES = 8 * 1024 * 1024
# A zip is read by seeking, which a pipe cannot do: one on standard input is copied aside first, in memory up
# to this size and on disk beyond it. Anything else on standard input streams through untouched.
STDIN_SPOOL_MEMORY_BYTES = 16 * 1024 * 1024
ZIP_MAGIC = b"PK\x03\x04"


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error for a person (never a traceback) and return the exit to raise."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


class _CountingReader:
    """Wrap a binary stream and report how many bytes were read, to drive a progress bar."""

    def __init__(self, inner: BinaryIO, advance: Callable[[int], object]) -> None:
        self._inner = inner
        self._advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._advance(len(data))
        return data

    def seekable(self) -> bool:
        return self._inner.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()


class _Rejoined(io.RawIOBase):
    """The bytes already taken from a stream, followed by the rest of it."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size], self._head = self._head[:size], self._head[size:]
            return size
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@contextmanager
def stdin_log(stdin: BinaryIO, max_zip_bytes: int = MAX_ZIP_TOTAL_BYTES) -> Iterator[BinaryIO]:
    """Standard input as a log: streamed as it comes, except a zip, which is spooled so that it can be seeked."""
    if stdin.seekable():
        yield stdin
        return
    head = stdin.read(len(ZIP_MAGIC))
    while len(head) < len(ZIP_MAGIC) and (more := stdin.read(len(ZIP_MAGIC) - len(head))):
        head += more
    if head != ZIP_MAGIC:
        yield cast(BinaryIO, io.BufferedReader(_Rejoined(head, stdin)))
        return
    with tempfile.SpooledTemporaryFile(max_size=STDIN_SPOOL_MEMORY_BYTES) as spool:
        size = spool.write(head)
        while block := stdin.read(1024 * 1024):
            size += spool.write(block)
            if size > max_zip_bytes:
                raise fail(f"the zip on standard input is over {max_zip_bytes} bytes; nothing was diagnosed")
        spool.seek(0)
        yield cast(BinaryIO, spool)


def _progress_for(path: str) -> Progress | None:
    if path == "-" or not err.is_terminal or not Path(path).is_file():
        return None
    if Path(path).stat().st_size < PROGRESS_MIN_BYTES:
        return None
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("reading {task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        console=err, transient=True,
    )


def build_excerpt(path: str, pass_log: Path | None, budget: int) -> Excerpter:
    """Stream a log through the excerpter; keep nothing but the excerpter's bounded state."""
    from bot.core.excerpt import PassingIndex
    from bot.core.logs import read_log
    from bot.core.scan import excerpt_stream

    passing = None
    if pass_log is not None:
        if not pass_log.is_file():
            raise fail(f"no such passing log: {pass_log}")
        with pass_log.open("rb") as stream:
            passing = PassingIndex.build(read_log(stream))
    if path == "-":
        with stdin_log(sys.stdin.buffer) as stream:
            return excerpt_stream(stream, budget, passing)
    file = Path(path)
    if not file.is_file():
        raise fail(f"no such log file: {path}")
    progress = _progress_for(path)
    with file.open("rb") as stream:
        if progress is None:
            return excerpt_stream(stream, budget, passing)
        with progress:
            task = progress.add_task(file.name, total=file.stat().st_size)
            reader = _CountingReader(stream, lambda n: progress.advance(task, n))
            return excerpt_stream(reader, budget, passing)  # type: ignore[arg-type]


@app.command()
def diagnose(
    path: Annotated[str, typer.Argument(help="a log file (text, gzip or a run-logs zip), or - for stdin")],
    pass_log: Annotated[
        Path | None, typer.Option("--pass-log", help="the last passing log of the same job, to diff against")
    ] = None,
    budget: Annotated[int, typer.Option(min=64, help="excerpt size in bytes")] = DEFAULT_BUDGET,
    output: Annotated[OutputFormat, typer.Option("--format", help="text, json or markdown")] = OutputFormat.TEXT,
    offline: Annotated[bool, typer.Option("--offline", help="use the rules even when a model is configured")] = False,
) -> None:
    """Diagnose one failed CI log and print the diagnosis: with Claude when an Anthropic key is set."""
    from bot.core.render import render_markdown, render_text

    try:
        excerpter = build_excerpt(path, pass_log, budget)
        excerpt = excerpter.finish()
    except LogError as exc:
        raise fail(str(exc)) from None
    if not excerpt.lines:
        raise fail(f"{path}: the log is empty; there is nothing to diagnose", code=1)
    if excerpter.looks_binary:
        raise fail(f"{path}: this is not a text log (most of it is not valid UTF-8); nothing was diagnosed")
    result = _diagnose_excerpt(excerpt, offline)
    diagnosis = result.diagnosis
    if output is OutputFormat.JSON:
        usage = result.usage_for_footer()
        document = {"diagnosis": diagnosis.model_dump(mode="json"), "excerpt": excerpt.model_dump(), "usage": usage}
        print(json.dumps(document, indent=2))
    elif output is OutputFormat.MARKDOWN:
        print(render_markdown(diagnosis, excerpt, usage=result.usage_for_footer()))
    else:
        source = "source: rules"
        if diagnosis.source == "model" and result.model:
            tokens = result.input_tokens + result.cache_read_tokens + result.cache_write_tokens
            source = (
                f"source: model ({result.model}, {tokens:,} in / {result.output_tokens:,} out tokens, "
                f"${result.cost_usd:.4f})"
            )
        print(render_text(diagnosis, excerpt).replace(f"source: {diagnosis.source}", source, 1))


def _diagnose_excerpt(excerpt: Excerpt, offline: bool) -> DiagnosisResult:
    """The model's diagnosis when a key is set and --offline is not, else the rules'; a failure is a note.

    The spending caps need a store: MENDBOT_DATABASE_URL when it is set (so caps hold across runs), else a
    SQLite file in a temporary directory that lives as long as this one command.
    """
    import tempfile
    from datetime import UTC, datetime

    from bot.diagnosers import OfflineDiagnoser
    from bot.ports import FailureFacts

    facts = FailureFacts(repository="local", excerpt=excerpt)
    now = datetime.now(UTC)
    rules = OfflineDiagnoser().diagnose(facts, now)
    if offline:
        return rules
    # The model path's imports (SQLAlchemy, the SDK) cost a noticeable start-up; only pay them here.
    from bot.adapters.store import Store, StoreUnavailable
    from bot.core import templates
    from bot.settings import SettingsError, load_settings
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None
    if settings.anthropic_key() is None:
        return rules
    from bot.wiring import build_diagnoser, model_client

    try:
        with tempfile.TemporaryDirectory(prefix="mendbot-") as scratch:
            chosen = "database_url" in settings.model_fields_set
            store = Store(settings.database_url if chosen else f"sqlite:///{Path(scratch) / 'state.db'}")
            try:
                store.migrate()
                with model_client(settings) as client:
                    return build_diagnoser(settings, store, client=client).diagnose(facts, now)
            finally:
                store.close()
    except Exception as exc:  # whatever went wrong, the rules diagnosis still stands
        reason = str(exc) if isinstance(exc, StoreUnavailable) else type(exc).__name__
        note = templates.MODEL_UNAVAILABLE_NOTE.format(reason=reason)
        return replace(rules, diagnosis=rules.diagnosis.model_copy(update={"notes": [note, *rules.diagnosis.notes]}))


@app.command()
def excerpt(
    manifest: Annotated[Path, typer.Option(help="a dataset manifest.jsonl")],
    out: Annotated[Path, typer.Option(help="where to write one JSON line per case")],
    budget: Annotated[int, typer.Option(min=64, help="excerpt size in bytes")] = DEFAULT_BUDGET,
    workers: Annotated[int, typer.Option(min=1, help="parallel processes")] = 2,
) -> None:
    """Excerpt every case of a dataset manifest into a JSON-lines file."""
    from bot.evaluation import ManifestError, excerpt_rows, load_manifest

    try:
        cases = load_manifest(manifest)
    except ManifestError as exc:
        raise fail(str(exc)) from None
    tmp = out.with_name(out.name + ".partial")
    with _bar(len(cases), "excerpting") as advance, tmp.open("w", encoding="utf-8") as sink:
        for row in excerpt_rows(cases, budget, workers):
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            advance()
    # Rename at the end so an interrupted run never leaves a half-written result behind.
    tmp.replace(out)
    err.print(f"wrote {len(cases)} cases to {out}")


class _bar:
    """A rich progress bar over a known number of steps; yields the function that advances it."""

    def __init__(self, total: int, label: str) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
            console=err, transient=True, disable=not err.is_terminal,
        )
        self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> Callable[[], None]:
        self._progress.start()
        return lambda: self._progress.advance(self._task)

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


@eval_app.command("excerpts")
def eval_excerpts(
    manifest: Annotated[Path, typer.Option(help="a dataset manifest.jsonl")],
    budget: Annotated[int, typer.Option(min=64, help="excerpt size in bytes")] = DEFAULT_BUDGET,
    workers: Annotated[int, typer.Option(min=1, help="parallel processes")] = 2,
) -> None:
    """Print recall, full and hit for Mendbot's excerpts and for the last-B-bytes baseline."""
    from rich.table import Table

    from bot.evaluation import ManifestError, evaluate, load_manifest

    try:
        cases = load_manifest(manifest)
    except ManifestError as exc:
        raise fail(str(exc)) from None
    with _bar(len(cases), "evaluating") as advance:
        report = evaluate(cases, budget, workers, progress=advance)
    table = Table(title=f"Excerpt metric at B = {budget} bytes over {report.ours.cases} cases")
    for column in ("method", "recall", "full", "hit"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, summary in (("mendbot", report.ours), (f"last {budget} bytes", report.baseline)):
        table.add_row(name, f"{summary.recall:.3f}", f"{summary.full:.3f}", f"{summary.hit:.3f}")
    Console().print(table)
    if report.category_accuracy is not None:
        print(f"category accuracy: {report.category_accuracy:.3f} over {report.categorized} labeled cases")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on; 0.0.0.0 for all interfaces")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8000,
    threads: Annotated[int | None, typer.Option(min=1, help="worker threads (default MENDBOT_WORKERS)")] = None,
    access_log: Annotated[bool, typer.Option(help="log every HTTP request (off: a line per webhook is noise)")] = False,
) -> None:
    """Run the GitHub App: the webhook server with an in-process worker (the single-machine setup)."""
    import uvicorn

    from bot.web import create_app

    _log_to_stderr()
    application = _start(lambda settings: create_app(settings, worker=True, worker_threads=threads))
    # Refused and failed deliveries are logged by Mendbot itself; uvicorn's line per request cost about a
    # tenth of the server's CPU at 300 deliveries a second.
    uvicorn.run(application, host=host, port=port, log_level="info", proxy_headers=True, access_log=access_log)


@app.command()
def worker(
    threads: Annotated[int | None, typer.Option(min=1, help="worker threads (default MENDBOT_WORKERS)")] = None,
) -> None:
    """Process queued deliveries without serving HTTP (run beside `mendbot serve` or `uvicorn app:app`)."""
    from bot.adapters.queue import requeue_unfinished
    from bot.wiring import build_components

    _log_to_stderr()
    components = _start(build_components)
    try:
        requeue_unfinished(components.store, components.queue)
        components.queue.run_consumer(workers=threads or components.settings.workers)
    finally:
        components.close()


@app.command()
def replay(
    payload: Annotated[Path, typer.Argument(help="a webhook payload JSON file, sent byte for byte")],
    event: Annotated[str, typer.Option("--event", help="the X-GitHub-Event name, e.g. workflow_run")],
    url: Annotated[str, typer.Option(help="the server's webhook URL")] = "http://127.0.0.1:8000/webhook",
) -> None:
    """Send a payload to a running server, signed with MENDBOT_WEBHOOK_SECRET, under a fresh delivery id."""
    import uuid

    import httpx

    from bot.events import sign
    from bot.settings import SettingsError, load_settings

    if not payload.is_file():
        raise fail(f"no such payload file: {payload}")
    try:
        secret = load_settings().webhook_secret_bytes()
    except SettingsError as exc:
        raise fail(str(exc)) from None
    body = payload.read_bytes()
    delivery = str(uuid.uuid4())
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(secret, body),
        "Content-Type": "application/json",
        "User-Agent": "mendbot-replay",
    }
    try:
        reply = httpx.post(url, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {exc}") from None
    print(f"{reply.status_code} {reply.reason_phrase} (delivery {delivery}) {reply.text.strip()}")
    if not reply.is_success:
        raise typer.Exit(1)


@app.command()
def action() -> None:
    """Run as the GitHub Action: diagnose the run's failed jobs; inputs come from INPUT_* and GITHUB_* variables."""
    import logging
    import os

    from bot.action import run

    # A prefix on every line: a log line the runner reads as starting with :: would be a workflow command.
    logging.basicConfig(level=logging.WARNING, format="mendbot: %(levelname)s %(message)s")
    raise typer.Exit(run(os.environ))


def _log_to_stderr() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _start(build: Callable[[Settings], T]) -> T:
    """Build the App from the environment, turning setup problems into one-line errors."""
    from bot.adapters.queue import QueueUnavailable
    from bot.adapters.store import StoreUnavailable
    from bot.settings import SettingsError, load_settings

    try:
        return build(load_settings())
    except (SettingsError, StoreUnavailable, QueueUnavailable) as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:
        # A malformed database or queue URL, or a private key that is not an RSA PEM.
        raise fail(f"invalid setting: {exc}") from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
