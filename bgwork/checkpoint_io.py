"""Checkpoints that are whole or absent: how they are written, and how a complete one is told from a fragment.

    problem = checkpoint_problem(path)      # None: complete; else why not ("no trainer_state.json", ...)
    class T(AtomicCheckpoints, GRPOTrainer) # every checkpoint-N appears by one rename, complete

A checkpoint is complete when its `trainer_state.json` parses and its weights are all there and whole (every
safetensors file as long as its own header says, every shard its index names, every torch zip readable to its
end). A kill, a full disk or a power cut while one is written leaves at most a hidden staging folder
(`.saving-checkpoint-N`), never a `checkpoint-N` that looks finished: transformers writes into the staging
folder, which is renamed into place when the save returned. Deleting goes the other way round: rename to
`.deleting-checkpoint-N`, then remove. Both kinds of leftover are incomplete by name (`leftover_kind`), and
notebook 05 offers them for deletion.
"""

from __future__ import annotations

import errno
import json
import shutil
import struct
import zipfile
from pathlib import Path

TRAINER_STATE = "trainer_state.json"
STAGING_PREFIX = ".saving-"  # <output_dir>/.saving-checkpoint-N/checkpoint-N while transformers writes it
DELETING_PREFIX = ".deleting-"  # a checkpoint (or final/) on its way out
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
TORCH_STATE_FILES = ("optimizer.pt", "scheduler.pt")  # optional (a slimmed checkpoint has none), whole if there


# --- telling complete from incomplete ----------------------------------------------------------------------

def checkpoint_problem(path: str | Path) -> str | None:
    """None when `path` is a complete checkpoint; otherwise what is missing or cut off, in a few words."""
    path = Path(path)
    if leftover_kind(path.name):
        return f"left by an interrupted {leftover_kind(path.name)}"
    if not path.is_dir():
        return "not a directory"
    try:
        state = json.loads((path / TRAINER_STATE).read_text())
    except FileNotFoundError:
        return f"no {TRAINER_STATE} (the save did not finish)"
    except (OSError, ValueError) as e:
        return f"{TRAINER_STATE} unreadable (cut off?): {e}"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{TRAINER_STATE} has no global_step"
    weights = weight_files(path)
    if isinstance(weights, str):
        return weights
    for f in weights + [path / n for n in TORCH_STATE_FILES if (path / n).exists()]:
        broken = file_problem(f)
        if broken:
            return f"{f.name}: {broken}"
    return None


def is_complete(path: str | Path) -> bool:
    return checkpoint_problem(path) is None


def weight_files(path: Path) -> list[Path] | str:
    """The weight files of a checkpoint (all shards an index names), or why they are not all there."""
    for index in sorted(p for p in path.iterdir() if p.name.endswith(INDEX_SUFFIXES)):
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"{index.name} unreadable: {e}"
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            return f"{index.name} names missing shard(s) {missing}"
        return [path / s for s in shards]
    found = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
    return found or f"no weights ({' / '.join(WEIGHT_FILES)})"


def file_problem(f: Path) -> str | None:
    """A safetensors file shorter or longer than its header says, or a torch zip without its end: cut off."""
    try:
        size = f.stat().st_size
        if f.name.endswith(".safetensors"):
            with f.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            return None if size == 8 + n + end else f"{size} bytes, its header says {8 + n + end} (cut off)"
        if f.suffix in (".bin", ".pt", ".pth"):
            return None if zipfile.is_zipfile(f) else "not a whole torch file (cut off)"
    except (OSError, ValueError, struct.error, KeyError, TypeError) as e:
        return f"unreadable ({e})"
    return None


def leftover_kind(name: str) -> str | None:
    """'save' / 'deletion' for the hidden folders an interrupted save or delete leaves, else None."""
    if name.startswith(STAGING_PREFIX):
        return "save"
    if name.startswith(DELETING_PREFIX):
        return "deletion"
    return None


