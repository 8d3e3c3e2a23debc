"""One-time builds in the bgwork cache, the way bgwork.models builds its checkpoints (its `build_once`: under a
cross-process lock, into a temporary folder that one rename publishes, so neither a crash nor a parallel process
ever sees half a build); and files fetched once with pip into `<cache>/wheels`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bgwork.gguf_export.errors import ExportError
from bgwork.models import build_once, cache_dir

__all__ = ["build_once", "cache_dir", "pip_download"]


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
