"""Choose `pre_observation_delay` by measurement: scripted-solver success and episode time per delay.

    .venv/bin/python benchmarks/observation_delay.py [--seeds 5] [--delays 0 0.1 0.25 0.5]

BrowserGym waits this long after every action before observing (default 0.5 s) so that late JS
(autocomplete menus, animations) lands in the observation. Too short and a solver that is known to be
right starts failing; too long and every step pays for it. The baseline is BrowserGym's 0.5 s, run in
the same process; the printed ratio is episode time relative to it.
"""

from __future__ import annotations

import argparse
import time

from bgwork.solvers import SOLVERS, solve
from envserver.session import BrowserSession, SessionSettings, make_observation
from envserver.tasks import task_factory


def run_delay(delay: float, seeds: int) -> tuple[float, float, list[str]]:
    session = BrowserSession(f"delay-{delay}", SessionSettings(pre_observation_delay=delay))
    solved, episodes, failures, started = 0, 0, [], time.perf_counter()
    try:
        for task in SOLVERS:
            factory = task_factory(task)
            for seed in range(seeds):
                def episode(env):
                    obs, _ = env.reset_task(factory, 1000 + seed)
                    reward = 0.0
                    for action in solve(task, make_observation(obs, include_screenshot=False)):
                        _, reward, done, _, _ = env.step(action)
                        if done:
                            break
                    return reward
                reward = session.call(episode)
                episodes += 1
                solved += reward == 1.0
                if reward != 1.0:
                    failures.append(f"{task}#{seed}")
    finally:
        session.close()
    return solved / episodes, (time.perf_counter() - started) / episodes, failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--delays", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.0])
    args = p.parse_args()
    rows = {d: run_delay(d, args.seeds) for d in args.delays}
    base = rows[0.5][1] if 0.5 in rows else max(r[1] for r in rows.values())
    print(f"{len(SOLVERS)} tasks x {args.seeds} seeds per delay")
    print(f"{'delay s':>8} {'solved':>7} {'s/episode':>10} {'vs 0.5 s':>9}  failures")
    for delay, (rate, per_episode, failures) in rows.items():
        print(f"{delay:8.2f} {rate:7.1%} {per_episode:10.2f} {per_episode / base:9.2f}  {' '.join(failures) or '-'}")


if __name__ == "__main__":
    main()
