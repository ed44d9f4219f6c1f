"""Reading logs: every supported shape, original line numbers, bounded memory, hostile archives."""

from __future__ import annotations

import dataclasses
import gzip
import io
import stat
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from bot.core.excerpt import Excerpter
from bot.core.logs import (
    MAX_LINE_BYTES,
    LogError,
    LogLine,
    _CappedReader,
    _new_line,
    clean,
    iter_zip_jobs,
    iter_zip_lines,
    lines_from_text,
    open_zip_entry,
    parse_lines,
    read_log,
    zip_entry_count,
)

FIXTURES = Path(__file__).parent / "fixtures" / "logs"


def parse(data: bytes, job: str = "") -> list[LogLine]:
    return list(parse_lines(io.BytesIO(data), job=job))


def test_github_actions_timestamps_groups_errors_and_steps() -> None:
    log = (
        b"2024-01-01T00:00:00.0000000Z ##[group]Run actions/checkout@v4\n"
        b"2024-01-01T00:00:01.0000000Z with: fetch-depth 1\n"
        b"2024-01-01T00:00:02.0000000Z ##[endgroup]\n"
        b"2024-01-01T00:00:03.0000000Z ##[group]Run pytest -q\n"
        b"2024-01-01T00:00:04.0000000Z ##[endgroup]\n"
        b"2024-01-01T00:00:05.0000000Z E   assert 1 == 2\n"
        b"2024-01-01T00:00:06.0000000Z ::error file=app.py,line=3::boom\n"
        b"2024-01-01T00:00:07.0000000Z ##[error]Process completed with exit code 1.\n"
    )
    lines = parse(log)
    assert [line.number for line in lines] == list(range(1, 9))
    assert lines[0].marker == "group" and lines[0].text == "Run actions/checkout@v4"
    assert lines[1].step == "actions/checkout@v4" and lines[1].text == "with: fetch-depth 1"
    assert lines[5].step == "pytest -q" and lines[5].text == "E   assert 1 == 2"
    assert lines[6].marker == "error" and lines[6].text == "::error file=app.py,line=3::boom"
    assert lines[7].marker == "error" and lines[7].text == "Process completed with exit code 1."


def test_gh_run_view_prefixes_give_job_and_step() -> None:
    log = (
        b"build\tSet up job\t2021-12-01T13:00:40.1077661Z Current runner version: '2.284.0'\n"
        b"build\tRun tests\t2021-12-01T13:01:04.3807878Z LogDifferTest > testGithubParsing() FAILED\n"
    )
    first, second = parse(log)
    assert (first.job, first.step) == ("build", "Set up job")
    assert (second.job, second.step) == ("build", "Run tests")
    assert second.text == "LogDifferTest > testGithubParsing() FAILED"


def test_travis_crlf_lone_cr_progress_and_ansi_keep_numbers() -> None:
    log = (
        b"travis_fold:start:install\r\x1b[0Ktravis_time:start:1\r\x1b[0K$ npm ci\r\n"
        b"progress 10%\rprogress 50%\rprogress 100%\r\n"
        b"\x1b[31mError: cannot find module 'x'\x1b[0m\r\n"
        b"\r\n"
    )
    lines = parse(log)
    assert [line.text for line in lines] == ["$ npm ci", "progress 100%", "Error: cannot find module 'x'", ""]
    assert [line.number for line in lines] == [1, 2, 3, 4]


def test_jenkins_and_plain_text_pass_through() -> None:
    lines = lines_from_text("Started by timer\n[ERROR] Failed to execute goal\nFinished: FAILURE")
    assert [line.text for line in lines] == ["Started by timer", "[ERROR] Failed to execute goal", "Finished: FAILURE"]


def test_gzip_is_detected_by_magic_bytes() -> None:
    data = gzip.compress(b"one\ntwo\nthree\n")
    assert [line.text for line in parse(data)] == ["one", "two", "three"]


