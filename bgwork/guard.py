"""CollapseGuard: the diagnostics detectors on the live training log, as a transformers TrainerCallback.

Each `on_log` appends the logged metrics (TRL names: reward, reward_std, frac_reward_zero_std, entropy,
grad_norm, ...) to a history and runs `bgwork.diagnostics.detectors.diagnose` on it. A finding seen for the first
time is logged as a warning and recorded in the run's metrics.json under `guard/...`; in mode "stop" a
finding whose kind is in `GuardParams.stop_on` also saves a checkpoint and stops training cleanly, so a
collapsed or deadlocked run does not burn the rest of its steps (the original project lost 52). A run whose loss or
grad_norm went NaN/inf ("diverged") is stopped in any mode but "off", and nothing of it is saved: its weights are
no longer finite (`bgwork.trainer.train` then raises TrainingDiverged naming the last checkpoint before it).

Under data parallelism every rank runs the detectors: TRL logs metrics gathered over all ranks, so every
rank reaches the same decision and stops at the same step; only rank 0 writes and warns.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from transformers import TrainerCallback

from bgwork import metrics as m
from bgwork.config import DiagnosticsParams, GuardParams
from bgwork.diagnostics.detectors import diagnose
from bgwork.runs import read_metrics, record_metrics

log = logging.getLogger(__name__)


class CollapseGuard(TrainerCallback):
    def __init__(self, diagnostics: DiagnosticsParams | None = None, guard: GuardParams | None = None,
                 run_dir: str | Path | None = None):
        """Thresholds and mode default to the config's (bgwork.config); run_dir None: the trainer's output_dir."""
        self.diagnostics = diagnostics or DiagnosticsParams()
        self.params = guard or GuardParams()
        self.run_dir = Path(run_dir) if run_dir else None  # None: the trainer's output_dir
        self.history: list[dict] = []
        self.warnings: list[str] = []  # the lines a report shows
        self.stop_reason: str | None = None
        self._seen: set = set()
        self._main = True  # rank 0 of a distributed run (only it warns and writes)

    def on_train_begin(self, args, state, control, **kwargs):
        self.run_dir = self.run_dir or Path(args.output_dir)
        self._main = state.is_world_process_zero
        if self.params.mode == "off":
            return
        for logs in state.log_history:  # resumed from a checkpoint: the detectors see the steps before it too
            self._append(logs.get("step", 0), logs)
        if self._main:
            earlier = {k: v for k, v in read_metrics(self.run_dir).items() if k.startswith(m.GUARD_PREFIX)}
            self._record({m.GUARD_MODE: self.params.mode, m.GUARD_STOPPED: False, m.GUARD_REASON: None,
                          m.GUARD_STOPPED_AT_STEP: None, m.GUARD_WARNINGS: [], m.GUARD_FINDING: None,
                          **({m.GUARD_BEFORE_RESUME: earlier} if earlier.get(m.GUARD_STOPPED) else {})})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.params.mode == "off" or not logs:
            return
        self._main = state.is_world_process_zero
        if not self._append(state.global_step, logs):
            return
        verdict = diagnose(self.frame(), self.diagnostics, run="live")
        for finding in verdict.findings:
            key = finding.kind if finding.kind in ("diverged", "collapsed", "plateau") else (finding.kind, finding.step)
            if key in self._seen:
                continue
            self._seen.add(key)
            self._warn(f"step {state.global_step}: {finding.kind}: {finding.detail}")
            if self.stop_reason is not None:
                continue
            if finding.kind == "diverged":
                self._stop(finding, state, control, save=False)
            elif self.params.mode == "stop" and finding.kind in self.params.stop_on:
                self._stop(finding, state, control)

    def _append(self, step: int, logs: dict) -> bool:
        row = {k: float(v) for k, v in logs.items()
               if isinstance(v, (int, float)) and k != "step" and not k.startswith(("eval_", "test_"))}
        if row:
            self.history.append({"step": step, **row})
        return bool(row)

    def frame(self) -> pd.DataFrame:
        """The live history as the detectors read it: step-indexed, one column per metric."""
        return pd.DataFrame(self.history).groupby("step").last().sort_index()

    def _warn(self, line: str) -> None:
        self.warnings.append(line)
        if not self._main:
            return
        log.warning("CollapseGuard: %s", line)
        self._record({m.GUARD_WARNINGS: self.warnings})

    def _stop(self, finding, state, control, save: bool = True) -> None:
        self.stop_reason = f"{finding.kind} at step {finding.step}: {finding.detail}"
        control.should_save = save  # never a checkpoint of non-finite weights
        control.should_training_stop = True
        if not self._main:
            return
        log.warning("CollapseGuard: stopping training at step %d%s (%s)", state.global_step,
                    " and saving a checkpoint" if save else ", saving nothing", self.stop_reason)
        self._record({m.GUARD_STOPPED: True, m.GUARD_STOPPED_AT_STEP: state.global_step,
                      m.GUARD_REASON: self.stop_reason, m.GUARD_FINDING: asdict(finding)})

    def _record(self, metrics: dict) -> None:
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            record_metrics(self.run_dir, metrics)

