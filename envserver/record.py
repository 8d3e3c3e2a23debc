"""Record MiniWoB episodes from real browser sessions into one file that `python -m envserver --replay FILE` serves.

    python -m envserver.record --tasks click-test,click-button --seeds 0:500,1000000:1000100 --out FILE.jsonl.gz

For each (task, seed) the recorder resets a real session and explores the page breadth-first: from each
state, every recorded action kind (default click, focus, noop) on every element that has an id in the
accessibility tree, each played for real. A state is the page the model sees: two pages whose
accessibility trees are equal once the ', focused' markers are removed are one state. Exploration stops
`depth` actions after the reset (default 2, the debug and learning runs' episode length). The file's header
states the same limits. Recordings are exact for single-decision tasks (one action decides the episode;
the others leave the visible page as it was or move focus); the recorder measures that assumption
(`--merge-checks`) and drops a seed whose replayed path does not reproduce its page.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import logging
import queue
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import __version__
from .grammar import SIGNATURES, parse_action
from .replay import FORMAT, VERSION
from .session import BrowserSession, SessionSettings

log = logging.getLogger("envserver.record")

# Single-decision tasks whose recordings replay exactly (docs/benchmarks.md: parity).
DEFAULT_TASKS = ("click-test", "click-test-2", "click-button", "click-dialog", "click-dialog-2", "click-tab",
                 "click-widget", "focus-text", "focus-text-2")
DEFAULT_KINDS = ("click", "focus", "noop")
BID_KINDS = tuple(name for name, fn in SIGNATURES.items() if "bid" in next(iter(inspect.signature(fn).parameters), ""))
_BID = re.compile(r"\[([^\]\s]+)\]")
_FOCUSED = re.compile(r", focused\b")
PROBE_BID = "99999"
PROBE_ARGS = {"fill": ", 'x'", "press": ", 'Enter'", "select_option": ", 'x'", "drag_and_drop": f", '{PROBE_BID}'"}
LIMITS = [
    "Recorded per (task, seed): the reset page and, from every state within `depth` actions of it, the outcome "
    "of each action in `action_kinds` on every element with an id in the accessibility tree (noop() once per "
    "state): reward, done, truncated, last_action_error, the next page.",
    "A state is what the model sees: pages whose accessibility trees are equal once ', focused' markers are "
    "removed are one state, its outcomes recorded from its own page. Replaying from a page that differs only in "
    "focus, the replay moves the recorded outcome's focus marker to where the page's was when the action itself "
    "moved no focus. Exact for single-decision tasks; a task whose outcome depends on page state the tree does "
    "not show (e.g. click-button-sequence) is not.",
    "Not recorded (answered last_action_error 'not recorded', reward 0, page unchanged, counted in "
    "envserver_replay_unrecorded_total): text entry (fill, press, keyboard_*), mouse coordinates, scroll, "
    "select_option, action kinds not in action_kinds, elements the tree shows no id for, anything past depth.",
    "An action naming an element id the page does not have gets the browser's own error (missing_bid_errors).",
    "No timing: a replayed episode never times out; elapsed is the recorded value. No screenshots or HTML.",
]


class NonDeterministic(RuntimeError):
    """Replaying a recorded path did not reproduce its page."""


@dataclass
class Explorer:
    """Explores one (task, seed) on one session."""

    session: BrowserSession
    kinds: tuple[str, ...]
    depth: int
    merge_checks: int
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    steps: int = 0  # browser actions played, resets not counted

    def record(self, task: str, seed: int) -> tuple[dict, dict]:
        """(the file's line for this episode, stats)."""
        obs, _ = self.session.reset(task, seed)
        self.task, self.seed = task, seed
        self.obs_index: dict[tuple, int] = {}
        line = {"task": task, "seed": seed, "goal": obs["goal"], "elapsed": obs["elapsed"], "obs": [], "states": []}
        self.line = line
        paths, by_page = [[]], {_page(obs): 0}
        line["states"].append({"o": self._add_obs(obs), "a": {}})
        at, s = 0, 0
        while s < len(line["states"]):
            if len(paths[s]) < self.depth:
                for action in self._candidates(line["obs"][line["states"][s]["o"]][0]):
                    action = parse_action(action).key()  # paths and the file name actions by their key
                    if at != s:
                        self._goto(paths[s], line["states"][s]["o"])
                    out, reward, done, truncated, _ = self._step(action)
                    nxt = at = None
                    if not (done or truncated):
                        page = _page(out)
                        if page not in by_page:
                            by_page[page] = len(line["states"])
                            paths.append(paths[s] + [action])
                            line["states"].append({"o": self._add_obs(out), "a": {}})
                        nxt = by_page[page]
                        # Go on from this page only if it IS that state's page, focus included: each state's
                        # outcomes are recorded from its own page (the replay carries other focus across).
                        if self._add_obs(out) == line["states"][nxt]["o"]:
                            at = nxt
                    line["states"][s]["a"][action] = [
                        reward, done, truncated, out["last_action_error"], self._add_obs(out), nxt, out["elapsed"]]
            s += 1
        stats = {"states": len(line["states"]), "transitions": sum(len(st["a"]) for st in line["states"])}
        stats.update(self._check_merges(paths))
        return line, stats

    def _candidates(self, axtree: str) -> list[str]:
        bids = list(dict.fromkeys(_BID.findall(axtree)))
        out = [f"{kind}({bid!r})" for bid in bids for kind in self.kinds if kind in BID_KINDS]
        return out + [f"{kind}()" for kind in self.kinds if kind not in BID_KINDS]

    def _step(self, action: str):
        self.steps += 1
        return self.session.step(parse_action(action))

    def _goto(self, path: list[str], obs: int) -> None:
        out, _ = self.session.reset(self.task, self.seed)
        for action in path:
            out = self._step(action)[0]
        if _page(out) != _page_of(self.line["obs"][obs]):
            raise NonDeterministic(f"{self.task} seed {self.seed}: replaying {path} gave another page")

    def _add_obs(self, obs: dict) -> int:
        key = (obs["axtree_txt"], obs["url"], tuple(self.session.dom_bids))
        if key not in self.obs_index:
            self.obs_index[key] = len(self.line["obs"])
            self.line["obs"].append([obs["axtree_txt"], obs["url"], list(self.session.dom_bids)])
        return self.obs_index[key]

    def _check_merges(self, paths: list[list[str]]) -> dict:
        """Merged transitions (their target was first reached another way) replayed one action further:
        does the next action's outcome match the one recorded from the merged state?"""
        states = self.line["states"]
        merged = [(s, key, out[5]) for s, st in enumerate(states) for key, out in st["a"].items()
                  if out[5] is not None and paths[out[5]] != paths[s] + [key] and states[out[5]]["a"]]
        checked = mismatched = 0
        examples = []
        for s, key, n in self.rng.sample(merged, min(self.merge_checks, len(merged))):
            follow, want = self.rng.choice(sorted(states[n]["a"].items()))
            self._goto(paths[s], states[s]["o"])
            self._step(key)
            out, reward, done, truncated, _ = self._step(follow)
            got = [reward, done, truncated, _error_class(out["last_action_error"])]
            checked += 1
            if got != [want[0], want[1], want[2], _error_class(want[3])]:
                mismatched += 1
                examples.append(f"{self.task} seed {self.seed}: {paths[s] + [key, follow]} gave {got}, "
                                f"recorded {want[:3]}")
        return {"merge_checks": checked, "merge_mismatches": mismatched, "merge_mismatch_examples": examples}


def _page(obs: dict) -> str:
    return _FOCUSED.sub("", obs["axtree_txt"]) + "\n" + obs["url"]


def _page_of(entry: list) -> str:
    return _FOCUSED.sub("", entry[0]) + "\n" + entry[1]


def _error_class(error: str) -> str:
    return error.split(":", 1)[0].strip() if error else ""


def probe_missing_bid(session: BrowserSession, task: str, seed: int) -> dict[str, str]:
    """The browser's error for each bid-taking action on an id the page does not have, as a template."""
    session.reset(task, seed)
    out = {}
    for kind in BID_KINDS:
        obs, reward, done, _, _ = session.step(parse_action(f"{kind}({PROBE_BID!r}{PROBE_ARGS.get(kind, '')})"))
        error = obs["last_action_error"]
        if error and PROBE_BID in error and not done and reward == 0:
            out[kind] = error.replace(PROBE_BID, "{bid}")
    return out


def record(tasks: list[str], seeds: list[int], out: str | Path, sessions: int = 4, depth: int = 2,
           kinds: tuple[str, ...] = DEFAULT_KINDS, merge_checks: int = 1,
           settings: SessionSettings | None = None, progress_every: float = 30.0) -> dict:
    """Record every (task, seed) into `out`; returns the header (stats included)."""
    settings = settings or SessionSettings()
    unknown = [k for k in kinds if k not in SIGNATURES]
    if unknown:
        raise ValueError(f"unknown action kind(s) {unknown}; choose from {', '.join(SIGNATURES)}")
    started = time.monotonic()
    jobs: queue.Queue = queue.Queue()
    for task in tasks:
        for seed in seeds:
            jobs.put((task, seed))
    lines, stats, missing, viewports = {}, [], {}, {}
    lock, steps = threading.Lock(), [0]

    def worker(n: int) -> None:
        session = BrowserSession(f"record-{n}", settings)
        explorer = Explorer(session, kinds, depth, merge_checks, random.Random(n))
        try:
            while True:
                try:
                    task, seed = jobs.get_nowait()
                except queue.Empty:
                    return
                with lock:
                    need_probe = task not in missing
                    missing.setdefault(task, {})
                if need_probe:
                    missing[task] = probe_missing_bid(session, task, seed)
                line, st = _record_one(explorer, task, seed)
                with lock:
                    viewports.setdefault(task, session.viewport)
                    steps[0] += explorer.steps
                    explorer.steps = 0
                    stats.append({"task": task, "seed": seed, **st})
                    if line is not None:
                        lines[(task, seed)] = line
        finally:
            session.close()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(sessions)]
    for t in threads:
        t.start()
    last = time.monotonic()
    while any(t.is_alive() for t in threads):
        next(t for t in threads if t.is_alive()).join(1.0)
        if time.monotonic() - last < progress_every and any(t.is_alive() for t in threads):
            continue
        last = time.monotonic()
        with lock:
            done, n_steps = len(stats), steps[0]
        elapsed = time.monotonic() - started
        log.info("%d/%d episodes, %d actions played, %.1f actions/s", done, len(tasks) * len(seeds), n_steps,
                 n_steps / max(elapsed, 1e-9))
    header = _header(tasks, kinds, depth, settings, missing, viewports, stats, steps[0], time.monotonic() - started)
    _write(Path(out), header, [lines[k] for k in sorted(lines)])
    return header


