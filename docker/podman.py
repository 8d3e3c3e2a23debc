"""Build and run the Dockerfiles with podman where no registry image can be pulled (this project's CI box).

    python docker/podman.py base                 # localhost/bookworm-base from Debian's packages (debootstrap)
    python docker/podman.py build envserver      # docker/envserver/Dockerfile -> localhost/bgwork-envserver
    python docker/podman.py build trainer        # docker/trainer/Dockerfile   -> localhost/bgwork-trainer
    python docker/podman.py podman run --rm --network host localhost/bgwork-envserver --host 127.0.0.1 --port 8010

What differs from `docker build` on a connected machine, and why:
- `FROM debian:bookworm-slim` is replaced (`--from`) by a base made with `debootstrap --variant=minbase bookworm`
  and `podman import`: the Docker registry is out of reach, Debian's archive is not.
- Containers run with runc and cgroupfs (crun fails here: cgroups hybrid mode), no default ulimits, host network.
- pip inside a build gets this machine's pip configuration: its certificate bundle (the network's TLS proxy signs
  with its own CA), its find-links/index directories (the CPU torch wheel lies on local disk) and constraint
  files, all bind-mounted read-only for the build only; nothing of it stays in the image.
Needs root (debootstrap, rootful podman); installs podman, runc and debootstrap with apt-get when missing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = "localhost/bookworm-base"
IMAGES = {"envserver": "localhost/bgwork-envserver", "trainer": "localhost/bgwork-trainer"}
GLOBAL_FLAGS = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
BUILD_MOUNTS = "/run/host-pip"  # where a build sees this machine's pip files
# Like debian:bookworm-slim's: updates and security too (Chromium's fixes come through bookworm-security).
DEBIAN_SOURCES = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


class PodmanError(RuntimeError):
    pass


def state_dir() -> Path:
    path = Path(os.environ.get("BGWORK_CACHE") or Path.home() / ".cache" / "bgwork") / "podman"
    path.mkdir(parents=True, exist_ok=True)
    return path


def podman_env() -> dict:
    """CONTAINERS_CONF without default ulimits: podman's default nproc/nofile limits fail setrlimit here."""
    conf = state_dir() / "containers.conf"
    if not conf.exists():
        conf.write_text("[containers]\ndefault_ulimits = []\n")
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    cmd = ["podman", *GLOBAL_FLAGS, *args]
    print("+", shlex.join(cmd), file=sys.stderr, flush=True)
    result = subprocess.run(cmd, env=podman_env(), check=False, **kwargs)
    if check and result.returncode != 0:
        raise PodmanError(f"`{shlex.join(cmd)}` exited with {result.returncode}")
    return result


def ensure_tools() -> None:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PodmanError(f"missing {', '.join(missing)}: install Debian's podman, runc and debootstrap (as root)")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "podman", "runc", "debootstrap"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def make_base(rebuild: bool = False) -> None:
    """debootstrap a minimal bookworm and import it as BASE_IMAGE (~30-80 s; done once, then cached by podman)."""
    ensure_tools()
    if image_exists(BASE_IMAGE) and not rebuild:
        print(f"{BASE_IMAGE} exists", file=sys.stderr)
        return
    if os.geteuid() != 0:
        raise PodmanError("debootstrap needs root")
    with tempfile.TemporaryDirectory(prefix="bookworm-", dir=state_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                       check=True, stdout=subprocess.DEVNULL)
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(DEBIAN_SOURCES)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            podman("import", "-", BASE_IMAGE, stdin=tar.stdout, stdout=subprocess.DEVNULL)
        finally:
            tar.stdout.close()  # a failed import: tar ends on the closed pipe instead of blocking
        if tar.wait() != 0:
            raise PodmanError("tar of the debootstrapped tree failed")


def host_pip_config() -> dict[str, str]:
    """This machine's effective pip options (config files and PIP_* variables), as `pip config list` merges them."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         check=False).stdout
    options: dict[str, str] = {}
    for line in sorted(out.splitlines(), key=lambda ln: ln.startswith(":env:")):  # PIP_* variables win
        key, sep, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if sep and section in ("global", "install", ":env:"):
            options[name] = value.strip().strip("'\"")
    return options


def build_mounts(options: dict[str, str], pip_conf: Path) -> list[str]:
    """-v flags and a pip.conf that give a build the host's pip setup (see the module docstring).

    Everything is mounted under BUILD_MOUNTS and pip.conf at /etc/pip.conf (pip reads it from any Python); the
    image keeps only the empty mount points.
    """
    mounts, lines = [], ["[global]"]
    for name, value in options.items():
        if name == "cert":
            mounts += ["-v", f"{value}:{BUILD_MOUNTS}/ca.crt:ro"]
            value = f"{BUILD_MOUNTS}/ca.crt"
        elif name in ("find-links", "extra-index-url", "index-url", "constraint", "requirement"):
            items = []
            for item in value.split():
                local = item.removeprefix("file://").rstrip("/")
                if not (local.startswith("/") and Path(local).exists()):
                    items.append(item)  # a URL: reached over the network
                    continue
                # a local index's pages link to files beside it (../../files/...): mount its parent
                source = Path(local).parent if name.endswith("index-url") else Path(local)
                target = f"{BUILD_MOUNTS}/{len(mounts) // 2}"
                mounts += ["-v", f"{source}:{target}:ro"]
                inside = target + local[len(str(source)):]
                items.append(f"file://{inside}" if item.startswith("file://") else inside)
            value = " ".join(items)
        lines.append(f"{name} = {value}")
    pip_conf.write_text("\n".join(lines) + "\n")
    return [*mounts, "-v", f"{pip_conf}:/etc/pip.conf:ro"]


def build(name: str, extra: list[str] = ()) -> str:
    dockerfile = ROOT / "docker" / name / "Dockerfile"
    if not dockerfile.is_file():
        raise PodmanError(f"no {dockerfile.relative_to(ROOT)}; images: {', '.join(IMAGES)}")
    make_base()
    tag = IMAGES.get(name, f"localhost/bgwork-{name}")
    args = []
    if name == "trainer":  # the CPU wheel through the host's find-links, not download.pytorch.org
        args += ["--build-arg", "TORCH_INDEX_URL="]
    with tempfile.TemporaryDirectory(prefix="pip-", dir=state_dir()) as tmp:
        mounts = build_mounts(host_pip_config(), Path(tmp) / "pip.conf")
        podman("build", "--network", "host", "--format", "docker", "--from", BASE_IMAGE, *mounts, *args, *extra,
               "-f", str(dockerfile), "-t", tag, str(ROOT))
    return tag


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="docker/podman.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    base_p = sub.add_parser("base", help=f"create {BASE_IMAGE} (debootstrap) unless it exists")
    base_p.add_argument("--rebuild", action="store_true")
    build_p = sub.add_parser("build", help="build docker/NAME/Dockerfile on the local base")
    build_p.add_argument("name", help=", ".join(IMAGES))
    build_p.add_argument("extra", nargs=argparse.REMAINDER, help="more `podman build` flags, e.g. --build-arg K=V")
    run_p = sub.add_parser("podman", help="any podman command with this machine's runtime flags and ulimits")
    run_p.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "base":
            make_base(args.rebuild)
        elif args.command == "build":
            print(build(args.name, args.extra))
        else:
            return podman(*args.args, check=False).returncode
    except (PodmanError, subprocess.CalledProcessError) as e:
        print(f"docker/podman.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
