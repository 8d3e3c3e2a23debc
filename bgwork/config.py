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
class Params:
    """Root of a run's parameters."""

    name: str = _f("debug", "run name, part of the run directory name")
    seed: int = _f(0, "global seed (training, sampling, task seeds derive from it)", min=0)
    env: EnvParams = field(default_factory=EnvParams, metadata={"help": "env server"})
    smoke: SmokeParams = field(default_factory=SmokeParams, metadata={"help": "notebook 01"})
