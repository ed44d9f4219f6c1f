"""The `mendbot` command: diagnose logs, batch-excerpt datasets, evaluate, and run the App."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, BinaryIO

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from bot.core.excerpt import DEFAULT_BUDGET, Excerpter, PassingIndex
from bot.core.logs import LogError, LogLine, read_log

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


def _iter_log(path: str, progress: Progress | None) -> Iterator[LogLine]:
    """The lines of a log file, or of standard input for `-`."""
    if path == "-":
        yield from read_log(sys.stdin.buffer)
        return
    file = Path(path)
    if not file.is_file():
        raise fail(f"no such log file: {path}")
    with file.open("rb") as stream:
        if progress is None:
            yield from read_log(stream)
            return
        task = progress.add_task(file.name, total=file.stat().st_size)
        reader = _CountingReader(stream, lambda n: progress.advance(task, n))
        yield from read_log(reader)  # type: ignore[arg-type]


def _progress_for(path: str) -> Progress | None:
    if path == "-" or not err.is_terminal or not Path(path).is_file():
        return None
    if Path(path).stat().st_size < PROGRESS_MIN_BYTES:
        return None
    return Progress(
        TextColumn("reading {task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        console=err, transient=True,
    )


def build_excerpt(path: str, pass_log: Path | None, budget: int) -> Excerpter:
    """Stream a log through the excerpter; keep nothing but the excerpter's bounded state."""
    passing = None
    if pass_log is not None:
        if not pass_log.is_file():
            raise fail(f"no such passing log: {pass_log}")
        with pass_log.open("rb") as stream:
            passing = PassingIndex.build(read_log(stream))
    excerpter = Excerpter(budget, passing)
    progress = _progress_for(path)
    if progress is not None:
        with progress:
            for line in _iter_log(path, progress):
                excerpter.feed(line)
    else:
        for line in _iter_log(path, None):
            excerpter.feed(line)
    return excerpter


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
    """Diagnose one failed CI log and print the diagnosis."""
    from bot.core.diagnose import offline_diagnosis
    from bot.core.render import render_markdown, render_text

    try:
        excerpter = build_excerpt(path, pass_log, budget)
        excerpt = excerpter.finish()
    except LogError as exc:
        raise fail(str(exc)) from None
    if not excerpt.lines:
        raise fail(f"{path}: the log is empty; there is nothing to diagnose", code=1)
    diagnosis = offline_diagnosis(excerpt)
    if output is OutputFormat.JSON:
        print(json.dumps({"diagnosis": diagnosis.model_dump(mode="json"), "excerpt": excerpt.model_dump()}, indent=2))
    elif output is OutputFormat.MARKDOWN:
        print(render_markdown(diagnosis, excerpt))
    else:
        print(render_text(diagnosis, excerpt))


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