def test_the_quick_line_constructor_sets_every_field() -> None:
    values = (7, "text", "job", "step", "error", True, True)
    assert [field.name for field in dataclasses.fields(LogLine)] == [
        "number", "text", "job", "step", "marker", "truncated", "red"
    ]
    quick = _new_line(*values)
    assert quick == LogLine(*values) and repr(quick) == repr(LogLine(*values))
    assert hash(quick) == hash(LogLine(*values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.text = "changed"  # type: ignore[misc]


def test_controls_go_from_printable_and_unprintable_lines_alike() -> None:
    assert clean("a\x07b") == "ab"
    assert clean("a\tb\x00c\u00a0d\x7f") == "a\tbc\u00a0d"
    assert clean("plain words") == "plain words"


def test_invalid_bytes_are_replaced_and_nul_and_controls_removed() -> None:
    lines = parse(b"bad \xff\xfe bytes\nnul\x00here\x07\n")
    assert lines[0].text == "bad \ufffd\ufffd bytes"
    assert lines[1].text == "nulhere"


def test_single_huge_line_is_truncated_not_fatal() -> None:
    huge = b"x" * (5 * 1024 * 1024)
    lines = parse(b"before\n" + huge + b"\nafter\n")
    assert [line.number for line in lines] == [1, 2, 3]
    assert lines[1].truncated and len(lines[1].text) <= MAX_LINE_BYTES
    assert lines[2].text == "after" and not lines[2].truncated


def test_line_numbers_match_raw_newline_split_on_real_logs() -> None:
    for path in sorted(FIXTURES.glob("*.log")):
        raw = path.read_bytes().split(b"\n")
        with path.open("rb") as stream:
            lines = list(read_log(stream))
        # A trailing newline leaves an empty last piece that is not a line.
        expected = len(raw) - (1 if raw[-1] == b"" else 0)
        assert len(lines) == expected, path.name
        assert lines[-1].number == expected


def test_clean_strips_osc_and_private_ansi_sequences() -> None:
    assert clean("\x1b]0;title\x07\x1b[?25lvisible\x1b[?25h") == "visible"


def test_reading_streams_in_bounded_memory() -> None:
    """A 16 MB log is read with memory that does not grow with its size."""

    class Generated(io.RawIOBase):
        def __init__(self, total: int) -> None:
            self.left = total
            self.chunk = b"2024-01-01T00:00:00.0000000Z some ordinary build output line\n" * 1000

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            if self.left <= 0:
                return 0
            data = self.chunk[: min(len(buffer), self.left, len(self.chunk))]
            buffer[: len(data)] = data
            self.left -= len(data)
            return len(data)

    tracemalloc.start()
    count = sum(1 for _ in parse_lines(io.BufferedReader(Generated(16 * 1024 * 1024))))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count > 250_000
    assert peak < 8 * 1024 * 1024


def make_zip(entries: dict[str, bytes], symlink: str | None = None) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    buffer.seek(0)
    return buffer


def test_run_logs_zip_reads_jobs_in_order_and_labels_them() -> None:
    archive = make_zip(
        {
            "2_test (3.12).txt": b"2024-01-01T00:00:00.0000000Z second job\n",
            "1_build.txt": b"2024-01-01T00:00:00.0000000Z first job\nline two\n",
            "build/1_Set up job.txt": b"step file\n",
        }
    )
    lines = list(read_log(archive))
    assert [(line.job, line.number, line.text) for line in lines] == [
        ("build", 1, "first job"),
        ("build", 2, "line two"),
        ("test (3.12)", 1, "second job"),
    ]


TS = b"2024-01-01T00:00:00.0000000Z "


def test_zip_with_only_step_files_reads_every_step_in_order_numbered_on(tmp_path: Path) -> None:
    archive = make_zip(
        {
            "lint/10_Post Run actions_checkout@v4.txt": TS + b"Post job cleanup.\n",
            "lint/2_Run ruff.txt": TS + b"##[group]Run ruff check .\n" + TS + b"E501 line too long\n",
            "lint/1_Set up job.txt": TS + b"hello\nsecond",  # no final newline: the next step still starts anew
        }
    )
    lines = list(iter_zip_lines(archive))
    assert [(line.job, line.step, line.number, line.text) for line in lines] == [
        ("lint", "Set up job", 1, "hello"),
        ("lint", "Set up job", 2, "second"),
        ("lint", "Run ruff", 3, "Run ruff check ."),  # the file names the step, not its group line
        ("lint", "Run ruff", 4, "E501 line too long"),
        ("lint", "Post Run actions_checkout@v4", 5, "Post job cleanup."),
    ]
    assert not any(tmp_path.iterdir())


def test_zip_reads_step_files_only_for_jobs_without_a_whole_job_file() -> None:
    archive = make_zip(
        {
            "2_test.txt": TS + b"whole test log\n",
            "test/1_Set up job.txt": TS + b"step copy of the test log\n",
            "deploy/1_Set up job.txt": TS + b"deploy setup\n",
            "deploy/2_Push.txt": TS + b"fatal: could not read Username\n",
            "1_build.txt": TS + b"whole build log\n",
        }
    )
    lines = list(read_log(archive))
    assert [(line.job, line.step, line.number, line.text) for line in lines] == [
        ("build", "", 1, "whole build log"),
        ("test", "", 1, "whole test log"),
        ("deploy", "Set up job", 1, "deploy setup"),
        ("deploy", "Push", 2, "fatal: could not read Username"),
    ]


def test_step_names_from_entry_names_are_made_safe() -> None:
    archive = make_zip({"job\x1b/1_..\x07Run\x7f tests.txt": b"boom\n", "job\x1b/2_.txt": b"after\n"})
    lines = list(read_log(archive))
    assert [(line.job, line.step) for line in lines] == [("job", "Run tests"), ("job", "step")]


def test_the_failing_step_of_a_step_only_zip_is_excerpted_under_its_job_and_step() -> None:
    archive = make_zip(
        {
            "test/1_Set up job.txt": b"".join(TS + b"Preparing runner %d\n" % n for n in range(50)),
            "test/2_Run pytest.txt": TS + b"tests/test_a.py::test_x FAILED\n" + TS + b"E   assert 1 == 2\n"
            + TS + b"##[error]Process completed with exit code 1.\n",
            "test/3_Complete job.txt": TS + b"Cleaning up orphan processes\n",
        }
    )
    excerpter = Excerpter(1024)
    for line in read_log(archive):
        excerpter.feed(line)
    blocks = excerpter.finish().blocks
    failing = next(block for block in blocks if any("assert 1 == 2" in line.text for line in block.lines))
    assert (failing.job, failing.step) == ("test", "Run pytest")
    assert [line.number for line in failing.lines if "assert 1 == 2" in line.text] == [52]


def test_step_files_are_held_to_the_zip_caps() -> None:
    bomb = {"lint/1_Set up job.txt": b"ok\n", "lint/2_Bomb.txt": b"\n" * (20 * 1024 * 1024)}
    with pytest.raises(LogError, match="expands"):
        list(read_log(make_zip(bomb)))
    with pytest.raises(LogError, match="symlink"):
        list(read_log(make_zip({"lint/1_Set up job.txt": b"ok\n"}, symlink="lint/2_Run.txt")))
    with pytest.raises(LogError, match="over the 1000-byte cap"):
        list(iter_zip_lines(make_zip({"lint/1_a.txt": b"x" * 600, "lint/2_b.txt": b"y" * 600}), 1000))


def test_zip_entry_names_are_never_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    archive = make_zip({"../../x.txt": b"escape\n", "/abs/1_job.txt": b"abs\n"})
    lines = list(read_log(archive))
    assert {line.job for line in lines} <= {"x", "job"}
    assert not list(tmp_path.rglob("*")), "reading an archive must not write files"


def test_zip_symlink_entry_is_refused() -> None:
    archive = make_zip({}, symlink="1_job.txt")
    with pytest.raises(LogError, match="symlink"):
        list(read_log(archive))


def test_zip_bomb_is_refused_by_ratio() -> None:
    archive = make_zip({"1_job.txt": b"\n" * (20 * 1024 * 1024)})
    with pytest.raises(LogError, match="expands"):
        list(read_log(archive))


def test_zip_entry_over_the_size_cap_is_refused_before_reading() -> None:
    with zipfile.ZipFile(make_zip({"1_job.txt": b"ab\n" * 1000})) as reader:
        assert open_zip_entry(reader, "1_job.txt", max_entry_bytes=10_000).read().count(b"\n") == 1000
        with pytest.raises(LogError, match="over the cap"):
            open_zip_entry(reader, "1_job.txt", max_entry_bytes=100)


def test_capped_reader_counts_what_comes_out_whatever_the_header_said() -> None:
    reader = io.BufferedReader(_CappedReader(io.BytesIO(b"x" * 5000), 1000, "job"))
    with pytest.raises(LogError, match="expands past 1000"):
        reader.read()


def test_not_a_zip_archive_gets_a_clear_error() -> None:
    with pytest.raises(LogError, match="zip"):
        list(iter_zip_lines(io.BytesIO(b"PK\x03\x04 not really")))


def test_truncated_gzip_gets_a_clear_error() -> None:
    data = gzip.compress(b"line\n" * 1000)[:-20]
    with pytest.raises(LogError, match="could not be read"):
        parse(data)


@pytest.mark.parametrize(
    ("raw", "red"),
    [
        ("\x1b[31mAssertionError: 1 != 2\x1b[0m", True),
        ("\x1b[1;31m  1) test fails\x1b[0m", True),
        ("\x1b[91mbright red text", True),
        ("\x1b[0;31m\x1b[0m", False),  # red switched on and off again: nothing shown in it
        ("\x1b[31m   ", False),
        ("\x1b[32mok 5 parses\x1b[0m", False),
        ("plain error text", False),
    ],
)
def test_lines_printed_in_red_are_marked(raw: str, red: bool) -> None:
    [line] = lines_from_text(raw)
    assert line.red is red
    assert "\x1b" not in line.text


def test_a_zip_listing_more_entries_than_the_cap_is_refused_before_it_is_read() -> None:
    archive = make_zip({f"job{n}/{n}_step.txt": b"ok\n" for n in range(30)})
    assert zip_entry_count(archive) == 30
    assert archive.tell() == 0
    with pytest.raises(LogError, match="30 entries, over the 20-entry cap"):
        list(iter_zip_jobs(archive, max_entries=20))
    assert len(list(iter_zip_jobs(archive, max_entries=30))) == 30


def test_the_entry_count_of_a_zip64_archive_is_read_from_its_zip64_record() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as writer:
        for n in range(70_000):  # past 65,535, where only the zip64 record can hold the count
            writer.writestr(f"{n}.txt", b"")
    buffer.seek(0)
    assert zip_entry_count(buffer) == 70_000
    with pytest.raises(LogError, match="70000 entries"):
        next(iter_zip_jobs(buffer))


def test_a_zip_without_an_end_record_has_no_count() -> None:
    assert zip_entry_count(io.BytesIO(b"PK\x03\x04 truncated")) is None
