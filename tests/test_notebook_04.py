"""Notebook 04 executed by the runner (papermill, `bgwork` kernel) on the original project's two runs."""

from __future__ import annotations

import yaml
from synthetic_tb import collapsed_run, healthy_run, write_run

from bgwork import metrics as m
from bgwork import notebook_run
from bgwork.runs import read_metrics


def test_notebook_flags_the_collapse_at_21_and_passes_the_healthy_run(tmp_path):
    data = tmp_path / "trained"
    write_run(data / "grpo-lr5e-6", collapsed_run())
    write_run(data / "grpo-lr1e-6", healthy_run())
    write_run(data / "short-reward-only", {m.REWARD: {1: 0.1, 2: 0.2, 3: 0.2}})  # other length, tags missing
    params = tmp_path / "diag.yaml"
    params.write_text(yaml.safe_dump({"name": "diag", "diagnostics": {"runs": [str(data / "*")]}}))

    result = notebook_run.run(["04"], params_file=str(params), root=tmp_path / "runs")

    nb = result.notebooks[0]
    assert result.ok, nb.error
    assert (result.run_dir / "04_entropy_diagnostics.html").is_file()
    verdicts = read_metrics(result.run_dir)["diagnostics/verdicts"]
    assert verdicts["grpo-lr5e-6"]["summary"] == "collapsed at step 21"
    assert "grad_norm spike of 10.7 at step 20" in verdicts["grpo-lr5e-6"]["reason"]
    assert verdicts["grpo-lr1e-6"]["summary"] == "healthy"
    assert verdicts["short-reward-only"]["status"] == "no data"
    recs = read_metrics(result.run_dir)["diagnostics/recommendations"]
    assert any("to 1e-06" in r["recommendation"] for r in recs if r["run"] == "grpo-lr5e-6")
    # write_back: each analysed run carries its own verdict
    assert read_metrics(data / "grpo-lr5e-6")["diagnostics/verdict"] == "collapsed at step 21"
    assert read_metrics(data / "grpo-lr1e-6")["diagnostics/verdict"] == "healthy"
