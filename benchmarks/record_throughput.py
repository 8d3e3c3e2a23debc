"""Recording speed: (task, seed, action) triples recorded per second, 1 session vs 4, in one process.

    .venv/bin/python benchmarks/record_throughput.py --seeds 6

Both runs record the same (task, seed) set of envserver.record's default single-decision tasks with the
real recorder (real Chromium sessions); a triple is one recorded outcome. The ratio is 4 sessions over 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=6, help="seeds per task")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from envserver.record import DEFAULT_TASKS, record

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sessions:
            stats = record(list(DEFAULT_TASKS), list(range(args.seeds)), Path(tmp) / f"s{n}.jsonl.gz", sessions=n,
                           merge_checks=0)["stats"]
            rows.append({"sessions": n, "episodes": stats["episodes"], "triples": stats["transitions"],
                         "actions_played": stats["actions_played"], "seconds": stats["seconds"],
                         "triples_per_s": round(stats["transitions"] / stats["seconds"], 2)})
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["triples_per_s"]
    print("\n| sessions | episodes | triples | browser actions | s | triples/s | vs first |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sessions']} | {r['episodes']} | {r['triples']} | {r['actions_played']} | {r['seconds']:.0f} "
              f"| {r['triples_per_s']:.2f} | {r['triples_per_s'] / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
