"""The container stack: Dockerfiles, docker/compose.yaml and environment.yml, kept in step with pyproject.toml.

The slow test builds both images with podman (docker/podman.py: a debootstrapped Debian base, because no registry
image can be pulled here) and runs them: the env server answers /health, notebook 01 run from the trainer image
against it passes, and the image's `bgwork lab` and TensorBoard serve. Measured on the 2-core box: from nothing,
the base 49 s, the env server image 3 min 24 s, the trainer image 8 min 20 s (a busy machine), then ~1 min to run;
with podman's layer cache (code edits only) the whole test takes 71 s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bgwork.runs import PROJECT_ROOT

DOCKER = PROJECT_ROOT / "docker"
CONDA_NAMES = {"pytorch": "torch", "matplotlib-base": "matplotlib"}  # conda-forge name -> PyPI name


def _podman_module():
    spec = importlib.util.spec_from_file_location("bgwork_podman", DOCKER / "podman.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]
    return {canonicalize_name(r.name): r for r in reqs}


# --- environment.yml ---------------------------------------------------------------------------------------------

def test_environment_yml_has_the_same_packages_and_ranges_as_pyproject():
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "pip" in conda and any(re.fullmatch(r"python=3\.1[1-9]", d) for d in conda)
    assert pip[-1].startswith("-e .[dev]")  # the project itself, last

    listed: dict[str, Requirement] = {}
    for line in [d for d in conda if d.split("=")[0] not in ("python", "pip")] + pip[:-1]:
        req = Requirement(line)
        name = canonicalize_name(CONDA_NAMES.get(req.name, req.name))
        assert name not in listed, f"environment.yml lists {name} twice"
        listed[name] = req
    wanted = _pyproject_requirements()
    assert sorted(listed) == sorted(wanted), "environment.yml and pyproject.toml name different packages"
    for name, req in listed.items():
        assert req.specifier == wanted[name].specifier, f"{name}: environment.yml {req}, pyproject {wanted[name]}"


# --- Dockerfiles -------------------------------------------------------------------------------------------------

def test_envserver_image_installs_pyprojects_requirements():
    """Its own short list (no torch): each entry must be pyproject's requirement, character for character."""
    text = (DOCKER / "envserver" / "Dockerfile").read_text()
    specs = re.findall(r'"([A-Za-z0-9_.\-]+[=<>!~][^"]*)"', text.split("pip install", 1)[1].split("\n\n")[0])
    wanted = _pyproject_requirements()
    assert {"browsergym-core", "fastapi", "uvicorn"} <= {canonicalize_name(Requirement(s).name) for s in specs}
    for spec in specs:
        req = Requirement(spec)
        assert str(req) == str(wanted[canonicalize_name(req.name)]), f"{spec} differs from pyproject.toml"


def test_dockerfiles_start_from_the_public_debian_image():
    for name in ("envserver", "trainer"):
        froms = re.findall(r"^FROM (\S+)", (DOCKER / name / "Dockerfile").read_text(), re.MULTILINE)
        assert froms == ["debian:bookworm-slim"], name


