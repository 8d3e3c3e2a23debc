"""Checkpoints under outputs/: inventory, a keep policy as a plan (a value), and applying exactly that plan.

    runs = inventory()                          # every run dir holding checkpoint-N dirs
    plan = make_plan(runs, params.cleanup)      # dry run: what would go, and the space freed
    apply_plan(plan)                            # deletes exactly plan.actions, after re-checking them

A "run" is a directory holding `checkpoint-<step>` dirs (TRL/transformers `output_dir`). Pinned runs and
runs still training are never touched: training holds `bgwork.training_lock` on its run dir, and a live lock
in the run dir or any parent below outputs/ counts. Nothing outside outputs/ and no symlink is ever deleted,
followed or copied.

An incomplete checkpoint (bgwork.checkpoint_io: no readable trainer_state.json, weights missing or cut off,
or the hidden folder an interrupted save or deletion left) is never kept by the policy and never counted
among the last/best: the plan offers it for deletion.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bgwork.checkpoint_io import checkpoint_problem, leftover_kind, remove_tree
from bgwork.config import CleanupParams
from bgwork.training_lock import active_lock

# Files only needed to resume training; dropping them "slims" a checkpoint to model + config.
OPTIMIZER_PATTERNS = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth")
MODEL_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "adapter_model.*", "model*.bin")


class CheckpointError(RuntimeError):
    """A path or plan that cleanup refuses to act on; the message names the path and why."""


def outputs_root() -> Path:
    """The project's outputs/ (BGWORK_OUTPUTS_DIR moves it; tests use a temporary folder)."""
    from bgwork.runs import PROJECT_ROOT

    return Path(os.environ.get("BGWORK_OUTPUTS_DIR") or PROJECT_ROOT / "outputs")


def cleanup_root(root: str | Path | None = None) -> Path:
    """The folder cleanup acts in: outputs/ itself or a folder inside it (never elsewhere, never a symlink)."""
    from bgwork.runs import PROJECT_ROOT

    base = Path(os.path.abspath(outputs_root()))
    if root is None:
        return base
    return checked_path(Path(root) if Path(root).is_absolute() else PROJECT_ROOT / root, base)


# --- path safety ------------------------------------------------------------------------------------------

def checked_path(path: str | Path, root: Path) -> Path:
    """`path` made absolute, refused when it is, or passes through, a symlink, or lies outside `root`."""
    root = Path(os.path.abspath(root))
    p = Path(os.path.abspath(path))
    if p != root and root not in p.parents:
        raise CheckpointError(f"{path}: outside {root}; cleanup only acts inside the outputs folder")
    for d in [p, *p.parents]:
        if d == root:
            break
        if d.is_symlink():
            raise CheckpointError(f"{path}: {d} is a symlink; cleanup never follows or deletes symlinks")
    real_root = os.path.realpath(root)
    if root.is_symlink() or os.path.realpath(p) != os.path.normpath(os.path.join(real_root, os.path.relpath(p, root))):
        raise CheckpointError(f"{path}: resolves through a symlink ({os.path.realpath(p)}); refused")
    return p


# --- inventory ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    path: str
    step: int
    kind: str  # "full" or "lora"
    model_bytes: int
    optimizer_bytes: int
    other_bytes: int
    files: tuple[tuple[str, int], ...]  # (relative path, bytes), sorted
    metrics: tuple[tuple[str, float], ...] = ()  # logged values at this step (see metrics_at_step)
    problem: str | None = None  # why it is incomplete (bgwork.checkpoint_io.checkpoint_problem); None: complete

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.optimizer_bytes + self.other_bytes

    def metric(self, name: str) -> float | None:
        return dict(self.metrics).get(name)


@dataclass(frozen=True)
class Run:
    path: str
    name: str  # path relative to the outputs root
    checkpoints: tuple[Checkpoint, ...]
    lock: tuple[tuple[str, object], ...] | None = None  # the live TRAINING.lock, if any
    problems: tuple[str, ...] = ()  # entries skipped (symlinks, unreadable)
    status: str | None = None  # how the `bgwork run` holding it ended (run.json: finished / failed / killed ...)


def file_category(name: str) -> str:
    base = os.path.basename(name)
    if any(fnmatch.fnmatch(base, pat) for pat in OPTIMIZER_PATTERNS):
        return "optimizer"
    if any(fnmatch.fnmatch(base, pat) for pat in MODEL_PATTERNS):
        return "model"
    return "other"


def step_of(dirname: str) -> int | None:
    prefix, _, num = dirname.partition("checkpoint-")
    return int(num) if not prefix and num.isdigit() else None


