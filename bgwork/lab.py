"""`bgwork lab`: JupyterLab in the project root, on loopback, with a token and the `bgwork` kernel.

    bgwork lab                                      # prints http://127.0.0.1:8888/lab?token=...
    bgwork lab notebooks/01_env_smoke_test.py       # the URL opens that notebook
    bgwork lab --ip 0.0.0.0                         # inside a container whose port is published

Settings that make `notebooks/*.py` open as notebooks (double-click -> Jupytext Notebook) live in
`jupyter/labconfig/default_setting_overrides.json`, found through JUPYTER_CONFIG_PATH; `notebooks/jupytext.toml`
keeps a save from Lab byte-identical. The server runs in this process: Ctrl-C stops it and its kernels.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import sys
from pathlib import Path

from bgwork.runs import PROJECT_ROOT

KERNEL = "bgwork"  # registered in the venv by scripts/setup.sh, as for `bgwork run`
CONFIG_DIR = PROJECT_ROOT / "jupyter"  # labconfig/default_setting_overrides.json: the default viewers


class LabError(ValueError):
    """Bad `bgwork lab` input, or a missing piece of set-up; the message says how to fix it."""


def lab_args(ip: str, port: int, token: str, root: Path = PROJECT_ROOT) -> list[str]:
    """JupyterLab's command line: no browser, fixed port (a taken one is an error, never a silent other port)."""
    args = [f"--ServerApp.ip={ip}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
            f"--MappingKernelManager.default_kernel_name={KERNEL}"]
    if os.geteuid() == 0:  # containers run as root; Jupyter refuses root without this
        args.append("--ServerApp.allow_root=True")
    return args


def lab_url(ip: str, port: int, token: str, path: str | None = None) -> str:
    """The URL to open; a wildcard bind is reached through loopback (or the container's published port)."""
    host = "127.0.0.1" if ip in ("0.0.0.0", "") else "[::1]" if ip == "::" else ip
    tree = f"/tree/{Path(path).as_posix()}" if path else ""
    return f"http://{host}:{port}/lab{tree}?token={token}"


def prepare(ip: str, port: int, path: str | None, root: Path = PROJECT_ROOT) -> tuple[str, str | None]:
    """Check everything a user can get wrong BEFORE the server starts; returns (token, path to open)."""
    _check_ip(ip)
    if not 1 <= port <= 65535:
        raise LabError(f"--port {port}: expected a port number from 1 to 65535")
    if path is not None:
        path = _relative_to_root(path, root)
    _check_kernel()
    _check_port_free(ip, port)
    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_hex(24)
    return token, path


def start(ip: str = "127.0.0.1", port: int = 8888, path: str | None = None) -> int:
    """Run JupyterLab until Ctrl-C (or SIGTERM); prints the URL once it listens."""
    token, path = prepare(ip, port, path)
    _set_environment()
    from jupyterlab.labapp import LabApp  # heavy import: only once the input is known to be good
    from tornado.ioloop import IOLoop

    server = LabApp.initialize_server(argv=lab_args(ip, port, token))
    url = lab_url(ip, port, token, path)
    # Runs as soon as the loop turns, i.e. after the server has bound its port.
    IOLoop.current().add_callback(lambda: print(f"\nJupyterLab is running: {url}\n(Ctrl-C to stop)\n", flush=True))
    server.start()
    return 0


def _set_environment() -> None:
    """What JupyterLab and the kernels it starts inherit."""
    extra = [str(CONFIG_DIR), *filter(None, os.environ.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep))]
    os.environ["JUPYTER_CONFIG_PATH"] = os.pathsep.join(extra)
    # Kernels import this checkout's bgwork first (as `bgwork run` does), whatever clone pip installed.
    rest = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *([rest] if rest else [])])
    os.environ.pop("BGWORK_HEADLESS", None)  # interactive: tqdm bars are widgets (bgwork.progress)


def _check_ip(ip: str) -> None:
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise LabError(f"--ip {ip!r}: expected an IP address, e.g. 127.0.0.1 (default) or 0.0.0.0 in a container")


def _relative_to_root(path: str, root: Path) -> str:
    full = (Path.cwd() / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if not full.exists() and (root / path).exists():  # `bgwork lab notebooks/01...` from another directory
        full = (root / path).resolve()
    if not full.exists():
        raise LabError(f"{path}: no such file or folder")
    try:
        return full.relative_to(root.resolve()).as_posix()
    except ValueError:
        raise LabError(f"{path}: outside the project root {root}; JupyterLab serves only that folder") from None


def _check_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        raise LabError(f"no Jupyter kernel named '{KERNEL}': run `bash scripts/setup.sh` (or: {sys.executable} "
                       f"-m ipykernel install --sys-prefix --name {KERNEL} --display-name 'Python (bgwork)')") from None


def _check_port_free(ip: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError as e:
            raise LabError(f"--port {port}: cannot listen on {ip}:{port} ({e.strerror}); "
                           f"is another JupyterLab running? Pick another with --port") from None