def test_build_mounts_give_a_build_the_hosts_pip_setup(tmp_path):
    podman = _podman_module()
    (tmp_path / "index/simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "constraints.txt").write_text("torch<=2.14.1\n")
    options = {"cert": str(tmp_path / "ca.pem"), "find-links": str(tmp_path / "wheels"),
               "extra-index-url": f"file://{tmp_path}/index/simple https://example.org/simple",
               "constraint": str(tmp_path / "constraints.txt"), "default-timeout": "180"}
    mounts = podman.build_mounts(options, tmp_path / "pip.conf")
    pairs = dict(m.rsplit(":", 1)[0].split(":", 1) for m in mounts[1::2])
    conf = (tmp_path / "pip.conf").read_text()
    assert pairs[str(tmp_path / "ca.pem")] == "/run/host-pip/ca.crt" and "cert = /run/host-pip/ca.crt" in conf
    # the index's parent is mounted (its pages link to ../../files), the URL rewritten; a remote URL stays
    inside = pairs[str(tmp_path / "index")]
    assert f"extra-index-url = file://{inside}/simple https://example.org/simple" in conf
    assert f"find-links = {pairs[str(tmp_path / 'wheels')]}" in conf
    assert f"constraint = {pairs[str(tmp_path / 'constraints.txt')]}" in conf
    assert pairs[str(tmp_path / "pip.conf")] == "/etc/pip.conf" and "default-timeout = 180" in conf
    assert all(m.endswith(":ro") for m in mounts[1::2])


# --- docker/compose.yaml -----------------------------------------------------------------------------------------

def _compose_config(env: dict) -> subprocess.CompletedProcess:
    """podman-compose's own parser and interpolation (--dry-run: no podman needed)."""
    return subprocess.run([sys.executable, "-m", "podman_compose", "--dry-run", "-f", str(DOCKER / "compose.yaml"),
                           "config"], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_compose_file_is_valid_and_complete():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BGWORK_", "JUPYTER_TOKEN"))}
    missing = _compose_config(env)
    assert missing.returncode != 0 and "BGWORK_ENV_TOKEN" in missing.stderr  # no token: a clear refusal

    result = _compose_config({**env, "BGWORK_ENV_TOKEN": "s3cret"})
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"envserver", "trainer", "tensorboard", "lab"}
    for name, service in services.items():
        build = service["build"]
        assert (Path(build["context"]) / build["dockerfile"]).is_file(), name
        assert service["environment"]["BGWORK_ENV_TOKEN"] == "s3cret", name
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert services["envserver"]["command"][:2] == ["--host", "0.0.0.0"]  # the image's entrypoint is the server
    assert int(services["envserver"]["deploy"]["replicas"]) >= 1
    trainer = services["trainer"]
    assert trainer["command"][:2] == ["bgwork", "run"] and "env.url=http://envserver:8000" in trainer["command"]
    assert trainer["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["lab"]["command"][:2] == ["bgwork", "lab"]
    assert services["tensorboard"]["command"][0] == "tensorboard"
    for name in ("trainer", "tensorboard", "lab"):  # shared outputs and cache
        volumes = services[name]["volumes"]
        assert "cache:/cache" in volumes and any(v.endswith(":/app/outputs") for v in volumes), name
    assert "cache" in config["volumes"]


# --- built and run -----------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, container: str, podman) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        state = podman.podman("inspect", "-f", "{{.State.Running}}", container, check=False, capture_output=True,
                              text=True)
        assert state.stdout.strip() == "true", f"{container} stopped:\n{_logs(podman, container)}"
        time.sleep(1)
    raise AssertionError(f"{url} did not answer in {timeout:.0f} s:\n{_logs(podman, container)}")


def _logs(podman, container: str) -> str:
    out = podman.podman("logs", "--tail", "40", container, check=False, capture_output=True, text=True)
    return out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_images_build_and_run_notebook_01_in_the_trainer_against_the_envserver(tmp_path):
    if os.geteuid() != 0 and not shutil.which("podman"):
        pytest.skip("needs root (debootstrap, rootful podman) or an installed podman")
    podman = _podman_module()
    for name in ("envserver", "trainer"):
        log = tmp_path / f"build-{name}.log"
        with log.open("w") as out:
            built = subprocess.run([sys.executable, str(DOCKER / "podman.py"), "build", name], stdout=out,
                                   stderr=subprocess.STDOUT, timeout=3000, check=False)
        assert built.returncode == 0, f"building {name} failed:\n" + "\n".join(log.read_text().splitlines()[-40:])

    run_id = uuid.uuid4().hex[:8]
    containers = []

    def start(name: str, image: str, *args: str, options=()) -> str:
        container = f"bgwork-test-{name}-{run_id}"
        podman.podman("run", "-d", "--rm", "--name", container, "--network", "host", "--no-healthcheck", *options,
                      image, *args, stdout=subprocess.DEVNULL)
        containers.append(container)
        return container

    try:
        # The env server image as it is (its entrypoint), bound to loopback: host network, nothing else exposed.
        port = _free_port()
        envserver = start("envserver", podman.IMAGES["envserver"], "--host", "127.0.0.1", "--port", str(port),
                          "--max-sessions", "2")
        health = _wait_http(f"http://127.0.0.1:{port}/health", 180, envserver, podman).json()
        assert health["status"] == "healthy" and health["browser"].startswith("Chromium"), health

        # Notebook 01 from the trainer image against that server; the run dir lands in the mounted outputs/.
        outputs = tmp_path / "outputs"
        outputs.mkdir()
        url = f"http://127.0.0.1:{port}"
        run = podman.podman("run", "--rm", "--network", "host", "-v", f"{outputs}:/app/outputs",
                            podman.IMAGES["trainer"], "bgwork", "run", "01", "-f", "params/smoke.yaml",
                            "-p", f"env.url={url}", capture_output=True, text=True, timeout=900, check=False)
        assert run.returncode == 0, f"bgwork run 01 failed in the trainer:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        (run_dir,) = (outputs / "runs").iterdir()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["smoke/passed"] is True and metrics["smoke/env_url"] == url, metrics
        assert metrics["smoke/checks_passed"] == metrics["smoke/checks_total"] > 0
        assert (run_dir / "01_env_smoke_test.html").stat().st_size > 10_000
        assert json.loads((run_dir / "environment.json").read_text())["python"].startswith("3.11")

        # The compose file's other two services, from the same image, as root.
        lab_port, token = _free_port(), uuid.uuid4().hex
        lab = start("lab", podman.IMAGES["trainer"], "bgwork", "lab", "--port", str(lab_port),
                    options=["-e", f"JUPYTER_TOKEN={token}"])
        _wait_http(f"http://127.0.0.1:{lab_port}/api/status?token={token}", 120, lab, podman)
        viewers = httpx.get(f"http://127.0.0.1:{lab_port}/lab/api/settings/@jupyterlab/docmanager-extension:plugin",
                            params={"token": token}, timeout=30).json()
        assert viewers["schema"]["properties"]["defaultViewers"]["default"] == {"python": "Jupytext Notebook"}
        tb_port = _free_port()
        tensorboard = start("tensorboard", podman.IMAGES["trainer"], "tensorboard", "--logdir", "/app/outputs/runs",
                            "--host", "127.0.0.1", "--port", str(tb_port))
        _wait_http(f"http://127.0.0.1:{tb_port}/", 120, tensorboard, podman)
    finally:
        for container in containers:
            podman.podman("rm", "-f", "-t", "10", container, check=False, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
