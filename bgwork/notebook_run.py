"""`bgwork run`: execute notebooks headless with papermill into one run dir and render HTML reports;
`bgwork resume RUN_DIR`: continue a run that failed or was killed, in that same dir.

Order matters: notebooks and params are resolved and validated BEFORE the run dir exists, so a typo costs
nothing and leaves nothing behind. A failing cell still leaves the executed notebook and its report; a notebook
that cannot be rendered (cut off by a full disk) still gets a page saying so. Every run ends with a status in
run.json: finished, failed (`error`, and `cause` such as ENOSPC), or killed (`bgwork.runs.read_run` notices).
"""

from __future__ import annotations

import contextlib
import html
import json
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
from bgwork.runs import PROJECT_ROOT, RUN_FILE, read_run, start_run, this_runner, write_json

KERNEL = "bgwork"  # registered in the venv by scripts/setup.sh; a notebook's own kernelspec is never trusted
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
log = logging.getLogger("bgwork.run")


class RunError(ValueError):
    """Bad command-line input: unknown notebook and the like."""


@dataclass
class NotebookResult:
    name: str
    source: str
    status: str = "pending"  # pending / running / ok / failed (killed: found so by bgwork.runs.read_run)
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
    status = {"command": shlex.join(command), "started_utc": _now(), "status": "running", "runner": this_runner()}
    return _run_notebooks(result, paths, to_dict(params), status)


def resume(run_dir: str | Path) -> RunResult:
    """Continue a failed or killed run in its own dir: the same params (its params.yaml), from its first notebook
    that did not finish, training from the newest complete checkpoint; run.log is appended to."""
    from bgwork.trainer import newest_run_checkpoint
    from bgwork.training_lock import LOCK_NAME, read_lock

    run_dir = Path(run_dir).absolute()
    status = read_run(run_dir) if run_dir.is_dir() else None
    if status is None:
        raise RunError(f"{run_dir}: not a run dir of `bgwork run` (no {RUN_FILE})")
    if status["status"] == "finished":
        raise RunError(f"{run_dir}: finished already ({status.get('finished_utc')}); nothing to resume")
    if status["status"] == "running":
        who = status.get("runner") or {}
        raise RunError(f"{run_dir}: still running (runner pid {who.get('pid', '?')} on {who.get('host', '?')}); "
                       f"if that process is gone, it ran on another host or an older bgwork: check, then set "
                       f"\"status\" in {RUN_FILE} to \"killed\"")
    lock = read_lock(run_dir / LOCK_NAME)
    if lock and lock["alive"]:
        raise RunError(f"{run_dir}: training (pid {lock['pid']} on {lock['host']}) holds {LOCK_NAME}")
    checkpoint = newest_run_checkpoint(run_dir)
    overrides = ["train.resume_from_checkpoint=latest"] if checkpoint else []
    params = load_params(run_dir / "params.yaml", overrides)
    notebooks = [NotebookResult(**{k: v for k, v in nb.items() if k in NotebookResult.__dataclass_fields__})
                 for nb in status["notebooks"]]
    first = next((i for i, nb in enumerate(notebooks) if nb.status != "ok"), None)
    if first is None:
        raise RunError(f"{run_dir}: every notebook of this run finished; nothing to resume")
    paths = [Path(nb.source) if Path(nb.source).is_file() else find_notebook(nb.name) for nb in notebooks[first:]]
    for nb in notebooks[first:]:
        nb.status, nb.error, nb.seconds, nb.report = "pending", None, None, None
    result = RunResult(run_dir, notebooks)
    attempt = {k: status.get(k) for k in ("command", "started_utc", "finished_utc", "killed_detected_utc", "status",
                                          "error", "cause") if status.get(k) is not None}
    status = {"command": status["command"], "started_utc": status["started_utc"], "status": "running",
              "runner": this_runner(), "attempts": [*status.get("attempts", []), attempt],
              "resumed_utc": _now(), "resume_command": shlex.join(["bgwork", "resume", str(run_dir)]),
              "resumed_from": str(checkpoint) if checkpoint else None}
    banner = (f"resuming (attempt {len(status['attempts']) + 1}) from {notebooks[first].name}; the last attempt "
              f"ended {attempt['status']}: {attempt.get('error') or '-'}; "
              + (f"training continues from {checkpoint}" if checkpoint else "no complete checkpoint: training "
                 "starts over"))
    return _run_notebooks(result, paths, to_dict(params), status, first, banner)