# --- writing and removing atomically --------------------------------------------------------------------------

def publish(src: Path, dst: Path) -> None:
    """Move a fully written folder to its final name; an older folder of that name is replaced, never half."""
    old = None
    if dst.exists():
        old = dst.with_name(DELETING_PREFIX + dst.name)
        remove_tree(old)
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_tree(path: Path) -> None:
    """Delete a folder so that a kill midway leaves a `.deleting-` leftover, never a fragment under its own name."""
    if not path.exists():
        return
    if not leftover_kind(path.name):
        doomed = path.with_name(DELETING_PREFIX + path.name)
        if doomed.exists():
            shutil.rmtree(doomed)
        path = path.rename(doomed)
    shutil.rmtree(path)


def disk_full(exc: BaseException, path: Path) -> bool:
    """Did `exc` come from a full disk (ENOSPC / EDQUOT anywhere in its chain, or next to no space left at path)?
    torch.save says only "file write failed", so the free space is asked too."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(seen) for s in ("No space left on device", "os error 28", "Disk quota exceeded")):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(path).free < 1 << 20
    except OSError:
        return False


class AtomicCheckpoints:
    """Trainer mixin: `checkpoint-N` appears complete or not at all, and old ones go without leaving fragments.

    transformers' own `_save_checkpoint` writes into `<output_dir>/.saving-checkpoint-N/` (its output dir is
    pointed there for the call); when it returns, the folder is renamed to `checkpoint-N` and the
    `save_total_limit` rotation runs here (transformers' ran on the staging folder, where it finds nothing).
    A save that fails removes its staging folder; one that failed on a full disk says so (OSError ENOSPC).
    """

    def _save_checkpoint(self, model, trial):
        name = f"checkpoint-{self.state.global_step}"
        real = self.args.output_dir
        out = Path(self._get_output_dir(trial))
        staging = out / (STAGING_PREFIX + name)
        main = self.args.should_save
        if main:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed save at this step left
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        except BaseException as e:
            if main:
                full = disk_full(e, out)
                shutil.rmtree(staging, ignore_errors=True)  # frees what the failed save took
                if full:
                    raise OSError(errno.ENOSPC, f"No space left on device while saving {out / name}; the partial "
                                  f"checkpoint was removed, complete ones are untouched") from e
            raise
        finally:
            self.args.output_dir = real
        if self.args.world_size > 1:
            self.accelerator.wait_for_everyone()  # sharded saves: every rank has written its part
        if main:
            publish(staging / name, out / name)
            shutil.rmtree(staging, ignore_errors=True)
            rotate(out, self.args.save_total_limit, keep=[out / name, self.state.best_model_checkpoint])


def rotate(output_dir: Path, limit: int | None, keep=()) -> list[Path]:
    """Remove the oldest checkpoints beyond `limit` (by modification time, as transformers does), never those
    in `keep`; returns what was removed."""
    if not limit:
        return []
    keep = {Path(k) for k in keep if k}
    ckpts = sorted((p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
                   key=lambda p: (p.stat().st_mtime, int(p.name[11:])))
    removed = []
    for p in ckpts:
        if len(ckpts) - len(removed) <= max(limit, len(keep)):
            break
        if p not in keep:
            remove_tree(p)
            removed.append(p)
    return removed


def save_final(trainer, final_dir: Path) -> Path:
    """The trained model (or adapter) and tokenizer into `final_dir`, which appears complete or not at all."""
    final_dir = Path(final_dir)
    staging = final_dir.with_name(STAGING_PREFIX + final_dir.name)
    main = trainer.args.should_save
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        trainer.save_model(str(staging))  # every rank: a sharded model is gathered
        if main:
            trainer.processing_class.save_pretrained(str(staging))
    except BaseException:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if trainer.args.world_size > 1:
        trainer.accelerator.wait_for_everyone()
    if main:
        publish(staging, final_dir)
    return final_dir
