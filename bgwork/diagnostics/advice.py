"""What to change after a diagnosis: concrete GRPOConfig settings, each tied to the finding that calls for it."""

from __future__ import annotations

import pandas as pd

from bgwork.diagnostics.detectors import Finding, Verdict
from bgwork.metrics import LEARNING_RATE


def peak_learning_rates(df: pd.DataFrame) -> dict[str, float]:
    """Each run's peak logged learning_rate (after warmup), from a tidy frame."""
    lr = df[df["tag"] == LEARNING_RATE]
    return {run: float(v) for run, v in lr.groupby("run")["value"].max().items()}


def recommend(verdicts: list[Verdict], lr_by_run: dict[str, float] | None = None) -> pd.DataFrame:
    """Concrete settings to change, each tied to the finding that calls for it (GRPOConfig names)."""
    lr_by_run = lr_by_run or {}
    healthy_lrs = [lr_by_run[v.run] for v in verdicts if v.status == "healthy" and v.run in lr_by_run]
    rows = []
    for v in verdicts:
        for f in v.findings:
            if f.kind == "spike" and any(c.data.get("preceding_spike") == f.step for c in v.findings):
                continue  # advised under the collapse it caused
            for text in _advice(f, lr_by_run.get(v.run), healthy_lrs):
                rows.append({"run": v.run, "finding": _label(f), "recommendation": text})
        if v.status == "healthy" and not v.findings:
            rows.append({"run": v.run, "finding": "healthy", "recommendation": "nothing to change"})
        if v.missing:
            rows.append({"run": v.run, "finding": "not logged: " + ", ".join(v.missing),
                         "recommendation": "log these (TRL GRPOTrainer logs them by default; report_to tensorboard) "
                                           "so every detector can run"})
    out = pd.DataFrame(rows, columns=["run", "finding", "recommendation"])
    return out.drop_duplicates(["run", "recommendation"]).reset_index(drop=True)


def _label(f: Finding) -> str:
    return f"{f.kind} {'from' if f.kind in ('deadlocked', 'plateau') else 'at'} step {f.step}"


def _advice(f: Finding, lr: float | None, healthy_lrs: list[float]) -> list[str]:
    if f.kind == "collapsed":
        out = [_lower_lr(lr, healthy_lrs)]
        if "preceding_spike" in f.data:
            out.append("the collapse followed a grad_norm spike: scale_rewards='batch' (or 'none' with "
                       "loss_type='dr_grpo') stops a near-zero group std from inflating advantages into one huge "
                       "update")
        early = f.data.get("early_median", 0)
        out.append(f"add an entropy bonus: entropy_coef=0.001, or use_adaptive_entropy=True with entropy_target "
                   f"~{0.5 * early:.2g} (half the early entropy {early:.2g})")
        out.append("beta=0.04 (KL to the reference model) holds the policy near where it started; "
                   "the default 0.0 lets one step move it anywhere")
        return out
    if f.kind == "deadlocked":
        regime = f.data.get("regime")
        if regime == "all solved":
            return ["more tasks in the curriculum (or harder ones): every rollout of the current tasks succeeds, so "
                    "GRPO has nothing to compare and learns nothing more from them"]
        if regime == "all failed":
            return ["no rollout ever succeeds: check the env reward reaches the reward function (the original bug: "
                    "reward_funcs=[] logged reward 0.0), then add easier tasks to the curriculum",
                    "raise num_generations (more chances per group that one rollout succeeds) or temperature"]
        return ["each prompt's group scores alike (some tasks always solved, others never): raise num_generations "
                "or temperature for variety within a group, and rebalance the curriculum toward tasks in between"]
    if f.kind == "spike":
        return [f"grad_norm spikes: {_lower_lr(lr, healthy_lrs)}; scale_rewards='batch' if reward_std was small "
                "at the spike (group std normalisation blows tiny differences up)"]
    if f.kind == "plateau":
        if f.data.get("reward", 0) >= 0.9:
            return ["reward is flat near its ceiling: add harder tasks to the curriculum or stop training"]
        return ["reward is flat: raise num_generations or temperature for more varied rollouts, or raise "
                "learning_rate a little if entropy is healthy"]
    return []


def _lower_lr(lr: float | None, healthy_lrs: list[float]) -> str:
    if lr is None:
        return "lower learning_rate (the original project collapsed at 5e-6 and stayed healthy at 1e-6)"
    target = max([h for h in healthy_lrs if h < lr], default=lr / 5)
    why = "a run at that rate stayed healthy" if target in healthy_lrs else "5x lower"
    return f"lower learning_rate from {lr:.2g} to {target:.2g} ({why})"
