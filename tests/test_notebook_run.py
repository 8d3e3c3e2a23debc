"""`bgwork run`: run dirs, reports, failures, and the embedded env server's lifecycle.

Uses tiny throwaway notebooks (jupytext percent scripts) in tmp_path, executed by papermill on the real
`bgwork` kernel; BGWORK_RUNS_DIR points the run dirs into tmp_path.
"""

import json
import os
import subprocess
import sys

import psutil
import pytest

from bgwork import notebook_run, progress, runs

GOOD = '''\
# %% [markdown]
# # Good notebook

# %% tags=["parameters"]
name = "debug"
smoke = {}
run_dir = None

# %%
from bgwork.params import load_params
from bgwork.runs import record_metrics, use_run_dir
params = load_params(name=name, smoke=smoke)
run_dir = use_run_dir(run_dir, "good", params)
SECRET_SOURCE_LINE = 42
print("tasks:", params.smoke.tasks)

# %%
import matplotlib.pyplot as plt
plt.bar(["a", "b"], [1, 2]); plt.show()
record_metrics(run_dir, {"good/tasks": len(params.smoke.tasks)})
'''

SECOND = '''\
# %% tags=["parameters"]
run_dir = None

# %%
from bgwork.runs import read_metrics, record_metric
record_metric(run_dir, "second/saw", read_metrics(run_dir)["good/tasks"])  # shares the first notebook's run dir
'''

FAILING = '''\
# %% tags=["parameters"]
env = {}
run_dir = None

# %%
import pathlib
from bgwork.embedded import EmbeddedServer
from bgwork.params import load_params
server = EmbeddedServer(load_params(env=env).env)  # no `with`: only the exit-time finalizer can stop it
pathlib.Path(run_dir, "server.pid").write_text(str(server.pid))
print("before the failure")

# %%
raise ValueError("boom in cell 3")

# %%
print("never reached")
'''


def notebook(tmp_path, name, text):
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return str(path)


