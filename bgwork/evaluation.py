"""Held-out evaluation: success rate per task on rollout.eval_seeds (never used in training).

The seeds depend only on the task and the seed range, so the untrained and the trained model, different
runs, and different files of one model are measured on exactly the same episodes. Notebook 03 plays them at
each stage of a run, notebook 07 for any models under test (a model spec, a checkpoint, a LoRA adapter, a GGUF
file played through llama.cpp), notebook 06 for each exported file; all through `evaluate`:

    result, stages = train_between_evaluations(params, run_dir, env_url)   # 03: {"untrained": table, ...}
    results_table(stages); plot_success(stages); stages_verdict(stages, paired_table(load_run_episodes(run_dir)), ...)
    ev = evaluate_models(params, run_dir, env_url)                          # 07: every model of evaluate.models
    results_table(ev.tables); plot_success(ev.tables); paired_table(ev.records); transcripts_html(ev.records)

Every evaluation saves its episodes to <run dir>/eval/<stage or model>.jsonl; per task the first episode, a
success and a failure keep their transcript (goal, pages, outputs, actions, errors, rewards, screenshots with a
live server), which the report shows and `bgwork.viewer` steps through.
"""

from __future__ import annotations

import contextlib
import html
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from bgwork import ranks
from bgwork.config import Params
from bgwork.curriculum import recorded_seeds, task_weights
from bgwork.envclient import EnvClient
from bgwork.metrics import (
    DIFF_FIGURES,
    EVAL_FIGURES,
    FORMAT_ERROR_RATE,
    MEAN_STEPS,
    SUCCESS_RATE,
    eval_diff_key,
    eval_key,
    eval_success_key,
)
from bgwork.rollout import Episode, EpisodePlayer, episode_records, success_table


def eval_specs(params: Params, episodes_per_task: int, available: dict | None = None,
               tasks: list[str] | None = None) -> list[tuple[str, int]]:
    """The same held-out seeds for every model: per task, a sample fixed by the task's name.

    `available`: a replay server's recorded seeds (EnvClient.seeds()); the sample is then drawn from those.
    `tasks`: default rollout.tasks."""
    lo, hi = params.rollout.eval_seeds
    tasks = list(tasks or task_weights(params.rollout))
    pools = ({t: range(lo, hi) for t in tasks} if available is None
             else recorded_seeds(available, tasks, lo, hi, "eval"))
    short = {t: len(p) for t, p in pools.items() if len(p) < episodes_per_task}
    if short:
        raise ValueError(f"evaluation.episodes_per_task = {episodes_per_task} exceeds the held-out seeds of "
                         f"rollout.eval_seeds = {[lo, hi]} ({short})")
    return [(task, seed) for task in tasks
            for seed in random.Random(f"eval:{task}").sample(pools[task], episodes_per_task)]


def evaluate(model, tokenizer, client: EnvClient, params: Params, episodes_per_task: int | None = None,
             tasks: list[str] | None = None):
    """(episodes, per-task table) of the model on held-out seeds, played in batches like training, each with its
    transcript (screenshots per `evaluation.screenshots`). `model`: a torch model or a `gguf_agent.GGUFPolicy`.

    Under data parallelism each rank plays its share of the episodes and every rank gets all of them back."""
    from bgwork.replicas import session_budget

    n = episodes_per_task if episodes_per_task is not None else params.evaluation.episodes_per_task
    player = EpisodePlayer(client, tokenizer, params.rollout, temperature=params.train.temperature,
                           max_completion_length=params.train.max_completion_length,
                           max_parallel=session_budget(client, params.env), greedy=params.evaluation.greedy,
                           record=True, screenshots=params.evaluation.screenshots)
    try:
        mine: list[Episode] = player.play(model, ranks.share(eval_specs(params, n, client.seeds(), tasks)))
    finally:
        player.close()
    episodes = ranks.unshare(ranks.all_gather(mine))
    return episodes, success_table(episodes)


