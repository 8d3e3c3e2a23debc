"""A finished training run read back for its report: per-step curves from TensorBoard, and final figures.

    frame = curves(result.output_dir)     # step-indexed, one column per logged metric (bgwork.metrics names)
    plot_curves(frame); plot_per_task(frame, "curriculum/success"); curve_table(frame); summary(result, frame)
"""

from __future__ import annotations

from pathlib import Path

from bgwork.metrics import CURVES, GRAD_NORM, STEP_TIME, SUMMARY


def curves(output_dir: str | Path):
    """Step-indexed frame of the run's TensorBoard scalars (one column per tag); empty for a run without GRPO
    steps (train.max_steps 0: the warm start only)."""
    import pandas as pd

    from bgwork.tbscalars import event_files, load_scalars, wide

    if not Path(output_dir).is_dir() or not event_files(Path(output_dir)):
        return pd.DataFrame()
    df = load_scalars(output_dir)
    return wide(df, df["run"].iloc[0])


def plot_curves(frame, tags=CURVES, title: str = ""):
    """One small panel per metric against the optimizer step."""
    import matplotlib.pyplot as plt

    tags = [t for t in tags if t in frame]
    if not tags:
        return None
    fig, axes = plt.subplots(1, len(tags), figsize=(3.2 * len(tags), 2.8), squeeze=False)
    for ax, tag in zip(axes[0], tags):
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
