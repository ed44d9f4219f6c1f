"""Print recall, full and hit at 2, 4, 8 and 16 KB on the CI log dataset, beside the last-bytes baseline."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bot.evaluation import ManifestError, evaluate, load_manifest

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO.parent / "shared" / "datasets" / "ci-logs" / "manifest.jsonl"
COMMAND = "python -m bench.recall"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--budgets", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        cases = load_manifest(args.manifest)
    except ManifestError as exc:
        print(f"skipped: {exc} (the dataset lives in ../shared/datasets/ci-logs)", file=sys.stderr)
        return 0
    print(f"$ {COMMAND}  ({len(cases)} cases from {args.manifest.parent.name})")
    print(
        f"{'budget':>8} | {'mendbot recall':>14} {'full':>6} {'hit':>6} |"
        f" {'last-B recall':>13} {'full':>6} {'hit':>6} | {'category acc':>12} | {'s':>5}"
    )
    for budget in args.budgets:
        start = time.perf_counter()
        report = evaluate(cases, budget, args.workers)
        ours, base = report.ours, report.baseline
        accuracy = f"{report.category_accuracy:.3f}" if report.category_accuracy is not None else "-"
        print(
            f"{budget:>8} | {ours.recall:>14.3f} {ours.full:>6.3f} {ours.hit:>6.3f} |"
            f" {base.recall:>13.3f} {base.full:>6.3f} {base.hit:>6.3f} | {accuracy:>12} |"
            f" {time.perf_counter() - start:>5.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
