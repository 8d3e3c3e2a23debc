"""CollapseGuard: the diagnostics detectors on the live training log, as a transformers TrainerCallback.

Each `on_log` appends the logged metrics (TRL names: reward, reward_std, frac_reward_zero_std, entropy,
grad_norm, ...) to a history and runs `bgwork.diagnostics.diagnose` on it. A finding seen for the first
time is logged as a warning and recorded in the run's metrics.json under `guard/...`; in mode "stop" a
finding whose kind is in `GuardParams.stop_on` also saves a checkpoint and stops training cleanly, so a
collapsed or deadlocked run does not burn the rest of its steps (the original project lost 52).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from transformers import TrainerCallback

from bgwork.config import DiagnosticsParams, GuardParams
from bgwork.diagnostics import diagnose
from bgwork.runs import record_metrics

log = logging.getLogger(__name__)


class CollapseGuard(TrainerCallback):
    def __init__(self, diagnostics: DiagnosticsParams | None = None, guard: GuardParams | None = None,
                 run_dir: str | Path | None = None):
        self.diagnostics = diagnostics or DiagnosticsParams()
        self.params = guard or GuardParams()
        if self.params.mode not in ("warn", "stop", "off"):
            raise ValueError(f"guard.mode: {self.params.mode!r} is not one of warn, stop, off")
        self.run_dir = Path(run_dir) if run_dir else None  # None: the trainer's output_dir
        self.history: list[dict] = []
        self.warnings: list[str] = []  # the lines a report shows
        self.stop_reason: str | None = None
        self._seen: set = set()

    def on_train_begin(self, args, state, control, **kwargs):
        self.run_dir = self.run_dir or Path(args.output_dir)
        if self.params.mode != "off":
            self._record({"guard/mode": self.params.mode, "guard/stopped": False})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.params.mode == "off" or not logs or not state.is_world_process_zero:
            return
        row = {k: float(v) for k, v in logs.items()
               if isinstance(v, (int, float)) and not k.startswith(("eval_", "test_"))}
        if not row:
            return
        self.history.append({"step": state.global_step, **row})
        verdict = diagnose(self.frame(), self.diagnostics, run="live")
        for finding in verdict.findings:
            key = (finding.kind, finding.step) if finding.kind == "spike" else finding.kind
            if key in self._seen:
                continue
            self._seen.add(key)
            self._warn(f"step {state.global_step}: {finding.kind}: {finding.detail}")
            if self.params.mode == "stop" and finding.kind in self.params.stop_on and self.stop_reason is None:
                self._stop(finding, state, control)

    def frame(self) -> pd.DataFrame:
        """The live history as the detectors read it: step-indexed, one column per metric."""
        return pd.DataFrame(self.history).groupby("step").last().sort_index()

    def _warn(self, line: str) -> None:
        log.warning("CollapseGuard: %s", line)
        self.warnings.append(line)
        self._record({"guard/warnings": self.warnings})

    def _stop(self, finding, state, control) -> None:
        self.stop_reason = f"{finding.kind} at step {finding.step}: {finding.detail}"
        log.warning("CollapseGuard: stopping training at step %d and saving a checkpoint (%s)",
                    state.global_step, self.stop_reason)
        control.should_save = True
        control.should_training_stop = True
        self._record({"guard/stopped": True, "guard/stopped_at_step": state.global_step,
                      "guard/reason": self.stop_reason, "guard/finding": asdict(finding)})

    def _record(self, metrics: dict) -> None:
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            record_metrics(self.run_dir, metrics)

