"""GRPO training of a browser agent with TRL's GRPOTrainer and bgwork's multi-turn `rollout_func`.

    result = train(params, run_dir, env_url)        # -> TrainResult(output_dir, final_dir, global_step, ...)

Layout under the run dir:
    <model>-browsergym-<UTC timestamp>/     TRL output_dir
        checkpoint-<step>/                  every train.save_steps (train.save_total_limit kept)
        final/                              the trained model (or LoRA adapter) + tokenizer
        tensorboard/                        event files: every trainer scalar + success/format metrics
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bgwork.config import LoraParams, Params, RolloutParams, TrainParams

log = logging.getLogger(__name__)

OUTPUT_DIR_RE = re.compile(r".+-browsergym-\d{8}T\d{6}Z$")


class TrainingSetupError(ValueError):
    """Parameters that cannot make a training run; the message names the key."""


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    global_step: int
    log_history: list[dict]
    stopped_by_guard: str | None = None


# --- validation ------------------------------------------------------------------------------------

def check_params(params: Params) -> None:
    """Cross-field checks the per-field validation in bgwork.params cannot do."""
    task_weights(params.rollout)
    seed_range(params.rollout.train_seeds, "rollout.train_seeds")
    seed_range(params.rollout.eval_seeds, "rollout.eval_seeds")
    (a, b), (c, d) = params.rollout.train_seeds, params.rollout.eval_seeds
    if a < d and c < b:
        raise TrainingSetupError(f"rollout.train_seeds {[a, b]} and rollout.eval_seeds {[c, d]} overlap: "
                                 f"held-out evaluation needs seeds never seen in training")
    t = params.train
    gbs = generation_batch_size(t)
    if gbs % t.num_generations:
        raise TrainingSetupError(f"train.generation_batch_size = {gbs} must be a multiple of "
                                 f"train.num_generations = {t.num_generations}")
    if t.max_completion_length < params.rollout.max_action_tokens:
        raise TrainingSetupError(f"train.max_completion_length = {t.max_completion_length} leaves no room for one "
                                 f"action of rollout.max_action_tokens = {params.rollout.max_action_tokens}")


def task_weights(rollout: RolloutParams) -> dict[str, float]:
    if not rollout.tasks:
        raise TrainingSetupError("rollout.tasks is empty: name at least one MiniWoB task, e.g. [click-test]")
    if len(set(rollout.tasks)) != len(rollout.tasks):
        raise TrainingSetupError(f"rollout.tasks = {rollout.tasks}: a task is listed twice (use task_weights)")
    weights = rollout.task_weights or [1.0] * len(rollout.tasks)
    if len(weights) != len(rollout.tasks) or any(w <= 0 for w in weights):
        raise TrainingSetupError(f"rollout.task_weights = {rollout.task_weights} is not allowed: expected one weight "
                                 f"> 0 per task of rollout.tasks = {rollout.tasks}")
    return dict(zip(rollout.tasks, map(float, weights)))


def seed_range(r: list[int], key: str) -> tuple[int, int]:
    if len(r) != 2 or r[0] < 0 or r[1] <= r[0]:
        raise TrainingSetupError(f"{key} = {r!r} is not allowed: expected [start, end) with 0 <= start < end")
    return r[0], r[1]


def generation_batch_size(t: TrainParams) -> int:
    return t.generation_batch_size or t.per_device_train_batch_size * t.gradient_accumulation_steps


def check_tasks_exist(rollout: RolloutParams, available: list[str]) -> None:
    missing = [t for t in rollout.tasks if t not in available]
    if missing:
        raise TrainingSetupError(f"rollout.tasks: unknown task(s) {missing}; the env server offers e.g. "
                                 f"{', '.join(sorted(available)[:12])} ... ({len(available)} in all, GET /tasks)")


# --- data ------------------------------------------------------------------------------------------

def episode_specs(rollout: RolloutParams, n: int, seed: int, split: str = "train",
                  available: dict | None = None) -> list[tuple[str, int]]:
    """n (task, seed) pairs: tasks drawn by weight (the curriculum), task seeds from the split's range.

    `available` is a replay server's recorded seeds ({task: [[start, end), ...]], EnvClient.seeds()): seeds are
    then drawn from those inside the split's range."""
    weights = task_weights(rollout)
    lo, hi = seed_range(rollout.train_seeds if split == "train" else rollout.eval_seeds, f"rollout.{split}_seeds")
    pools = recorded_seeds(available, list(weights), lo, hi, split) if available is not None else None
    rng = random.Random(f"{split}:{seed}")
    names, w = list(weights), list(weights.values())
    # One draw pair per item, so a longer run starts with the same episodes (resume stays in step).
    specs = []
    for _ in range(n):
        task = rng.choices(names, weights=w)[0]
        specs.append((task, rng.randrange(lo, hi) if pools is None else rng.choice(pools[task])))
    return specs


