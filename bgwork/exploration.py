"""Exploration a small model can use: an ε-uniform choice of element in training rollouts.

A warm-started 135M policy is near-deterministic on each page. On a task it gets wrong, every episode of a group
picks the same wrong element, so the group's rewards are all 0 and GRPO has nothing to learn from; temperature
does not fix it (docs/benchmarks.md, "GRPO's own share": T = 1.5 halves the sampled success before it mixes the
groups). With `rollout.explore_epsilon` = ε, each action the model writes in a training rollout is, with
probability ε, sent with its element id swapped for one drawn uniformly from the ids on the page the model was
shown. The episode trains on the action it actually played, so an explored action that succeeds gets a positive
advantage against its group's on-policy episodes and GRPO raises its probability: learning from reward alone,
without demonstrations.

This is off-policy on purpose, as in ε-greedy: explored tokens were not sampled from the policy, so they carry no
sampling log-prob (0, unused without vLLM's importance-sampling correction, which the config refuses alongside
exploration). Only the element changes: the action's verb, text and format stay the model's own, and an output
that does not parse is left alone (exploration never hides a format error).

    explorer = Explorer(epsilon=0.25, seed=0)
    explorer.swap("click('12')", ["7", "9", "12"])   # -> "click('9')" with probability ~ε·2/3, else None
"""

from __future__ import annotations

import random
import re

from envserver.grammar import Action, ActionError, parse_action

# An element line of BrowserGym's accessibility tree: optional indentation, then "[bid] role ...".
_ELEMENT = re.compile(r"^\s*\[([^\]\s]+)\]", re.MULTILINE)


def page_bids(user_text: str) -> list[str]:
    """The element ids the model was shown in a user turn, in page order (each once)."""
    page = user_text.split("Page observation:", 1)[-1]
    return list(dict.fromkeys(_ELEMENT.findall(page)))


def with_bids(action: Action, choose) -> Action:
    """The action with every element-id argument replaced by `choose()` (positional or keyword)."""
    names = list(action.bound())  # parameter names in signature order
    bids = {k for k in names if "bid" in k}
    args = tuple(choose() if names[i] in bids else a for i, a in enumerate(action.args))
    kwargs = tuple((k, choose() if k in bids else v) for k, v in action.kwargs)
    return Action(action.name, args, kwargs)


class Explorer:
    """Decides, action by action, whether a training action is explored and which element it then targets."""

    def __init__(self, epsilon: float, seed: int = 0, rank: int = 0):
        self.epsilon = epsilon
        self.rng = random.Random(f"explore:{seed}" + (f":{rank}" if rank else ""))

    def swap(self, action: str | None, bids: list[str]) -> str | None:
        """With probability ε, `action` (a parsed, canonical action) retargeted at a uniformly drawn element of
        `bids`; None when not explored (no draw, no parsed action, no element argument or no element on the page)."""
        if not self.epsilon or self.rng.random() >= self.epsilon or action is None or not bids:
            return None
        try:
            parsed = parse_action(action)
        except ActionError:
            return None
        if not parsed.bids():
            return None  # noop(), scroll(...), keyboard_*: nothing to retarget
        return with_bids(parsed, lambda: self.rng.choice(bids)).to_code()
