"""The replay backend: MiniWoB episodes served from a recording (envserver.record), with no browser at all.

    python -m envserver --replay click-tasks.replay.jsonl.gz

A recording holds, per (task, seed), the reset observation and, from every state the recorder reached, the
outcome of each recorded action: reward, done, last_action_error and the next observation (see
envserver.record for what is recorded and its limits; the file's header says it too). A session replays
them: the action string goes through the same grammar as in live mode, then is looked up by its canonical
key. An action on an element id the page does not have gets the error the live browser gives; any other
action with no recording answers last_action_error "not recorded ..." with reward 0 and the page unchanged,
and is counted (envserver_replay_unrecorded_total).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .grammar import Action
from .tasks import UnknownSeed, UnknownTask

FORMAT = "bgwork-envserver-replay"
VERSION = 1
NOT_RECORDED = "not recorded"
# An element line of the accessibility tree: "[bid] role 'name'", then ", focused" when it has focus.
_ELEMENT = re.compile(r"^(\s*\[([^\]\s]+)\] \S+ '(?:[^'\\]|\\.)*')(, focused)?", re.MULTILINE)


def focused_bids(axtree: str) -> frozenset[str]:
    return frozenset(m[2] for m in _ELEMENT.finditer(axtree) if m[3])


def with_focus(axtree: str, bids: frozenset[str]) -> str:
    """The tree with the ', focused' marker on exactly these elements."""
    return _ELEMENT.sub(lambda m: m[1] + (", focused" if m[2] in bids else ""), axtree)


class ReplayFileError(ValueError):
    """A file that is not a readable recording; the message names the file and the problem."""


@dataclass
class Outcome:
    reward: float
    done: bool
    truncated: bool
    error: str
    obs: int  # index into the episode's observations
    state: int | None  # the state the page is in afterwards (None: nothing recorded from there)
    elapsed: float


class Recording:
    """One (task, seed): its pages and states.

    obs[i] = [accessibility tree, url, element ids on that page]; states[j] = {"o": obs index,
    "a": {action key: [reward, done, truncated, error, next obs, next state or None, elapsed]}}; state 0 is
    the reset."""

    def __init__(self, data: dict):
        self.task, self.seed, self.goal = data["task"], data["seed"], data["goal"]
        self.observations: list[list] = data["obs"]
        self.states: list[dict] = data["states"]
        self.reset_elapsed: float = data.get("elapsed", 0.0)
        self._bids: dict[int, frozenset[str]] = {}

    def outcome(self, state: int | None, key: str) -> Outcome | None:
        found = None if state is None else self.states[state]["a"].get(key)
        return None if found is None else Outcome(*found)

    def bids(self, obs: int) -> frozenset[str]:
        if obs not in self._bids:
            self._bids[obs] = frozenset(self.observations[obs][2])
        return self._bids[obs]

    def observation(self, obs: int, action: str = "", error: str = "", elapsed: float = 0.0) -> dict:
        axtree, url = self.observations[obs][:2]
        return {"goal": self.goal, "text": axtree, "axtree_txt": axtree, "url": url, "last_action": action,
                "last_action_error": error, "elapsed": elapsed}


class ReplayStore:
    """A recording file loaded in memory: header + {(task, seed): Recording}."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header, self.episodes = _read(self.path)
        self.seeds_by_task: dict[str, list[int]] = {}
        for task, seed in sorted(self.episodes):
            self.seeds_by_task.setdefault(task, []).append(seed)
        self.missing_bid_errors: dict[str, str] = self.header.get("missing_bid_errors", {})

    def get(self, task: str, seed: int) -> Recording:
        return self.episodes[(task, seed)]


class ReplayBackend:
    mode = "replay"

    def __init__(self, path: str | Path):
        self.store = ReplayStore(path)
        self._rng = random.Random()
        self._rng_lock = threading.Lock()

    def tasks(self) -> list[str]:
        return sorted(self.store.seeds_by_task)

    def seeds(self) -> dict[str, list[list[int]]]:
        """Recorded seeds per task as [start, end) ranges: clients draw episodes from these."""
        return {task: _ranges(seeds) for task, seeds in self.store.seeds_by_task.items()}

    def check(self, task: str, seed: int | None) -> None:
        if task not in self.store.seeds_by_task:
            raise UnknownTask(task, self.store.seeds_by_task)
        if seed is not None and (task, seed) not in self.store.episodes:
            ranges = ", ".join(f"[{a}, {b})" for a, b in _ranges(self.store.seeds_by_task[task]))
            raise UnknownSeed(f"seed {seed} of {task!r} is not in this recording ({self.store.path.name}); "
                              f"its recorded seeds: {ranges}")

    def health(self) -> dict:
        h = self.store.header
        return {"mode": self.mode, "browser": None, "task_count": len(self.store.seeds_by_task),
                "replay": {"file": str(self.store.path), "episodes": len(self.store.episodes),
                           "created_utc": h.get("created_utc"), "depth": h.get("depth"),
                           "action_kinds": h.get("action_kinds"), "recorded_with": h.get("recorded_with")}}

    def random_seed(self, task: str) -> int:
        with self._rng_lock:
            return self._rng.choice(self.store.seeds_by_task[task])

    def new_session(self, session_id: str) -> "ReplaySession":
        return ReplaySession(session_id, self)


