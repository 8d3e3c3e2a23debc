"""Diagnostics on synthetic TensorBoard runs that reproduce the original project's collapse (bug 5)."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from synthetic_tb import collapsed_run, healthy_run, write_run
from transformers import TrainerControl, TrainerState, TrainingArguments

from bgwork import diagnostics as dx
from bgwork import metrics as m
from bgwork.config import DiagnosticsParams, GuardParams
from bgwork.guard import CollapseGuard
from bgwork.runs import read_metrics
from bgwork.tbscalars import load_scalars, wide

P = DiagnosticsParams()


@pytest.fixture(scope="module")
def original_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "grpo-lr5e-6", collapsed_run())
    write_run(root / "grpo-lr1e-6", healthy_run())
    return root


def test_reader_keeps_every_point_and_reads_trl_names(tmp_path):
    # more points than EventAccumulator's default reservoir (10,000) keeps; TRL names with and without prefix
    write_run(tmp_path / "long", {m.ENTROPY: {s: 2.0 for s in range(1, 12_001)}})
    write_run(tmp_path / "long", {m.REWARD: {1: 0.5}}, subdir="other")  # unprefixed below is written by hand
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(tmp_path / "long" / "third")) as w:
        w.add_scalar("reward_std", 0.1, 1)
    df = load_scalars(tmp_path / "long")
    assert list(df.columns) == ["run", "tag", "step", "value"]
    assert (df["tag"] == m.ENTROPY).sum() == 12_000
    assert set(df["tag"]) == {m.ENTROPY, m.REWARD, m.REWARD_STD}
    assert set(df["run"]) == {"long"}


def test_reader_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_scalars(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*no TensorBoard event files"):
        load_scalars(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="matched no directory"):
        load_scalars(str(tmp_path / "*"))
    with pytest.raises(ValueError, match="no runs given"):
        load_scalars([])


def test_glob_skips_dirs_without_event_files(original_runs, tmp_path, caplog):
    (original_runs / "a-notebook-run").mkdir(exist_ok=True)
    with caplog.at_level(logging.WARNING):
        df = load_scalars(str(original_runs / "*"))
    assert set(df["run"]) == {"grpo-lr5e-6", "grpo-lr1e-6"}
    assert "skipped 1 of 3" in caplog.text


def test_original_runs_collapsed_at_21_after_spike_and_healthy(original_runs):
    df = load_scalars([original_runs / "grpo-lr5e-6", original_runs / "grpo-lr1e-6"])
    verdicts = {v.run: v for v in dx.diagnose_runs(df, P)}
    bad, good = verdicts["grpo-lr5e-6"], verdicts["grpo-lr1e-6"]
    assert bad.summary == "collapsed at step 21"
    collapse = next(f for f in bad.findings if f.kind == "collapsed")
    assert collapse.data["preceding_spike"] == 20 and not collapse.data["recovered"]
    assert [f.step for f in bad.findings if f.kind == "spike"] == [20]
    deadlock = next(f for f in bad.findings if f.kind == "deadlocked")
    assert (deadlock.step, deadlock.data["regime"], deadlock.data["until"]) == (21, "all solved", 52)
    assert good.summary == "healthy" and good.findings == [] and good.last_step == 36

    rec = dx.recommend(list(verdicts.values()), dx.peak_learning_rates(df))
    bad_rec = " ".join(rec[rec["run"] == "grpo-lr5e-6"]["recommendation"])
    assert "from 5e-06 to 1e-06 (a run at that rate stayed healthy)" in bad_rec
    for setting in ["scale_rewards", "entropy_coef", "beta=", "more tasks in the curriculum"]:
        assert setting in bad_rec
    assert list(rec[rec["run"] == "grpo-lr1e-6"]["recommendation"]) == ["nothing to change"]


def test_detectors_are_causal_so_live_and_offline_agree():
    w = wide(_tidy(collapsed_run()), "r")
    assert dx.diagnose(w.loc[:21], P).status == "healthy"  # entropy_patience=2: one low point is not yet a collapse
    live = dx.diagnose(w.loc[:22], P)
    assert live.summary == "collapsed at step 21"
    assert live.findings[0].confirmed_step == 22


@pytest.mark.parametrize("reward,regime,advice", [(0.0, "all failed", "empty reward function list"),
                                                  (0.5, "mixed", "num_generations")])
def test_deadlock_regimes(reward, regime, advice):
    steps = range(1, 13)
    run = {m.REWARD: {s: reward for s in steps}, m.REWARD_STD: {s: 0.0 for s in steps},
           m.FRAC_REWARD_ZERO_STD: {s: 1.0 for s in steps}, m.ENTROPY: {s: 2.0 for s in steps}}
    v = dx.diagnose(wide(_tidy(run), "r"), P, "r")
    assert v.summary == "deadlocked from step 1" and v.findings[0].data["regime"] == regime
    assert advice in " ".join(dx.recommend([v])["recommendation"])


def test_a_deadlock_that_ended_is_reported_but_the_verdict_follows_the_end():
    steps = range(1, 31)  # all failed for 10 steps (a hard start), then successes appear and groups disagree
    run = {m.REWARD: {s: 0.0 if s <= 10 else 0.1 + 0.02 * s for s in steps},
           m.FRAC_REWARD_ZERO_STD: {s: 1.0 if s <= 10 else 0.3 for s in steps}, m.ENTROPY: {s: 2.0 for s in steps}}
    v = dx.diagnose(wide(_tidy(run), "r"), P, "r")
    assert v.status == "healthy" and "earlier: every group's rewards identical (all failed" in v.reason
    [d] = v.findings
    assert (d.step, d.data["until"], d.data["ongoing"]) == (1, 10, False)


def test_plateau_and_thresholds_come_from_params():
    run = {m.REWARD: {s: 0.3 for s in range(1, 41)}, m.ENTROPY: {s: 2.0 for s in range(1, 41)}}
    assert dx.diagnose(wide(_tidy(run), "r"), P).summary == "plateau from step 26"
    strict = DiagnosticsParams(entropy_floor=2.5)  # every point below the floor: collapsed from the start
    assert dx.diagnose(wide(_tidy(run), "r"), strict).summary == "collapsed at step 1"


def test_runs_of_different_lengths_and_missing_tags(original_runs, tmp_path):
    write_run(tmp_path / "short-no-entropy", {m.REWARD: {s: 0.2 for s in range(1, 6)},
                                              m.REWARD_STD: {s: 0.3 for s in range(1, 6)}})
    write_run(tmp_path / "loss-only", {m.LOSS: {1: 0.1, 2: 0.1}})
    df = load_scalars([original_runs / "grpo-lr5e-6", tmp_path / "short-no-entropy", tmp_path / "loss-only"])
    verdicts = {v.run: v for v in dx.diagnose_runs(df, P)}
    assert verdicts["grpo-lr5e-6"].summary == "collapsed at step 21"
    short = verdicts["short-no-entropy"]
    assert short.status == "healthy" and short.last_step == 5
    assert {m.ENTROPY, m.FRAC_REWARD_ZERO_STD, m.GRAD_NORM} <= set(short.missing)
    assert verdicts["loss-only"].status == "no data" and m.ENTROPY in verdicts["loss-only"].reason
    table = dx.verdict_table(list(verdicts.values()))
    assert m.ENTROPY in table.set_index("run").loc["short-no-entropy", "not logged"]
    cov = dx.coverage_table(df).set_index("run")
    assert cov.loc["short-no-entropy", "last step"] == 5 and cov.loc["grpo-lr5e-6", "last step"] == 52
    rec = dx.recommend(list(verdicts.values()))
    assert rec["finding"].str.startswith("not logged").any()
    fig = dx.plot_runs(df, list(verdicts.values()))
    assert [ax.get_title() for ax in fig.axes if ax.axison] == dx.PANEL_TAGS


def test_env_outages_are_listed_and_marked_on_every_panel(tmp_path):
    """A run whose step-3 rollout waited 31.5 s for the env server (bgwork logs env/outage_s every step)."""
    healthy = healthy_run()
    steps = sorted(healthy[m.REWARD])
    write_run(tmp_path / "outage", {**healthy, m.ENV_OUTAGE_S: {s: 31.5 if s == 3 else 0.0 for s in steps}})
    write_run(tmp_path / "calm", healthy)
    df = load_scalars(tmp_path / "*")
    table = dx.outage_table(df)
    assert table.to_dict("records") == [{"run": "outage", "step": 3, "waited (s)": 31.5}]
    verdicts = dx.diagnose_runs(df, P)
    assert {v.run: v.status for v in verdicts} == {"outage": "healthy", "calm": "healthy"}  # not a training fault
    fig = dx.plot_runs(df, verdicts)
    panels = [ax for ax in fig.axes if ax.axison]
    dotted = [[ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == ":"] for ax in panels]
    assert dotted == [[3]] * len(dx.PANEL_TAGS)
    outage_panel = panels[dx.PANEL_TAGS.index(m.ENV_OUTAGE_S)]
    assert max(max(ln.get_ydata()) for ln in outage_panel.lines if ln.get_linestyle() == "-") == 31.5


def test_guard_stops_on_live_collapse_and_records_why(tmp_path, caplog):
    """The callback itself, fed the collapsed run's logs one step at a time as Trainer.log would."""
    guard = CollapseGuard(DiagnosticsParams(), GuardParams(mode="stop"), run_dir=tmp_path)
    args, state = TrainingArguments(output_dir=str(tmp_path / "ckpt"), report_to=[]), TrainerState()
    guard.on_train_begin(args, state, TrainerControl())
    stopped_at = None
    run = _by_step(collapsed_run())
    with caplog.at_level(logging.WARNING, logger="bgwork.guard"):
        for step, logs in run.items():
            state.global_step, control = step, TrainerControl()
            guard.on_log(args, state, control, logs=logs)
            if control.should_training_stop:
                assert control.should_save
                stopped_at = step
                break
    assert stopped_at == 22  # collapse at 21 is confirmed by the second low point
    metrics = read_metrics(tmp_path)
    assert metrics["guard/stopped"] is True and metrics["guard/stopped_at_step"] == 22
    assert metrics["guard/reason"].startswith("collapsed at step 21")
    assert any("spike" in w for w in metrics["guard/warnings"])  # the step-20 spike was warned about first
    assert "stopping training at step 22" in caplog.text