def recorded_seeds(available: dict, tasks: list[str], lo: int, hi: int, split: str) -> dict[str, list[int]]:
    """Per task, the recorded seeds inside [lo, hi); an error naming the task when it has none."""
    pools = {t: [s for a, b in available.get(t, []) for s in range(max(a, lo), min(b, hi))] for t in tasks}
    empty = [t for t, seeds in pools.items() if not seeds]
    if empty:
        raise TrainingSetupError(f"rollout.{split}_seeds = [{lo}, {hi}): the replay recording has no seeds of "
                                 f"{empty} in that range (it has {', '.join(f'{t}: {available.get(t)}' for t in empty)})")
    return pools


def encode_spec(task: str, seed: int) -> str:
    """The dataset 'prompt' of a group: which task and seed its episodes play (TRL hands it to rollout_func)."""
    return json.dumps({"task": task, "seed": seed})


def decode_spec(prompt) -> tuple[str, int]:
    d = json.loads(prompt)
    return d["task"], int(d["seed"])


def train_dataset(params: Params, available: dict | None = None):
    from datasets import Dataset

    t = params.train
    groups_per_step = generation_batch_size(t) // t.num_generations
    n = (t.max_steps + 1) * groups_per_step  # one epoch covers the whole run: every group a fresh (task, seed)
    specs = episode_specs(params.rollout, n, params.seed, available=available)
    return Dataset.from_dict({"prompt": [encode_spec(*s) for s in specs]})


# --- model -----------------------------------------------------------------------------------------

def device_and_dtype(model_dtype: str):
    import torch

    cuda = torch.cuda.is_available()
    if model_dtype == "auto":
        return ("cuda" if cuda else "cpu"), (torch.bfloat16 if cuda else torch.float32)
    return ("cuda" if cuda else "cpu"), getattr(torch, model_dtype)


def lora_config(lora: LoraParams, model):
    """A peft LoraConfig whose every target module exists in `model` (else a clear error)."""
    from peft import LoraConfig

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if lora.target_modules != ["all-linear"]:
        missing = [m for m in lora.target_modules if m not in names]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                             if type(m).__name__ == "Linear" and n != "lm_head"})
            raise TrainingSetupError(f"lora.target_modules: {missing} match no module of {type(model).__name__}; "
                                     f"its linear modules are {linear} (or use ['all-linear'])")
    targets = "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                      task_type="CAUSAL_LM")


# --- trainer ---------------------------------------------------------------------------------------

def new_output_dir(run_dir: Path, model_spec: str) -> Path:
    from bgwork.models import short_name

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(run_dir) / f"{short_name(model_spec)}-browsergym-{stamp}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest `checkpoint-N` (highest N, newest output dir) under the run dir."""
    found = [(out.name, int(c.name.split("-")[1]), c) for out in Path(run_dir).iterdir()
             if out.is_dir() and OUTPUT_DIR_RE.match(out.name)
             for c in out.glob("checkpoint-*") if c.name.split("-")[1].isdigit()]
    return max(found)[2] if found else None


def resolve_resume(train: TrainParams, run_dir: Path) -> Path | None:
    if not train.resume_from_checkpoint:
        return None
    if train.resume_from_checkpoint == "latest":
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise TrainingSetupError(f"train.resume_from_checkpoint = 'latest': no checkpoint-* under {run_dir}")
        return ckpt
    ckpt = Path(train.resume_from_checkpoint)
    if not (ckpt / "trainer_state.json").exists():
        raise TrainingSetupError(f"train.resume_from_checkpoint = {ckpt}: not a checkpoint (no trainer_state.json)")
    return ckpt