def leftover_step(dirname: str) -> int | None:
    """The step of a `.saving-checkpoint-N` / `.deleting-checkpoint-N` folder an interrupted save or delete left."""
    if not leftover_kind(dirname):
        return None
    return step_of(dirname.split("-", 1)[1]) if "-" in dirname else None


def read_checkpoint(path: Path, metric: str, success_metric: str) -> Checkpoint:
    """A checkpoint's files by category, and the values of `metric` and `success_metric` logged at its step."""
    files, problems = _list_files(path)
    if problems:
        raise CheckpointError(f"{path}: {problems[0]}")
    sizes = {"model": 0, "optimizer": 0, "other": 0}
    for rel, size in files:
        sizes[file_category(rel)] += size
    kind = "lora" if (path / "adapter_config.json").exists() else "full"
    step = step_of(path.name)
    if step is None:
        step = leftover_step(path.name)
    problem = checkpoint_problem(path)
    metrics = {} if problem else metrics_at_step(path / "trainer_state.json", step, [metric, success_metric])
    return Checkpoint(str(path), step if step is not None else -1, kind, sizes["model"], sizes["optimizer"],
                      sizes["other"], tuple(files), tuple(sorted(metrics.items())), problem)


def metrics_at_step(trainer_state: Path, step: int | None, names: list[str]) -> dict[str, float]:
    """The latest logged value of each name at or before `step` in trainer_state.json's log_history.

    A name matches a logged key exactly, else the first (sorted) key starting with `name/` or `name`
    (per-task success rates are logged as `success_rate/<task>`-like keys by some runs).
    """
    try:
        history = json.loads(trainer_state.read_text()).get("log_history", [])
    except (OSError, ValueError):
        return {}
    out: dict[str, float] = {}
    for entry in history:
        if step is not None and entry.get("step", 0) > step:
            continue
        for name in names:
            key = _matching_key(entry, name)
            if key is not None and isinstance(entry[key], (int, float)):
                out[name] = float(entry[key])
    return out


def _matching_key(entry: dict, name: str) -> str | None:
    if name in entry:
        return name
    keys = sorted(k for k in entry if k.startswith(name))
    return keys[0] if keys else None


