"""`make bench`: every benchmark in turn; each prints its figures beside a baseline from the same run."""

from __future__ import annotations

from bench import intake, pipeline, prompt_size, recall, throughput


def main() -> int:
    benches = (
        ("throughput", throughput),
        ("excerpt recall", recall),
        ("prompt size", prompt_size),
        ("webhook intake", intake),
        ("webhook to comment", pipeline),
    )
    for name, bench in benches:
        print(f"\n== {name} ==", flush=True)
        bench.main([])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
