"""The training lock: a run dir that is training says so, and checkpoint cleanup (bgwork.checkpoints) leaves it alone.

    with training_lock(run_dir):     # writes run_dir/TRAINING.lock (JSON: pid, host, start time)
        trainer.train()              # removed on exit; a lock whose process died is stale and replaced
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "TRAINING.lock"


class AlreadyTraining(RuntimeError):
    """A live process already holds the run dir's training lock."""


@contextlib.contextmanager
def training_lock(run_dir: str | Path):
    """Mark `run_dir` as training for the duration of the block, so cleanup leaves it alone.

    Raises AlreadyTraining if a live process already holds the lock; a stale lock (dead pid) is replaced.
    """
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(path)
            if holder and holder["alive"]:
                raise AlreadyTraining(f"{run_dir}: already training (pid {holder['pid']} on "
                                      f"{holder['host']})") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        break
    try:
        yield path
    finally:
        holder = read_lock(path)
        if holder and holder["pid"] == mine["pid"] and holder["host"] == mine["host"]:
            path.unlink(missing_ok=True)


def read_lock(path: Path) -> dict | None:
    """The lock's content plus `alive`: True unless its pid is known dead on this host (unreadable = alive)."""
    try:
        info = json.loads(Path(path).read_text())
        pid, host = int(info["pid"]), str(info.get("host", ""))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError):
        return {"pid": None, "host": "?", "alive": True, "path": str(path)}  # can't tell: assume training
    alive = host != socket.gethostname() or _pid_alive(pid)
    return {"pid": pid, "host": host, "alive": alive, "path": str(path)}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def active_lock(run_dir: Path, root: Path) -> dict | None:
    """A live TRAINING.lock in run_dir or any parent up to root, else None."""
    d = Path(run_dir)
    while True:
        holder = read_lock(d / LOCK_NAME)
        if holder and holder["alive"]:
            return holder
        if d == root or root not in d.parents:
            return None
        d = d.parent
