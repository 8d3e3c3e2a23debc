"""Training-health detectors for GRPO runs, shared by notebook 04 (offline) and the live guard.

Every detector reads one run's step-indexed frame (one column per TRL metric, see `tbscalars.wide`) and
the thresholds of `config.DiagnosticsParams`, and is causal: the findings on the first n steps never
depend on later steps (except plateau, judged at the end of what it is given), so the guard's live
verdict at step n is the notebook's verdict on the first n steps.

- collapse: `entropy` below `entropy_floor`, or (after the first `entropy_early_steps` points) below
  `entropy_frac` x their median, for `entropy_patience` consecutive points.
- deadlock: `frac_reward_zero_std >= zero_std_frac` or `reward_std <= reward_std_eps` for
  `deadlock_patience` consecutive points: every group scored alike, advantages are 0, nothing is learned.
  The mean `reward` over the stretch says "all solved" / "all failed" / "mixed".
- spike: `grad_norm >= spike_factor` x median of the previous `spike_window` points.
- plateau: mean `reward` of the last `plateau_window` points gained less than `plateau_min_gain`
  over the window before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

from bgwork.config import DiagnosticsParams

ENTROPY, REWARD, REWARD_STD, FRAC_ZERO_STD = "entropy", "reward", "reward_std", "frac_reward_zero_std"
GRAD_NORM, LEARNING_RATE = "grad_norm", "learning_rate"
PLOT_TAGS = [ENTROPY, REWARD, REWARD_STD, FRAC_ZERO_STD, GRAD_NORM, LEARNING_RATE]
SEVERITY = ["collapsed", "deadlocked", "plateau"]  # verdict priority; spikes alone never change the verdict


@dataclass
class Finding:
    kind: str  # collapsed | deadlocked | spike | plateau
    step: int  # where the event starts
    detail: str  # one sentence a person reads
    confirmed_step: int  # first step at which the detector could see it (what the live guard reacts to)
    data: dict = field(default_factory=dict)


@dataclass
class Verdict:
    run: str
    status: str  # healthy | collapsed | deadlocked | plateau | no data
    step: int | None
    reason: str
    last_step: int | None
    findings: list[Finding] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # metrics the run did not log (their detectors were skipped)

    @property
    def summary(self) -> str:
        at = {"collapsed": "at", "deadlocked": "from", "plateau": "from"}.get(self.status)
        return f"{self.status} {at} step {self.step}" if at else self.status

    def to_dict(self) -> dict:
        return {"status": self.status, "step": self.step, "summary": self.summary, "reason": self.reason,
                "last_step": self.last_step, "missing": self.missing, "findings": [asdict(f) for f in self.findings]}


def _series(w: pd.DataFrame, tag: str) -> pd.Series | None:
    if tag not in w.columns:
        return None
    s = w[tag].dropna()
    return s if len(s) else None


def _runs_of_true(mask: pd.Series, min_len: int) -> list[tuple[int, int]]:
    """(first, last) index positions of each stretch of >= min_len consecutive True values."""
    stretches, start = [], None
    for i, v in enumerate(list(mask) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start >= min_len:
                stretches.append((start, i - 1))
            start = None
    return stretches


def detect_collapse(w: pd.DataFrame, p: DiagnosticsParams) -> list[Finding]:
    e = _series(w, ENTROPY)
    if e is None:
        return []
    baseline = float(e.iloc[: p.entropy_early_steps].median())
    after_early = pd.Series(range(len(e)), index=e.index) >= p.entropy_early_steps
    low = (e < p.entropy_floor) | (after_early & (e < p.entropy_frac * baseline))
    stretches = _runs_of_true(low, p.entropy_patience)
    if not stretches:
        return []
    first, last = stretches[0]
    step, value = int(e.index[first]), float(e.iloc[first])
    after = "never recovered" if last == len(e) - 1 else f"back above threshold at step {int(e.index[last + 1])}"
    detail = (f"entropy {value:.3g} at step {step} (early median {baseline:.3g}; floor {p.entropy_floor:g}, "
              f"fraction {p.entropy_frac:g}); {after}")
    return [Finding("collapsed", step, detail, int(e.index[first + p.entropy_patience - 1]),
                    {"entropy": value, "early_median": baseline, "recovered": last != len(e) - 1})]


def detect_deadlock(w: pd.DataFrame, p: DiagnosticsParams) -> list[Finding]:
    frac, std = _series(w, FRAC_ZERO_STD), _series(w, REWARD_STD)
    if frac is None and std is None:
        return []
    idx = (frac if frac is not None else std).index.union((std if std is not None else frac).index)
    dead = pd.Series(False, index=idx)
    if frac is not None:
        dead |= (frac.reindex(idx) >= p.zero_std_frac).fillna(False)
    if std is not None:
        dead |= (std.reindex(idx) <= p.reward_std_eps).fillna(False)
    reward = _series(w, REWARD)
    return [_deadlock(idx, first, last, reward, p) for first, last in _runs_of_true(dead, p.deadlock_patience)]


def _deadlock(idx: pd.Index, first: int, last: int, reward: pd.Series | None, p: DiagnosticsParams) -> Finding:
    step, end, ongoing = int(idx[first]), int(idx[last]), last == len(idx) - 1
    level = float(reward.loc[step:end].mean()) if reward is not None and len(reward.loc[step:end]) else None
    regime = classify_regime(level, p)
    until = f"to step {end} (the last logged)" if ongoing else f"until step {end}, then the groups disagreed again"
    shown = f"{level:.3g}" if level is not None else "not logged"
    detail = (f"every group's rewards identical ({regime}: mean reward {shown}) from step {step} {until}; "
              f"advantages are 0, nothing is learned")
    return Finding("deadlocked", step, detail, int(idx[first + p.deadlock_patience - 1]),
                   {"regime": regime, "reward": level, "until": end, "ongoing": ongoing})


def classify_regime(reward: float | None, p: DiagnosticsParams) -> str:
    if reward is None:
        return "unknown regime"
    if reward >= p.solved_reward:
        return "all solved"
    if reward <= p.failed_reward:
        return "all failed"
    return "mixed"


def detect_spikes(w: pd.DataFrame, p: DiagnosticsParams) -> list[Finding]:
    g = _series(w, GRAD_NORM)
    if g is None:
        return []
    # Steps with grad_norm 0 (every group's rewards equal: no advantage) say nothing about the gradient's scale;
    # counting them would make the first ordinary step after a deadlock look like a spike.
    median = g.where(g > 0).shift(1).rolling(p.spike_window, min_periods=p.spike_min_history).median()
    ratio = g / median.clip(lower=p.spike_median_floor)
    spikes = ratio[ratio >= p.spike_factor]
    return [Finding("spike", int(s), f"grad_norm {g[s]:.3g} at step {int(s)} = {r:.1f}x the median "
                    f"{median[s]:.3g} of the previous non-zero points", int(s), {"grad_norm": float(g[s]), "ratio": float(r)})
            for s, r in spikes.items()]


def detect_plateau(w: pd.DataFrame, p: DiagnosticsParams) -> list[Finding]:
    r = _series(w, REWARD)
    n = p.plateau_window
    if r is None or len(r) < 2 * n:
        return []
    before, last = float(r.iloc[-2 * n: -n].mean()), float(r.iloc[-n:].mean())
    if last - before >= p.plateau_min_gain:
        return []
    step = int(r.index[-n])
    detail = (f"mean reward {before:.3g} -> {last:.3g} over the last two windows of {n} points "
              f"(gain below {p.plateau_min_gain:g}) from step {step}")
    return [Finding("plateau", step, detail, int(r.index[-1]), {"reward": last, "gain": last - before})]


def preceding_spike(spikes: list[Finding], step: int, p: DiagnosticsParams) -> Finding | None:
    """The last spike within `spike_lead_steps` before `step` (an update at step s shows in entropy at s+1)."""
    near = [s for s in spikes if step - p.spike_lead_steps <= s.step < step]
    return near[-1] if near else None


def diagnose(w: pd.DataFrame, p: DiagnosticsParams, run: str = "run") -> Verdict:
    """All detectors on one run's wide frame, and the verdict: the most severe finding wins."""
    missing = [t for t in PLOT_TAGS if _series(w, t) is None]
    if _series(w, ENTROPY) is None and _series(w, REWARD_STD) is None and _series(w, FRAC_ZERO_STD) is None:
        return Verdict(run, "no data", None, f"none of entropy, reward_std, frac_reward_zero_std was logged "
                       f"(tags seen: {sorted(w.columns)[:12]})", _last_step(w), [], missing)
    spikes, deadlocks = detect_spikes(w, p), detect_deadlock(w, p)
    # a deadlock still running explains a flat reward: don't report it twice
    plateaus = [f for f in detect_plateau(w, p) if not any(d.data["until"] >= f.step for d in deadlocks)]
    findings = detect_collapse(w, p) + deadlocks + spikes + plateaus
    for f in findings:
        if f.kind == "collapsed" and (s := preceding_spike(spikes, f.step, p)):
            f.data["preceding_spike"] = s.step
            f.detail += f"; preceded by a grad_norm spike of {s.data['grad_norm']:.3g} at step {s.step}"
    # a deadlock that ended on its own is reported, but the verdict is about where the run ended up
    main = next((f for kind in SEVERITY for f in findings
                 if f.kind == kind and not (kind == "deadlocked" and not f.data["ongoing"])), None)
    if main is None:
        reason = "; ".join(["no collapse, ongoing deadlock or plateau"]
                           + [f"{len(spikes)} grad_norm spike(s)"] * bool(spikes)
                           + [f"earlier: {f.detail}" for f in deadlocks])
        return Verdict(run, "healthy", None, reason, _last_step(w), findings, missing)
    others = [f.detail for f in findings if f is not main and f.kind != "spike"]
    reason = "; ".join([main.detail] + [f"also: {o}" for o in others])
    return Verdict(run, main.kind, main.step, reason, _last_step(w), findings, missing)