def bgwork_cli(tmp_path, *args):
    env = {**os.environ, "BGWORK_RUNS_DIR": str(tmp_path / "runs")}
    return subprocess.run([sys.executable, "-m", "bgwork", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)


def test_chained_run_dir_holds_everything(tmp_path):
    nbs = [notebook(tmp_path, "good", GOOD), notebook(tmp_path, "second", SECOND)]
    result = notebook_run.run(nbs, overrides=["smoke.tasks=[a, b, c]", "name=tiny"], root=tmp_path / "runs")
    assert result.ok, result.notebooks
    d = result.run_dir
    assert d.parent == tmp_path / "runs" and d.name.endswith("__good+second__tiny")
    assert {"params.yaml", "environment.json", "metrics.json", "run.json", "run.log", "good.ipynb", "good.html",
            "second.ipynb", "second.html"} <= {p.name for p in d.iterdir()}
    assert "- c" in (d / "params.yaml").read_text()
    env = json.loads((d / "environment.json").read_text())
    assert len(env["git"]["sha"]) == 40 and isinstance(env["git"]["dirty"], bool)
    assert env["packages"]["papermill"] and env["python"] and env["cpu"]["count"]
    assert json.loads((d / "metrics.json").read_text()) == {"good/tasks": 3, "second/saw": 3}
    status = json.loads((d / "run.json").read_text())
    assert status["status"] == "finished" and status["command"].endswith("-p 'smoke.tasks=[a, b, c]' -p name=tiny")
    assert "tasks: ['a', 'b', 'c']" in (d / "run.log").read_text()
    html = (d / "good.html").read_text()
    assert "tasks: [&#39;a&#39;, &#39;b&#39;, &#39;c&#39;]" in html or "tasks: ['a', 'b', 'c']" in html
    assert "SECRET_SOURCE_LINE" not in html  # no code in the report
    assert "data:image/png;base64," in html  # the plot is embedded


@pytest.mark.browser
def test_failing_cell_still_reports_and_stops_the_embedded_server(tmp_path):
    nbs = [notebook(tmp_path, "failing", FAILING), notebook(tmp_path, "second", SECOND)]
    out = bgwork_cli(tmp_path, "run", *nbs)
    assert out.returncode == 1, out.stderr[-3000:]
    (d,) = (tmp_path / "runs").iterdir()
    report = d / "failing.html"
    assert f"report: {report}" in out.stdout
    assert "FAILED failing: ValueError: boom in cell 3" in out.stderr
    assert "skipped  second" in out.stdout
    html = report.read_text()
    assert html.index("This run FAILED") < html.index("before the failure")  # the error leads the page
    assert "boom in cell 3" in html and "never reached" not in html
    assert (d / "failing.ipynb").exists() and not (d / "second.ipynb").exists()
    status = json.loads((d / "run.json").read_text())
    assert status["status"] == "failed" and [n["status"] for n in status["notebooks"]] == ["failed", "pending"]
    pid = int((d / "server.pid").read_text())
    assert not _alive(pid), "the embedded envserver outlived the failed notebook's kernel"


def test_killed_kernel_is_reported_with_a_cause_to_check(tmp_path):
    killed = '# %%\nimport os, signal\nprint("before the kill")\nos.kill(os.getpid(), signal.SIGKILL)\n'
    out = bgwork_cli(tmp_path, "run", notebook(tmp_path, "killed", killed))
    assert out.returncode == 1, out.stderr[-3000:]
    assert "FAILED killed: DeadKernelError" in out.stderr and "killed for memory" in out.stderr
    (d,) = (tmp_path / "runs").iterdir()
    assert json.loads((d / "run.json").read_text())["status"] == "failed"
    assert "killed for memory" in (d / "killed.html").read_text()


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("args, expected", [
    (["-f", "bad.yaml"], "bad.yaml: unknown key 'smoke.taks' (did you mean 'smoke.tasks'?)"),
    (["-p", "env.max_sessions=0"], "env.max_sessions = 0 is not allowed: expected an integer in [1, 1024]"),
    (["-f", "missing.yaml"], "missing.yaml: params file not found"),
])
def test_bad_params_fail_before_any_run_dir(tmp_path, args, expected):
    (tmp_path / "bad.yaml").write_text("smoke:\n  taks: [click-test]\n")
    out = bgwork_cli(tmp_path, "run", notebook(tmp_path, "good", GOOD), *args)
    assert out.returncode == 2
    assert expected in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unknown_notebook_names_the_available_ones(tmp_path):
    out = bgwork_cli(tmp_path, "run", "99")
    assert out.returncode == 2 and "notebook '99' not found" in out.stderr and "01_env_smoke_test" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_notebooks_selectable_by_number_or_name():
    assert notebook_run.find_notebook("01").name == "01_env_smoke_test.py"
    assert notebook_run.find_notebook("01_env_smoke_test") == notebook_run.find_notebook("01_env_smoke_test.py")


def test_params_command_prints_resolved_yaml(tmp_path):
    out = bgwork_cli(tmp_path, "params", "-p", "smoke.tasks=[x]")
    assert out.returncode == 0 and "tasks:\n  - x" in out.stdout


def test_record_metrics_merges_and_keeps_plain_json(tmp_path):
    np = pytest.importorskip("numpy")
    runs.record_metrics(tmp_path, {"a/x": np.float32(0.5), "a/n": np.int64(3)})
    assert runs.record_metric(tmp_path, "b/ok", True) == {"a/x": 0.5, "a/n": 3, "b/ok": True}
    assert json.loads((tmp_path / "metrics.json").read_text())["a/n"] == 3


def test_progress_is_a_throttled_text_bar_headless(monkeypatch):
    monkeypatch.setenv(progress.HEADLESS_ENV, "1")
    bar = progress.progress(range(3))
    assert type(bar).__module__ == "tqdm.std" and bar.mininterval == progress.HEADLESS_MININTERVAL
    assert list(bar) == [0, 1, 2]


def test_interactive_notebook_gets_its_own_run_dir(tmp_path, monkeypatch):
    from bgwork.params import load_params
    monkeypatch.setenv("BGWORK_RUNS_DIR", str(tmp_path / "runs"))
    d = runs.use_run_dir(None, "01_env_smoke_test", load_params(name="lab"))
    assert d.parent == tmp_path / "runs" and d.name.endswith("__01_env_smoke_test__lab")
    assert (d / "params.yaml").exists() and (d / "environment.json").exists()
    assert runs.use_run_dir(str(d), "01_env_smoke_test", load_params()) == d  # the runner's dir is kept
