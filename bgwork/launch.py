"""Data-parallel training: a notebook starts `accelerate launch` with train.num_processes processes and reads
the run back from its files, exactly as after an in-process run.

    result = launch.train(params, run_dir, url)                                # notebook 02
    result, stages = launch.train_between_evaluations(params, run_dir, url)    # notebook 03

With train.num_processes = 1 these are `bgwork.trainer.train` and `bgwork.evaluation.train_between_evaluations`,
in this process. With N > 1 this process (which holds the env servers and the run dir's training lock) runs

    python -m accelerate.commands.launch --num_processes N ... -m bgwork.launch {train,full}
        --params <run_dir>/launch/params.yaml --run-dir <run_dir> --env-url URL [URL ...]

prints rank 0's output under one progress bar, waits, and reads back the TrainResult (<run_dir>/launch/result.json)
and the evaluation tables (<run_dir>/eval/<stage>.jsonl); curves, checkpoints and the report come from the
output dir as always. Ranks > 0 write to <run_dir>/launch/rank-<r>.log. Every rank plays its own share of each
generation batch on its own sessions (TRL gives each rank its slice of the prompts and gathers the rewards for
the group advantages); the episode metrics are computed over all ranks (bgwork.rewards). Rank 0 saves
checkpoints; every rank resumes from them.

Launched runs keep NCCL's NVLink multicast off (NCCL_NVLS_ENABLE=0). `train.accelerate_config` hands accelerate
its own config file (multi-node: see docs/data-parallel.md).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from bgwork import ranks
from bgwork.config import ConfigError, Params

STEP_MARK = "bgwork-step"  # rank 0 prints "bgwork-step <step> <max_steps> <unix time>" after every optimizer step
_STEP_LINE = re.compile(rf"^{STEP_MARK} (\d+) (\d+) ([\d.]+)\s*$")
STAGES_RUN = ("train", "full")  # trainer.train (notebook 02) | evaluation.train_between_evaluations (notebook 03)


class LaunchFailed(RuntimeError):
    """`accelerate launch` ended without a result; the message holds the end of the failing rank's log."""


@dataclass
class Launched:
    """What the launching process saw: the command, where the logs are, and when rank 0 finished each step."""
    command: list[str]
    log_dir: Path
    step_times: list[tuple[int, float]] = field(default_factory=list)  # (global step, unix time)


# --- what notebooks call --------------------------------------------------------------------------------------

def train(params: Params, run_dir: str | Path, env_url: str | list[str]):
    """bgwork.trainer.train, in this process or (train.num_processes > 1) in N launched processes."""
    from bgwork.trainer import train as train_here

    if params.train.num_processes == 1:
        return train_here(params, run_dir, env_url)
    launch(params, run_dir, env_url, "train")
    return read_result(run_dir)


def train_between_evaluations(params: Params, run_dir: str | Path, env_url: str | list[str]):
    """bgwork.evaluation.train_between_evaluations, in this process or in N launched processes."""
    from bgwork.evaluation import train_between_evaluations as here

    if params.train.num_processes == 1:
        return here(params, run_dir, env_url)
    launch(params, run_dir, env_url, "full")
    return read_result(run_dir), read_stages(run_dir)


# --- the launching side ---------------------------------------------------------------------------------------

