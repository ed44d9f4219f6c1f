"""Time `mendbot diagnose` on a 100 MB GitHub Actions log beside `grep -c -E 'error|fail'` on the same file."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
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


def measure(argv: list[str], runs: int) -> tuple[float, int]:
    """Median wall time over `runs`, and peak RSS, each run in a fresh child of a fresh wrapper."""
    times, peaks = [], []
    for _ in range(runs):
        wrapper = [sys.executable, "-c", _WRAPPER, *argv]
        out = subprocess.run(wrapper, check=True, capture_output=True, text=True).stdout.split()
        times.append(float(out[0]))
        peaks.append(int(out[1]))
    return statistics.median(times), max(peaks)


# Runs the command in a child and prints its wall time and the child's own peak RSS. Output goes to a
# pipe, not /dev/null: GNU grep notices /dev/null and stops at the first match.
_WRAPPER = """
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.PIPE)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    mendbot = shutil.which("mendbot", path=str(Path(sys.executable).parent)) or "mendbot"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "actions-100mb.log"
        size = build_log(log, args.size_mb * 1024 * 1024)
        print(f"$ {COMMAND} --size-mb {args.size_mb} --runs {args.runs}")
        print(f"log: {size / 1e6:.1f} MB of real GitHub Actions logs, {args.runs} runs each, median wall time")
        grep_time, grep_rss = measure(["grep", "-c", "-E", "error|fail", str(log)], args.runs)
        ours_time, ours_rss = measure([mendbot, "diagnose", str(log), "--offline", "--format", "json"], args.runs)
    print(f"{'command':<44}{'wall s':>10}{'MB/s':>10}{'peak RSS MiB':>15}")
    for name, seconds, rss in (
        ("grep -c -E 'error|fail' (baseline)", grep_time, grep_rss),
        ("mendbot diagnose --offline", ours_time, ours_rss),
    ):
        print(f"{name:<44}{seconds:>10.2f}{size / 1e6 / seconds:>10.1f}{rss / 1024:>15.1f}")
    print(f"ratio mendbot/grep wall time: {ours_time / grep_time:.1f}x")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
