"""Print the model prompt's size over the CI log dataset: median and p95 in tokens, beside the excerpt."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bot.adapters.anthropic import load_system_prompt, report_tool
from bot.core.excerpt import DEFAULT_BUDGET as EXCERPT_BUDGET
from bot.core.excerpt import PassingIndex, line_score
from bot.core.logs import LogLine
from bot.core.prompt import DEFAULT_BUDGET as PROMPT_BUDGET
from bot.core.prompt import BuiltPrompt, build_prompt
from bot.evaluation import Case, ManifestError, excerpt_case, load_manifest, read_lines

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO.parent / "shared" / "datasets" / "ci-logs" / "manifest.jsonl"
COMMAND = "python -m bench.prompt_size"
# The Messages API is the only token counter the SDK has; offline this is the estimate the issue names.
BYTES_PER_TOKEN = 4
# What stands in for "the diff against the last green log": error-like lines the passing run never printed.
MAX_DIFF_LINES = 100
DIFF_MIN_SCORE = 2.0


@dataclass(frozen=True)
class Sizes:
    """Bytes of one case's excerpt and of its prompt's user message, without and with the green diff."""

    excerpt: int
    prompt: int
    prompt_with_diff: int | None
    trimmed: bool

    @property
    def as_sent(self) -> int:
        return self.prompt if self.prompt_with_diff is None else self.prompt_with_diff


@cache
def system_prompt() -> str:
    return load_system_prompt()


def green_diff(case: Case, lines: list[LogLine], shown: set[int]) -> list[str] | None:
    """Error-like failed-log lines that the passing log does not have and the excerpt does not show."""
    if case.pass_log is None:
        return None
    passing = PassingIndex.build(read_lines(case.pass_log))
    new = [
        line.text
        for line in lines
        if line.number not in shown and line_score(line.text) >= DIFF_MIN_SCORE and line.text not in passing
    ]
    return new[:MAX_DIFF_LINES]


def measure(case: Case, excerpt_budget: int, prompt_budget: int) -> Sizes:
    excerpt, lines = excerpt_case(case, excerpt_budget)
    # The failed job and step, as the App knows them from the run; offline, the last excerpt block's.
    job, step = (excerpt.blocks[-1].job, excerpt.blocks[-1].step) if excerpt.blocks else ("", "")
    def prompt(diff: list[str]) -> BuiltPrompt:
        return build_prompt(
            excerpt, system=system_prompt(), job=job, step=step, green_diff=diff, budget=prompt_budget
        )

    alone = prompt([])
    diff = green_diff(case, lines, {line.number for line in excerpt.lines})
    with_diff = prompt(diff) if diff is not None else None
    return Sizes(
        excerpt=excerpt.size,
        prompt=alone.size_bytes,
        prompt_with_diff=with_diff.size_bytes if with_diff else None,
        trimmed=bool(alone.trimmed or (with_diff and with_diff.trimmed)),
    )


def _measure(job: tuple[Case, int, int]) -> Sizes:
    return measure(*job)


def tokens(size_bytes: int) -> int:
    return math.ceil(size_bytes / BYTES_PER_TOKEN)


def p95(values: list[int]) -> int:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


def row(label: str, sizes: list[int]) -> str:
    counts = [tokens(size) for size in sizes]
    median = statistics.median(counts)
    return f"{label:<36}{median:>8.0f}{p95(counts):>8}{max(counts):>8}{len(counts):>7}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--excerpt-budget", type=int, default=EXCERPT_BUDGET)
    parser.add_argument("--prompt-budget", type=int, default=PROMPT_BUDGET)
    parser.add_argument("--limit", type=int, default=0, help="only the first N cases")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    try:
        cases = load_manifest(args.manifest)
    except ManifestError as error:
        print(f"{COMMAND}: skipped: {error} (the dataset lives in ../shared/datasets/ci-logs)")
        return 0
    if args.limit:
        cases = cases[: args.limit]

    started = time.monotonic()
    jobs = [(case, args.excerpt_budget, args.prompt_budget) for case in cases]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_measure, jobs, chunksize=4))
    elapsed = time.monotonic() - started

    static = len(system_prompt().encode()) + len(json.dumps(report_tool()).encode())
    with_diff = [r.prompt_with_diff for r in results if r.prompt_with_diff is not None]
    print(f"$ {COMMAND}" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""))
    print(f"{len(cases)} cases from {os.path.relpath(args.manifest)}")
    print(f"excerpt budget {args.excerpt_budget:,} B, prompt budget {args.prompt_budget:,} B, "
          f"{args.workers} processes, {elapsed:.1f} s")
    print(f"tokens = bytes ÷ {BYTES_PER_TOKEN}: the SDK counts tokens only through the Messages API "
          "(messages.count_tokens), which is not reachable offline")
    print()
    print(f"{'tokens':<36}{'median':>8}{'p95':>8}{'max':>8}{'cases':>7}")
    print(row("excerpt alone", [r.excerpt for r in results]))
    print(row("prompt as the App builds it", [r.as_sent for r in results]))
    print(row("prompt without any green diff", [r.prompt for r in results]))
    if with_diff:
        print(row("  cases with a pass log, no diff", [r.prompt for r in results if r.prompt_with_diff]))
        print(row("  cases with a pass log, with diff", with_diff))
    print()
    print(f"green diff: up to {MAX_DIFF_LINES} error-like lines absent from the pass log, "
          f"for the {len(with_diff)} cases that have one; no sources or commits offline")
    print(f"prompts trimmed to fit the budget: {sum(r.trimmed for r in results)}")
    print(f"plus a static part sent with every call and cached: system prompt + tool schema "
          f"≈ {tokens(static):,} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