def _list_files(path: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(relative file, bytes) under path without following symlinks; symlinks are reported as problems."""
    files, problems = [], []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            if full.is_symlink():
                problems.append(f"{full} is a symlink; refused")
        for name in filenames:
            full = Path(dirpath) / name
            if not full.is_symlink():
                files.append((str(full.relative_to(path)), full.stat().st_size))
    return sorted(files), problems


def inventory(root: str | Path | None = None, cleanup: CleanupParams | None = None) -> list[Run]:
    """Every run (a dir holding checkpoint-N dirs) under root, checkpoints sorted by step."""
    cleanup = cleanup or CleanupParams()
    root = Path(os.path.abspath(root or outputs_root()))
    if root.is_symlink():
        raise CheckpointError(f"{root}: the outputs root is a symlink; refused")
    if not root.is_dir():
        return []
    runs = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        ckpt_names = sorted((d for d in dirnames if step_of(d) is not None), key=step_of)
        ckpt_names += sorted(d for d in dirnames if leftover_step(d) is not None)  # interrupted saves/deletions
        dirnames[:] = [d for d in dirnames if d not in ckpt_names]  # don't descend into checkpoints
        if ckpt_names:
            runs.append(_read_run(Path(dirpath), ckpt_names, root, cleanup))
    return sorted(runs, key=lambda r: r.name)


def _read_run(run_dir: Path, ckpt_names: list[str], root: Path, cleanup: CleanupParams) -> Run:
    ckpts, problems = [], []
    for name in ckpt_names:
        path = run_dir / name
        try:
            if path.is_symlink():
                raise CheckpointError(f"{path} is a symlink; refused")
            ckpts.append(read_checkpoint(path, cleanup.metric, cleanup.success_metric))
        except (CheckpointError, OSError) as e:
            problems.append(str(e))
    lock = active_lock(run_dir, root)
    name = str(run_dir.relative_to(root)) if run_dir != root else "."
    return Run(str(run_dir), name, tuple(ckpts), tuple(sorted(lock.items())) if lock else None, tuple(problems),
               _run_status(run_dir, root))


def _run_status(path: Path, root: Path) -> str | None:
    """The status in run.json of the nearest run dir holding `path` (reading it marks a dead runner's run killed)."""
    from bgwork.runs import RUN_FILE, read_run

    for d in [path, *path.parents]:
        if (d / RUN_FILE).is_file():
            try:
                return (read_run(d) or {}).get("status")
            except (OSError, ValueError):
                return "unreadable"
        if d == root or root not in d.parents:
            return None
    return None


# --- the plan -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    kind: str  # "delete" (the whole checkpoint dir) or "slim" (its optimizer/scheduler/RNG files)
    checkpoint: str
    files: tuple[tuple[str, int], ...]  # exactly the files removed: (path relative to the checkpoint, bytes)
    reason: str

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.files)


@dataclass(frozen=True)
class Plan:
    root: str
    actions: tuple[Action, ...]
    kept: tuple[tuple[str, str], ...]  # (checkpoint, why it stays as it is or after slimming)
    untouched_runs: tuple[tuple[str, str], ...]  # (run, why: pinned / training / problems)
    notes: tuple[str, ...] = ()
    policy: CleanupParams = field(default_factory=CleanupParams, compare=False)

    @property
    def freed_bytes(self) -> int:
        return sum(a.bytes for a in self.actions)


def is_pinned(run: Run, pinned: list[str]) -> str | None:
    """The pin entry matching this run: its relative name, or any one folder name on its path."""
    parts = Path(run.name).parts
    for pin in pinned:
        pin_norm = pin.strip("/")
        if pin_norm == run.name or pin_norm in parts:
            return pin
    return None


def make_plan(runs: list[Run], cleanup: CleanupParams, root: str | Path | None = None) -> Plan:
    root = Path(os.path.abspath(root or outputs_root()))
    actions, kept, untouched, notes = [], [], [], []
    for pin in cleanup.pinned:
        if not any(is_pinned(r, [pin]) for r in runs):
            notes.append(f"pinned entry {pin!r} matches no run")
    for run in runs:
        why_not = _why_untouched(run, cleanup)
        if why_not:
            untouched.append((run.name, why_not))
            continue
        a, k = _plan_run(run, cleanup)
        actions += a
        kept += k
    return Plan(str(root), tuple(actions), tuple(kept), tuple(untouched), tuple(notes), cleanup)


def _why_untouched(run: Run, cleanup: CleanupParams) -> str | None:
    pin = is_pinned(run, cleanup.pinned)
    if pin:
        return f"pinned ({pin})"
    if run.lock:
        lock = dict(run.lock)
        return f"training (pid {lock['pid']} on {lock['host']}, {lock['path']})"
    if run.problems:
        return "refused: " + "; ".join(run.problems)
    return None


def _plan_run(run: Run, cleanup: CleanupParams) -> tuple[list[Action], list[tuple[str, str]]]:
    actions = [Action("delete", c.path, c.files, f"incomplete: {c.problem}")
               for c in run.checkpoints if c.problem]
    by_step = sorted((c for c in run.checkpoints if not c.problem), key=lambda c: c.step)
    reasons: dict[str, list[str]] = {}
    for c in by_step[-cleanup.keep_last:] if cleanup.keep_last else []:
        reasons.setdefault(c.path, []).append(f"last {cleanup.keep_last}")
    ranked = [c for c in by_step if c.metric(cleanup.metric) is not None]
    ranked.sort(key=lambda c: (c.metric(cleanup.metric), c.step), reverse=cleanup.metric_mode == "max")
    for c in ranked[:cleanup.keep_best]:
        reasons.setdefault(c.path, []).append(f"best {cleanup.metric}={c.metric(cleanup.metric):.4g}")
    latest = by_step[-1].path if by_step else None
    kept = []
    for c in by_step:
        if c.path not in reasons:
            actions.append(Action("delete", c.path, c.files, "not among the last/best kept"))
            continue
        why = ", ".join(reasons[c.path])
        slimmable = tuple(f for f in c.files if file_category(f[0]) == "optimizer")
        if cleanup.slim and slimmable and (c.path != latest or cleanup.slim_latest):
            actions.append(Action("slim", c.path, slimmable, f"kept ({why}); optimizer/scheduler/RNG state dropped"))
            why += ", slimmed"
        kept.append((c.path, why))
    return actions, kept


def plan_table(plan: Plan):
    """One row per checkpoint touched or kept, for the notebook."""
    import pandas as pd

    rows = [{"checkpoint": _short(a.checkpoint, plan.root), "action": a.kind, "files": len(a.files),
             "MB freed": a.bytes / 1e6, "why": a.reason} for a in plan.actions]
    touched = {a.checkpoint for a in plan.actions}
    rows += [{"checkpoint": _short(p, plan.root), "action": "keep", "files": 0, "MB freed": 0.0, "why": why}
             for p, why in plan.kept if p not in touched]
    rows += [{"checkpoint": name + "/*", "action": "untouched run", "files": 0, "MB freed": 0.0, "why": why}
             for name, why in plan.untouched_runs]
    return pd.DataFrame(rows, columns=["checkpoint", "action", "files", "MB freed", "why"])


def inventory_table(runs: list[Run], cleanup: CleanupParams | None = None):
    import pandas as pd

    cleanup = cleanup or CleanupParams()
    rows = [{"run": r.name, "checkpoint": Path(c.path).name, "step": c.step, "kind": c.kind,
             "model MB": c.model_bytes / 1e6, "optimizer MB": c.optimizer_bytes / 1e6,
             "other MB": c.other_bytes / 1e6, "total MB": c.total_bytes / 1e6,
             cleanup.metric: c.metric(cleanup.metric), cleanup.success_metric: c.metric(cleanup.success_metric),
             "training": bool(r.lock), "run status": r.status, "incomplete": c.problem or ""}
            for r in runs for c in r.checkpoints]
    return pd.DataFrame(rows)


def _short(path: str, root: str) -> str:
    return os.path.relpath(path, root)


# --- applying it ----------------------------------------------------------------------------------------

def apply_plan(plan: Plan) -> list[str]:
    """Delete exactly what `plan` lists; returns the removed paths.

    Before deleting anything: every path is re-checked (inside the root, no symlink, run not pinned, not
    training now), and the plan is rebuilt from the disk as it is now with the same policy; if that differs
    (a file appeared, a run started training) nothing is deleted and CheckpointError says so.
    """
    root = Path(plan.root)
    for action in plan.actions:
        _check_action(action, plan, root)
    current = make_plan(inventory(root, plan.policy), plan.policy, root)
    if current != plan:
        raise CheckpointError(f"the plan is stale: {root} changed since it was made (or the plan was edited); "
                              "nothing was deleted. Make a new plan and review it.")
    removed = []
    for action in plan.actions:
        ckpt = Path(action.checkpoint)
        if action.kind == "delete":
            remove_tree(ckpt)  # renamed first: a kill midway leaves a `.deleting-` leftover, not half a checkpoint
            removed.append(str(ckpt))
        else:
            for rel, _ in action.files:
                (ckpt / rel).unlink()
                removed.append(str(ckpt / rel))
    return removed


def _check_action(action: Action, plan: Plan, root: Path) -> None:
    if action.kind not in ("delete", "slim"):
        raise CheckpointError(f"{action.checkpoint}: unknown action {action.kind!r}")
    ckpt = checked_path(action.checkpoint, root)
    if step_of(ckpt.name) is None and not (action.kind == "delete" and leftover_step(ckpt.name) is not None):
        raise CheckpointError(f"{ckpt}: not a checkpoint-<step> directory; refused")
    for rel, _ in action.files:
        checked_path(ckpt / rel, root)
        if action.kind == "slim" and file_category(rel) != "optimizer":
            raise CheckpointError(f"{ckpt / rel}: slimming only removes optimizer/scheduler/RNG files; refused")
    run_dir = ckpt.parent
    run = Run(str(run_dir), str(run_dir.relative_to(root)) if run_dir != root else ".", ())
    pin = is_pinned(run, plan.policy.pinned)
    if pin:
        raise CheckpointError(f"{ckpt}: its run is pinned ({pin}); refused")
    lock = active_lock(run_dir, root)
    if lock:
        raise CheckpointError(f"{ckpt}: its run is training (pid {lock['pid']}, {lock['path']}); refused")


# --- copy out -------------------------------------------------------------------------------------------

def copy_checkpoint(checkpoint: str | Path, dest: str | Path, *, slim: bool = True,
                    root: str | Path | None = None) -> Path:
    """Copy a checkpoint dir to `dest` (which must not exist), without optimizer state when slim.

    The source must be a real (non-symlink) directory inside the outputs root; dest may be anywhere
    except inside the source.
    """
    root = Path(os.path.abspath(root or outputs_root()))
    src = checked_path(checkpoint, root)
    if not (src / "config.json").exists() and not (src / "adapter_config.json").exists():
        raise CheckpointError(f"{src}: not a checkpoint (no config.json or adapter_config.json)")
    if checkpoint_problem(src):
        raise CheckpointError(f"{src}: incomplete checkpoint ({checkpoint_problem(src)}); refused")
    files, problems = _list_files(src)
    if problems:
        raise CheckpointError(f"{src}: {problems[0]}")
    dest = Path(os.path.abspath(dest))
    if dest == src or src in dest.parents:
        raise CheckpointError(f"{dest}: inside the checkpoint being copied; choose another destination")
    if dest.exists():
        raise CheckpointError(f"{dest}: already exists; refusing to overwrite")
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, _ in files:
        if slim and file_category(rel) == "optimizer":
            continue
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, tmp / rel)
    tmp.rename(dest)  # all or nothing: a crash leaves only the .partial folder
    return dest


