"""Episodes/s (reset + scripted solve) on click-test: envserver over HTTP vs. in-process, vs. stock BrowserGym.

    .venv/bin/python benchmarks/env_throughput.py [--episodes 40] [--task click-test]

All setups run in this one process run, so the ratios compare like with like on this machine:
  stock        BrowserGym as the original project used it: gym env, reset relaunches two browsers, 0.5 s delay
  inproc-1     our session (page reused, no chat browser, tuned delay) called directly, 1 session
  http-1       the same through envserver's HTTP API, 1 session
  http-4       4 sessions in parallel through HTTP
Targets (2-core box): http-4 >= 2 episodes/s; HTTP overhead (inproc-1 / http-1 - 1) <= 10 %.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor

from bgwork.config import EnvParams
from bgwork.embedded import EmbeddedServer
from bgwork.envclient import EnvClient
from bgwork.solvers import solve
from envserver.browser import chromium_path
from envserver.session import BrowserSession, SessionSettings, make_observation
from envserver.tasks import miniwob_url, task_factory


@contextlib.contextmanager
def without_envserver_patches():
    """Stock means stock: undo envserver's process-wide speed-ups (screenshots, Playwright stacks) meanwhile."""
    import inspect

    from browsergym.core import env as bg_env
    from playwright._impl import _connection

    from envserver import session

    saved = bg_env.extract_screenshot, _connection.inspect
    bg_env.extract_screenshot, _connection.inspect = session._capture_screenshot, inspect
    try:
        yield
    finally:
        bg_env.extract_screenshot, _connection.inspect = saved


def stock_browsergym(task: str, episodes: int) -> float:
    """Sequential episodes with BrowserGym's own env; every launch redirected to the system Chromium."""
    import browsergym.miniwob  # noqa: F401 - registers the envs
    import gymnasium as gym
    from browsergym.core import _get_global_playwright

    os.environ.setdefault("MINIWOB_URL", miniwob_url())
    pw = _get_global_playwright()
    pw.chromium.launch = functools.partial(pw.chromium.launch, executable_path=chromium_path(),
                                           args=["--no-sandbox", "--disable-gpu"])  # the chat browser too
    env = gym.make(f"browsergym/miniwob.{task}")
    try:
        started = time.perf_counter()
        for seed in range(episodes):
            obs, _ = env.reset(seed=seed)
            observation = make_observation(obs, include_screenshot=False)
            for action in solve(task, observation):
                _, reward, done, _, _ = env.step(action)
            assert reward == 1.0 and done, "stock env did not solve the episode"
        return episodes / (time.perf_counter() - started)
    finally:
        env.close()


def in_process(task: str, episodes: int, delay: float) -> float:
    session = BrowserSession("bench", SessionSettings(pre_observation_delay=delay))
    factory = task_factory(task)

    def episode(env, seed):
        obs, _ = env.reset_task(factory, seed)
        for action in solve(task, make_observation(obs, include_screenshot=False)):
            _, reward, done, _, _ = env.step(action)
        return reward

    try:
        session.call(lambda env: episode(env, 10_000))  # launch outside the timing, as the HTTP runs do
        started = time.perf_counter()
        rewards = [session.call(lambda env: episode(env, seed)) for seed in range(episodes)]
        elapsed = time.perf_counter() - started
    finally:
        session.close()
    assert all(r == 1.0 for r in rewards)
    return episodes / elapsed


def over_http(url: str, task: str, episodes: int, sessions: int) -> float:
    def worker(index: int) -> int:
        with EnvClient(url) as c:
            sid = c.reset(task, seed=10_000 + index)["session_id"]  # launch outside the timing
            barrier.wait()
            solved = 0
            for seed in range(index, episodes, sessions):
                out = c.reset(task, seed=seed, session_id=sid)
                for action in solve(task, out["observation"]):
                    step = c.step(sid, action)
                solved += step["reward"] == 1.0
            c.close(sid)
            return solved

    import threading

    barrier = threading.Barrier(sessions + 1)
    with ThreadPoolExecutor(sessions) as pool:
        futures = [pool.submit(worker, i) for i in range(sessions)]
        barrier.wait()
        started = time.perf_counter()
        solved = sum(f.result() for f in futures)
        elapsed = time.perf_counter() - started
    assert solved == episodes, f"{episodes - solved} episodes unsolved"
    return episodes / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="click-test")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--delay", type=float, default=EnvParams().pre_observation_delay)
    p.add_argument("--skip-stock", action="store_true")
    args = p.parse_args()

    results = {}
    if not args.skip_stock:
        with without_envserver_patches():
            results["stock"] = stock_browsergym(args.task, max(args.episodes // 4, 5))
    results["inproc-1"] = in_process(args.task, args.episodes, args.delay)
    server = EmbeddedServer(EnvParams(max_sessions=4, pre_observation_delay=args.delay))
    try:
        results["http-1"] = over_http(server.url, args.task, args.episodes, 1)
        results["http-4"] = over_http(server.url, args.task, args.episodes, 4)
    finally:
        server.stop()

    print(f"task={args.task} episodes={args.episodes} pre_observation_delay={args.delay} cpus={os.cpu_count()}")
    for name, eps in results.items():
        print(f"{name:>9}: {eps:6.2f} episodes/s")
    overhead = results["inproc-1"] / results["http-1"] - 1
    print(f"HTTP overhead vs in-process (1 session): {overhead:+.1%}  (target <= +10%)")
    print(f"http-4: {results['http-4']:.2f} episodes/s (target >= 2)")
    if "stock" in results:
        print(f"speed-up http-4 / stock: {results['http-4'] / results['stock']:.1f}x; "
              f"http-1 / stock: {results['http-1'] / results['stock']:.1f}x")


if __name__ == "__main__":
    main()