# --- stages of a run (notebook 03) ---------------------------------------------------------------------------

def train_between_evaluations(params: Params, run_dir: str | Path, env_url: str | list[str]):
    """Held-out success of the untrained model, after the warm start (`evaluation.after_warmstart`), and after
    GRPO, with training in between: (TrainResult, {stage: per-task table}); no stages when
    `evaluation.episodes_per_task` is 0.

    Training starts from the evaluated weights (LoRA adapters are injected into them, in place), so every
    stage measures the same model on the same episodes; what GRPO itself added is "trained" - "warm-started".
    """
    from bgwork.models import resolve_model
    from bgwork.replicas import connect
    from bgwork.trainer import device_and_dtype, train

    device, dtype = device_and_dtype(params.model.dtype)
    stages: dict = {}
    with connect(env_url, params.env) as client:
        def play(stage, resolved):
            if params.evaluation.episodes_per_task:
                episodes, stages[stage] = evaluate(resolved.model, resolved.tokenizer, client, params)
                if ranks.is_main():
                    save_episodes(run_dir, stage, episodes)

        base = resolve_model(params.model.name, dtype=dtype, device=device)
        if params.evaluation.before_training:
            play("untrained", base)
        warm = (lambda resolved: play("warm-started", resolved)) if params.evaluation.after_warmstart else None
        result = train(params, run_dir, env_url, resolved=base, after_warm_start=warm)
        play("trained", base)
    return result, stages


def save_episodes(run_dir: str | Path, stage: str, episodes: list[Episode]) -> Path:
    """<run dir>/eval/<stage>.jsonl, one episode a line: what paired comparisons between models read back. Per task
    the first episode, a success and a failure keep their transcript (`viewing_picks`)."""
    path = Path(run_dir) / "eval" / f"{slug(stage)}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in episode_records(episodes, viewing_picks(episodes))))
    return path