def test_guard_resumed_from_a_checkpoint_sees_the_steps_before_it(tmp_path):
    run = _by_step(collapsed_run())
    first = CollapseGuard(DiagnosticsParams(deadlock_patience=40), GuardParams(mode="stop", stop_on=["spike"]),
                          run_dir=tmp_path)
    args, state = TrainingArguments(output_dir=str(tmp_path), report_to=[]), TrainerState()
    first.on_train_begin(args, state, TrainerControl())
    for step in range(1, 21):
        state.global_step = step
        state.log_history.append({**run[step], "step": step})  # what Trainer keeps and checkpoints
        first.on_log(args, state, control := TrainerControl(), logs=run[step])
    assert control.should_training_stop and first.stop_reason.startswith("spike at step 20")

    resumed = CollapseGuard(DiagnosticsParams(), GuardParams(mode="stop"), run_dir=tmp_path)
    resumed.on_train_begin(args, state, TrainerControl())
    assert read_metrics(tmp_path)["guard/before_resume"]["guard/stopped_at_step"] == 20  # the first stop is kept
    for step in (21, 22):
        state.global_step = step
        resumed.on_log(args, state, control := TrainerControl(), logs=run[step])
    # the early entropy median and the step-20 spike come from the history before the resume
    assert control.should_training_stop
    assert "preceded by a grad_norm spike of 10.7 at step 20" in read_metrics(tmp_path)["guard/reason"]