def launch(params: Params, run_dir: str | Path, env_url: str | list[str], stage: str) -> Launched:
    """Run `stage` in train.num_processes processes under `accelerate launch`, holding the run dir's training lock;
    rank 0's output is printed here under a progress bar. Raises LaunchFailed when any rank fails."""
    from bgwork.params import dump_yaml
    from bgwork.training_lock import training_lock

    run_dir = Path(run_dir)
    log_dir = run_dir / "launch"
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "result.json").unlink(missing_ok=True)
    dump_yaml(params, log_dir / "params.yaml")
    urls = [env_url] if isinstance(env_url, str) else list(env_url)
    cmd = accelerate_command(params, stage, log_dir / "params.yaml", run_dir, urls)
    launched = Launched(cmd, log_dir)
    print(f"accelerate launch: {params.train.num_processes} processes, env {urls}; logs in {log_dir}", flush=True)
    with training_lock(run_dir), open(log_dir / "rank-0.log", "a") as log:  # a resumed run's launch appends
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, bufsize=1, env=launch_env(), start_new_session=True,
                                preexec_fn=_end_with_this_process)
        try:
            _follow(proc, log, launched, params.train)
        finally:
            _stop_group(proc)
    if proc.returncode != 0 or not (log_dir / "result.json").is_file():
        raise LaunchFailed(f"accelerate launch of {params.train.num_processes} processes exited with code "
                           f"{proc.returncode}; {failure_report(log_dir)}")
    return launched


def accelerate_command(params: Params, stage: str, params_file: Path, run_dir: Path, urls: list[str]) -> list[str]:
    t = params.train
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(t.num_processes)]
    if t.accelerate_config:
        cmd += ["--config_file", str(_project_path(t.accelerate_config, "train.accelerate_config"))]
    else:
        # one machine; "--multi_gpu" is accelerate's torchrun launcher, on CPU too (the ranks then pick gloo);
        # its "--cpu" would start a single process
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port()), *(["--multi_gpu"] if t.num_processes > 1 else [])]
    return [*cmd, "-m", "bgwork.launch", stage, "--params", str(params_file), "--run-dir", str(run_dir),
            "--env-url", *urls]


def launch_env() -> dict:
    """This process's environment for the ranks: this bgwork first on the path, NVLink multicast off, unbuffered."""
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, ranks.LAUNCHED_ENV: "1", "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1",
            "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONPATH": package_root + (os.pathsep + path if path else "")}


def _follow(proc: subprocess.Popen, log, launched: Launched, train) -> None:
    """Copy rank 0's output into its log and print it; its step lines drive one progress bar (headless, where a
    text bar would be redrawn around every printed line, one short line per step instead)."""
    from bgwork.progress import headless, progress

    desc = f"GRPO steps ({train.num_processes} processes)"
    bar = None if headless() else progress(total=train.max_steps, desc=desc, unit="step")
    started = time.time()
    try:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            m = _STEP_LINE.match(line)
            if not m:
                if bar:
                    bar.write(line.rstrip("\n"))
                else:
                    print(line, end="", flush=True)
                continue
            step, total, when = int(m[1]), int(m[2]), float(m[3])
            launched.step_times.append((step, when))
            if bar:
                bar.total, bar.n = total, step
                bar.refresh()
            elif step:
                print(f"{desc}: {step}/{total}, {time.time() - started:.0f} s", flush=True)
        proc.wait()
    finally:
        if bar:
            bar.close()


def _end_with_this_process() -> None:
    """In the launcher's child, before exec: Linux SIGTERMs it when the notebook's kernel dies (torchrun then ends
    the ranks), so a killed kernel leaves no training behind. Its own session keeps Ctrl-C away from it."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """Nothing of a launch outlives it: SIGTERM its process group (accelerate, torchrun, every rank), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def failure_report(log_dir: Path, lines: int = 25) -> str:
    """The end of each rank log that holds a traceback (else of rank 0's), to say why a launch failed."""
    parts = []
    for path in sorted(log_dir.glob("rank-*.log"), key=lambda p: int(p.stem.split("-")[1])):
        text = path.read_text(errors="replace")
        if "Traceback" in text or path.name == "rank-0.log":
            tail = "\n".join(deque(text.splitlines(), maxlen=lines))
            parts.append(f"--- {path} ends with:\n{tail}")
    return "\n".join(parts) or f"no rank log in {log_dir}"


# --- reading a launched run back ------------------------------------------------------------------------------