def load_episodes(run_dir: str | Path, stage: str) -> list[dict]:
    path = Path(run_dir) / "eval" / f"{slug(stage)}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved evaluation of stage {stage!r} in this run dir")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_run_episodes(run_dir: str | Path) -> dict[str, list[dict]]:
    """Every saved evaluation of a run dir, {stage or model: episode records}, in the order they were written."""
    folder = Path(run_dir) / "eval"
    files = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder}: no saved evaluations (eval/*.jsonl) in this run dir")
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines() if line.strip()] for p in files}


def slug(name: str) -> str:
    """A stage or model label as a file name: `runs/checkpoint-2` -> `runs_checkpoint-2`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def viewing_picks(episodes: list[Episode]) -> list[int]:
    """Indices of the episodes worth looking at, per task: the first one, the first success, the first failure."""
    picks: dict[str, dict[str, int]] = {}
    for i, e in enumerate(episodes):
        if e.lost:
            continue
        seen = picks.setdefault(e.task, {})
        seen.setdefault("first", i)
        seen.setdefault("success" if e.success else "failure", i)
    return sorted({i for seen in picks.values() for i in seen.values()})


def stages_verdict(stages: dict, diffs, result, train) -> tuple[str, dict, bool | None]:
    """(line, figures, ok) answering notebook 03's question: did training make the agent better on held-out
    episodes? ok: True for a clear gain (the last stage minus its baseline, interval above 0), False for a clear loss
    or a run that ended early, None (no PASS) within noise. Without an evaluation, the training verdict of 02."""
    from bgwork.curves import curves as read_curves
    from bgwork.curves import training_verdict

    if not stages:
        return training_verdict(result, read_curves(result.output_dir), train)
    done = result.global_step >= train.max_steps or result.stopped_by_guard
    rates = {stage: float(t.loc["all", SUCCESS_RATE]) for stage, t in stages.items()}
    line = "held-out success " + " → ".join(f"{s} {r:.2f}" for s, r in rates.items())
    figures = {f"{s}: success": f"{int(t.loc['all', 'successes'])}/{int(t.loc['all', 'episodes'])} = "
                                f"{t.loc['all', SUCCESS_RATE]:.2f} [{t.loc['all', 'ci_low']:.2f}, "
                                f"{t.loc['all', 'ci_high']:.2f}]" for s, t in stages.items()}
    if diffs is not None:
        for (task, label), d in diffs.iterrows():
            if task == "all":
                figures[f"{label} − {d['baseline']}"] = (f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
                                                         f"{', clear' if d['excludes_zero'] else ', within noise'}")
    last = None
    if diffs is not None and "all" in diffs.index.get_level_values(0):
        last = diffs.xs("all", level="task").iloc[-1]
        line += (f"; {diffs.xs('all', level='task').index[-1]} − {last['baseline']}: {last['mean']:+.2f} "
                 f"({'clear' if last['excludes_zero'] else 'within noise'})")
    if not done:
        return line + f"; training ENDED EARLY at step {result.global_step} of {train.max_steps}", figures, False
    if last is None or not last["excludes_zero"]:  # nothing to compare, or no gain beyond noise: no PASS
        return ("no clear gain: " if last is not None else "") + line, figures, None
    return line, figures, bool(last["mean"] > 0)  # a clear loss answers the question with FAIL


def stage_metrics(stages: dict, tasks: list[str]) -> dict:
    """metrics.json figures: each stage's held-out success rate, overall and per task."""
    out = {}
    for stage, table in stages.items():
        out[eval_success_key(stage)] = float(table.loc["all", SUCCESS_RATE])
        out.update({eval_success_key(stage, t): float(table.loc[t, SUCCESS_RATE]) for t in tasks})
    return out


# --- models under test (notebook 07) -------------------------------------------------------------------------

KINDS = ("model", "checkpoint", "lora", "gguf")  # a model spec, a full checkpoint dir, a LoRA adapter dir, a GGUF file
_LABEL = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.+-]*)=(.+)$")
_STAMP = re.compile(r"-\d{8}T\d{6}Z$")


@dataclass(frozen=True)
class ModelUnderTest:
    label: str  # how tables, plots and metrics.json name it
    kind: str  # one of KINDS
    path: str  # a model spec (kind "model") or an absolute path


def model_under_test(spec: str, key: str = "evaluate.models") -> ModelUnderTest:
    """`[label=]what`: what is a .gguf file, a LoRA adapter dir (adapter_config.json), a checkpoint dir
    (config.json) or a model spec (bgwork.models); paths are relative to the project root."""
    from bgwork.models import short_name
    from bgwork.runs import project_path

    m = _LABEL.match(spec.strip())
    label, what = (m.group(1), m.group(2).strip()) if m else (None, spec.strip())
    path = project_path(what)
    if what.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"{key}: {spec!r}: no such GGUF file ({path})")
        return ModelUnderTest(label or path.stem, "gguf", str(path))
    if path.is_dir():
        kind = ("lora" if (path / "adapter_config.json").is_file() else
                "checkpoint" if (path / "config.json").is_file() else None)
        if kind is None:
            raise FileNotFoundError(f"{key}: {spec!r}: {path} is neither a checkpoint (config.json) nor a LoRA "
                                    f"adapter (adapter_config.json)")
        parent = _STAMP.sub("", path.parent.name)  # <model>-browsergym-<UTC time>: the time says little here
        auto = f"{parent}/{path.name}" if path.name == "final" or path.name.startswith("checkpoint-") else path.name
        return ModelUnderTest(label or auto, kind, str(path))
    if what.startswith((".", "/", "~")) or what.count("/") > 1:  # a path, not a hub id (org/name)
        raise FileNotFoundError(f"{key}: {spec!r}: no such file or directory ({path})")
    return ModelUnderTest(label or short_name(what), "model", what)  # a spec: bundled:..., tiny-random-lfm2, org/name


def models_under_test(params: Params) -> list[ModelUnderTest]:
    """evaluate.models ([] = model.name), each checked now, with unique labels (a repeated one gets #2, #3)."""
    found = [model_under_test(s) for s in (params.evaluate.models or [params.model.name])]
    out, seen = [], {}
    for m in found:
        seen[m.label] = seen.get(m.label, 0) + 1
        out.append(m if seen[m.label] == 1 else ModelUnderTest(f"{m.label}#{seen[m.label]}", m.kind, m.path))
    return out


@contextlib.contextmanager
def loaded(m: ModelUnderTest, params: Params, tokenizer=None):
    """(model or GGUF policy, tokenizer) of a model under test, released on exit (one model in memory at a time).
    A LoRA adapter is merged into its base model (base_model_name_or_path) for generation."""
    import gc

    from bgwork.models import load_tokenizer, model_path, resolve_model
    from bgwork.trainer import device_and_dtype

    if m.kind == "gguf":
        from bgwork.gguf_agent import GGUFPolicy

        with GGUFPolicy(m.path, tokenizer, threads=params.evaluation.llama_threads) as policy:
            yield policy, policy.tokenizer
        return
    device, dtype = device_and_dtype(params.model.dtype)
    if m.kind == "lora":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base_spec = json.loads((Path(m.path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base_spec:
            raise ValueError(f"{m.path}/adapter_config.json names no base_model_name_or_path: cannot load the adapter")
        base = model_path(base_spec)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, m.path).merge_and_unload().to(device)
        has_tok = any((Path(m.path) / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))
        tokenizer = tokenizer or load_tokenizer(m.path if has_tok else base)
    else:
        resolved = resolve_model(m.path, dtype=dtype, device=device)
        model, tokenizer = resolved.model, tokenizer or resolved.tokenizer
    try:
        yield model, tokenizer
    finally:
        del model
        gc.collect()


@dataclass
class Evaluation:
    """What notebook 07 shows: per model (by label) its per-task table and its episode records (same seeds)."""

    models: list[ModelUnderTest]
    tables: dict = field(default_factory=dict)  # label -> rollout.success_table
    records: dict = field(default_factory=dict)  # label -> episode records, transcripts on the picked ones
    tasks: list[str] = field(default_factory=list)


def evaluate_models(params: Params, run_dir: str | Path, env_url: str, models: list[ModelUnderTest] | None = None,
                    tasks: list[str] | None = None, episodes_per_task: int | None = None,
                    tokenizer=None) -> Evaluation:
    """Each model in turn on the same held-out (task, seed) episodes; every model's episodes are saved to
    <run dir>/eval/<label>.jsonl. Defaults: evaluate.models / evaluate.tasks (or rollout.tasks) /
    evaluate.episodes_per_task. `tokenizer`: used for every model (notebook 06: the HF checkpoint's)."""
    models = models if models is not None else models_under_test(params)
    tasks = list(tasks or params.evaluate.tasks or params.rollout.tasks)
    n = episodes_per_task or params.evaluate.episodes_per_task
    out = Evaluation(models, tasks=tasks)
    with EnvClient(env_url, token=params.env.token, timeout=params.env.request_timeout) as client:
        unknown = sorted(set(tasks) - set(client.tasks()))
        if unknown:
            raise ValueError(f"tasks {unknown} are not served by the env server at {env_url}")
        for m in models:
            with loaded(m, params, tokenizer) as (model, tok):
                episodes, out.tables[m.label] = evaluate(model, tok, client, params, n, tasks)
            save_episodes(run_dir, m.label, episodes)
            out.records[m.label] = load_episodes(run_dir, m.label)
    return out


# --- what the reports show (notebooks 03, 06, 07) ---------------------------------------------------------------

def results_table(tables: dict):
    """One row per (task, model), tasks first and "all" last: successes/episodes, success rate with its 95 %
    Wilson interval, mean steps, format-error rate; rounded for reading. None when nothing was evaluated."""
    import pandas as pd

    if not tables:
        return None
    long = pd.concat({label: t for label, t in tables.items()}, names=["model", "task"]).swaplevel()
    tasks = [t for t in dict.fromkeys(long.index.get_level_values("task")) if t != "all"] + ["all"]
    long = long.reindex(pd.MultiIndex.from_product([tasks, list(tables)], names=["task", "model"])).dropna(how="all")
    long["episodes"] = long["episodes"].astype(int)
    long["successes"] = long["successes"].astype(int)
    return long[["successes", "episodes", SUCCESS_RATE, "ci_low", "ci_high", MEAN_STEPS, FORMAT_ERROR_RATE]].round(3)


def plot_success(tables: dict, title: str = "held-out success rate (95 % interval)"):
    """One group of bars per task (and "all"), one bar per model, with the Wilson intervals as error bars."""
    import matplotlib.pyplot as plt
    import numpy as np

    table = results_table(tables)
    if table is None:
        return None
    tasks, labels = list(dict.fromkeys(table.index.get_level_values(0))), list(tables)
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(tasks) * max(1, len(labels)) ** 0.5 + 2), 3.4))
    x = np.arange(len(tasks))
    for i, label in enumerate(labels):
        rows = [table.loc[(t, label)] if (t, label) in table.index else None for t in tasks]
        rate = [r[SUCCESS_RATE] if r is not None else np.nan for r in rows]
        err = [[r[SUCCESS_RATE] - r["ci_low"] if r is not None else 0 for r in rows],
               [r["ci_high"] - r[SUCCESS_RATE] if r is not None else 0 for r in rows]]
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, rate, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, tasks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def paired_table(records: dict, baseline: str | None = None):
    """Each model minus the baseline (default: the first) on the episodes both played (same task and seed; an
    episode lost to the infrastructure drops its pair): mean difference of success with a 95 % bootstrap interval,
    per task and over all. None with fewer than two models."""
    import pandas as pd

    from bgwork.stats import paired_difference

    labels = list(records)
    if len(labels) < 2:
        return None
    baseline = baseline or labels[0]
    base = {(r["task"], r["seed"]): r["success"] for r in records[baseline] if r["success"] is not None}
    rows = []
    for label in [x for x in labels if x != baseline]:
        pairs = [(r["task"], float(r["success"]), float(base[(r["task"], r["seed"])])) for r in records[label]
                 if r["success"] is not None and (r["task"], r["seed"]) in base]
        for task in [*dict.fromkeys(t for t, _, _ in pairs), "all"]:
            sel = [(a, b) for t, a, b in pairs if task in ("all", t)]
            if sel:
                d = paired_difference([a for a, _ in sel], [b for _, b in sel])
                rows.append({"model": label, "baseline": baseline, "task": task, **d})
    return pd.DataFrame(rows).set_index(["task", "model"]).round(3) if rows else None


def evaluation_metrics(tables: dict, diffs=None) -> dict:
    """metrics.json figures: eval/<model>/<figure>[/<task>] and eval/diff/<model>-vs-<baseline>/<figure>[/<task>]."""
    out = {}
    for label, table in tables.items():
        for task in table.index:
            for figure in EVAL_FIGURES:
                out[eval_key(label, figure, None if task == "all" else task)] = float(table.loc[task, figure])
    if diffs is not None:
        for (task, label), row in diffs.iterrows():
            for figure in DIFF_FIGURES:
                out[eval_diff_key(label, row["baseline"], figure, None if task == "all" else task)] = float(row[figure])
    return out


def evaluation_verdict(tables: dict, diffs=None) -> tuple[str, dict]:
    """(one line, the figures that matter) answering notebook 07's question: how well does each model act, and is
    it really better or worse than the first?"""
    figures, rates = {}, {}
    for label, t in tables.items():
        a = t.loc["all"]
        rates[label] = a[SUCCESS_RATE]
        figures[f"{label}: success"] = f"{int(a['successes'])}/{int(a['episodes'])} = {a[SUCCESS_RATE]:.2f} " \
                                       f"[{a['ci_low']:.2f}, {a['ci_high']:.2f}], format errors " \
                                       f"{a[FORMAT_ERROR_RATE]:.0%} of actions"
    best = max(rates, key=rates.get)
    line = f"best: {best} with success {rates[best]:.2f}" if len(rates) > 1 else f"{best}: success {rates[best]:.2f}"
    clear = []
    if diffs is not None:
        for (task, label), d in diffs.iterrows():
            if task == "all":
                figures[f"{label} − {d['baseline']}"] = (f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
                                                         f"{', clear' if d['excludes_zero'] else ', within noise'}")
                clear += [label] if d["excludes_zero"] else []
        first = next(iter(tables))
        line += (f"; clearly different from {first}: {', '.join(clear)}" if clear else
                 f"; no model differs clearly from {first} on these episodes")
    return line, figures


def transcripts_html(records: dict, max_per_model: int | None = None):
    """The kept episodes of each model as collapsible transcripts (HTML <details>): goal, then per page the
    screenshot (when taken), the accessibility tree (shortened), the model's output, the action sent, the error
    and the reward. Works in the HTML report and in JupyterLab alike."""
    from IPython.display import HTML

    blocks = []
    for label, recs in records.items():
        kept = [r for r in recs if r.get("transcript")][:max_per_model]
        if not kept:
            continue
        blocks.append(f"<h4>{html.escape(label)}: {len(kept)} episodes</h4>")
        blocks.extend(_episode_html(r) for r in kept)
    if not blocks:
        return HTML("<p>No transcripts kept (no evaluation ran).</p>")
    return HTML("\n".join(blocks))


def _episode_html(r: dict) -> str:
    outcome = ("<b style='color:#2e7d32'>success</b>" if r["success"] else "<b style='color:#c62828'>failure</b>")
    summary = (f"{html.escape(r['task'])} · seed {r['seed']} · {outcome} · reward {r['reward']:g} · "
               f"{r['steps']} step{'s' if r['steps'] != 1 else ''}")
    turns = []
    for i, t in enumerate(r["transcript"]):
        shot = (f'<img src="data:image/png;base64,{t["screenshot"]}" style="max-width:320px;border:1px solid #ccc">'
                if t.get("screenshot") else "")
        page = ("<i>the same page (nothing was sent)</i>" if t.get("unchanged") else
                f"<details><summary>page (accessibility tree)</summary><pre style='font-size:11px'>"
                f"{html.escape(t.get('page') or '')}</pre></details>")
        if "output" in t and t.get("output") is not None:
            act = (f"<b>model wrote</b> <code>{html.escape(t['output'].strip()[:300])}</code><br>"
                   f"<b>action</b> <code>{html.escape(t['action'] or '(none: not a valid call)')}</code><br>"
                   + (f"<b>error</b> <span style='color:#b00'>{html.escape(str(t['error'])[:300])}</span><br>"
                      if t.get("error") else "")
                   + f"<b>reward</b> {t['reward']:g}{' · <b>done</b>' if t.get('done') else ''}")
            head = f"step {i + 1}"
        else:
            act, head = "", "final page"
        turns.append(f"<tr><td style='vertical-align:top;text-align:left'><b>{head}</b><br>{shot}</td>"
                     f"<td style='vertical-align:top;text-align:left'>{page}{act}</td></tr>")
    return (f"<details><summary>{summary}</summary><p><b>goal</b>: {html.escape(r.get('goal') or '')}</p>"
            f"<table>{''.join(turns)}</table></details>")