def grpo_config(params: Params, output_dir: Path, device: str):
    from trl import GRPOConfig

    t = params.train
    on_gpu = device == "cuda"
    return GRPOConfig(
        output_dir=str(output_dir), max_steps=t.max_steps, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps,
        num_generations=t.num_generations, per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, generation_batch_size=generation_batch_size(t),
        beta=t.beta, loss_type=t.loss_type, scale_rewards=t.scale_rewards, epsilon=t.epsilon,
        num_iterations=t.num_iterations, temperature=t.temperature, max_completion_length=t.max_completion_length,
        max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay, gradient_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, seed=params.seed, data_seed=params.seed,
        bf16=on_gpu and params.model.dtype in ("auto", "bfloat16"), use_cpu=not on_gpu,
        use_vllm=t.use_vllm, vllm_mode=t.vllm_mode, report_to=["tensorboard"], logging_first_step=True,
        log_completions=False, shuffle_dataset=False, dataloader_num_workers=0,
    )


def make_rollout_func(runner):
    """TRL calls this with the generation batch's prompts (each group's spec repeated num_generations times)."""
    from trl.models import unwrap_model_for_generation

    from bgwork.rollout import to_rollout_output

    def rollout_func(prompts, trainer):
        specs = [decode_spec(p) for p in prompts]
        runner.vllm = trainer.vllm_generation if trainer.use_vllm else None
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs) as model:
            episodes = runner.play(model, specs)
        out = to_rollout_output(episodes)
        out["rollout_timings"] = dict(runner.timings)  # a scalar extra: every reward call sees it once
        return out

    return rollout_func