def test_guard_warn_mode_never_stops_and_off_does_nothing(tmp_path):
    for mode in ["warn", "off"]:
        d = tmp_path / mode
        guard = CollapseGuard(guard=GuardParams(mode=mode), run_dir=d)
        args, state = TrainingArguments(output_dir=str(d), report_to=[]), TrainerState()
        guard.on_train_begin(args, state, TrainerControl())
        for step, logs in _by_step(collapsed_run()).items():
            state.global_step, control = step, TrainerControl()
            guard.on_log(args, state, control, logs=logs)
            assert not control.should_training_stop
        metrics = read_metrics(d)
        if mode == "warn":
            assert metrics["guard/stopped"] is False
            assert [w.split(": ")[1] for w in metrics["guard/warnings"]] == ["spike", "collapsed", "deadlocked",]
        else:
            assert metrics == {} and guard.history == []
    with pytest.raises(ValueError, match="guard.mode"):
        CollapseGuard(guard=GuardParams(mode="halt"))


def _tidy(run: dict[str, dict[int, float]], name: str = "r") -> pd.DataFrame:
    return pd.DataFrame([{"run": name, "tag": t, "step": s, "value": v}
                         for t, pts in run.items() for s, v in pts.items()])


def _by_step(run: dict[str, dict[int, float]]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for tag, points in run.items():
        for step, value in points.items():
            out.setdefault(step, {})[tag] = value
    return dict(sorted(out.items()))


def test_first_gradient_after_zero_variance_steps_is_not_a_spike():
    p = DiagnosticsParams()
    after_deadlock = pd.DataFrame({m.GRAD_NORM: [0.0] * 8 + [0.3]}, index=range(1, 10))
    assert dx.detect_spikes(after_deadlock, p) == []
    real = pd.DataFrame({m.GRAD_NORM: [0.1, 0.0, 0.12, 0.0, 0.09, 0.11, 0.1, 0.0, 5.0]}, index=range(1, 10))
    (spike,) = dx.detect_spikes(real, p)
    assert spike.step == 9 and "previous non-zero points" in spike.detail


def test_divergence_is_a_nan_on_a_logged_step_never_a_missing_point():
    nan, inf = float("nan"), float("inf")
    w = pd.DataFrame({m.REWARD: [0.0, 0.0, 0.0, nan], m.LOSS: [0.0, 0.0, 0.0, nan],
                      m.GRAD_NORM: [0.0, 0.0, nan, nan]}, index=[1, 2, 3, 4])
    (f,) = dx.detect_divergence(w)
    assert (f.kind, f.step, f.data["tag"]) == ("diverged", 3, m.GRAD_NORM)
    # a row without reward or learning rate did not log the training metrics: its NaNs are missing points
    assert dx.detect_divergence(w.iloc[[0, 1, 3]]) == []
    blown = pd.DataFrame({m.LEARNING_RATE: [1e-5, 1e-5], m.LOSS: [0.1, inf]}, index=[1, 2])
    assert dx.detect_divergence(blown)[0].step == 2
    verdict = dx.diagnose(w.assign(**{m.ENTROPY: [1.0, 1.0, 1.0, nan]}), DiagnosticsParams())
    assert verdict.status == "diverged" and verdict.summary == "diverged at step 3"


# --- advice names params that exist ---------------------------------------------------------------------------

def _every_finding() -> list:
    """One finding of every kind and branch the advice distinguishes."""
    f = dx.Finding
    return [f("collapsed", 21, "", 22, {"early_median": 2.1, "preceding_spike": 20}),
            f("collapsed", 21, "", 22, {"early_median": 0.8}),
            *(f("deadlocked", 1, "", 8, {"regime": r}) for r in ("all solved", "all failed", "mixed")),
            f("spike", 5, "", 5, {}), f("plateau", 10, "", 25, {"reward": 0.95}),
            f("plateau", 10, "", 25, {"reward": 0.3}), f("diverged", 3, "", 3, {"tag": "grad_norm", "value": "nan"})]


def _section_fields(section: str) -> set[str]:
    import dataclasses

    from bgwork.config import Params

    value = getattr(Params(), section, None)
    assert dataclasses.is_dataclass(value), f"{section!r} is not a section of bgwork.config.Params"
    return {f.name for f in dataclasses.fields(value)}


def _setting_names() -> set[str]:
    """Every name a reader could take for a setting: TRL GRPOConfig fields and every bgwork section's fields."""
    import dataclasses

    from trl import GRPOConfig

    from bgwork.config import Params

    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    for section in dataclasses.fields(Params):
        if dataclasses.is_dataclass(getattr(Params(), section.name)):
            names |= _section_fields(section.name)
    return names


@pytest.mark.parametrize("lrs", [{}, {"r": 5e-6, "ok": 1e-6}])
def test_every_piece_of_advice_names_params_that_exist(lrs):
    """Each recommendation's `section.key=value` settings load together as `-p` overrides; a setting named without
    its section (`entropy_coef=0.001`, which `-p` rejects as an unknown key) fails."""
    import re

    from bgwork.params import load_params

    verdicts = [dx.Verdict("r", "collapsed", 21, "", 52, _every_finding()),
                dx.Verdict("ok", "healthy", None, "", 36, [])]
    rec = dx.recommend(verdicts, lrs)
    assert len(rec) >= 10
    settings = _setting_names()
    for text in rec["recommendation"]:
        for key in re.findall(r"\b([a-z]+\.[a-z_]+)\b", text):
            section, name = key.split(".")
            assert name in _section_fields(section), f"{key} in {text!r} is not a bgwork param"
        assigned = re.findall(r"\b([a-z]+\.[a-z_]+)=(\S+?)(?=[\s,;:)]|$)", text)
        load_params(overrides=[f"{k}={v}" for k, v in assigned])  # together, as a user would pass them
        bare = {w for w in re.findall(r"(?<![.\w])([a-z][a-z_]*[a-z])\b", text) if w in settings and "_" in w}
        bare |= set(re.findall(r"(?<![.\w])([a-z_]+)=", text))
        bare -= {"reward_std", "grad_norm"}  # logged metrics the advice refers to, not settings
        assert not bare, f"{sorted(bare)} named without its section in {text!r}"