def write_result(run_dir: Path, result, stages: dict | None) -> Path:
    from bgwork.runs import write_json

    path = Path(run_dir) / "launch" / "result.json"
    write_json(path, {"output_dir": str(result.output_dir), "final_dir": str(result.final_dir),
                      "global_step": result.global_step, "log_history": result.log_history,
                      "stopped_by_guard": result.stopped_by_guard, "stages": sorted(stages or {})})
    return path


def read_result(run_dir: str | Path):
    """The TrainResult rank 0 wrote, as `bgwork.trainer.train` returns it."""
    from bgwork.trainer import TrainResult

    d = json.loads((Path(run_dir) / "launch" / "result.json").read_text())
    return TrainResult(Path(d["output_dir"]), Path(d["final_dir"]), d["global_step"], d["log_history"],
                       d["stopped_by_guard"])


def read_stages(run_dir: str | Path) -> dict:
    """{stage: per-task table} of the stages this launch evaluated, rebuilt from <run_dir>/eval/<stage>.jsonl."""
    from bgwork.evaluation import load_episodes
    from bgwork.rollout import Episode, success_table

    names = json.loads((Path(run_dir) / "launch" / "result.json").read_text())["stages"]
    stages = {}
    for stage in names:
        episodes = [Episode(r["task"], r["seed"], reward=r["reward"], steps=r["steps"],
                            format_errors=r["format_errors"], actions=r["actions"], lost=r["lost"],
                            done=bool(r["success"])) for r in load_episodes(run_dir, stage)]
        stages[stage] = success_table(episodes)
    return stages


# --- the launched side: every rank runs this --------------------------------------------------------------------

class StepLines(TrainerCallback):
    """Rank 0 of a launched run prints a step line after every optimizer step (the notebook's progress bar)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self._line(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._line(state)

    @staticmethod
    def _line(state) -> None:
        if state.is_world_process_zero:
            print(f"{STEP_MARK} {state.global_step} {state.max_steps} {time.time():.3f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bgwork.launch", description="One rank of a data-parallel bgwork run "
                                "(started by `accelerate launch`; see bgwork.launch)")
    p.add_argument("stage", choices=STAGES_RUN, help="train: notebook 02's training; full: notebook 03's evaluations "
                   "and training")
    p.add_argument("--params", required=True, help="params YAML of the run")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--env-url", nargs="+", required=True, help="env server(s) this node's ranks use")
    args = p.parse_args(argv)

    import torch
    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    from bgwork.params import load_params

    state = PartialState(cpu=not torch.cuda.is_available())  # joins the process group: NCCL on GPUs, gloo on CPU
    run_dir = Path(args.run_dir)
    if state.process_index:
        _write_output_to(run_dir / "launch" / f"rank-{state.process_index}.log")
    hf_logging.disable_progress_bar()
    params = load_params(args.params)
    if params.train.num_processes != state.num_processes:
        raise ConfigError(f"train.num_processes = {params.train.num_processes}, but accelerate started "
                          f"{state.num_processes} processes (its --num_processes or config file's num_processes)")
    env_url = args.env_url if len(args.env_url) > 1 else args.env_url[0]
    if args.stage == "train":
        from bgwork.trainer import train as train_here

        result, stages = train_here(params, run_dir, env_url), None
    else:
        from bgwork.evaluation import train_between_evaluations as here

        result, stages = here(params, run_dir, env_url)
    if state.is_main_process:
        write_result(run_dir, result, stages)
    state.wait_for_everyone()
    state.destroy_process_group()
    return 0


def _write_output_to(path: Path) -> None:
    """Ranks > 0: stdout and stderr into their own log, so the notebook shows rank 0 alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _project_path(value: str, key: str) -> Path:
    from bgwork.runs import PROJECT_ROOT

    path = Path(value).expanduser()
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if not path.is_file():
        raise ConfigError(f"{key} = {value}: no such file ({path}); write one with `accelerate config --config_file "
                          f"PATH`")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