def _last_step(w: pd.DataFrame) -> int | None:
    return int(w.index.max()) if len(w.index) else None


def diagnose_runs(df: pd.DataFrame, p: DiagnosticsParams) -> list[Verdict]:
    """A verdict per run of a tidy `tbscalars.load_scalars` frame."""
    from bgwork.tbscalars import wide

    return [diagnose(wide(df, run), p, run) for run in sorted(df["run"].unique())]


def verdict_table(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([{"run": v.run, "verdict": v.summary, "last step": v.last_step, "why": v.reason,
                          "not logged": ", ".join(v.missing)} for v in verdicts])


def events_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    """Every finding of every run: run, kind, step, detail (to mark on plots)."""
    rows = [{"run": v.run, "kind": f.kind, "step": f.step, "detail": f.detail} for v in verdicts for f in v.findings]
    return pd.DataFrame(rows, columns=["run", "kind", "step", "detail"])


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
                       "loss_type='dr_grpo') stops a near-zero group std from inflating advantages into one huge update")
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
    from bgwork.runs import record_metrics

    metrics = {"diagnostics/verdicts": {v.run: v.to_dict() for v in verdicts}}
    if recommendations is not None:
        metrics["diagnostics/recommendations"] = recommendations.to_dict("records")
    record_metrics(run_dir, metrics)
    for v in verdicts:
        if run_dirs and v.run in run_dirs:
            record_metrics(run_dirs[v.run], {"diagnostics/verdict": v.summary, "diagnostics/status": v.status,
                                             "diagnostics/step": v.step, "diagnostics/reason": v.reason})


