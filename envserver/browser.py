"""Find the system Chromium: BrowserGym must never launch Playwright's own (undownloadable) build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import lru_cache

CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser",
              "/usr/bin/google-chrome", "/usr/bin/google-chrome-stable")


class ChromiumNotFound(RuntimeError):
    pass


@lru_cache(maxsize=None)
def chromium_path() -> str:
    """BGWORK_CHROMIUM if set, else the first system Chromium found."""
    explicit = os.environ.get("BGWORK_CHROMIUM")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ChromiumNotFound(f"BGWORK_CHROMIUM={explicit} is not an executable file")
        return explicit
    for path in (*CANDIDATES, shutil.which("chromium") or ""):
        if path and os.access(path, os.X_OK):
            # Debian's /usr/bin/chromium is a wrapper script; Playwright needs the real binary.
            real = "/usr/lib/chromium/chromium"
            return real if path == "/usr/bin/chromium" and os.access(real, os.X_OK) else path
    raise ChromiumNotFound("no Chromium found; install your distribution's chromium package "
                           "(Debian/Ubuntu: apt-get install chromium) or set BGWORK_CHROMIUM")


@lru_cache(maxsize=None)
def chromium_version() -> str:
    out = subprocess.run([chromium_path(), "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or out.stderr.strip()


# Flags for a closed network: without them Chromium keeps dialling Google services and failing.
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-features=OverlayScrollbars,ExtendedOverlayScrollbars",  # as BrowserGym: screenshots see scrollbars
]

if __name__ == "__main__":  # `python -m envserver.browser --check`: used by scripts/setup.sh
    try:
        print(chromium_path(), chromium_version())
    except (ChromiumNotFound, OSError, subprocess.SubprocessError) as e:
        print(e, file=sys.stderr)
        sys.exit(1)
