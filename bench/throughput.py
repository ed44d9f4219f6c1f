"""Time excerpting a 100 MB GitHub Actions log, in process and through `mendbot diagnose`, beside grep on it.

Two figures, each next to `grep -c -E 'error|fail'` on the same file in the same run: the in-process excerpt
(open, read, parse and excerpt the file, then finish; interpreter start and imports excluded, the one-time
scan compile reported apart) and the end-to-end CLI (`mendbot diagnose --offline`, start-up included).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO.parent / "shared" / "datasets" / "ci-logs" / "manifest.jsonl"
FIXTURE_LOGS = REPO / "tests" / "fixtures" / "logs"
COMMAND = "python -m bench.throughput"


def real_actions_logs() -> list[bytes]:
    """Real GitHub Actions job logs: the dataset's when it is there, else the ones shipped in tests."""
    if MANIFEST.is_file():
        rows = [json.loads(line) for line in MANIFEST.read_text().splitlines() if line.strip()]
        paths = [MANIFEST.parent / row["log"] for row in rows if row.get("format") == "github-actions"]
        return [gzip.decompress(path.read_bytes()) for path in paths]
    return [path.read_bytes() for path in sorted(FIXTURE_LOGS.glob("gha-*.log")) if ".pass." not in path.name]


def build_log(target: Path, size: int) -> int:
    """Concatenate real logs, each ending in a newline, until the file holds `size` bytes."""
    logs = [log if log.endswith(b"\n") else log + b"\n" for log in real_actions_logs()]
    written = 0
    with target.open("wb") as sink:
        while written < size:
            for log in logs:
                sink.write(log)
                written += len(log)
                if written >= size:
                    break
    return written


def measure(argv: list[str], runs: int) -> tuple[float, float, int]:
    """Median wall and CPU time over `runs`, and peak RSS, each run in a fresh child of a fresh wrapper."""
    times, cpus, peaks = [], [], []
    for _ in range(runs):
        wrapper = [sys.executable, "-c", _WRAPPER, *argv]
        out = subprocess.run(wrapper, check=True, capture_output=True, text=True, cwd=REPO).stdout.split()
        times.append(float(out[0]))
        cpus.append(float(out[2]))
        peaks.append(int(out[1]))
    return statistics.median(times), statistics.median(cpus), max(peaks)


# Runs the command in a child and prints its wall time and the child's own peak RSS. Output goes to a
# pipe, not /dev/null: GNU grep notices /dev/null and stops at the first match.
_WRAPPER = """
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.PIPE)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(time.perf_counter() - start, usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
"""


# Excerpts the file in this process's child and prints the excerpt's wall time, the scan compile time and
# the child's own peak RSS: the figure for "a log goes to excerpt", without interpreter start and imports.
_IN_PROCESS = """
import resource, sys, time
from bot.core import scan
start = time.perf_counter()
fast = scan.available()
compiled, cpu = time.perf_counter(), time.process_time()
with open(sys.argv[1], "rb") as stream:
    excerpter = scan.excerpt_stream(stream, int(sys.argv[2]))
excerpt = excerpter.finish()
done, cpu = time.perf_counter(), time.process_time() - cpu
assert excerpt.lines, "the excerpt is empty"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(done - compiled, compiled - start, peak, int(fast), cpu)
"""


def measure_in_process(log: Path, budget: int, runs: int) -> tuple[float, float, float, int, bool]:
    """Median excerpt wall and CPU time, median compile time, peak RSS (KiB), whether the bulk scan ran."""
    times, cpus, compiles, peaks, fast = [], [], [], [], True
    for _ in range(runs):
        argv = [sys.executable, "-c", _IN_PROCESS, str(log), str(budget)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=REPO).stdout.split()
        times.append(float(out[0]))
        compiles.append(float(out[1]))
        peaks.append(int(out[2]))
        fast = fast and out[3] == "1"
        cpus.append(float(out[4]))
    return statistics.median(times), statistics.median(cpus), statistics.median(compiles), max(peaks), fast


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    # `python -m bot.cli` from the repository is the `mendbot` script of this checkout, not of an install.
    mendbot = [sys.executable, "-m", "bot.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "actions-100mb.log"
        size = build_log(log, args.size_mb * 1024 * 1024)
        print(f"$ {COMMAND} --size-mb {args.size_mb} --runs {args.runs}")
        print(f"log: {size / 1e6:.1f} MB of real GitHub Actions logs, {args.runs} runs each, median wall time")
        grep = ["grep", "-c", "-E", "error|fail", str(log)]
        grep_time, grep_cpu, grep_rss = measure(grep, args.runs)
        excerpt_time, excerpt_cpu, compile_time, excerpt_rss, fast = measure_in_process(log, 4096, args.runs)
        cli = [*mendbot, "diagnose", str(log), "--offline", "--format", "json"]
        ours_time, ours_cpu, ours_rss = measure(cli, args.runs)
        grep_after, grep_after_cpu, _ = measure(grep, args.runs)
    # The machine may be busy: grep runs before and after, ratios use the mean of the two, and CPU time
    # (user + system), which a busy machine disturbs less than wall time, is shown beside it.
    grep_wall, grep_cpu_mean = (grep_time + grep_after) / 2, (grep_cpu + grep_after_cpu) / 2
    print(f"{'command':<50}{'wall s':>8}{'x grep':>8}{'CPU s':>8}{'x grep':>8}{'MB/s':>8}{'peak RSS MiB':>14}")
    for name, seconds, cpu, rss in (
        ("grep -c -E 'error|fail' (baseline, before)", grep_time, grep_cpu, grep_rss),
        ("grep -c -E 'error|fail' (baseline, after)", grep_after, grep_after_cpu, grep_rss),
        (f"excerpt in process ({'bulk scan' if fast else 'line by line'})", excerpt_time, excerpt_cpu, excerpt_rss),
        ("mendbot diagnose --offline (end to end)", ours_time, ours_cpu, ours_rss),
    ):
        print(
            f"{name:<50}{seconds:>8.2f}{seconds / grep_wall:>7.1f}x{cpu:>8.2f}{cpu / max(grep_cpu_mean, 1e-3):>7.1f}x"
            f"{size / 1e6 / seconds:>8.1f}{rss / 1024:>14.1f}"
        )
    print(f"one-time scan compile, not in the in-process figure: {compile_time:.3f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
