"""Does a replay answer like the live browser? Plays the same (task, seed, actions) against both servers.

    python -m envserver.parity --live http://127.0.0.1:8000 --replay http://127.0.0.1:8001 --samples 300

Samples come from the recording's own seeds. Each sample is a reset, optionally a first recorded action
that leaves the episode open (a two-step sample), then the action under test, drawn from three kinds:
valid (a recorded action kind on an element of the page, or noop()), wrong element (an id the page does
not have) and malformed (the grammar rejects it before any browser sees it). The two answers agree when
reward, done, the error's class (the text before its first ':') and the observation text are equal.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

_BID = re.compile(r"\[([^\]\s]+)\]")
MALFORMED = ["click(13)", "click('13', 'Click Me!')", "clik('13')", "click('13'", "", "noop(1000000000)",
             "mouse_click(1e308, -1e308)", "goto('file:///etc/passwd')", "click('1'); click('2')",
             "__import__('os').system('true')", "click(bid=13)", "focus()", "scroll(0, 1e12)"]


@dataclass
class Sample:
    task: str
    seed: int
    first: str | None  # a non-terminal recorded action played before the one under test
    action: str
    kind: str  # valid / wrong_element / malformed


def error_class(error: str) -> str:
    return error.split(":", 1)[0].strip() if error else ""


def answer(client: httpx.Client, sample: Sample) -> dict:
    r = client.post("/reset", json={"task": sample.task, "seed": sample.seed})
    r.raise_for_status()
    sid = r.json()["session_id"]
    try:
        if sample.first:
            client.post("/step", json={"session_id": sid, "action": sample.first}).raise_for_status()
        r = client.post("/step", json={"session_id": sid, "action": sample.action})
        r.raise_for_status()
        out = r.json()
    finally:
        client.post("/close", json={"session_id": sid})
    obs = out["observation"]
    return {"reward": out["reward"], "done": out["done"], "error": error_class(obs["last_action_error"]),
            "text": obs["axtree_txt"], "recorded": out.get("info", {}).get("recorded", True)}


def draw(replay: httpx.Client, n: int, seed: int = 0, two_step: float = 0.25) -> list[Sample]:
    """n samples over the replay's recorded seeds; the pages are read from the replay itself."""
    rng = random.Random(seed)
    seeds = replay.get("/tasks").json()["seeds"]
    kinds = replay.get("/health").json()["replay"]["action_kinds"]
    pool = [(t, s) for t, ranges in sorted(seeds.items()) for a, b in ranges for s in range(a, b)]
    out = []
    for _ in range(n):
        task, s = rng.choice(pool)
        page = replay.post("/reset", json={"task": task, "seed": s}).json()
        replay.post("/close", json={"session_id": page["session_id"]})
        bids = _BID.findall(page["observation"]["axtree_txt"]) or ["1"]
        bid_kinds = [k for k in kinds if k != "noop"]
        first = None
        if bid_kinds and rng.random() < two_step:
            first = _open_action(replay, task, s, bids, bid_kinds, rng)
        kind = rng.choices(["valid", "wrong_element", "malformed"], weights=[6, 2, 2])[0]
        if kind == "valid":
            action = f"{rng.choice(bid_kinds)}({rng.choice(bids)!r})" if bid_kinds and rng.random() < 0.9 else "noop()"
        elif kind == "wrong_element":
            action = f"{rng.choice(bid_kinds or ['click'])}('{rng.randint(500, 99_999)}')"
        else:
            action = rng.choice(MALFORMED)
        out.append(Sample(task, s, first, action, kind))
    return out


def _open_action(replay: httpx.Client, task: str, seed: int, bids, kinds, rng) -> str | None:
    """A recorded first action that leaves the episode open, if the page has one."""
    for action in rng.sample([f"{k}({b!r})" for k in kinds for b in bids], k=min(8, len(kinds) * len(bids))):
        sid = replay.post("/reset", json={"task": task, "seed": seed}).json()["session_id"]
        r = replay.post("/step", json={"session_id": sid, "action": action}).json()
        replay.post("/close", json={"session_id": sid})
        if not r["done"] and not r["observation"]["last_action_error"]:
            return action
    return None


def compare(live_url: str, replay_url: str, n: int, seed: int = 0, timeout: float = 120, workers: int = 4) -> dict:
    """The parity report: agreement overall, by kind, one- vs two-step, and the disagreements. `workers`
    samples are played at once (each on its own session of both servers)."""
    with httpx.Client(base_url=live_url, timeout=timeout) as live, \
            httpx.Client(base_url=replay_url, timeout=timeout) as replay:
        samples = draw(replay, n, seed)

        def row(smp: Sample) -> dict:
            want, got = answer(live, smp), answer(replay, smp)
            fields = [f for f in ("reward", "done", "error", "text") if want[f] != got[f]]
            return {"sample": smp, "agree": not fields, "differs": fields, "live": want, "replay": got}

        with ThreadPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(row, samples))
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    def rate(subset):
        return round(sum(r["agree"] for r in subset) / len(subset), 4) if subset else None

    by_kind = {k: rate([r for r in rows if r["sample"].kind == k]) for k in ("valid", "wrong_element", "malformed")}
    return {
        "samples": len(rows), "agreement": rate(rows), "by_kind": by_kind,
        "counts": dict(Counter(r["sample"].kind for r in rows)),
        "one_step": rate([r for r in rows if not r["sample"].first]),
        "two_step": rate([r for r in rows if r["sample"].first]),
        "unrecorded": sum(not r["replay"]["recorded"] for r in rows),
        "disagreements": [{"task": r["sample"].task, "seed": r["sample"].seed, "first": r["sample"].first,
                           "action": r["sample"].action, "differs": r["differs"],
                           "live": {k: r["live"][k] for k in r["differs"]},
                           "replay": {k: r["replay"][k] for k in r["differs"]}} for r in rows if not r["agree"]],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m envserver.parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--live", required=True, help="URL of a live envserver")
    p.add_argument("--replay", required=True, help="URL of an envserver --replay")
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    report = compare(args.live, args.replay, args.samples, args.seed)
    print(json.dumps(report, indent=1, default=str))
    return 0 if report["agreement"] is not None and report["agreement"] >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
