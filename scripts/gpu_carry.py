"""Pack what a GPU node without network needs to run bgwork's notebooks against a replay, into one folder.

    .venv/bin/python scripts/gpu_carry.py .carry          # here, with the package index reachable
    bash scripts/gpu_box.sh .carry                        # there: installs offline, registers the kernel

The folder holds:
- wheels/: CPython 3.12 manylinux wheels of what such a node lacks (trl, datasets, papermill, nbconvert,
  ipykernel, jupytext, tbparse, fastapi, uvicorn, pydantic ...), pinned to this venv's versions, with their
  dependencies, except the heavy stack a CUDA PyTorch image already has (PRESENT);
- cache/tokenizers/smollm2-135m-instruct: the tokenizer the random LFM2-350M model uses (BGWORK_CACHE=cache).
The replay recording itself is committed under data/replay/ and travels with the working tree.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ["trl", "datasets", "papermill", "nbconvert", "nbformat", "nbclient", "ipykernel", "jupytext", "tbparse",
          "fastapi", "uvicorn", "wsproto", "pydantic", "pyyaml", "httpx", "prometheus-client", "ipywidgets", "tqdm",
          "psutil"]
# What a CUDA PyTorch image has (measured-facts.md, 2026-11-27), and what must never be swapped under it.
PRESENT = {"torch", "triton", "numpy", "pandas", "pyarrow", "matplotlib", "transformers", "tokenizers",
           "safetensors", "huggingface-hub", "accelerate", "peft", "tensorboard", "tensorboard-data-server",
           "grpcio", "protobuf", "sentencepiece", "pillow", "scipy", "sympy", "networkx", "jinja2", "markupsafe",
           "fonttools", "kiwisolver", "contourpy", "cycler", "pyparsing", "python-dateutil", "pytz", "tzdata",
           "six", "filelock", "setuptools", "pip", "wheel", "mpmath", "regex", "hf-xet"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"]


def pinned(names: list[str]) -> list[str]:
    """name==this venv's version where installed (the GPU run then matches the CPU one), else the bare name."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def resolve(requirements: list[str]) -> list[tuple[str, str]]:
    """(name, version) of the whole dependency closure for CPython 3.12 on x86-64 Linux."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
               *[a for p in PLATFORMS for a in ("--platform", p)], "--target", str(Path(tmp) / "t"),
               "--report", str(report), *requirements]
        subprocess.run(cmd, check=True)
        items = json.loads(report.read_text())["install"]
    return [(i["metadata"]["name"].lower().replace("_", "-"), i["metadata"]["version"]) for i in items]


def download(pins: list[str], dest: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--python-version", "3.12",
                    "--implementation", "cp", "--only-binary=:all:", *[a for p in PLATFORMS for a in ("--platform", p)],
                    "-d", str(dest), *pins], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", help="folder to fill (git-ignored, e.g. .carry)")
    args = p.parse_args()
    dest = Path(args.dest)
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    closure = resolve(pinned(NEEDED))
    carried = sorted(f"{n}=={v}" for n, v in closure if n not in PRESENT and not n.startswith("nvidia-"))
    download(carried, wheels)
    (dest / "requirements.txt").write_text("\n".join(carried) + "\n")  # the closure, for the record
    (dest / "needed.txt").write_text("\n".join(pinned(NEEDED)) + "\n")  # what gpu_box.sh asks pip for

    sys.path.insert(0, str(ROOT))
    from bgwork.models import smollm2_tokenizer_dir

    tok = dest / "cache" / "tokenizers" / "smollm2-135m-instruct"
    shutil.rmtree(tok, ignore_errors=True)
    shutil.copytree(smollm2_tokenizer_dir(), tok)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"{dest}: {len(carried)} wheels + tokenizer, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