def latest_checkpoint(root: str | Path | None = None) -> Path | None:
    """The newest complete checkpoint (by modification time) under root, for 'export the latest' defaults."""
    ckpts = [Path(c.path) for r in inventory(root) for c in r.checkpoints if not c.problem]
    return max(ckpts, key=lambda p: p.stat().st_mtime) if ckpts else None


def cleanup_verdict(plan: Plan, inventory, applied: bool, removed: list) -> tuple[str, dict]:
    """(line, figures) answering notebook 05's question: what do checkpoints cost, and what can go?"""
    total = float(inventory["total MB"].sum()) if len(inventory) else 0.0
    freed = plan.freed_bytes / 1e6
    line = (f"removed {len(removed)} paths, {freed:.1f} MB freed of {total:.1f} MB in checkpoints" if applied else
            f"dry run: {len(plan.actions)} actions would free {freed:.1f} MB of {total:.1f} MB in checkpoints")
    return line, {"checkpoints": len(inventory), "MB in checkpoints": round(total, 1),
                  "MB the plan frees": round(freed, 1), "runs left untouched": len(plan.untouched_runs)}


# --- notebook 05's cells: one call each ---------------------------------------------------------------------

def inventory_with_refusals(runs: list[Run], cleanup: CleanupParams):
    """The inventory table, after printing what was refused (paths outside the root, unreadable runs...)."""
    for r in runs:
        for problem in r.problems:
            print("refused:", problem)
    return inventory_table(runs, cleanup)


