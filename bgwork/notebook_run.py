"""`bgwork run`: execute notebooks headless with papermill into one run dir and render HTML reports.

Order matters: notebooks and params are resolved and validated BEFORE the run dir exists, so a typo costs
nothing and leaves nothing behind. A failing cell still leaves the executed notebook and its report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import jupytext
import nbformat
import papermill
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient.exceptions import DeadKernelError
from nbconvert import HTMLExporter
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

from bgwork.params import load_params, to_dict
from bgwork.progress import HEADLESS_ENV
from bgwork.runs import PROJECT_ROOT, start_run, write_json

KERNEL = "bgwork"  # registered in the venv by scripts/setup.sh; a notebook's own kernelspec is never trusted
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
log = logging.getLogger("bgwork.run")


class RunError(ValueError):
    """Bad command-line input: unknown notebook and the like."""


@dataclass
class NotebookResult:
    name: str
    source: str
    status: str = "pending"  # pending / ok / failed
    error: str | None = None
    seconds: float | None = None
    report: str | None = None


@dataclass
class RunResult:
    run_dir: Path
    notebooks: list[NotebookResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(nb.status == "ok" for nb in self.notebooks)


def find_notebook(spec: str, notebook_dir: Path = NOTEBOOK_DIR) -> Path:
    """`01`, `01_env_smoke_test`, `01_env_smoke_test.py` or a path (.py or .ipynb) -> the notebook's file.

    Only the `.py` sources in notebooks/ count (notebooks/README.md): a local .ipynb copy is not ambiguous.
    """
    path = Path(spec)
    if path.suffix in (".py", ".ipynb") and path.is_file():
        return path
    stem = path.stem if path.suffix in (".py", ".ipynb") else spec
    known = sorted(notebook_dir.glob("[0-9]*.py"))
    hits = [p for p in known if p.stem == stem or p.stem.split("_", 1)[0] == stem]
    if len(hits) == 1:
        return hits[0]
    names = ", ".join(p.stem for p in known) or "none"
    what = "is ambiguous" if hits else "not found"
    raise RunError(f"notebook '{spec}' {what} in {notebook_dir} (available: {names})")


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Notebooks are stored as jupytext percent scripts (see notebooks/README.md); .ipynb works too."""
    nb = jupytext.read(path) if path.suffix == ".py" else nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python (bgwork)", "language": "python"}
    return nb


def run(specs: list[str], params_file: str | None = None, overrides=(), root: Path | None = None) -> RunResult:
    """Run notebooks in order in one new run dir; stop at the first failure."""
    paths = [find_notebook(s) for s in specs]
    params = load_params(params_file, overrides)  # raises ParamsError before anything is written
    result = RunResult(start_run([p.stem for p in paths], params, root))
    result.notebooks = [NotebookResult(p.stem, str(p)) for p in paths]
    command = ["bgwork", "run", *specs, *(["-f", str(params_file)] if params_file else []),
               *[arg for item in overrides for arg in ("-p", item)]]
    status = {"command": shlex.join(command), "started_utc": _now(), "status": "running"}
    _write_status(result, status)

    with _run_log(result.run_dir / "run.log"), _env(**{HEADLESS_ENV: "1", "PYTHONPATH": _pythonpath()}):
        log.info("run dir: %s", result.run_dir)
        _warn_if_foreign_kernel()
        for path, nb in zip(paths, result.notebooks):
            _execute(path, nb, result.run_dir, to_dict(params))
            _write_status(result, status)
            if nb.status != "ok":
                break
    status.update(status="ok" if result.ok else "failed", finished_utc=_now())
    _write_status(result, status)
    return result


def _write_status(result: RunResult, status: dict) -> None:
    """run.json: a run dir left "running" by a crash reads as unfinished, never as a success."""
    write_json(result.run_dir / "run.json", {**status, "notebooks": [vars(nb) for nb in result.notebooks]})


