"""GRPO training of a browser agent with TRL's GRPOTrainer and bgwork's multi-turn `rollout_func`.

    result = train(params, run_dir, env_url)        # -> TrainResult(output_dir, final_dir, global_step, ...)

Layout under the run dir:
    <model>-browsergym-<UTC timestamp>/     TRL output_dir
        warmstart/                          the warm-started weights (warmstart.episodes_per_task > 0)
        checkpoint-<step>/                  every train.save_steps (train.save_total_limit kept), and where an
                                            env outage stopped training; each appears complete or not at all
                                            (bgwork.checkpoint_io)
        final/                              the trained model (or LoRA adapter) + tokenizer
        tensorboard/                        event files: every trainer scalar + success/format metrics
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bgwork import ranks
from bgwork.checkpoint_io import checkpoint_problem
from bgwork.config import (
    ConfigError,
    LoraParams,
    Params,
    RolloutParams,
    TrainParams,
    generation_batch_size,
    global_generation_batch_size,
)
from bgwork.curriculum import decode_spec, train_dataset

log = logging.getLogger(__name__)

OUTPUT_DIR_RE = re.compile(r".+-browsergym-\d{8}T\d{6}Z$")


class TrainingDiverged(RuntimeError):
    """Loss or grad_norm went NaN/inf: the weights are no longer finite; nothing after the last checkpoint is kept."""


class TrainingSetupError(ConfigError):
    """Parameters that do not fit this machine, model or env server; the message names the key."""


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    global_step: int
    log_history: list[dict]
    stopped_by_guard: str | None = None


def describe(params: Params) -> str:
    """One line for a notebook: what will be trained, on what, for how long, where."""
    t, lora = params.train, params.lora
    kind = f"LoRA r={lora.r}" if lora.enabled else "full fine-tune"
    procs = f" ({t.num_processes} processes x {generation_batch_size(t)})" if t.num_processes > 1 else ""
    return (f"model {params.model.name} ({kind}), tasks {params.rollout.tasks}, {t.max_steps} steps x "
            f"{global_generation_batch_size(t)} episodes{procs}, on {device_and_dtype(params.model.dtype)[0]}")


def check_tasks_exist(rollout: RolloutParams, available: list[str]) -> None:
    missing = [t for t in rollout.tasks if t not in available]
    if missing:
        raise TrainingSetupError(f"rollout.tasks: unknown task(s) {missing}; the env server offers e.g. "
                                 f"{', '.join(sorted(available)[:12])} ... ({len(available)} in all, GET /tasks)")


def check_completed(result: TrainResult, train: TrainParams) -> None:
    """A run that ended early is a failure unless the guard stopped it on purpose."""
    if result.global_step < train.max_steps and not result.stopped_by_guard:
        raise AssertionError(f"training stopped at step {result.global_step} of {train.max_steps}")


# --- model -----------------------------------------------------------------------------------------

def device_and_dtype(model_dtype: str):
    import torch

    cuda = torch.cuda.is_available()
    if model_dtype == "auto":
        return ("cuda" if cuda else "cpu"), (torch.bfloat16 if cuda else torch.float32)
    if model_dtype == "bfloat16" and not cuda and not cpu_has_native_bf16():
        warn_slow_cpu_bf16()
    return ("cuda" if cuda else "cpu"), getattr(torch, model_dtype)


@functools.cache
def warn_slow_cpu_bf16() -> None:
    """Once per process: a run asks for its device and dtype several times (training, each evaluation)."""
    import torch

    log.warning("model.dtype = bfloat16 on a CPU without AMX or AVX512-BF16 (%s): its matmuls take a scalar "
                "fallback, ~38x slower than float32 on a 2-core AVX2 EPYC (docs/benchmarks.md); model.dtype: auto "
                "picks float32 here", torch.backends.cpu.get_cpu_capability())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX512-BF16), as oneDNN needs for speed."""
    import torch

    caps = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


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


# --- output dirs and resuming ----------------------------------------------------------------------

def new_output_dir(run_dir: Path, model_spec: str) -> Path:
    from bgwork.models import short_name

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(run_dir) / f"{short_name(model_spec)}-browsergym-{stamp}"


def output_checkpoints(output_dir: Path) -> list[tuple[Path, str | None]]:
    """Every `checkpoint-N` of one output dir, by step, with why it is incomplete (or None)."""
    found = [(int(c.name.split("-")[1]), c) for c in Path(output_dir).glob("checkpoint-*")
             if c.is_dir() and c.name.split("-")[1].isdigit()]
    return [(c, checkpoint_problem(c)) for _, c in sorted(found)]


