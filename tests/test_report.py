"""Reports answer their question first: every notebook's first output is its verdict, library chatter goes to
run.log, figures are a table. (The rendered reports are checked by the notebooks' own tests: 01 in Lab, 06, 07.)"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import jupytext
import pytest

from bgwork import runs
from bgwork.report import Verdict, figures_table
from bgwork.runs import PROJECT_ROOT

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("[0-9]*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_shows_its_verdict_first_and_fills_it_in(path):
    cells = [c for c in jupytext.read(path).cells if c.cell_type == "code"]
    assert "parameters" in cells[0].metadata.get("tags", [])
    setup = cells[1].source
    # the placeholder is displayed before the setup cell prints anything
    assert "Verdict(" in setup and setup.index("Verdict(") < setup.find("print(") % (len(setup) + 1), path.name
    assert any("verdict.set(" in c.source for c in cells[2:]), f"{path.name} never fills its verdict in"


def test_verdict_outside_a_notebook_and_figures_table(capsys):
    v = Verdict("Does it work?")
    assert v.set("3 of 3", {"checks": 3}, ok=True) == "PASS: 3 of 3"
    assert v.set("1 of 3", ok=False).startswith("FAIL: ")
    html = figures_table({f"eval/m/success_rate/task-{i}": i / 100 for i in range(80)} | {"nested": {"a": 1}}).data
    assert html.count("<tr>") == 81 and "task-79" in html and "..." not in html  # every row, none elided
    assert '{"a": 1}' in html


def test_library_warnings_and_native_output_go_to_run_log(tmp_path, capfd):
    log = tmp_path / "run.log"
    saved = (runs._run_log, logging.captureWarnings)
    try:
        runs.library_output_to_log(log)
        runs.library_output_to_log(log)  # twice: still one line per message
        warnings.warn("`gradient_checkpointing` is deprecated", FutureWarning)
        logging.getLogger("transformers.modeling_utils").warning("causal_conv1d is falling back")
        with runs.native_output_to_run_log():
            os.write(2, b"llama_model_loader: loaded meta data\n")  # as native code writes, below Python
        sys.stderr.write("python after\n")
    finally:
        logging.captureWarnings(False)
        for name in runs.LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            for h in [h for h in logger.handlers if getattr(h, "_bgwork_run_log", False)]:
                logger.removeHandler(h)
                h.close()
            logger.propagate = True
        runs._run_log = saved[0]
    text = log.read_text()
    assert text.count("py.warnings WARNING") == 1 and "causal_conv1d is falling back" in text
    assert "llama_model_loader: loaded meta data" in text
    err = capfd.readouterr().err
    assert "gradient_checkpointing" not in err and "llama_model_loader" not in err and "python after" in err


@pytest.mark.parametrize("mean, low, high, expect", [(0.20, 0.10, 0.30, True), (0.0, -0.02, 0.02, None),
                                                     (-0.20, -0.30, -0.10, False)])
def test_notebook_03_verdict_passes_only_a_clear_gain(mean, low, high, expect):
    """Notebook 03 asks whether training made the agent better: PASS for a gain whose interval is above 0, FAIL for
    a clear loss, no PASS/FAIL within noise (e.g. GRPO adding nothing after a warm start)."""
    import types

    import pandas as pd

    from bgwork import evaluation as ev

    stage = pd.DataFrame({"success_rate": [0.6], "successes": [108], "episodes": [180], "ci_low": [0.53],
                          "ci_high": [0.67]}, index=["all"])
    diffs = pd.DataFrame([{"mean": mean, "ci_low": low, "ci_high": high, "excludes_zero": low > 0 or high < 0,
                           "baseline": "warm-started"}],
                         index=pd.MultiIndex.from_tuples([("all", "trained")], names=["task", "stage"]))
    result = types.SimpleNamespace(global_step=40, stopped_by_guard=None, output_dir=None)
    train = types.SimpleNamespace(max_steps=40)
    line, figures, ok = ev.stages_verdict({"warm-started": stage, "trained": stage}, diffs, result, train)
    assert ok is expect and ("no clear gain" in line) == (expect is None), line
    ended_early = ev.stages_verdict({"trained": stage}, diffs, types.SimpleNamespace(
        global_step=3, stopped_by_guard=None, output_dir=None), train)
    assert ended_early[2] is False and "ENDED EARLY at step 3 of 40" in ended_early[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_that_play_episodes_take_the_global_seed(path):
    """`bgwork run` injects only the values a notebook declares: a notebook that plays or trains (it takes `rollout`)
    must declare `seed` and hand it to load_params, or `-p seed=1` is silently dropped (two ablation seeds of
    GRPO-only once came out bit-identical)."""
    import papermill

    from bgwork.notebook_run import read_notebook

    declared = papermill.inspect_notebook(read_notebook(path))
    if "rollout" not in declared:
        pytest.skip(f"{path.name} plays no episodes")
    assert "seed" in declared, f"{path.name}'s parameters cell lacks `seed = None`"
    assert "load_params(name=name, seed=seed" in path.read_text(), f"{path.name} does not pass seed to load_params"
