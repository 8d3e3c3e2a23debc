"""Episodes/s of live browser sessions spread over 1, 2, 4 env server replicas (`env.replicas`), same sessions.

    .venv/bin/python benchmarks/env_replicas.py [--replicas 1 2 4] [--sessions 8] [--episodes 48] [--rounds 3]

Each setting starts K embedded servers (live Chromium, env.max_sessions = sessions / K each) and plays
`--episodes` scripted click-test episodes (reset + the scripted solution) from `--sessions` client threads through
bgwork's ReplicaClient (least loaded server first), so the number of browsers is the same and only the number of
Python interpreters serving them changes. Sessions are opened before the clock starts. The settings take turns
for `--rounds` rounds (1, 2, 4, 1, 2, 4, ...) and each figure is the median of its rounds, so a load that drifts
on a shared machine hits every setting alike.

Besides episodes/s it measures the CPU time per episode of the servers' Python interpreters and of everything
they started (Chromium, Playwright's driver), from which it projects a bigger host:
    one replica saturates at ~1 core of Python:  K replicas give at most K / (python CPU s per episode)
    all cores:                                    at most cores / (total CPU s per episode)
so episodes/s on C cores with K replicas ~ min(K / py_s, C / total_s), if nothing else shares those cores (the
trainer's own CPU work and the client threads are left out) and per-episode costs stay as measured here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


class CpuMeter:
    """CPU seconds of the server interpreters and of all their descendants over a window, sampled every 0.25 s in
    a thread so that short-lived processes (Chromium's renderers come and go) count up to their last sample."""

    def __init__(self, pids: list[int]):
        self.pids, self.first, self.last = pids, {}, {}
        self._stop = threading.Event()
        self._sample()
        self.first = dict(self.last)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[float, float]:
        """(Python s, descendants s) since the start."""
        self._stop.set()
        self._thread.join()
        self._sample()
        py = kids = 0.0
        for key, (is_server, seconds) in self.last.items():
            spent = seconds - self.first.get(key, (is_server, 0.0))[1]
            py, kids = (py + spent, kids) if is_server else (py, kids + spent)
        return py, kids

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def _sample(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                server = psutil.Process(pid)
                for proc in [server, *server.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        t = proc.cpu_times()
                        self.last[(proc.pid, proc.create_time())] = (proc.pid == pid, t.user + t.system)


def measure(k: int, sessions: int, episodes: int, task: str) -> dict:
    from bgwork.config import EnvParams
    from bgwork.embedded import embedded_replicas
    from bgwork.replicas import connect
    from bgwork.solvers import solve

    env = EnvParams(replicas=k, max_sessions=-(-sessions // k))
    with embedded_replicas(env) as servers:
        urls = [s.url for s in servers]
        client = connect(urls if k > 1 else urls[0], env)
        todo = iter(range(episodes))
        lock, solved = threading.Lock(), []
        barrier = threading.Barrier(sessions + 1)

        def worker(i: int) -> None:
            sid = client.reset(task, seed=100_000 + i)["session_id"]  # the browser starts before the clock
            barrier.wait()
            while True:
                with lock:
                    seed = next(todo, None)
                if seed is None:
                    break
                out = client.reset(task, seed=seed, session_id=sid)
                for action in solve(task, out["observation"]):
                    step = client.step(sid, action)
                with lock:
                    solved.append(step["reward"] == 1.0)
            client.close(sid)

        with ThreadPoolExecutor(sessions) as pool:
            futures = [pool.submit(worker, i) for i in range(sessions)]
            barrier.wait()
            meter, started = CpuMeter([s.pid for s in servers]), time.perf_counter()
            for f in futures:
                f.result()
            elapsed, (py, kids) = time.perf_counter() - started, meter.stop()
        client.shutdown()
    py_s, kids_s = py / episodes, kids / episodes
    return {"replicas": k, "sessions": sessions, "episodes": episodes, "solved": sum(solved),
            "seconds": round(elapsed, 2), "episodes_per_s": round(episodes / elapsed, 3),
            "python_cpu_s_per_episode": round(py_s, 3), "browser_cpu_s_per_episode": round(kids_s, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--sessions", type=int, default=8, help="browser sessions in all (client threads)")
    p.add_argument("--episodes", type=int, default=48, help="per setting and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--task", default="click-test")
    p.add_argument("--project-cores", type=int, default=16, help="the host the projection is for")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))

    info = {"cpus": os.cpu_count(), "load_before": [round(x, 2) for x in os.getloadavg()], "task": args.task}
    print(json.dumps(info), flush=True)
    runs = []
    for _ in range(args.rounds):
        for k in args.replicas:
            runs.append(measure(k, args.sessions, args.episodes, args.task))
            print(json.dumps(runs[-1]), flush=True)
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    rows = [median_row([r for r in runs if r["replicas"] == k]) for k in args.replicas]

    base = rows[0]["episodes_per_s"]
    print(f"\n{info['cpus']} cores, load {info['load_before']} -> {info['load_after']}, {args.sessions} live "
          f"sessions, {args.episodes} scripted {args.task} episodes per setting and round, median of {args.rounds}")
    print("| replicas | episodes/s (median) | rounds | vs 1 replica | Python CPU s/episode | browser CPU s/episode |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['replicas']} | {r['episodes_per_s']:.2f} | {', '.join(f'{x:.2f}' for x in r['rounds'])} "
              f"| {r['episodes_per_s'] / base:.2f}x | {r['python_cpu_s_per_episode']:.3f} "
              f"| {r['browser_cpu_s_per_episode']:.3f} |")
    # projection from the one-replica costs (the most interpreter-bound setting)
    py_s = rows[0]["python_cpu_s_per_episode"]
    total_s = py_s + rows[0]["browser_cpu_s_per_episode"]
    c = args.project_cores
    print(f"\nprojection for {c} cores (from the {rows[0]['replicas']}-replica costs): all cores busy "
          f"~{c / total_s:.1f} episodes/s; one replica's interpreter caps at ~{1 / py_s:.1f} episodes/s, so "
          f"{math.ceil(c * py_s / total_s)}+ replicas are needed to use the cores")
    for k in (1, 2, 4, 8, 16):
        print(f"  {k:>2} replicas: ~{min(k / py_s, c / total_s):.1f} episodes/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows, "runs": runs}, indent=1))
    return 0


def median_row(runs: list[dict]) -> dict:
    keys = ("episodes_per_s", "python_cpu_s_per_episode", "browser_cpu_s_per_episode")
    return {"replicas": runs[0]["replicas"], "rounds": [r["episodes_per_s"] for r in runs],
            **{k: statistics.median(r[k] for r in runs) for k in keys}}


if __name__ == "__main__":
    sys.exit(main())