def plot_disk_use(inventory, root: Path) -> None:
    """Stacked bars of model / optimizer / other MB per run (or a line saying there is nothing to draw)."""
    import matplotlib.pyplot as plt

    if not len(inventory):
        print(f"no checkpoints under {root}")
        return
    per_run = inventory.groupby("run")[["model MB", "optimizer MB", "other MB"]].sum()
    ax = per_run.plot.barh(stacked=True, figsize=(8, 0.6 + 0.5 * len(per_run)), title="disk use per run")
    ax.set_xlabel("MB")
    plt.tight_layout()


def copy_out(cleanup: CleanupParams, root: Path) -> Path | None:
    """cleanup.copy_checkpoint copied to cleanup.copy_to (before any cleanup), or None when none is asked for."""
    from bgwork.runs import project_path

    if not cleanup.copy_checkpoint:
        return None
    copied = copy_checkpoint(project_path(cleanup.copy_checkpoint), project_path(cleanup.copy_to), root=root)
    print(f"copied {cleanup.copy_checkpoint} -> {copied}")
    return copied


def _total_mb(inventory) -> float:
    return float(inventory["total MB"].sum()) if len(inventory) else 0.0


def show_plan(plan: Plan, inventory):
    """The plan's notes and totals printed, its table returned."""
    for note in plan.notes:
        print("note:", note)
    print(f"{len(plan.actions)} actions, {plan.freed_bytes / 1e6:.1f} MB to free of {_total_mb(inventory):.1f} MB "
          f"in checkpoints")
    return plan_table(plan)


def apply_or_preview(plan: Plan, cleanup: CleanupParams, root: Path) -> list[str]:
    """Apply the plan when cleanup.apply (the removed paths), else say it was a dry run ([])."""
    if not cleanup.apply:
        print("dry run: nothing deleted. Re-run with -p cleanup.apply=true to apply this plan.")
        return []
    removed = apply_plan(plan)
    after = inventory_table(inventory(root, cleanup), cleanup)
    print(f"removed {len(removed)} paths; checkpoints now take {_total_mb(after):.1f} MB")
    return removed


def cleanup_metrics(plan: Plan, inventory, cleanup: CleanupParams, removed: list[str]) -> dict:
    """What notebook 05 records in the run's metrics.json."""
    return {
        "cleanup/applied": cleanup.apply,
        "cleanup/checkpoints": len(inventory),
        "cleanup/actions": [{"kind": a.kind, "checkpoint": a.checkpoint, "files": [f for f, _ in a.files]}
                            for a in plan.actions],
        "cleanup/freed_bytes": plan.freed_bytes if cleanup.apply else 0,
        "cleanup/would_free_bytes": plan.freed_bytes,
        "cleanup/untouched_runs": dict(plan.untouched_runs),
        "cleanup/removed": removed,
    }
