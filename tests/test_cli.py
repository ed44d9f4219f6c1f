"""The `mendbot` command line: diagnose, excerpt and eval, with clear errors instead of tracebacks."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from bot import cli
from bot.cli import app, stdin_log

FIXTURES = Path(__file__).parent / "fixtures" / "logs"
LOG = FIXTURES / "gha-gradle-test-failure.log"
runner = CliRunner()


@pytest.fixture(autouse=True)
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MENDBOT_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_diagnose_text_names_the_cause_and_the_source() -> None:
    result = runner.invoke(app, ["diagnose", str(LOG), "--offline"])
    assert result.exit_code == 0, result.output
    assert "test_failure" in result.stdout and "testClassicParsing" in result.stdout
    assert "source: rules" in result.stdout


def test_diagnose_json_has_the_diagnosis_and_the_excerpt() -> None:
    result = runner.invoke(app, ["diagnose", str(LOG), "--offline", "--format", "json", "--budget", "1024"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["diagnosis"]["source"] == "rules"
    lines = [line for block in data["excerpt"]["blocks"] for line in block["lines"]]
    assert sum(len(line["text"].encode()) + 1 for line in lines) <= 1024


def test_diagnose_markdown_is_the_comment_mendbot_would_post() -> None:
    result = runner.invoke(app, ["diagnose", str(LOG), "--offline", "--format", "markdown"])
    assert result.exit_code == 0
    assert "<!-- mendbot:fingerprint=" in result.stdout and "<details>" in result.stdout


def test_diagnose_reads_standard_input_and_uses_a_passing_log() -> None:
    pass_log = FIXTURES / "gha-gradle-test-failure.pass.log"
    result = runner.invoke(app, ["diagnose", "-", "--offline", "--pass-log", str(pass_log)], input=LOG.read_bytes())
    assert result.exit_code == 0, result.output
    assert "testClassicParsing" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["diagnose", "no/such.log"], "no such log file"),
        (["diagnose", str(LOG), "--pass-log", "no/such.log"], "no such passing log"),
        (["excerpt", "--manifest", "no/such.jsonl", "--out", "x.jsonl"], "manifest not found"),
        (["eval", "excerpts", "--manifest", "no/such.jsonl"], "manifest not found"),
    ],
)
def test_bad_input_gets_one_clear_line_not_a_traceback(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_empty_log_is_reported(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    result = runner.invoke(app, ["diagnose", str(empty)])
    assert result.exit_code == 1 and "empty" in result.output


def test_excerpt_batch_writes_one_row_per_case(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    result = runner.invoke(
        app, ["excerpt", "--manifest", str(FIXTURES / "manifest.jsonl"), "--budget", "2048", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    assert all(set(row) == {"id", "lines", "category", "severity", "fingerprint"} for row in rows)
    assert not list(tmp_path.glob("*.partial"))


def test_eval_prints_ours_beside_the_baseline() -> None:
    result = runner.invoke(app, ["eval", "excerpts", "--manifest", str(FIXTURES / "manifest.jsonl"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "mendbot" in result.stdout and "last 4096 bytes" in result.stdout
    assert "category accuracy" in result.stdout


def test_binary_input_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "core.bin"
    garbage.write_bytes(bytes(range(128, 256)) * 2000)
    result = runner.invoke(app, ["diagnose", str(garbage), "--offline"])
    assert result.exit_code == 2
    assert "not a text log" in result.output and "Traceback" not in result.output


def test_a_log_with_a_few_bad_bytes_is_still_diagnosed(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(LOG.read_bytes().replace(b"FAILED", b"FAILED \xff", 1))
    result = runner.invoke(app, ["diagnose", str(log), "--offline"])
    assert result.exit_code == 0, result.output


class _Pipe(io.RawIOBase):
    """A stream that cannot seek, like a pipe, and counts what was taken from it."""

    def __init__(self, data: bytes) -> None:
        self._data, self.taken = io.BytesIO(data), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._data.read(min(len(buffer), 3))  # a pipe hands over what it has, however little
        buffer[: len(data)] = data
        self.taken += len(data)
        return len(data)


def run_zip() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("1_lint.txt", b"2024-01-01T00:00:00.0000000Z All checks passed!\n")
        bundle.writestr("2_gradle.txt", LOG.read_bytes())
    return archive.getvalue()


def test_diagnose_reads_a_zip_piped_to_standard_input() -> None:
    env = {name: value for name, value in os.environ.items() if "ANTHROPIC" not in name}
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "diagnose", "-", "--offline", "--format", "json"],
        input=run_zip(), capture_output=True, cwd=Path(__file__).parent.parent, env=env, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    blocks = json.loads(result.stdout)["excerpt"]["blocks"]
    assert any(block["job"] == "gradle" and "testClassicParsing" in str(block["lines"]) for block in blocks)


def test_a_plain_log_on_standard_input_streams_through_unspooled() -> None:
    data = LOG.read_bytes()
    pipe = _Pipe(data)
    with stdin_log(pipe) as stream:  # type: ignore[arg-type]
        assert pipe.taken < 16, "only the first bytes are looked at before the log is read"
        assert not stream.seekable()
        assert stream.read() == data


def test_a_zip_on_standard_input_is_spooled_and_capped(capsys: pytest.CaptureFixture[str]) -> None:
    archive = run_zip()
    with stdin_log(_Pipe(archive)) as stream:  # type: ignore[arg-type]
        assert stream.seekable() and stream.read() == archive
    with pytest.raises(typer.Exit), stdin_log(_Pipe(archive), max_zip_bytes=len(archive) - 1):  # type: ignore[arg-type]
        pass
    assert "zip on standard input is over" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("log", "terminal", "shown"),
    [
        (LOG, True, True),  # 42 KB, over the lowered threshold
        (FIXTURES / "gha-pytorch-keyboardinterrupt.log", True, False),  # 7 KB, under it
        (LOG, False, False),  # stderr is not a terminal: no bar to clutter a log file
    ],
    ids=["big", "small", "not-a-terminal"],
)
def test_a_progress_bar_shows_on_stderr_for_big_inputs_only(
    monkeypatch: pytest.MonkeyPatch, log: Path, terminal: bool, shown: bool
) -> None:
    monkeypatch.setattr(cli, "PROGRESS_MIN_BYTES", 10_000)
    monkeypatch.setattr(cli, "err", Console(stderr=True, force_terminal=terminal, width=120))
    result = runner.invoke(app, ["diagnose", str(log), "--offline"])
    assert result.exit_code == 0, result.output
    assert ("reading " + log.name in result.stderr) is shown
    assert ("━" in result.stderr) is shown
    assert "reading " not in result.stdout and "source: rules" in result.stdout


@pytest.mark.parametrize("flag", [[], ["--access-log"]], ids=["default", "access-log"])
def test_serve_logs_each_http_request_only_when_asked(tmp_path: Path, flag: list[str]) -> None:
    import httpx

    from tests.app_support import APP_ID, SECRET, free_port, rsa_keys, wait_for

    env = {key: value for key, value in os.environ.items() if not key.startswith("MENDBOT_")}
    env.update(
        MENDBOT_APP_ID=APP_ID,
        MENDBOT_PRIVATE_KEY=rsa_keys()[0],
        MENDBOT_WEBHOOK_SECRET=SECRET,
        MENDBOT_GITHUB_API_URL="http://127.0.0.1:9",
        MENDBOT_DATABASE_URL=f"sqlite:///{tmp_path / 'state.db'}",
    )
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", "--port", str(port), *flag], env=env, stdout=sink, stderr=sink
        )
        try:

            def healthy() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    assert process.poll() is None, log.read_text()
                    return False

            wait_for(healthy, 30, "mendbot serve to start")
        finally:
            process.terminate()
            process.wait(timeout=30)
    logged = log.read_text()
    assert "Uvicorn running" in logged
    assert ('"GET /healthz HTTP/1.1" 200' in logged) == bool(flag)