def _record_one(explorer: Explorer, task: str, seed: int) -> tuple[dict | None, dict]:
    """One episode; a seed that is not reproducible is dropped (counted), a lost browser retried once."""
    from .pool import SessionLost

    for attempt in (1, 2):
        try:
            return explorer.record(task, seed)
        except NonDeterministic as e:
            log.warning("dropped: %s", e)
            return None, {"dropped": str(e)}
        except SessionLost as e:
            log.warning("%s seed %d: browser lost (%s), attempt %d", task, seed, e, attempt)
            explorer.session.relaunch()
    return None, {"dropped": "browser lost twice"}


def _header(tasks, kinds, depth, settings, missing, viewports, stats, steps, seconds) -> dict:
    def total(key):
        return sum(s.get(key, 0) for s in stats)

    kept = [s for s in stats if "dropped" not in s]
    return {
        "format": FORMAT, "version": VERSION, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recorded_with": {"envserver": __version__, "browsergym": _version("browsergym-core"),
                          "miniwob": _version("miniwob"), "playwright": _version("playwright"),
                          "pre_observation_delay": settings.pre_observation_delay,
                          "action_timeout_ms": settings.action_timeout_ms},
        "depth": depth, "action_kinds": list(kinds),
        "tasks": {t: {"viewport": list(viewports.get(t) or (0, 0)),
                      "seeds": sum(1 for s in kept if s["task"] == t)} for t in tasks},
        "missing_bid_errors": next((m for m in missing.values() if m), {}),
        "limits": LIMITS,
        "stats": {"episodes": len(kept), "dropped": [f"{s['task']} seed {s['seed']}: {s['dropped']}"
                                                     for s in stats if "dropped" in s],
                  "states": total("states"), "transitions": total("transitions"), "actions_played": steps,
                  "seconds": round(seconds, 1), "actions_per_s": round(steps / max(seconds, 1e-9), 2),
                  "merge_checks": total("merge_checks"), "merge_mismatches": total("merge_mismatches"),
                  "merge_mismatch_examples": [e for s in stats for e in s.get("merge_mismatch_examples", [])][:20]},
    }


