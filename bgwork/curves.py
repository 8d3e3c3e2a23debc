"""A finished training run read back for its report: per-step curves from TensorBoard, and final figures.

    frame = curves(result.output_dir)     # step-indexed, one column per logged metric (bgwork.metrics names)
    plot_curves(frame); plot_per_task(frame, "curriculum/success"); curve_table(frame); summary(result, frame)
    training_verdict(result, frame, params.train)
"""

from __future__ import annotations

from pathlib import Path

from bgwork.metrics import (
    CURVES,
    ENTROPY,
    FORMAT_ERROR_RATE,
    FRAC_REWARD_ZERO_STD,
    GRAD_NORM,
    REWARD,
    REWARD_STD,
    STEP_TIME,
    SUCCESS_RATE,
    SUMMARY,
)


def curves(output_dir: str | Path):
    """Step-indexed frame of the run's TensorBoard scalars (one column per tag); empty for a run without GRPO
    steps (train.max_steps 0: the warm start only)."""
    import pandas as pd

    from bgwork.tbscalars import event_files, load_scalars, wide

    if not Path(output_dir).is_dir() or not event_files(Path(output_dir)):
        return pd.DataFrame()
    df = load_scalars(output_dir)
    return wide(df, df["run"].iloc[0])


def plot_curves(frame, tags=CURVES, title: str = "", columns: int = 3):
    """One panel per metric against the optimizer step, in a grid `columns` wide (readable at report width)."""
    import matplotlib.pyplot as plt

    tags = [t for t in tags if t in frame]
    if not tags:
        return None
    rows = max(1, -(-len(tags) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(tags):]:
        ax.axis("off")
    for ax, tag in zip(axes.flat, tags):
        ax.plot(frame.index, frame[tag], marker="o", ms=3)
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_per_task(frame, metric: str, title: str = ""):
    """One panel: `metric/<task>` of every task against the step (e.g. the curriculum's running success); None when
    the run did not log it."""
    import matplotlib.pyplot as plt

    tags = sorted(c for c in frame.columns if c.startswith(metric + "/"))
    if not tags:
        return None
    fig, ax = plt.subplots(figsize=(7, 3))
    for tag in tags:
        ax.plot(frame.index, frame[tag], marker="o", ms=2, label=tag[len(metric) + 1:])
    ax.set_xlabel("step")
    ax.set_title(title or metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    return fig


def curve_table(frame, last: int | None = None):
    """The plotted metrics plus grad_norm and step time, rounded; only the `last` steps when given."""
    table = frame[[c for c in CURVES + [GRAD_NORM, STEP_TIME] if c in frame]].round(4)
    return table.tail(last) if last else table


def summary(result, frame) -> dict:
    """Final figures of a run for metrics.json (`train/...`: last logged value of each metric, and its mean)."""
    last = frame.ffill().iloc[-1] if len(frame) else {}
    out = {"global_step": result.global_step, "output_dir": str(result.output_dir), "final_dir": str(result.final_dir),
           "stopped_by_guard": result.stopped_by_guard}
    for tag in SUMMARY:
        if tag in frame:
            out[f"final_{tag}"] = float(last[tag])
            out[f"mean_{tag}"] = float(frame[tag].mean())
    return {f"train/{k}": v for k, v in out.items()}


def training_verdict(result, frame, train) -> tuple[str, dict, bool]:
    """(line, figures, ok) answering notebook 02's question: did the run finish, did the env's rewards reach GRPO,
    was there a learning signal (groups whose rewards differ), and how many actions were malformed?"""
    def mean(tag):
        return float(frame[tag].mean()) if tag in frame and len(frame) else float("nan")

    done = result.global_step >= train.max_steps or result.stopped_by_guard
    reward, signal, fmt = mean(REWARD), 1 - mean(FRAC_REWARD_ZERO_STD), mean(FORMAT_ERROR_RATE)
    rewards = "rewards reached GRPO" if reward > 0 else "every episode scored 0 (no reward reached GRPO)"
    signals = (f"a learning signal in {signal:.0%} of groups" if signal > 0 else
               "no learning signal (every group's rewards were equal)")
    ended = ("finished" if result.global_step >= train.max_steps else
             "stopped by the guard" if result.stopped_by_guard else "ENDED EARLY")
    line = (f"{result.global_step} of {train.max_steps} steps, {ended}; {rewards}; {signals}; "
            f"{fmt:.0%} of actions malformed")
    figures = {"steps": f"{result.global_step} of {train.max_steps}", "mean reward": mean(REWARD),
               "mean reward_std": mean(REWARD_STD), "groups with a signal (1 − frac_reward_zero_std)": signal,
               "format-error rate": fmt, "success rate": mean(SUCCESS_RATE)}
    if ENTROPY in frame and len(frame):
        figures["entropy first → last"] = f"{frame[ENTROPY].iloc[0]:.3g} → {frame[ENTROPY].ffill().iloc[-1]:.3g}"
    return line, figures, done
