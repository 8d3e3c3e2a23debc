"""Training-health detectors for GRPO runs, shared by notebook 04 (offline) and the live guard (bgwork.guard).

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
- diverged: `loss` or `grad_norm` not finite (NaN or inf): the optimizer step applied it, so the weights are no
  longer finite and every later step trains on NaN. The live guard stops such a run in any mode but "off", and
  saves nothing of it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import pandas as pd

from bgwork.config import DiagnosticsParams
from bgwork.metrics import ENTROPY, FRAC_REWARD_ZERO_STD, GRAD_NORM, LEARNING_RATE, LOSS, REWARD, REWARD_STD

PLOT_TAGS = [ENTROPY, REWARD, REWARD_STD, FRAC_REWARD_ZERO_STD, GRAD_NORM, LEARNING_RATE]
SEVERITY = ["diverged", "collapsed", "deadlocked", "plateau"]  # verdict priority; spikes alone never change the verdict


@dataclass
class Finding:
    kind: str  # diverged | collapsed | deadlocked | spike | plateau
    step: int  # where the event starts
    detail: str  # one sentence a person reads
    confirmed_step: int  # first step at which the detector could see it (what the live guard reacts to)
    data: dict = field(default_factory=dict)


@dataclass
class Verdict:
    run: str
    status: str  # healthy | diverged | collapsed | deadlocked | plateau | no data
    step: int | None
    reason: str
    last_step: int | None
    findings: list[Finding] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # metrics the run did not log (their detectors were skipped)

    @property
    def summary(self) -> str:
        at = {"diverged": "at", "collapsed": "at", "deadlocked": "from", "plateau": "from"}.get(self.status)
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


def detect_divergence(w: pd.DataFrame) -> list[Finding]:
    """The first training step whose loss or grad_norm is NaN or infinite. In a wide frame NaN also means "not
    logged", so a NaN counts only on a row that logged the step's reward or learning rate (TRL logs them together)."""
    logged = pd.Series(False, index=w.index)
    for tag in (REWARD, LEARNING_RATE):
        if tag in w.columns:
            logged |= w[tag].notna()
    bad = []
    for tag in (LOSS, GRAD_NORM):
        if tag in w.columns:
            v = pd.to_numeric(w[tag], errors="coerce")
            hit = v.isin([math.inf, -math.inf]) | (v.isna() & logged)
            bad += [(int(step), tag, float(v[step])) for step in v.index[hit]]
    if not bad:
        return []
    step, tag, value = min(bad)
    return [Finding("diverged", step, f"{tag} {value} at step {step}: the weights are no longer finite after this "
                    f"update, so every later step trains on NaN", step, {"tag": tag, "value": str(value)})]


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
    frac, std = _series(w, FRAC_REWARD_ZERO_STD), _series(w, REWARD_STD)
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
                    f"{median[s]:.3g} of the previous non-zero points", int(s),
                    {"grad_norm": float(g[s]), "ratio": float(r)})
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
    if _series(w, ENTROPY) is None and _series(w, REWARD_STD) is None and _series(w, FRAC_REWARD_ZERO_STD) is None:
        return Verdict(run, "no data", None, f"none of entropy, reward_std, frac_reward_zero_std was logged "
                       f"(tags seen: {sorted(w.columns)[:12]})", _last_step(w), [], missing)
    spikes, deadlocks = detect_spikes(w, p), detect_deadlock(w, p)
    # a deadlock still running explains a flat reward: don't report it twice
    plateaus = [f for f in detect_plateau(w, p) if not any(d.data["until"] >= f.step for d in deadlocks)]
    findings = detect_divergence(w) + detect_collapse(w, p) + deadlocks + spikes + plateaus
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
