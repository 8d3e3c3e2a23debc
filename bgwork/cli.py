"""Command line: `bgwork run NOTEBOOK... [-f params/X.yaml] [-p key=value]...` (also `python -m bgwork run ...`);
`bgwork resume RUN_DIR` continues a failed or killed run; `bgwork status` says how runs ended;
`bgwork lab` starts JupyterLab on the notebooks."""

from __future__ import annotations

import argparse
import sys

import yaml

from bgwork.params import ParamsError, load_params, to_dict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bgwork", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="execute notebooks headless into one run dir and render HTML reports")
    run_p.add_argument("notebooks", nargs="+", help="number prefix (01), name (01_env_smoke_test) or path")
    resume_p = sub.add_parser("resume", help="continue a failed or killed run in its own run dir: its params.yaml, "
                                             "from the notebook that did not finish, training from the newest "
                                             "complete checkpoint")
    resume_p.add_argument("run_dir", help="the run dir, e.g. outputs/runs/<time>__02_debug_run__debug")
    status_p = sub.add_parser("status", help="how runs ended (finished / failed / killed / running), newest last")
    status_p.add_argument("run_dirs", nargs="*", help="run dirs (default: every run under outputs/runs)")
    show_p = sub.add_parser("params", help="validate and print the resolved parameters")
    rec_p = sub.add_parser("record", help="record the params' tasks from real browsers for env.replay "
                                          "(python -m envserver.record)")
    rec_p.add_argument("--out", required=True, help="the recording to write, e.g. data/replay/mine.jsonl.gz")
    rec_p.add_argument("--tasks", help="comma-separated tasks (default: the params' rollout.tasks)")
    rec_p.add_argument("--train-seeds", type=int, default=200, help="the first N seeds of rollout.train_seeds")
    rec_p.add_argument("--eval-seeds", type=int, default=50, help="the first N seeds of rollout.eval_seeds")
    rec_p.add_argument("--depth", type=int, default=2, help="actions after each reset that are explored")
    rec_p.add_argument("--actions", help="action kinds to record (default click,focus,noop)")
    for p in (run_p, show_p, rec_p):
        p.add_argument("-f", "--params", dest="params_file", help="params YAML file, e.g. params/smoke.yaml")
        p.add_argument("-p", "--param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one value, e.g. -p train.learning_rate=1e-6 (repeatable; value read as YAML)")
    lab_p = sub.add_parser("lab", help="start JupyterLab in the project root (loopback, token, kernel bgwork)")
    lab_p.add_argument("path", nargs="?", help="a file or folder to open, e.g. notebooks/01_env_smoke_test.py")
    lab_p.add_argument("--ip", default="127.0.0.1", help="address to listen on (0.0.0.0 only inside a container)")
    lab_p.add_argument("--port", type=int, default=8888, help="port to listen on (default 8888)")
    args = parser.parse_args(argv)
    try:
        if args.command == "lab":
            return _lab(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "status":
            return _status(args)
        if args.command == "params":
            print(yaml.safe_dump(to_dict(load_params(args.params_file, args.overrides)), sort_keys=False), end="")
            return 0
        if args.command == "record":
            from bgwork.recording import record

            tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
            return record(load_params(args.params_file, args.overrides), args.out, tasks=tasks,
                          train_seeds=args.train_seeds, eval_seeds=args.eval_seeds, depth=args.depth,
                          actions=args.actions)
        return _run(args)
    except ParamsError as e:  # bad input: one clear line, no traceback, nothing written
        return _usage_error(e)


def _usage_error(e: Exception) -> int:
    print(f"bgwork: error: {e}", file=sys.stderr)
    return 2


def _lab(args) -> int:
    from bgwork.lab import LabError, start

    try:
        return start(args.ip, args.port, args.path)
    except LabError as e:
        return _usage_error(e)


def _run(args) -> int:
    from bgwork.notebook_run import RunError, run  # papermill/nbconvert imports are slow: only when running

    try:
        result = run(args.notebooks, args.params_file, args.overrides)
    except RunError as e:
        return _usage_error(e)
    return _report(result)


def _resume(args) -> int:
    from bgwork.notebook_run import RunError, resume

    try:
        result = resume(args.run_dir)
    except RunError as e:
        return _usage_error(e)
    return _report(result)


def _status(args) -> int:
    from pathlib import Path

    from bgwork.runs import read_run, runs_root

    dirs = [Path(d) for d in args.run_dirs] or sorted(p for p in runs_root().glob("*") if p.is_dir())
    for d in dirs:
        info = read_run(d)  # a run whose runner died is found (and recorded) killed here
        state = info.get("status", "?") if info else "no run.json"
        error = f"  {info['error']}" if info and info.get("error") and state != "finished" else ""
        print(f"{state:>9}  {d}{error}")
    return 0


def _report(result) -> int:
    print(f"\nrun dir: {result.run_dir}")
    for nb in result.notebooks:
        if nb.status == "failed":
            print(f"FAILED {nb.name}: {nb.error}", file=sys.stderr)
        if nb.report:
            print(f"{nb.status:>7}  {nb.name}  report: {nb.report}")
        elif nb.status == "failed":
            print(f" failed  {nb.name}  (no report: the notebook did not start, or it could not be written)")
        else:
            print(f"skipped  {nb.name}  (an earlier notebook failed)")
    return 0 if result.ok else 1
