"""Correct clicks lost to the in-page action timeout: BrowserGym's 500 ms vs envserver's default 1500 ms.

    .venv/bin/python benchmarks/action_timeout.py [--cycles 200] [--sessions 4] [--hogs 0] [--timeouts 500 1500]

Each setting gets its own embedded server; `--cycles` episodes of click-test (reset, the scripted correct click,
close) run over `--sessions` parallel sessions, as the soak test does. `--hogs N` adds N busy-loop processes to
imitate a starved box (CI runs the test suite on 2 cores). Prints, per timeout: correct clicks that failed,
episodes/s, and the throughput ratio against the first timeout — run in this one process, like with like.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

from bgwork.config import EnvParams
from bgwork.embedded import EmbeddedServer
from bgwork.envclient import EnvClient
from bgwork.solvers import solve


def _spin() -> None:
    while True:
        pass


def soak(timeout_ms: int, cycles: int, sessions: int) -> tuple[int, float]:
    """(correct clicks that did not score 1, episodes/s) for one in-page timeout."""
    server = EmbeddedServer(EnvParams(max_sessions=sessions, action_timeout_ms=timeout_ms))
    try:
        def worker(w: int) -> int:
            failed = 0
            with EnvClient(server.url) as c:
                for i in range(w, cycles, sessions):
                    out = c.reset("click-test", seed=10_000 + i)
                    step = c.step(out["session_id"], solve("click-test", out["observation"])[0])
                    failed += step["reward"] != 1.0
                    c.close(out["session_id"])
            return failed

        started = time.perf_counter()
        with ThreadPoolExecutor(sessions) as pool:
            failed = sum(pool.map(worker, range(sessions)))
        return failed, cycles / (time.perf_counter() - started)
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--hogs", type=int, default=0, help="busy-loop processes running meanwhile")
    ap.add_argument("--timeouts", type=int, nargs="+", default=[500, 1500], help="ms; the first is the baseline")
    args = ap.parse_args()
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
    try:
        results = {ms: soak(ms, args.cycles, args.sessions) for ms in args.timeouts}
    finally:
        for h in hogs:
            h.terminate()
    base = results[args.timeouts[0]][1]
    print(f"{args.cycles} click-test episodes over {args.sessions} sessions, {args.hogs} busy-loop processes")
    print("timeout_ms  failed_correct_clicks  episodes/s  vs_first")
    for ms, (failed, eps) in results.items():
        print(f"{ms:>10}  {failed:>21}  {eps:>10.2f}  {eps / base:>8.2f}")


if __name__ == "__main__":
    main()
