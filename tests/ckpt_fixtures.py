"""Real checkpoint folders for cleanup/export tests: a tiny LFM2 saved with save_pretrained, a real AdamW
state (one optimizer step) saved with torch.save, a real TrainerState log, as transformers' Trainer writes them.

The model and optimizer files are built once per process and copied into each checkpoint (fast)."""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from bgwork import metrics as m

SMOLLM2_VOCAB = 49152


def tiny_lfm2(vocab_size: int = SMOLLM2_VOCAB, hidden: int = 64, seed: int = 0):
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    config = Lfm2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                        layer_types=["conv", "full_attention"], num_attention_heads=4, num_key_value_heads=2,
                        block_auto_adjust_ff_dim=False, max_position_embeddings=2048)
    torch.manual_seed(seed)
    return Lfm2ForCausalLM(config)


@functools.lru_cache(maxsize=None)
def _template(kind: str) -> Path:
    """A checkpoint's model + optimizer/scheduler/RNG files, written once: kind 'full' or 'lora'."""
    import torch

    out = Path(tempfile.mkdtemp(prefix=f"bgwork-ckpt-template-{kind}-"))
    model = tiny_lfm2()
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "in_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loss = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss
    loss.backward()
    opt.step()
    sched.step()
    model.save_pretrained(out)
    torch.save(opt.state_dict(), out / "optimizer.pt")
    torch.save(sched.state_dict(), out / "scheduler.pt")
    torch.save({"python": 0, "cpu": torch.get_rng_state()}, out / "rng_state.pth")
    torch.save({"learning_rate": 1e-4}, out / "training_args.bin")
    return out


def make_run(run_dir: Path, steps: list[int], rewards: list[float] | None = None, kind: str = "full") -> Path:
    """A training output dir with checkpoint-<step> folders; rewards[i] is logged at steps[i]."""
    from transformers import TrainerState

    run_dir.mkdir(parents=True, exist_ok=True)
    rewards = rewards or [0.1 * (i + 1) for i in range(len(steps))]
    history = []
    for step, reward in zip(steps, rewards):
        history.append({"step": step, "epoch": 0.0, m.LOSS: 0.01, m.REWARD: reward, m.REWARD_STD: 0.2,
                        m.SUCCESS_RATE: reward / 2})
        ckpt = run_dir / f"checkpoint-{step}"
        shutil.copytree(_template(kind), ckpt)
        TrainerState(global_step=step, max_steps=max(steps), log_history=list(history)).save_to_json(
            str(ckpt / "trainer_state.json"))
    return run_dir


def model_bytes(ckpt: Path) -> int:
    return sum(p.stat().st_size for p in ckpt.iterdir() if p.suffix == ".safetensors")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


EXPORT_FIXTURES_VERSION = "export-v1"  # bump when export_fixtures changes


def cached_export_fixtures() -> dict[str, Path]:
    """export_fixtures built once under the bgwork cache dir (deterministic: fixed seeds), then reused."""
    from bgwork.models import build_lock, cache_dir

    root = cache_dir() / "test-fixtures" / EXPORT_FIXTURES_VERSION
    paths = {"full": root / "runs" / "full" / "lfm2-browsergym" / "checkpoint-3",
             "lora": root / "runs" / "lora" / "lfm2-browsergym" / "checkpoint-2"}
    with build_lock(EXPORT_FIXTURES_VERSION):
        if not (root / "DONE").exists():
            shutil.rmtree(root, ignore_errors=True)
            built = export_fixtures(root)
            assert built == paths, built
            (root / "DONE").write_text("ok\n")
    return paths


def export_fixtures(root: Path) -> dict[str, Path]:
    """Checkpoints to export: a full tiny LFM2 (hidden 256, so K-quants apply to whole rows) and a LoRA on it,
    each trained a few steps so its logits are peaked."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bgwork.models import BUNDLED_SMOLLM2, load_tokenizer, model_path

    tok_dir = Path(model_path(BUNDLED_SMOLLM2))
    tok = load_tokenizer(str(tok_dir))
    full = root / "runs" / "full" / "lfm2-browsergym" / "checkpoint-3"
    model = tiny_lfm2(hidden=256, seed=1)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied: frozen keeps the steps cheap
    train_briefly(model, tok, TEXTS_A, steps=25, lr=1e-2)
    model.save_pretrained(full)
    for name in TOKENIZER_FILES:
        if (tok_dir / name).exists():
            shutil.copy2(tok_dir / name, full / name)
    base = AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=[
        "q_proj", "k_proj", "v_proj", "out_proj", "w1", "w2", "w3", "in_proj"]))
    train_briefly(lora, tok, TEXTS_B, steps=15, lr=2e-2)
    adapter = root / "runs" / "lora" / "lfm2-browsergym" / "checkpoint-2"
    lora.save_pretrained(adapter)
    return {"full": full, "lora": adapter}


# A random model's next-token logits are nearly flat: top-1 and top-2 differ by less than quantization noise,
# so greedy tokens flip under Q8_0. A few steps on fixed texts give peaked logits, as a trained model has.
TEXTS_A = ["Goal: Click the button.\n\nPage observation:\n[13] button 'Click Me!'\n\nAction: click('13')",
           "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid."]
TEXTS_B = ["Goal: Click the button.\n\nPage observation:\n[13] button 'Click Me!'\n\nAction: click('13') done",
           "The capital of France is Paris, a city on the Seine. The capital of Italy is Rome."]


def train_briefly(model, tok, texts: list[str], steps: int, lr: float, seed: int = 0) -> None:
    import torch

    torch.manual_seed(seed)
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    """A real tmpfs of `size` (e.g. "16m") mounted at `where`: the closest thing to a full disk a test can fill.
    Mounting needs root or CAP_SYS_ADMIN; without them the test is skipped, saying so."""
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root or CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