class ReplaySession:
    """Plays recorded episodes; the same `reset`/`step` as a live BrowserSession.

    It tracks the state (whose outcomes apply) and the page itself (which may differ from the state's
    recorded page in focus only: see envserver.record)."""

    def __init__(self, session_id: str, backend: ReplayBackend):
        self.id, self.backend = session_id, backend
        self.task_name: str | None = None
        self.episode = None
        self.last_obs: dict | None = None
        self.viewport: tuple[int, int] | None = None
        self.last_used = time.monotonic()
        self._rec: Recording | None = None
        self._state: int | None = None
        self._page: tuple[str, int] = ("", 0)  # (accessibility tree, index of the recorded page it derives from)

    def reset(self, task: str, seed: int | None, screenshot: bool = False, pruned_html: bool = False):
        self.last_used = time.monotonic()
        seed = self.backend.random_seed(task) if seed is None else seed
        self._rec, self._state = self.backend.store.get(task, seed), 0
        root = self._rec.states[0]["o"]
        self._page = (self._rec.observations[root][0], root)
        self.viewport = tuple(self.backend.store.header["tasks"][task]["viewport"])
        return self._observation(elapsed=self._rec.reset_elapsed), {"replay": {"seed": seed}}

    def step(self, action: Action, screenshot: bool = False, pruned_html: bool = False):
        """-> (observation, reward, done, truncated, info); info["recorded"] is False for an unrecorded action."""
        self.last_used = time.monotonic()
        code = action.to_code()
        found = self._rec.outcome(self._state, action.key())
        if found is not None:
            self._page = (self._carry_focus(found.obs), found.obs)
            self._state = found.state
            return (self._observation(code, found.error, found.elapsed), found.reward, found.done, found.truncated,
                    {"recorded": True})
        missing = self._missing_bid(action)
        if missing is not None:  # the live browser's own answer, the page unchanged
            return self._observation(code, missing), 0.0, False, False, {"recorded": True}
        error = (f"{NOT_RECORDED}: this replay has no outcome for {code} here (it records "
                 f"{', '.join(self.backend.store.header.get('action_kinds', []))} on the page's elements)")
        return self._observation(code, error), 0.0, False, False, {"recorded": False}

    def _carry_focus(self, result: int) -> str:
        """The result page's tree. Where this page's focus differs from the state's recorded page and the
        recorded action moved no focus, the focus stays where this page had it."""
        text = self._rec.observations[result][0]
        state_focus = focused_bids(self._rec.observations[self._rec.states[self._state]["o"]][0])
        page_focus = focused_bids(self._page[0])
        if page_focus != state_focus and focused_bids(text) == state_focus:
            return with_focus(text, page_focus)
        return text

    def _observation(self, action: str = "", error: str = "", elapsed: float = 0.0) -> dict:
        text, obs = self._page
        return {**self._rec.observation(obs, action, error, elapsed), "text": text, "axtree_txt": text}

    def _missing_bid(self, action: Action) -> str | None:
        """The live error for an element id the current page does not have, if the action names one."""
        template = self.backend.store.missing_bid_errors.get(action.name)
        missing = [bid for bid in action.bids() if bid not in self._rec.bids(self._page[1])]
        # Recorded with a numeric id; an id of another shape may fail differently in the browser (frame ids).
        return template.replace("{bid}", missing[0]) if missing and missing[0].isdigit() and template else None

    def close(self) -> None:
        self._rec = None


def _ranges(seeds: list[int]) -> list[list[int]]:
    """Sorted seeds -> [start, end) runs."""
    out: list[list[int]] = []
    for s in seeds:
        if out and out[-1][1] == s:
            out[-1][1] = s + 1
        else:
            out.append([s, s + 1])
    return out


def _read(path: Path) -> tuple[dict, dict]:
    if not path.is_file():
        raise ReplayFileError(f"{path}: no such recording file (make one with python -m envserver.record)")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            header = json.loads(fh.readline() or "null")
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ReplayFileError(f"{path}: not a {FORMAT} file (first line is not its header)")
            if header.get("version") != VERSION:
                raise ReplayFileError(f"{path}: recording format version {header.get('version')}, this server "
                                      f"reads version {VERSION}; record it again")
            episodes = {}
            for n, line in enumerate(fh, start=2):
                if line.strip():
                    rec = Recording(json.loads(line))
                    episodes[(rec.task, rec.seed)] = rec
    except (OSError, EOFError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ReplayFileError(f"{path}: unreadable recording ({type(e).__name__}: {e})") from None
    if not episodes:
        raise ReplayFileError(f"{path}: the recording holds no episodes")
    return header, episodes
