"""`python -m bench` runs every benchmark; `python -m bench NAME [options]` runs one (see bench/README.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import fairness, media, monitor, plans, publishing, redrive, runtime_throughput, segments, sync

BENCHMARKS: dict[str, Callable[[list[str] | None], int]] = {
    "runtime_throughput": runtime_throughput.main,
    "publishing": publishing.main,
    "fairness": fairness.main,
    "monitor": monitor.main,
    "redrive": redrive.main,
    "segments": segments.main,
    "media": media.main,
    "sync": sync.main,
    "plans": plans.main,
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print(f"benchmarks: {', '.join(BENCHMARKS)}")
        return 0
    if argv:
        name, rest = argv[0], argv[1:]
        if name not in BENCHMARKS:
            print(f"bench: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        return BENCHMARKS[name](rest)
    worst = 0
    for name, run in BENCHMARKS.items():
        print(f"\n### {name}\n", flush=True)
        worst = max(worst, run([]))
    return worst


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
