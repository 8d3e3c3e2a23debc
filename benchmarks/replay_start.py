"""How long until an env server answers /health: live (Chromium) vs replay (a recording), same process, same machine.

    .venv/bin/python benchmarks/replay_start.py [--replay data/replay/miniwob-single-decision.jsonl.gz] [--reps 3]

Each start is a fresh `python -m envserver` process on a free loopback port, timed from spawn to the first
200 on /health, then stopped. The issue's target for the replay: under 2 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replay", default=str(ROOT / "data/replay/miniwob-single-decision.jsonl.gz"))
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from bgwork.config import EnvParams
    from bgwork.embedded import EmbeddedServer

    def start(extra) -> float:
        t0 = time.perf_counter()
        server = EmbeddedServer(EnvParams(max_sessions=4), extra_args=extra)
        seconds = time.perf_counter() - t0
        server.stop()
        return seconds

    rows = {"replay": [start(("--replay", args.replay)) for _ in range(args.reps)]}
    if importlib.util.find_spec("playwright"):  # a GPU node has no browser: the replay alone, against its target
        rows["live"] = [start(()) for _ in range(args.reps)]
    base = statistics.median(rows.get("live", [2.0]))
    print(f"| server | median s to healthy | runs | vs {'live' if 'live' in rows else 'the 2 s target'} |")
    print("|---|---|---|---|")
    for name, times in rows.items():
        med = statistics.median(times)
        print(f"| {name} | {med:.2f} | {', '.join(f'{t:.2f}' for t in times)} | {med / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
