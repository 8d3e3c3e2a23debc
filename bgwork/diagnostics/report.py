"""Notebook 04's report of a diagnosis: tables, plots with the events marked, and the verdicts recorded."""

from __future__ import annotations

import pandas as pd

from bgwork import metrics as m
from bgwork.diagnostics.detectors import PLOT_TAGS, Finding, Verdict
from bgwork.runs import read_metrics, record_metrics
from bgwork.tbscalars import wide

# What notebook 04 plots: the detectors' metrics, and env outages (steps whose rollout waited for the env server).
PANEL_TAGS = PLOT_TAGS + [m.ENV_OUTAGE_S]


def verdict_table(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([{"run": v.run, "verdict": v.summary, "last step": v.last_step, "why": v.reason,
                          "not logged": ", ".join(v.missing)} for v in verdicts])


def events_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    """Every finding of every run: run, kind, step, detail (to mark on plots)."""
    rows = [{"run": v.run, "kind": f.kind, "step": f.step, "detail": f.detail} for v in verdicts for f in v.findings]
    return pd.DataFrame(rows, columns=["run", "kind", "step", "detail"])


def coverage_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per run: steps logged and which of the diagnosed metrics are missing (runs may differ in both)."""
    rows = []
    for run, one in df.groupby("run"):
        tags = set(one["tag"])
        rows.append({"run": run, "first step": int(one["step"].min()), "last step": int(one["step"].max()),
                     "metrics": len(tags), "not logged": ", ".join(t for t in PLOT_TAGS if t not in tags) or "-"})
    return pd.DataFrame(rows)


def record_verdicts(verdicts: list[Verdict], run_dir, run_dirs: dict[str, str] | None = None,
                    recommendations: pd.DataFrame | None = None) -> None:
    """All verdicts into this notebook's metrics.json; each run's own verdict into that run's metrics.json."""
    figures = {"diagnostics/verdicts": {v.run: v.to_dict() for v in verdicts}}
    if recommendations is not None:
        figures["diagnostics/recommendations"] = recommendations.to_dict("records")
    record_metrics(run_dir, figures)
    for v in verdicts:
        if run_dirs and v.run in run_dirs:
            record_metrics(run_dirs[v.run], {"diagnostics/verdict": v.summary, "diagnostics/status": v.status,
                                             "diagnostics/step": v.step, "diagnostics/reason": v.reason})


def guard_summary(run_dir) -> dict:
    """What the live guard (bgwork.guard) recorded in a run's metrics.json."""
    return {k: v for k, v in read_metrics(run_dir).items() if k.startswith(m.GUARD_PREFIX)}


def guard_table(run_dirs: dict[str, str]) -> pd.DataFrame:
    """Per run: whether the live guard ran, stopped training, why, and what it warned about."""
    rows = []
    for run, path in run_dirs.items():
        g = guard_summary(path)
        rows.append({"run": run, "guard": g.get(m.GUARD_MODE, "did not run"), "stopped": g.get(m.GUARD_STOPPED, "-"),
                     "at step": g.get(m.GUARD_STOPPED_AT_STEP, "-"), "reason": g.get(m.GUARD_REASON, "-"),
                     "warnings": " | ".join(g.get(m.GUARD_WARNINGS, [])) or "-"})
    return pd.DataFrame(rows)


EVENT_STYLE = {"collapsed": dict(ls="--", lw=1.6), "deadlocked": dict(alpha=0.12), "plateau": dict(alpha=0.06),
               "spike": dict(marker="X", s=80, zorder=5), "outage": dict(ls=":", lw=1.2)}


def outage_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every step whose rollout waited for an env server that went away: run, step, seconds waited."""
    out = df[(df["tag"] == m.ENV_OUTAGE_S) & (df["value"] > 0)]
    return (out.rename(columns={"value": "waited (s)"})[["run", "step", "waited (s)"]]
            .round(1).reset_index(drop=True))


def plot_runs(df: pd.DataFrame, verdicts: list[Verdict], tags: list[str] = PANEL_TAGS):
    """One panel per metric, one line per run, its detected events marked in the run's colour:
    collapse = dashed line, deadlock = shaded span, spike = X on grad_norm, plateau = faint span,
    env outage = dotted line on every panel."""
    import matplotlib.pyplot as plt

    ncols = 3
    nrows = -(-len(tags) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.2 * nrows), sharex=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, v in enumerate(verdicts):
        color, w = colors[i % len(colors)], wide(df, v.run)
        outages = w.index[w[m.ENV_OUTAGE_S] > 0] if m.ENV_OUTAGE_S in w.columns else []
        for ax, tag in zip(axes.flat, tags):
            if tag in w.columns and w[tag].notna().any():
                s = w[tag].dropna()
                ax.plot(s.index, s.values, color=color, lw=1.3, label=f"{v.run}: {v.summary}")
            _mark_events(ax, tag, w, v.findings, color)
            for step in outages:
                ax.axvline(step, color=color, **EVENT_STYLE["outage"])
    for ax, tag in zip(axes.flat, tags):
        ax.set_title(tag)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged by any run", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in axes.flat[len(tags):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:  # the first panel may lack a run that others have
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h), labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), frameon=False)
    fig.suptitle("dashed: entropy collapse · shaded: zero-variance deadlock · X: grad_norm spike · "
                 "faint: reward plateau · dotted: env outage")
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 3), 1, 0.95))
    return fig


def _mark_events(ax, tag: str, w: pd.DataFrame, findings: list[Finding], color: str) -> None:
    for f in findings:
        if f.kind == "collapsed":
            ax.axvline(f.step, color=color, **EVENT_STYLE["collapsed"])
        elif f.kind == "deadlocked":
            ax.axvspan(f.step, f.data["until"], color=color, **EVENT_STYLE["deadlocked"])
        elif f.kind == "plateau":
            ax.axvspan(f.step, int(w.index.max()), color=color, **EVENT_STYLE["plateau"])
        elif f.kind == "spike" and tag == m.GRAD_NORM:
            ax.scatter([f.step], [f.data["grad_norm"]], color=color, **EVENT_STYLE["spike"])


def runs_verdict(verdicts: list[Verdict]) -> tuple[str, dict]:
    """(line, figures) answering notebook 04's question: did any run collapse or deadlock, and where?"""
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.status] = counts.get(v.status, 0) + 1
    line = f"{len(verdicts)} run{'s' if len(verdicts) != 1 else ''}: " + ", ".join(f"{n} {s}" for s, n in
                                                                                    counts.items())
    bad = [v for v in verdicts if v.status in ("collapsed", "deadlocked")]
    if bad:
        line += " — " + "; ".join(f"{v.run} {v.summary}" for v in bad[:3])
    return line, {v.run: f"{v.summary} (last step {v.last_step})" for v in verdicts[:5]}