def guard_summary(run_dir) -> dict:
    """What the live guard (bgwork.guard) recorded in a run's metrics.json."""
    from bgwork.runs import read_metrics

    return {k: v for k, v in read_metrics(run_dir).items() if k.startswith("guard/")}


def guard_table(run_dirs: dict[str, str]) -> pd.DataFrame:
    """Per run: whether the live guard ran, stopped training, why, and what it warned about."""
    rows = []
    for run, path in run_dirs.items():
        g = guard_summary(path)
        rows.append({"run": run, "guard": g.get("guard/mode", "did not run"), "stopped": g.get("guard/stopped", "-"),
                     "at step": g.get("guard/stopped_at_step", "-"), "reason": g.get("guard/reason", "-"),
                     "warnings": " | ".join(g.get("guard/warnings", [])) or "-"})
    return pd.DataFrame(rows)


EVENT_STYLE = {"collapsed": dict(ls="--", lw=1.6), "deadlocked": dict(alpha=0.12), "plateau": dict(alpha=0.06),
               "spike": dict(marker="X", s=80, zorder=5)}


def plot_runs(df: pd.DataFrame, verdicts: list[Verdict], tags: list[str] = PLOT_TAGS):
    """One panel per metric, one line per run, its detected events marked in the run's colour:
    collapse = dashed line, deadlock = shaded span, spike = X on grad_norm, plateau = faint span."""
    import matplotlib.pyplot as plt

    from bgwork.tbscalars import wide

    ncols = 3
    nrows = -(-len(tags) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.2 * nrows), sharex=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, v in enumerate(verdicts):
        color, w = colors[i % len(colors)], wide(df, v.run)
        for ax, tag in zip(axes.flat, tags):
            if tag in w.columns and w[tag].notna().any():
                s = w[tag].dropna()
                ax.plot(s.index, s.values, color=color, lw=1.3, label=f"{v.run}: {v.summary}")
            _mark_events(ax, tag, w, v.findings, color)
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
    fig.suptitle("dashed: entropy collapse · shaded: zero-variance deadlock · X: grad_norm spike · faint: reward plateau")
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
        elif f.kind == "spike" and tag == GRAD_NORM:
            ax.scatter([f.step], [f.data["grad_norm"]], color=color, **EVENT_STYLE["spike"])