def _write(path: Path, header: dict, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(tmp, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(header) + "\n")
        for line in lines:
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")
    tmp.replace(path)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def parse_seeds(text: str) -> list[int]:
    """'0:500,1000000:1000100,7' -> the seeds, in order, each once."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition(":")
        try:
            seeds += list(range(int(lo), int(hi))) if sep else [int(lo)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected START:END or N, comma-separated") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected non-negative seeds, e.g. 0:500")
    return list(dict.fromkeys(seeds))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m envserver.record", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated MiniWoB tasks")
    p.add_argument("--seeds", type=parse_seeds, required=True, help="e.g. 0:500 or 0:400,1000000:1000100")
    p.add_argument("--out", required=True, help="the recording (.jsonl.gz or .jsonl)")
    p.add_argument("--sessions", type=int, default=4, help="parallel browser sessions")
    p.add_argument("--depth", type=int, default=2, help="actions after the reset that are explored")
    p.add_argument("--actions", default=",".join(DEFAULT_KINDS), help="action kinds to record, e.g. click,focus,noop")
    p.add_argument("--merge-checks", type=int, default=1, help="merged transitions re-played per episode to check them")
    p.add_argument("--pre-observation-delay", type=float, default=SessionSettings.pre_observation_delay)
    p.add_argument("--action-timeout-ms", type=int, default=SessionSettings.action_timeout_ms)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from .tasks import UnknownTask, registry

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in registry():
            p.error(str(UnknownTask(t)))
    if args.sessions < 1 or args.depth < 1:
        p.error("--sessions and --depth must be >= 1")
    try:
        header = record(tasks, args.seeds, args.out, args.sessions, args.depth,
                        tuple(k.strip() for k in args.actions.split(",") if k.strip()), args.merge_checks,
                        SessionSettings(pre_observation_delay=args.pre_observation_delay,
                                        action_timeout_ms=args.action_timeout_ms))
    except ValueError as e:
        p.error(str(e))
    print(json.dumps(header["stats"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