def run_checkpoints(run_dir: Path) -> list[tuple[Path, str | None]]:
    """Every `checkpoint-N` under one run dir's output dirs, oldest first, with why it is incomplete (or None)."""
    outs = sorted(out for out in Path(run_dir).iterdir() if out.is_dir() and OUTPUT_DIR_RE.match(out.name))
    return [found for out in outs for found in output_checkpoints(out)]


def newest_run_checkpoint(run_dir: Path) -> Path | None:
    """Newest complete `checkpoint-N` (highest N, newest output dir) under one run dir (for resuming it)."""
    complete = [c for c, problem in run_checkpoints(run_dir) if problem is None]
    return complete[-1] if complete else None


def resolve_resume(train: TrainParams, run_dir: Path) -> Path | None:
    if not train.resume_from_checkpoint:
        return None
    if train.resume_from_checkpoint == "latest":
        ckpt = newest_run_checkpoint(run_dir)
        if ckpt is None:
            skipped = "; ".join(f"{c.parent.name}/{c.name}: {p}" for c, p in run_checkpoints(run_dir))
            raise TrainingSetupError(f"train.resume_from_checkpoint = 'latest': no complete checkpoint-* under "
                                     f"{run_dir}" + (f" (incomplete, skipped: {skipped})" if skipped else ""))
    else:
        ckpt = Path(train.resume_from_checkpoint)
        problem = checkpoint_problem(ckpt)
        if problem:
            raise TrainingSetupError(f"train.resume_from_checkpoint = {ckpt}: not a complete checkpoint ({problem})")
    if not (ckpt / "optimizer.pt").exists():
        log.warning("%s holds no optimizer state (slimmed?): training resumes with a fresh AdamW state", ckpt)
    return ckpt


# --- trainer ---------------------------------------------------------------------------------------

def grpo_config(params: Params, output_dir: Path, device: str):
    from trl import GRPOConfig

    t = params.train
    on_gpu = device == "cuda"
    cfg = GRPOConfig(
        output_dir=str(output_dir), max_steps=t.max_steps, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps,
        num_generations=t.num_generations, per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        generation_batch_size=global_generation_batch_size(t),  # TRL's is over all processes
        beta=t.beta, loss_type=t.loss_type, scale_rewards=t.scale_rewards, epsilon=t.epsilon,
        num_iterations=t.num_iterations, temperature=t.temperature, max_completion_length=t.max_completion_length,
        max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay, gradient_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, seed=params.seed, data_seed=params.seed,
        bf16=on_gpu and params.model.dtype in ("auto", "bfloat16"), use_cpu=not on_gpu,
        use_vllm=t.use_vllm, vllm_mode=t.vllm_mode, report_to=["tensorboard"], logging_first_step=True,
        log_completions=False, shuffle_dataset=False, dataloader_num_workers=0,
        disable_tqdm=ranks.launched(),  # launched: the notebook shows one bar (bgwork.launch)
        entropy_coef=t.entropy_coef, use_adaptive_entropy=t.use_adaptive_entropy, entropy_target=t.entropy_target,
        entropy_coef_min=t.entropy_coef_min, entropy_coef_max=t.entropy_coef_max,
        entropy_coef_delta=t.entropy_coef_delta, top_entropy_quantile=t.top_entropy_quantile,
    )
    if cfg.world_size == 1 and cfg.n_gpu > 1:
        # One process on a multi-GPU box trains on its current GPU: Trainer would wrap the model in
        # nn.DataParallel, which GRPOTrainer refuses (several GPUs: train.num_processes).
        cfg._n_gpu = 1
    return cfg