def _execute(path: Path, nb: NotebookResult, run_dir: Path, params: dict) -> None:
    out = run_dir / f"{nb.name}.ipynb"
    log.info("executing %s -> %s", path, out)
    start = time.monotonic()
    try:
        source = read_notebook(path)
        declared = papermill.inspect_notebook(source)
        values = {**params, "run_dir": str(run_dir)}
        parameters = {k: v for k, v in values.items() if k in declared}  # only what the notebook declares
        papermill.execute_notebook(source, str(out), parameters=parameters, kernel_name=KERNEL, cwd=str(path.parent),
                                   log_output=True, progress_bar=False, start_timeout=180)
        nb.status = "ok"
    except papermill.PapermillExecutionError as e:
        nb.status, nb.error = "failed", f"{e.ename}: {e.evalue}"
    except NoSuchKernel:
        nb.status, nb.error = "failed", (f"NoSuchKernel: no Jupyter kernel named '{KERNEL}'; run "
                                         f"`bash scripts/setup.sh` (or: {sys.executable} -m ipykernel install "
                                         f"--sys-prefix --name {KERNEL})")
    except DeadKernelError:  # no Python error to show: say what usually kills a training kernel
        nb.status, nb.error = "failed", ("DeadKernelError: the notebook's kernel died without a Python error, most "
                                         "often killed for memory (Linux: `dmesg | grep -i 'killed process'`); "
                                         "a training run needs less with a smaller train.per_device_train_batch_size "
                                         "(same episodes per step: raise train.gradient_accumulation_steps)")
    except KeyboardInterrupt:  # Ctrl-C: papermill has shut the kernel down; record it and stop the chain
        nb.status, nb.error = "failed", "KeyboardInterrupt: interrupted by the user"
    except Exception as e:  # kernel died or never started: still report what there is
        nb.status, nb.error = "failed", f"{type(e).__name__}: {e}"
    nb.seconds = round(time.monotonic() - start, 1)
    if nb.error:
        log.error("%s failed after %.1f s: %s", nb.name, nb.seconds, nb.error)
    if out.exists():
        nb.report = str(render_html(out, title=f"{nb.name} · {run_dir.name}", error=nb.error))
        log.info("report: %s", nb.report)


def _warn_if_foreign_kernel() -> None:
    """A user-level 'bgwork' kernelspec (e.g. from another clone) shadows the venv's: say so, it runs other code."""
    with contextlib.suppress(NoSuchKernel):
        python = KernelSpecManager().get_kernel_spec(KERNEL).argv[0]
        # Compare the venvs' bin dirs as written: resolving symlinks would equate every venv of one Python.
        if Path(python).absolute().parent != Path(sys.executable).absolute().parent:
            log.warning("kernel '%s' runs %s, not this environment's %s", KERNEL, python, sys.executable)


def render_html(ipynb: Path, title: str, error: str | None = None) -> Path:
    """HTML without code cells, images embedded; on failure the error message leads the page."""
    nb = nbformat.read(ipynb, as_version=4)
    if error:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"**This run FAILED** — `{error.splitlines()[0][:500]}`"))
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
                            embed_images=True)
    exporter.register_preprocessor(CoalesceStreamsPreprocessor(), enabled=True)  # a text bar shows its last state
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    html = ipynb.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


@contextlib.contextmanager
def _run_log(path: Path):
    """Runner messages and the notebooks' printed output go to the console and to run.log."""
    handlers = [logging.FileHandler(path, encoding="utf-8"), logging.StreamHandler(sys.stderr)]
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
    loggers = [logging.getLogger(n) for n in ("bgwork.run", "papermill")]
    saved = [(lg, lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.propagate = False  # avoid printing twice through a root handler
        for h in handlers:
            lg.addHandler(h)
    try:
        yield
    finally:
        for lg, level, propagate in saved:
            for h in handlers:
                lg.removeHandler(h)
            lg.setLevel(level)
            lg.propagate = propagate
        for h in handlers:
            h.close()


@contextlib.contextmanager
def _env(**values):
    """Set environment variables for the kernels this process starts, restoring them afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pythonpath() -> str:
    """The kernels import this checkout's bgwork first: the installed (editable) one may be another clone."""
    rest = os.environ.get("PYTHONPATH")
    return os.pathsep.join([str(PROJECT_ROOT), *([rest] if rest else [])])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
