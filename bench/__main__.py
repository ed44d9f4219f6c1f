"""`make bench`: every benchmark in turn; each prints its figures beside a baseline from the same run."""

from __future__ import annotations

from bench import prompt_size, recall, throughput


def main() -> int:
    for name, bench in (("throughput", throughput), ("excerpt recall", recall), ("prompt size", prompt_size)):
        print(f"\n== {name} ==", flush=True)
        bench.main([])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