def make_rollout_func(sampler, dataset_specs: bool):
    """TRL calls this with the generation batch's prompts (each group's spec repeated num_generations times).

    `dataset_specs`: play the groups the prompts name (the fixed curriculum); else the sampler's curriculum draws
    them. With dynamic sampling the sampler may play more groups and keep those whose rewards vary
    (bgwork.dynamic_sampling); the batch it returns has the prompts' size either way."""
    from trl.models import unwrap_model_for_generation

    from bgwork.rollout import to_rollout_output

    def rollout_func(prompts, trainer):
        g = trainer.args.num_generations
        specs = [decode_spec(p) for p in prompts][::g] if dataset_specs else None
        sampler.player.vllm = trainer.vllm_generation if trainer.use_vllm else None
        checkpointing = trainer.args.gradient_checkpointing_kwargs
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gradient_checkpointing_kwargs=checkpointing) as model:
            episodes, stats = sampler.play(model, specs, len(prompts) // g)
        out = to_rollout_output(episodes)
        out["rollout_timings"] = dict(sampler.timings)  # scalar extras: every reward call sees them once
        out["sampling_stats"] = stats
        out["env_outage_s"] = sampler.outage_s
        return out

    return rollout_func


class CurriculumCheckpoint:
    """Saves the curriculum's running state with every checkpoint (`curriculum-<rank>.json`); `load` on resume."""

    def __init__(self, curriculum, rank: int):
        from transformers import TrainerCallback

        self.curriculum, self.name = curriculum, f"curriculum-{rank}.json"
        outer = self

        class _Callback(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                from bgwork.runs import write_json

                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    write_json(ckpt / outer.name, outer.curriculum.state())

        self.callback = _Callback()

    def load(self, checkpoint: Path) -> None:
        import json

        path = Path(checkpoint) / self.name
        if path.is_file():
            self.curriculum.load_state(json.loads(path.read_text()))


def rollout_params_for_training(rollout):
    """The rollout params training plays with. Under data parallelism the KV carry across turns is off: on 2 and
    4 H100s every run with it turned every gradient NaN from its 2nd-3rd step (1 GPU: never; without the carry:
    never, at the same throughput; docs/benchmarks.md, "Data-parallel training"). Cause not found yet."""
    from dataclasses import replace

    from bgwork import ranks

    if ranks.world_size() > 1 and rollout.fast_generation and rollout.carry_kv_cache:
        log.warning("rollout.carry_kv_cache is off under data parallelism (%d processes): with it the gradients "
                    "turned NaN on multi-GPU runs; see docs/benchmarks.md", ranks.world_size())
        return replace(rollout, carry_kv_cache=False)
    return rollout


def build_trainer(params: Params, output_dir: Path, client, resolved=None, callbacks=()):
    """(GRPOTrainer, EpisodePlayer) ready to train; `resolved` may pass an already loaded ResolvedModel."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from bgwork.curriculum import Curriculum
    from bgwork.dynamic_sampling import GroupSampler
    from bgwork.exploration import Explorer
    from bgwork.models import resolve_model
    from bgwork.replicas import session_budget
    from bgwork.rewards import reward_functions
    from bgwork.rollout import EpisodePlayer

    check_tasks_exist(params.rollout, client.tasks())
    device, dtype = device_and_dtype(params.model.dtype)
    resolved = resolved or resolve_model(params.model.name, dtype=dtype)
    model, tokenizer = resolved.model, resolved.tokenizer
    peft_config = lora_config(params.lora, model) if params.lora.enabled else None
    max_parallel = min(generation_batch_size(params.train), session_budget(client, params.env))
    player = EpisodePlayer(client, tokenizer, rollout_params_for_training(params.rollout),
                           temperature=params.train.temperature,
                           max_completion_length=params.train.max_completion_length, max_parallel=max_parallel)
    player.budget = lambda: session_budget(client, params.env)  # replicas that die take their share with them
    args = grpo_config(params, output_dir, device)
    available = client.seeds()
    curriculum = Curriculum(params.rollout, params.train.num_generations, params.seed, available)
    sampler = GroupSampler(player, curriculum, params.train, reward_functions(params.rollout))
    dataset_specs = params.rollout.curriculum == "fixed"
    saver = CurriculumCheckpoint(curriculum, rank=0)
    trainer = _grpo_trainer_class()(model=model, reward_funcs=reward_functions(params.rollout), args=args,
                          train_dataset=train_dataset(params, available), processing_class=tokenizer,
                          peft_config=peft_config, rollout_func=make_rollout_func(sampler, dataset_specs),
                          callbacks=[*_callbacks(params, output_dir), saver.callback, *callbacks])
    rank = trainer.accelerator.process_index  # each data-parallel rank draws its own groups
    curriculum.reseed(params.seed, rank)
    if params.rollout.explore_epsilon:
        player.explorer = Explorer(params.rollout.explore_epsilon, params.seed, rank)
    saver.name = f"curriculum-{rank}.json"
    trainer.curriculum_checkpoint = saver
    return trainer, player


def _grpo_trainer_class():
    """TRL's GRPOTrainer whose checkpoints appear complete or not at all (bgwork.checkpoint_io)."""
    from trl import GRPOTrainer

    from bgwork.checkpoint_io import AtomicCheckpoints

    return type("GRPOTrainer", (AtomicCheckpoints, GRPOTrainer), {"__module__": __name__})


def _callbacks(params: Params, output_dir: Path) -> list:
    from bgwork.launch import StepLines

    steps = [StepLines()] if ranks.launched() else []  # launched: rank 0 reports steps to the notebook
    if params.guard.mode == "off":
        return steps
    from bgwork.guard import CollapseGuard

    return [*steps, CollapseGuard(params.diagnostics, params.guard, run_dir=output_dir.parent)]


def train(params: Params, run_dir: str | Path, env_url: str | list[str], resolved=None, callbacks=(),
          after_warm_start=None) -> TrainResult:
    """Train under the training lock of the run dir (and of the run dir a resumed checkpoint lives in); resumes
    into the checkpoint's own output dir.

    `after_warm_start(resolved)`, if given, runs between the warm start (a fresh one, or the one a resumed run
    reloads) and GRPO (e.g. an evaluation).
    When the env server stays away past env.outage_timeout_s, the steps done so far are saved as a checkpoint
    before the error (bgwork.outage.EnvOutage) is raised."""
    from bgwork.checkpoint_io import save_final
    from bgwork.models import resolve_model
    from bgwork.outage import InfrastructureError
    from bgwork.replicas import connect
    from bgwork.training_lock import training_lock
    from bgwork.warmstart import warm_start

    run_dir = Path(run_dir)
    resume = resolve_resume(params.train, run_dir)
    # every rank of a launched run writes into rank 0's dir (a timestamp may differ by a second between ranks)
    output_dir = ranks.same_as_rank0(resume.parent if resume else new_output_dir(run_dir, params.model.name))
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "tensorboard")  # transformers 5 reads it
    dtype = device_and_dtype(params.model.dtype)[1]
    with contextlib.ExitStack() as stack:
        # launched: the notebook process that started `accelerate launch` holds the run dir's lock
        for locked in [] if ranks.launched() else dict.fromkeys([run_dir, output_dir.parent]):
            stack.enter_context(training_lock(locked))  # cleanup must leave both alone
        client = stack.enter_context(connect(env_url, params.env))
        warm_dir = output_dir / "warmstart"
        if resume and (warm_dir / "config.json").exists():  # LoRA checkpoints hold adapters over the warm start
            warm = resolve_model(str(warm_dir), dtype=dtype)
            if resolved is None:
                resolved = warm
            else:  # the caller's handle is what it evaluates after training (notebook 03), as on a fresh start
                resolved.model = warm.model
            if after_warm_start:
                after_warm_start(resolved)
        elif params.warmstart.episodes_per_task and not resume:
            resolved = resolved or resolve_model(params.model.name, dtype=dtype)
            adapter = lora_config(params.lora, resolved.model) if params.lora.enabled else None
            warm_start(params, resolved, client, warm_dir, adapter)
            if after_warm_start:
                after_warm_start(resolved)
        if params.train.max_steps == 0:  # the warm start only (an SFT-only arm): its weights are the final model
            return TrainResult(output_dir, warm_dir, 0, [])
        trainer, player = build_trainer(params, output_dir, client, resolved, callbacks)
        if resume:
            trainer.curriculum_checkpoint.load(resume)
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except InfrastructureError as e:
            raise type(e)(f"{e}. {save_progress(trainer, run_dir)}") from e
        finally:
            player.close()
        guard = next((c for c in trainer.callback_handler.callbacks if type(c).__name__ == "CollapseGuard"), None)
        check_finite(getattr(guard, "stop_reason", None), output_dir, run_dir)
        final_dir = save_final(trainer, output_dir / "final")
    return TrainResult(output_dir, final_dir, trainer.state.global_step, list(trainer.state.log_history),
                       getattr(guard, "stop_reason", None))


def check_finite(stop_reason: str | None, output_dir: Path, run_dir: Path) -> None:
    """Raise TrainingDiverged when the guard stopped a run whose weights went non-finite (no final model is saved)."""
    if not (stop_reason or "").startswith("diverged"):
        return
    done = [c for c, problem in output_checkpoints(output_dir) if problem is None]
    last = done[-1] if done else None
    where = (f"the last checkpoint before it, {last}, is intact, but resuming it repeats the same settings (a "
             f"resumed optimizer keeps its learning rate): start a new run with a lower train.learning_rate or "
             f"train.max_grad_norm" if last else "no checkpoint was saved before it: start a new run with a lower "
             "train.learning_rate or train.max_grad_norm")
    raise TrainingDiverged(f"training {stop_reason}. Nothing of this run after that step was saved; {where}")


def save_progress(trainer, run_dir: Path) -> str:
    """Checkpoint the steps done when training must stop early (the env stayed away); says what it did."""
    step = trainer.state.global_step
    if step == 0:
        return "No step was completed, so there is no checkpoint to resume from"
    ckpt = Path(trainer.args.output_dir) / f"checkpoint-{step}"
    if checkpoint_problem(ckpt):
        trainer._save_checkpoint(trainer.model, trial=None)
    return f"Saved {ckpt} (step {step}); continue with `bgwork resume {run_dir}`"
