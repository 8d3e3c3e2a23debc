"""The one typed config of a bgwork run. Each section is a dataclass; every field documents itself.

A params/*.yaml file holds any subset of these sections; omitted values keep the defaults below
(the "embedded defaults"). Notebooks receive sections as dicts through papermill and validate them
with `bgwork.params` before any heavy work.

Section owners add fields to their own dataclass only; each field: `field(default=..., metadata={"help": ...})`.
Numeric bounds: metadata "min"/"max"; closed choices: a `Literal[...]` type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def _f(default, help: str, **meta):
    """A documented field; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class EnvParams:
    """Where the browser lives: an external envserver URL, or an embedded one started for the run."""

    url: str | None = _f(None, "envserver base URL; null starts an embedded server on a free loopback port")
    token: str | None = _f(None, "bearer token for a non-loopback envserver (else env var BGWORK_ENV_TOKEN)")
    max_sessions: int = _f(4, "embedded server: parallel browser sessions", min=1, max=64)
    pre_observation_delay: float = _f(0.1, "embedded server: seconds to wait after an action before observing", min=0.0, max=5.0)
    request_timeout: float = _f(60.0, "seconds before an env HTTP call is abandoned", min=1.0)


@dataclass
class SmokeParams:
    """Notebook 01: which tasks to reset, solve with a scripted solver, and feed a malformed action."""

    tasks: list[str] = _f(["click-test", "click-button", "enter-text", "focus-text", "click-checkboxes", "login-user"],
                          "MiniWoB task names to smoke-test")
    seed: int = _f(0, "seed of each smoke-test reset", min=0)


@dataclass
class DiagnosticsParams:
    """Notebook 04 and the live guard: thresholds of the training-health detectors (bgwork.diagnostics).

    Steps are logged steps (trainer global_step); "k consecutive" counts logged points, so with
    logging_steps > 1 the window spans k * logging_steps optimizer steps.
    """

    entropy_floor: float = _f(0.1, "collapse: mean token entropy (nats) below this is collapsed, whatever the start", min=0.0)
    entropy_frac: float = _f(0.2, "collapse: entropy below this fraction of its early median is collapsed", min=0.0, max=1.0)
    entropy_early_steps: int = _f(5, "collapse: the first N logged points give the early median (the fraction test starts after them)", min=1)
    entropy_patience: int = _f(2, "collapse: consecutive logged points below threshold before it counts", min=1)
    zero_std_frac: float = _f(0.95, "deadlock: a step is dead when frac_reward_zero_std >= this ...", min=0.0, max=1.0)
    reward_std_eps: float = _f(1e-6, "deadlock: ... or when reward_std <= this", min=0.0)
    deadlock_patience: int = _f(8, "deadlock: consecutive dead logged points before it counts", min=1)
    solved_reward: float = _f(0.9, "deadlock: mean reward >= this over the dead window means 'all solved'")
    failed_reward: float = _f(0.1, "deadlock: mean reward <= this means 'all failed' (between: 'mixed', each group uniform)")
    spike_factor: float = _f(5.0, "spike: grad_norm >= this x rolling median of the previous points", min=1.0)
    spike_window: int = _f(10, "spike: how many previous logged points the rolling median uses", min=1)
    spike_min_history: int = _f(3, "spike: previous points needed before spikes are judged", min=1)
    spike_median_floor: float = _f(1e-3, "spike: rolling median floored here so near-zero grads (no signal) don't make every blip a spike", min=0.0)
    spike_lead_steps: int = _f(3, "a spike up to this many steps before a collapse is reported as preceding it", min=1)
    plateau_window: int = _f(15, "plateau: compare the mean reward of the last N logged points with the N before", min=2)
    plateau_min_gain: float = _f(0.02, "plateau: a gain below this between the two windows is a plateau", min=0.0)


@dataclass
class GuardParams:
    """Training: the CollapseGuard callback runs the diagnostics detectors on the live log."""

    mode: Literal["warn", "stop", "off"] = _f("stop", "warn: log and record findings; stop: also save a checkpoint and stop on a stop_on finding; off: do nothing")
    stop_on: list[str] = _f(["collapsed", "deadlocked"], "finding kinds that stop training in mode 'stop' (collapsed, deadlocked, spike, plateau)")


@dataclass
class Params:
    """Root of a run's parameters."""

    name: str = _f("debug", "run name, part of the run directory name")
    seed: int = _f(0, "global seed (training, sampling, task seeds derive from it)", min=0)
    env: EnvParams = field(default_factory=EnvParams, metadata={"help": "env server"})
    smoke: SmokeParams = field(default_factory=SmokeParams, metadata={"help": "notebook 01"})
    diagnostics: DiagnosticsParams = field(default_factory=DiagnosticsParams, metadata={"help": "notebook 04 / guard thresholds"})
    guard: GuardParams = field(default_factory=GuardParams, metadata={"help": "live collapse guard during training"})
