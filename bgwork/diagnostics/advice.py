"""What to change after a diagnosis: concrete bgwork params (`train.entropy_coef=0.001`, the names `bgwork run -p`
takes; most map one to one onto TRL's GRPOConfig), each tied to the finding that calls for it."""

from __future__ import annotations

import pandas as pd

from bgwork.diagnostics.detectors import Finding, Verdict
from bgwork.metrics import LEARNING_RATE


def peak_learning_rates(df: pd.DataFrame) -> dict[str, float]:
    """Each run's peak logged learning_rate (after warmup), from a tidy frame."""
    lr = df[df["tag"] == LEARNING_RATE]
    return {run: float(v) for run, v in lr.groupby("run")["value"].max().items()}


def recommend(verdicts: list[Verdict], lr_by_run: dict[str, float] | None = None) -> pd.DataFrame:
    """Concrete params to change, each tied to the finding that calls for it (`section.key=value`)."""
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
    """Each piece names bgwork params as `section.key=value` (what `bgwork run -p` and params files take); a test
    parses every piece against the config schema."""
    if f.kind == "diverged":
        return [f"the weights went non-finite at step {f.step}: start a new run with "
                f"train.learning_rate={_lower_target(lr, healthy_lrs):.2g} and train.max_grad_norm=0.5 (resuming a "
                "checkpoint keeps its optimizer's learning rate); under data parallelism keep "
                "rollout.carry_kv_cache=false (bgwork turns it off there: with it, multi-GPU runs went NaN)"]
    if f.kind == "collapsed":
        out = [_lower_lr(lr, healthy_lrs)]
        if "preceding_spike" in f.data:
            out.append("the collapse followed a grad_norm spike: train.scale_rewards=batch (or "
                       "train.scale_rewards=none with train.loss_type=dr_grpo) stops a near-zero group std from "
                       "inflating advantages into one huge update")
        early = f.data.get("early_median", 0)
        out.append(f"add an entropy bonus: train.entropy_coef=0.001, or train.use_adaptive_entropy=true with "
                   f"train.entropy_target={0.5 * early:.2g} (half the early entropy {early:.2g})")
        out.append("train.beta=0.04 (KL to the reference model) holds the policy near where it started; "
                   "the default 0.0 lets one step move it anywhere")
        return out
    if f.kind == "deadlocked":
        regime = f.data.get("regime")
        if regime == "all solved":
            return ["more tasks in the curriculum (rollout.tasks), or harder ones: every rollout of the current tasks "
                    "succeeds, so GRPO has nothing to compare and learns nothing more from them; with "
                    "rollout.curriculum=adaptive the draws go to the tasks still being learned"]
        if regime == "all failed":
            return ["no rollout ever succeeds: check the env reward reaches the reward function (the original bug: an "
                    "empty reward function list logged reward 0.0), then add easier tasks to rollout.tasks, or "
                    "demonstrations first (warmstart.episodes_per_task=8)",
                    "more chances per group that one rollout succeeds: train.num_generations=8 with "
                    "train.per_device_train_batch_size=16, or train.temperature=1.2, or "
                    "rollout.explore_epsilon=0.25 (1 action in 4 targets an element drawn from the page)"]
        return ["each prompt's group scores alike (some tasks always solved, others never): "
                "rollout.curriculum=adaptive with train.dynamic_sampling=true draws tasks near success 0.5 and "
                "replaces groups whose rewards do not vary",
                "more variety within a group: train.num_generations=8 with train.per_device_train_batch_size=16, or "
                "train.temperature=1.2",
                "a policy that picks the same wrong element in every episode of a group learns nothing from it: "
                "rollout.explore_epsilon=0.25 sends 1 action in 4 to an element drawn uniformly from the page, so "
                "some episodes find the right one and GRPO raises it"]
    if f.kind == "spike":
        return [f"grad_norm spikes: {_lower_lr(lr, healthy_lrs)}; train.scale_rewards=batch if reward_std was small "
                "at the spike (group std normalisation blows tiny differences up)"]
    if f.kind == "plateau":
        if f.data.get("reward", 0) >= 0.9:
            return ["reward is flat near its ceiling: add harder tasks to rollout.tasks or stop training"]
        return ["reward is flat: more varied rollouts (train.num_generations=8 with "
                "train.per_device_train_batch_size=16, or train.temperature=1.2), or raise train.learning_rate a "
                "little if entropy is healthy"]
    return []


def _lower_target(lr: float | None, healthy_lrs: list[float]) -> float:
    """The learning rate to suggest: the highest healthy one below `lr`, else 5x lower (1e-6 when `lr` is unknown:
    the original project collapsed at 5e-6 and stayed healthy at 1e-6)."""
    if lr is None:
        return 1e-6
    return max([h for h in healthy_lrs if h < lr], default=lr / 5)


def _lower_lr(lr: float | None, healthy_lrs: list[float]) -> str:
    if lr is None:
        return ("lower train.learning_rate (the original project collapsed at 5e-6 and stayed healthy at 1e-6: "
                "train.learning_rate=1e-6)")
    target = _lower_target(lr, healthy_lrs)
    why = "a run at that rate stayed healthy" if target in healthy_lrs else "5x lower"
    return f"lower train.learning_rate from {lr:.2g} to {target:.2g} ({why}): train.learning_rate={target:.2g}"
