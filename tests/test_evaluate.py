"""Notebook 07 and the evaluation it runs: models under test of all four kinds on the same held-out episodes.

The end-to-end test runs `bgwork run 07` against real browser sessions (embedded env server, Chromium) with the
tiny models: the tiny random LFM2 (a model spec), a tiny LFM2 checkpoint trained to write click('13'), a LoRA
adapter on it, and that checkpoint exported to GGUF F16 and played by llama.cpp (97 s with 2 episodes per task at
load average 15 on the 2-core box; 1 episode per task now).
The rest is fast: parsing the model list, and the tables, transcripts and viewer built from real episode records.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ckpt_fixtures import cached_export_fixtures

from bgwork import evaluation as ev
from bgwork.params import load_params
from bgwork.rollout import Episode, episode_records, success_table
from bgwork.runs import PROJECT_ROOT

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5Er"
                       "kJggg==")  # 1x1


# --- the whole notebook, four kinds of model, real browsers and llama.cpp ---------------------------------------

@pytest.mark.browser
@pytest.mark.llama_cpp
def test_notebook_07_compares_all_four_kinds_on_the_same_episodes(tmp_path):
    from bgwork import gguf_export as gx

    fixtures = cached_export_fixtures()
    (row,) = gx.export_checkpoint(fixtures["full"], tmp_path / "gguf", quants=["F16"], verify=False)
    models = ["tiny-random-lfm2", f"ckpt={fixtures['full']}", f"lora={fixtures['lora']}", f"f16={row['path']}"]
    env = {**os.environ, "BGWORK_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "bgwork", "run", "07", "-f", str(PROJECT_ROOT / "params/tiny.yaml"),
           "-p", f"evaluate.models=[{', '.join(models)}]", "-p", "evaluate.tasks=[click-test, focus-text]",
           "-p", "evaluate.episodes_per_task=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=PROJECT_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    m = json.loads((run / "metrics.json").read_text())
    labels = ["tiny-random-lfm2", "ckpt", "lora", "f16"]
    for label in labels:
        for key in ("success_rate", "ci_low", "ci_high", "mean_steps", "format_error_rate"):
            assert f"eval/{label}/{key}" in m and f"eval/{label}/{key}/click-test" in m, (label, key)
    assert m["eval/tiny-random-lfm2/format_error_rate"] == 1.0  # random weights write no valid action
    assert m["eval/ckpt/success_rate/click-test"] > 0  # the checkpoint was trained to write click('13')
    assert m["eval/diff/ckpt-vs-tiny-random-lfm2/mean"] == pytest.approx(
        m["eval/ckpt/success_rate"] - m["eval/tiny-random-lfm2/success_rate"])
    assert "eval/diff/f16-vs-tiny-random-lfm2/ci_high/focus-text" in m

    saved = {label: [json.loads(x) for x in (run / "eval" / f"{label}.jsonl").read_text().splitlines()]
             for label in labels}
    episodes = {label: [(r["task"], r["seed"]) for r in recs] for label, recs in saved.items()}
    assert len(set(map(tuple, episodes.values()))) == 1 and len(episodes["ckpt"]) == 2  # same seeds for every model
    # llama.cpp, fed the same token ids and parsed by the same parser, acts exactly as the HF checkpoint (greedy F16)
    assert [r["actions"] for r in saved["f16"]] == [r["actions"] for r in saved["ckpt"]]
    kept = [r for r in saved["ckpt"] if "transcript" in r]
    assert {r["task"] for r in kept} == {"click-test", "focus-text"}
    first = kept[0]["transcript"]
    assert first[0]["page"] and base64.b64decode(first[0]["screenshot"]).startswith(b"\x89PNG")
    assert first[0]["output"] is not None and "reward" in first[0]

    html = (run / "07_evaluate.html").read_text()
    verdict, run_dir_line = html.index("How well does each model act"), html.index("run dir:")
    assert verdict < run_dir_line and "best: " in html[verdict:run_dir_line]  # the answer comes first
    assert "<details>" in html and "data:image/png;base64," in html
    log = (run / "run.log").read_text()
    assert "llama" in log and "load_model" in log  # llama.cpp's own log went to run.log ...
    assert "load_model" not in html  # ... not into the report


# --- the model list ---------------------------------------------------------------------------------------------

def test_models_under_test_kinds_labels_and_paths(tmp_path):
    ckpt = tmp_path / "run" / "tiny-browsergym-20261127T222309Z" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    lora = tmp_path / "adapter"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}")
    gguf = tmp_path / "m-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    params = load_params(evaluate={"models": ["tiny-random-lfm2", str(ckpt), f"mine={lora}", str(gguf),
                                              "tiny-random-lfm2"]})
    got = [(m.label, m.kind) for m in ev.models_under_test(params)]
    assert got == [("tiny-random-lfm2", "model"), ("tiny-browsergym/checkpoint-2", "checkpoint"), ("mine", "lora"),
                   ("m-Q4_K_M", "gguf"), ("tiny-random-lfm2#2", "model")]
    assert ev.models_under_test(load_params(model={"name": "tiny-random-lfm2"}))[0].label == "tiny-random-lfm2"


def test_relative_model_paths_resolve_from_the_project_root(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    relative = os.path.relpath(ckpt, PROJECT_ROOT)  # ../../tmp/...: one level off if read from notebooks/
    monkeypatch.chdir(PROJECT_ROOT / "notebooks")  # where a notebook's kernel runs
    m = ev.model_under_test(relative)
    assert (m.kind, Path(m.path).resolve()) == ("checkpoint", ckpt.resolve())
    from bgwork.models import model_path

    assert Path(model_path(relative)).resolve() == ckpt.resolve()  # model.name too


def test_bad_model_entries_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"evaluate.models: 'outputs/nope.gguf': no such GGUF file"):
        ev.model_under_test("outputs/nope.gguf")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        ev.model_under_test(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        ev.model_under_test("./outputs/missing/checkpoint-3")


# --- tables, transcripts and the viewer from episode records ---------------------------------------------------

def _episode(task, seed, success, steps=2, format_errors=0):
    e = Episode(task, seed, reward=1.0 if success else 0.0, done=success, steps=steps, format_errors=format_errors,
                actions=["click('13')"] * steps, goal=f"Click on {task}")
    e.transcript = [{"page": "[13] button 'Click Me!'", "screenshot": base64.b64encode(PNG).decode(),
                     "output": "click('13')", "action": "click('13')", "error": None, "reward": e.reward,
                     "done": success}, {"page": "done", "screenshot": None}]
    return e


def _records(pattern):
    return [_episode(t, s, ok) for (t, s), ok in zip([("click-test", 1), ("click-test", 2), ("focus-text", 3),
                                                       ("focus-text", 4)], pattern)]


def test_tables_differences_metrics_and_transcripts():
    base, better = _records([False, False, True, False]), _records([True, True, True, False])
    tables = {"base": success_table(base), "better": success_table(better)}
    records = {"base": episode_records(base, ev.viewing_picks(base)),
               "better": episode_records(better, ev.viewing_picks(better))}
    table = ev.results_table(tables)
    assert list(table.index.get_level_values(0)) == ["click-test"] * 2 + ["focus-text"] * 2 + ["all"] * 2
    assert table.loc[("all", "better"), "success_rate"] == 0.75 and table.loc[("all", "base"), "successes"] == 1
    diffs = ev.paired_table(records)
    assert diffs.loc[("click-test", "better"), "mean"] == 1.0 and diffs.loc[("all", "better"), "pairs"] == 4
    figures = ev.evaluation_metrics(tables, diffs)
    assert figures["eval/better/success_rate/click-test"] == 1.0
    assert figures["eval/diff/better-vs-base/mean"] == 0.5
    line, shown = ev.evaluation_verdict(tables, diffs)
    assert line.startswith("best: better with success 0.75") and "better − base" in shown
    # kept per task: the first, a success, a failure (here: click-test 1 and 2 for base are both failures)
    assert ev.viewing_picks(base) == [0, 2, 3] and ev.viewing_picks(better) == [0, 2, 3]
    html = ev.transcripts_html(records).data
    assert html.count("<details><summary>click-test") + html.count("<details><summary>focus-text") == 6
    assert "data:image/png;base64," in html
    assert ev.plot_success(tables) is not None


def test_viewer_steps_through_episodes():
    from bgwork.viewer import EpisodeViewer

    recs = _records([True, False, True, False])
    viewer = EpisodeViewer({"m": episode_records(recs, ev.viewing_picks(recs))})
    assert len(viewer.pick.options) == 4 and viewer.page.max == 2
    assert viewer.image.value == PNG and "click(&#x27;13&#x27;)" in viewer.text.value
    assert "page 1 of 2" in viewer.text.value
    viewer.forward.click()
    assert viewer.page.value == 2 and viewer.image.value == b"" and "ended on" in viewer.text.value
    viewer.forward.click()
    assert viewer.page.value == 2  # stays on the last page
    viewer.pick.value = 1
    assert viewer.page.value == 1 and "failure" in viewer.text.value
    viewer.back.click()
    assert viewer.page.value == 1
    with pytest.raises(ValueError, match="no episode with a transcript"):
        EpisodeViewer({"m": episode_records(recs)})


def test_viewer_opens_a_run_dirs_saved_episodes(tmp_path):
    from bgwork import viewer

    recs = _records([True, False, False, True])
    ev.save_episodes(tmp_path, "checkpoint-2", recs)
    loaded = ev.load_run_episodes(tmp_path)
    assert list(loaded) == ["checkpoint-2"] and sum("transcript" in r for r in loaded["checkpoint-2"]) == 4
    widget = viewer.show(tmp_path)
    assert type(widget).__name__ == "VBox"
    with pytest.raises(FileNotFoundError, match="no saved evaluations"):
        ev.load_run_episodes(tmp_path / "empty")
