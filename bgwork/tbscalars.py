"""Load the scalars of one or many runs' TensorBoard event files into one tidy pandas frame.

A run is a run directory (e.g. outputs/runs/<name>); its event files may live anywhere below it
(transformers writes them under the TensorBoard logging dir). Every point is kept: TensorBoard's
EventAccumulator is given size guidance 0 for scalars (its default keeps a reservoir sample of
10,000 points per tag, silently dropping the rest of a long run).

Tag names: transformers' TensorBoard callback writes TRL's metrics as `train/<name>` (`train/reward`,
`train/entropy`, ...). The `train/` prefix is dropped so tags read as TRL names them; `eval/...` stays.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

COLUMNS = ["run", "tag", "step", "value"]
EVENT_GLOB = "events.out.tfevents.*"
TRAIN_PREFIX = "train/"


def find_runs(runs, base: str | Path | None = None) -> list[Path]:
    """Run dirs from a dir, a glob, or a list of either (relative ones under `base` when given).

    A glob skips matches without event files (with a warning); a named dir without them is an error.
    """
    items = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not items:
        raise ValueError("no runs given: pass a run directory, a glob such as 'outputs/runs/*', or a list of them")
    found: list[Path] = []
    for item in items:
        item = str(Path(base) / item) if base is not None and not Path(item).is_absolute() else str(item)
        if glob.has_magic(item):
            matches = [Path(m) for m in sorted(glob.glob(item)) if Path(m).is_dir()]
            with_events = [m for m in matches if event_files(m)]
            if len(with_events) < len(matches):
                log.warning("%r: skipped %d of %d directories holding no TensorBoard event files",
                            item, len(matches) - len(with_events), len(matches))
            if not with_events:
                raise FileNotFoundError(f"glob {item!r} matched no directory holding TensorBoard event files "
                                        f"({len(matches)} directories matched)")
            found += with_events
        else:
            path = Path(item)
            if not path.is_dir():
                raise FileNotFoundError(f"run directory {path} does not exist (or is not a directory)")
            if not event_files(path):
                raise FileNotFoundError(f"run directory {path} holds no TensorBoard event files "
                                        f"({EVENT_GLOB} anywhere below it): did training log to TensorBoard?")
            found.append(path)
    return list(dict.fromkeys(p.resolve() for p in found))


def event_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).rglob(EVENT_GLOB) if p.is_file())


def run_names(dirs: list[Path]) -> dict[Path, str]:
    """Short names: the dir name, or its path relative to the runs' common parent when names clash."""
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return dict(zip(dirs, names))
    parent = Path(os.path.commonpath([str(d) for d in dirs]))
    return {d: str(d.relative_to(parent)) for d in dirs}


def read_event_file(path: Path) -> pd.DataFrame:
    """All scalar points of one event file: tag, step, value, wall_time."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    try:
        acc.Reload()
    except Exception as e:  # a truncated/corrupt file should name itself
        raise ValueError(f"cannot read TensorBoard event file {path}: {e}") from e
    rows = [(tag, ev.step, ev.value, ev.wall_time) for tag in acc.Tags()["scalars"] for ev in acc.Scalars(tag)]
    return pd.DataFrame(rows, columns=["tag", "step", "value", "wall_time"])


def load_scalars(runs, base: str | Path | None = None) -> pd.DataFrame:
    """Tidy frame (run, tag, step, value) of every scalar of the given runs, sorted by run, tag, step.

    A step logged twice (a resumed run re-logs steps after its last checkpoint) keeps the latest write.
    """
    dirs = find_runs(runs, base)
    names = run_names(dirs)
    frames = []
    for d in dirs:
        parts = [read_event_file(f) for f in event_files(d)]
        df = pd.concat(parts, ignore_index=True)
        if df.empty:
            log.warning("run %s: its event files hold no scalars", d)
            continue
        df["run"] = names[d]
        frames.append(df)
    if not frames:
        raise ValueError(f"none of the runs {[str(d) for d in dirs]} logged any scalar")
    df = pd.concat(frames, ignore_index=True)
    df["tag"] = df["tag"].map(normalize_tag)
    df = (df.sort_values("wall_time").drop_duplicates(["run", "tag", "step"], keep="last")
            .sort_values(["run", "tag", "step"]).reset_index(drop=True))
    df["step"] = df["step"].astype(int)
    df = df[COLUMNS]
    df.attrs["run_dirs"] = {names[d]: str(d) for d in dirs}  # run name -> its directory
    return df


def normalize_tag(tag: str) -> str:
    return tag[len(TRAIN_PREFIX):] if tag.startswith(TRAIN_PREFIX) else tag


def wide(df: pd.DataFrame, run: str) -> pd.DataFrame:
    """One run's scalars as a step-indexed frame with one column per tag (NaN where a tag was not logged)."""
    one = df[df["run"] == run]
    return one.pivot_table(index="step", columns="tag", values="value", aggfunc="last").sort_index()