def _run_notebooks(result: RunResult, paths: list[Path], params: dict, status: dict, first: int = 0,
                   banner: str | None = None) -> RunResult:
    """Execute `paths` as result.notebooks[first:], stopping at the first failure; run.json says how it ended."""
    _write_status(result, status)
    try:
        with _run_log(result.run_dir / "run.log"), _env(**{HEADLESS_ENV: "1", "PYTHONPATH": _pythonpath()}):
            log.info("run dir: %s", result.run_dir)
            if banner:
                log.warning(banner)
            _warn_if_foreign_kernel()
            for path, nb in zip(paths, result.notebooks[first:]):
                nb.status = "running"
                _write_status(result, status)
                _execute(path, nb, result.run_dir, params)
                _write_status(result, status)
                if nb.status != "ok":
                    break
    except BaseException as e:  # the runner itself broke (or Ctrl-C between notebooks): still say how it ended
        status.update(status="failed", finished_utc=_now(), error=f"runner: {type(e).__name__}: {e}",
                      cause=failure_cause(str(e)))
        _write_status(result, status)
        raise
    failed = next((nb for nb in result.notebooks if nb.status == "failed"), None)
    status.update(status="finished" if result.ok else "failed", finished_utc=_now())
    if failed:
        status.update(error=f"{failed.name}: {failed.error}", cause=failure_cause(failed.error))
    _write_status(result, status)
    return result


def failure_cause(error: str | None) -> str | None:
    """A short name for causes a person acts on differently: ENOSPC (disk full), OOM (kernel killed), INFRA, NaN."""
    error = error or ""
    if "Errno 28" in error or "No space left on device" in error or "Disk quota exceeded" in error:
        return "ENOSPC"
    if "DeadKernelError" in error:
        return "kernel died (out of memory?)"
    if "EnvOutage" in error or "InfrastructureError" in error:
        return "env server unavailable"
    if "TrainingDiverged" in error:
        return "training diverged (NaN)"
    return None


def _write_status(result: RunResult, status: dict) -> None:
    """run.json: a run dir left "running" by a crash reads as killed once its runner is gone, never as a success.
    On a full disk the file is overwritten in place (its blocks are already there) rather than lost."""
    path = result.run_dir / RUN_FILE
    data = {**status, "notebooks": [vars(nb) for nb in result.notebooks]}
    try:
        write_json(path, data)
    except OSError as e:
        try:
            with open(path, "r+b") as fh:
                fh.write(json.dumps(data, indent=1, default=str).encode() + b"\n")
                fh.truncate()
        except OSError:
            log.error("cannot write %s (%s); the run's status is: %s", path, e, status["status"])


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
        nb.report = _report(out, nb, run_dir)
        if nb.report:
            log.info("report: %s", nb.report)


def _report(ipynb: Path, nb: NotebookResult, run_dir: Path) -> str | None:
    """The HTML report; when the executed notebook can't be rendered (cut off by a full disk, ...), a page with
    the error and the end of run.log, and the notebook counts as failed. None if not even that can be written."""
    title = f"{nb.name} · {run_dir.name}"
    try:
        return str(render_html(ipynb, title=title, error=nb.error))
    except Exception as e:  # noqa: BLE001 - whatever broke the rendering, the run must still end with a status
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        log.error("%s: the executed notebook %s could not be rendered (%s); writing what can be shown", nb.name,
                  ipynb, why)
        if nb.status == "ok":
            nb.status, nb.error = "failed", f"report: {why}"
    page = ipynb.with_suffix(".html")
    try:
        return str(fallback_html(page, title, nb.error, why, run_dir / "run.log"))
    except OSError as e:
        log.error("%s: no report written either (%s)", nb.name, e)
        page.unlink(missing_ok=True)  # no empty page that looks like a report
        return None


def fallback_html(path: Path, title: str, error: str | None, why: str, run_log: Path, lines: int = 80) -> Path:
    """A plain page for a notebook that can't be rendered: the FAILED line, why, and the end of run.log."""
    try:
        tail = "\n".join(run_log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        tail = "(run.log unreadable)"
    body = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p><b>This run FAILED</b> — <code>{html.escape(error or '-')}</code></p>"
            f"<p>The executed notebook could not be rendered ({html.escape(why)}). The last {lines} lines of "
            f"run.log (the notebook's output is logged there):</p><pre>{html.escape(tail)}</pre></body></html>")
    path.write_text(body, encoding="utf-8")
    return path


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


class _RunLogFile(logging.FileHandler):
    """run.log, appended to (a resumed run continues it); a write that fails (full disk) is said once, not per line."""

    failed = False

    def handleError(self, record):
        if not self.failed:
            self.failed = True
            print(f"bgwork: cannot write {self.baseFilename} ({sys.exc_info()[1]}); messages go to the console only",
                  file=sys.stderr)


@contextlib.contextmanager
def _run_log(path: Path):
    """Runner messages and the notebooks' printed output go to the console and to run.log."""
    handlers = [_RunLogFile(path, encoding="utf-8"), logging.StreamHandler(sys.stderr)]
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
