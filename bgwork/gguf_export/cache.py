"""One-time builds in the bgwork cache, done the way bgwork.models builds its checkpoints: under its
cross-process lock, into a temporary folder that one rename publishes, so neither a crash nor a parallel
process ever sees half a build; and files fetched once with pip into `<cache>/wheels`.

bgwork.models keeps this code private (`_build_lock`; its `_build_once` only knows config.json as the mark of
a finished build). Until it exposes `build_once(target, build, marker)` and `pip_download(...)` for every
cached build, these thin wrappers share its lock and cache folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bgwork.gguf_export.errors import ExportError
from bgwork.models import _build_lock, cache_dir

__all__ = ["build_once", "cache_dir", "pip_download"]


def build_once(target: Path, build, marker: str) -> Path:
    """`build(tmp_dir)` published as `target`, unless `target/marker` shows an earlier build finished."""
    if (target / marker).exists():
        return target
    with _build_lock(target.name):
        if (target / marker).exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def pip_download(requirement: str, filename: str, *, source: bool = False) -> Path:
    """`<cache>/wheels/<filename>`, fetched once with `pip download` (a source distribution when `source`)."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if (wheels / filename).exists():
        return wheels / filename
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *(["--no-binary", ":all:"] if source else []),
           "--disable-pip-version-check", requirement, "-d", str(wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not (wheels / filename).exists():
        raise ExportError(f"`{' '.join(cmd)}` failed (is PyPI reachable, or the file in {wheels}?):\n"
                          f"{proc.stderr[-2000:]}")
    return wheels / filename