def build_trainer(params: Params, output_dir: Path, client, resolved=None, callbacks=()):
    """(GRPOTrainer, EpisodeRunner) ready to train; `resolved` may pass an already loaded ResolvedModel."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOTrainer

    from bgwork.models import resolve_model
    from bgwork.rewards import reward_functions
    from bgwork.rollout import EpisodeRunner

    check_params(params)
    check_tasks_exist(params.rollout, client.tasks())
    device, dtype = device_and_dtype(params.model.dtype)
    resolved = resolved or resolve_model(params.model.name, dtype=dtype)
    model, tokenizer = resolved.model, resolved.tokenizer
    peft_config = lora_config(params.lora, model) if params.lora.enabled else None
    max_parallel = min(generation_batch_size(params.train), params.env.max_sessions)
    runner = EpisodeRunner(client, tokenizer, params.rollout, temperature=params.train.temperature,
                           max_completion_length=params.train.max_completion_length, max_parallel=max_parallel)
    args = grpo_config(params, output_dir, device)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(params.rollout), args=args,
                          train_dataset=train_dataset(params, client.seeds()), processing_class=tokenizer,
                          peft_config=peft_config, rollout_func=make_rollout_func(runner),
                          callbacks=[*_callbacks(params, output_dir), *callbacks])
    return trainer, runner


def _callbacks(params: Params, output_dir: Path) -> list:
    if params.guard.mode == "off":
        return []
    from bgwork.guard import CollapseGuard

    return [CollapseGuard(params.diagnostics, params.guard, run_dir=output_dir.parent)]


def train(params: Params, run_dir: str | Path, env_url: str, resolved=None, callbacks=(),
          after_warm_start=None) -> TrainResult:
    """Train under the run dir's training lock; resumes into the checkpoint's own output dir.

    `after_warm_start(resolved)`, if given, runs between a fresh warm start and GRPO (e.g. an evaluation)."""
    from bgwork.checkpoints import training_lock
    from bgwork.envclient import EnvClient
    from bgwork.models import resolve_model

    run_dir = Path(run_dir)
    check_params(params)
    resume = resolve_resume(params.train, run_dir)
    output_dir = resume.parent if resume else new_output_dir(run_dir, params.model.name)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "tensorboard")  # transformers 5 reads it
    with training_lock(run_dir), EnvClient(env_url, token=params.env.token, timeout=params.env.request_timeout) as client:
        warm_dir = output_dir / "warmstart"
        if resume and (warm_dir / "config.json").exists():  # LoRA checkpoints hold adapters over the warm start
            resolved = resolve_model(str(warm_dir), dtype=device_and_dtype(params.model.dtype)[1])
        elif params.warmstart.episodes_per_task and not resume:
            resolved = resolved or resolve_model(params.model.name, dtype=device_and_dtype(params.model.dtype)[1])
            warm_start(params, resolved, client, warm_dir)
            if after_warm_start:
                after_warm_start(resolved)
        trainer, runner = build_trainer(params, output_dir, client, resolved, callbacks)
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        finally:
            runner.close()
        final_dir = output_dir / "final"
        trainer.save_model(str(final_dir))
        trainer.processing_class.save_pretrained(str(final_dir))
    guard = next((c for c in trainer.callback_handler.callbacks if type(c).__name__ == "CollapseGuard"), None)
    return TrainResult(output_dir, final_dir, trainer.state.global_step, list(trainer.state.log_history),
                       getattr(guard, "stop_reason", None))


def warm_start(params: Params, resolved, client, out_dir: Path) -> dict:
    """SFT on scripted demonstrations (train seeds), in place; saved to out_dir. With LoRA the warm-start
    adapter is merged into the weights, and GRPO then trains a fresh adapter on top."""
    from bgwork.runs import write_json
    from bgwork.warmstart import collect_demos, sft

    w = params.warmstart
    specs = [(task, seed) for task in task_weights(params.rollout)
             for _, seed in episode_specs(params.rollout, w.episodes_per_task, params.seed, split="train",
                                          available=client.seeds())]
    demos = collect_demos(client, resolved.tokenizer, params.rollout, specs)
    if not demos:
        raise RuntimeError("warm start: no scripted demonstration succeeded; is the env server healthy?")
    model = resolved.model
    if params.lora.enabled:
        from peft import get_peft_model
        model = get_peft_model(model, lora_config(params.lora, model))
    losses = sft(model, demos, lr=w.learning_rate, epochs=w.epochs, batch_size=w.batch_size, seed=params.seed,
                 pad_token_id=resolved.tokenizer.pad_token_id)
    if params.lora.enabled:
        resolved.model = model.merge_and_unload()
    # GRPO's LoRA adapters name their base after this: it must be the warm-started weights, not the original.
    resolved.model.config._name_or_path = resolved.model.name_or_path = str(out_dir)
    resolved.model.save_pretrained(out_dir)
    resolved.tokenizer.save_pretrained(out_dir)
    info = {"demos": len(demos), "episodes_tried": len(specs), "first_loss": losses[0], "last_loss": losses[-1],
            "steps": len(losses)}
    write_json(out_dir / "warmstart.json", info)
    log.warning("warm start: %d demonstrations, SFT loss %.3f -> %.3f in %d steps", len(demos), losses[0], losses[-1],
                len(losses))
    return info


# --- reading a run back (notebooks) ----------------------------------------------------------------

CURVES = ["reward", "reward_std", "entropy", "loss", "success_rate", "format_error_rate"]


def curves(output_dir: str | Path):
    """Step-indexed frame of the run's TensorBoard scalars (one column per tag)."""
    from bgwork.tbscalars import load_scalars, wide

    df = load_scalars(output_dir)
    return wide(df, df["run"].iloc[0])


def plot_curves(frame, tags=CURVES, title: str = ""):
    """One small panel per metric against the optimizer step."""
    import matplotlib.pyplot as plt

    tags = [t for t in tags if t in frame]
    fig, axes = plt.subplots(1, len(tags), figsize=(3.2 * len(tags), 2.8), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        ax.plot(frame.index, frame[tag], marker="o", ms=3)
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def summary(result: TrainResult, frame) -> dict:
    """Final figures of a run for metrics.json (last logged value of each curve, means where noisy)."""
    last = frame.ffill().iloc[-1] if len(frame) else {}
    out = {"global_step": result.global_step, "output_dir": str(result.output_dir), "final_dir": str(result.final_dir),
           "stopped_by_guard": result.stopped_by_guard}
    for tag in CURVES + ["grad_norm", "frac_reward_zero_std", "step_time"]:
        if tag in frame:
            out[f"final_{tag}"] = float(last[tag])
            out[f"mean_{tag}"] = float(frame[tag].mean())
    return out
