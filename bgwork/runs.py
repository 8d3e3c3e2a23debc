"""Run directories: everything needed to reproduce and read a run, in one folder.

    outputs/runs/<UTC-timestamp>__<notebook>__<params-name>/
        params.yaml       the resolved parameters (defaults + file + overrides)
        environment.json  git SHA + dirty flag, Python, key package versions, CPU/GPU
        metrics.json      what notebooks recorded with record_metrics()
        run.json          command, status and per-notebook outcome (written by the runner): running, then
                          finished / failed (with `error` and `cause`) / killed (`read_run` finds a dead runner)
        <notebook>.ipynb / <notebook>.html / run.log
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from bgwork.params import dump_yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KEY_PACKAGES = ["bgwork", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "browsergym-core",
                "browsergym-miniwob", "playwright", "papermill", "nbconvert", "numpy", "pandas"]


def runs_root() -> Path:
    """`outputs/runs` of the project; BGWORK_RUNS_DIR moves it (tests use a temporary folder)."""
    return Path(os.environ.get("BGWORK_RUNS_DIR") or PROJECT_ROOT / "outputs" / "runs")


def new_run_dir(notebooks: list[str], params_name: str, root: Path | None = None) -> Path:
    """A fresh `<UTC-timestamp>__<notebook[+notebook]>__<params-name>` folder (a suffix if that second is taken)."""
    root = Path(root or runs_root())
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{stamp}__{'+'.join(notebooks)}__{params_name}"
    for n in range(1, 100):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {root}")


def start_run(notebooks: list[str], params, root: Path | None = None) -> Path:
    """New run dir holding the resolved params and the environment description."""
    run_dir = new_run_dir(notebooks, params.name, root)
    dump_yaml(params, run_dir / "params.yaml")
    write_json(run_dir / "environment.json", environment())
    return run_dir


def use_run_dir(run_dir: str | Path | None, notebook: str, params) -> Path:
    """In a notebook: the runner's run dir, or (run interactively, run_dir=None) a fresh one of its own.
    From here on, in a notebook, library warnings and logs go to its run.log instead of the report."""
    path = Path(run_dir) if run_dir else start_run([notebook], params)
    from bgwork.progress import in_notebook_kernel

    if in_notebook_kernel():  # a notebook's kernel (Lab or papermill); a script's stderr stays as it is
        library_output_to_log(path / "run.log")
    return path


def project_path(path: str | Path) -> Path:
    """A path param as the user meant it: relative paths are relative to the project root (a notebook's kernel
    runs in notebooks/, a shell anywhere), `~` is expanded."""
    p = Path(path).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else PROJECT_ROOT / p))


# --- library output -> run.log ----------------------------------------------------------------------------------

LIBRARY_LOGGERS = ("py.warnings", "transformers", "trl", "peft", "accelerate", "datasets", "torch", "httpx",
                   "huggingface_hub", "matplotlib", "PIL")
_run_log: Path | None = None


def library_output_to_log(path: str | Path) -> None:
    """Python warnings (FutureWarning & co.) and the libraries' loggers write to `path` (the run's run.log) and
    no longer to stderr, which a report shows as pink boxes before anything that matters. Idempotent."""
    global _run_log
    _run_log = Path(path)
    handler = logging.FileHandler(_run_log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler._bgwork_run_log = True
    logging.captureWarnings(True)
    with contextlib.suppress(ImportError):  # transformers keeps its own stderr handler on its root logger
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.disable_progress_bar()  # "Loading weights" bars: widgets the HTML report cannot show
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_bgwork_run_log", False)]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.propagate = False


@contextlib.contextmanager
def native_output_to_run_log():
    """While inside: what native code (llama.cpp) writes to the process's stdout/stderr goes to the run's run.log
    (after `use_run_dir`); elsewhere nothing changes. Python's own prints are unaffected in a notebook."""
    if _run_log is None:
        yield
        return
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    target = os.open(_run_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


def record_metrics(run_dir: str | Path, metrics: dict) -> dict:
    """Merge `metrics` into run_dir/metrics.json and return the whole file's content.

    Prefix keys by stage (e.g. "smoke/passed") so chained notebooks sharing a run dir don't collide.
    """
    path = Path(run_dir) / "metrics.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update({k: _plain(v) for k, v in metrics.items()})
    write_json(path, merged)
    return merged


def record_metric(run_dir: str | Path, name: str, value) -> dict:
    return record_metrics(run_dir, {name: value})


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, data) -> None:
    """Write through a temporary file so a reader (or a crash) never sees half a file."""
    tmp = Path(path).with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk: leave no half file behind
        raise
    tmp.replace(path)


# --- the run's status (run.json) ----------------------------------------------------------------------------

RUN_FILE = "run.json"


def this_runner() -> dict:
    """Who is running a run dir: pid, host and start time (a pid alone may be reused after a reboot or kill)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}


def runner_alive(runner: dict | None) -> bool | None:
    """True / False for a runner on this host; None when it can't be told (another host, or no runner recorded)."""
    if not runner or runner.get("host") != socket.gethostname():
        return None
    try:
        import psutil

        proc = psutil.Process(int(runner["pid"]))
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= float(runner["started"]) + 1.0
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False
    except psutil.AccessDenied:
        return True


def read_run(run_dir: str | Path) -> dict | None:
    """run.json of a run dir (None if it has none). A run still "running" whose runner process is gone was
    killed (kill -9, out of memory, a reboot): it is marked `killed`, in the file too, the first time it is read."""
    path = Path(run_dir) / RUN_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if info.get("status") == "running" and runner_alive(info.get("runner")) is False:
        pid = info["runner"]["pid"]
        info.update(status="killed", killed_detected_utc=_utc_now(),
                    error=f"the runner (pid {pid}) ended without recording an outcome: killed (kill -9, out of memory "
                          f"or a reboot); `bgwork resume {run_dir}` continues from the newest complete checkpoint")
        for nb in info.get("notebooks", []):
            if nb.get("status") == "running":
                nb["status"] = "killed"
        try:
            write_json(path, info)
        except OSError:
            pass  # read-only or full: the caller still sees the truth
    return info


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment() -> dict:
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": _git(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in KEY_PACKAGES},
        "cpu": {"model": _cpu_model(), "count": os.cpu_count(), "memory_gib": _memory_gib()},
        "gpus": _gpus(),
    }


def _plain(value):
    """numpy / torch scalars -> Python numbers, so metrics.json stays plain JSON."""
    return value.item() if hasattr(value, "item") and callable(value.item) else value


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=PROJECT_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git() -> dict:
    sha = _run(["git", "rev-parse", "HEAD"])
    status = _run(["git", "status", "--porcelain"])
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        import psutil
        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _gpus() -> list[dict]:
    # nvidia-smi rather than torch.cuda: importing torch costs seconds and this runs before every notebook.
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    if not out:
        return []
    keys = ["name", "memory", "driver"]
    return [dict(zip(keys, (p.strip() for p in line.split(",")))) for line in out.splitlines()]
