"""The one typed config of a bgwork run. Each section is a dataclass; every field documents itself.

A params/*.yaml file holds any subset of these sections; omitted values keep the defaults below (the
"embedded defaults": the only place a default is written). `bgwork.params` reads YAML, notebook dicts and
`-p` overrides into these types; `bgwork params` prints the resolved values.

A `Params` that exists is valid (as TRL's configs check themselves in `__post_init__`): every field is
checked against its type and bounds, then each section's cross-field rules run (`_check`), then those
between sections. A violation raises ConfigError naming the key(s) and what is allowed.

Section owners add fields to their own dataclass only; each field: `field(default=..., metadata={"help": ...})`.
Numeric bounds: metadata "min"/"max"; closed choices: a `Literal[...]` type.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Literal

from bgwork import metrics


class ConfigError(ValueError):
    """A value, or values together, that a run cannot use; the message names the key(s) and what is allowed."""


def _f(default, help: str, **meta):
    """A documented field; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


class _Section:
    """Checks every field on construction, then the section's own cross-field rules."""

    _key = ""  # where the section sits in Params ("env", "train", ...): error messages name "env.max_sessions"

    def __post_init__(self):
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            key = f"{self._key}.{f.name}" if self._key else f.name
            setattr(self, f.name, check_value(getattr(self, f.name), hints[f.name], f.metadata, key))
        self._check()

    def _check(self) -> None:
        """Rules between this section's fields; raise ConfigError naming the keys."""


@dataclass
class EnvParams(_Section):
    """Where the browser lives: an external envserver URL, or an embedded one started for the run."""

    _key = "env"

    url: str | None = _f(None, "envserver base URL; null starts an embedded server on a free loopback port")
    token: str | None = _f(None, "bearer token for a non-loopback envserver (else env var BGWORK_ENV_TOKEN)")
    max_sessions: int = _f(4, "embedded server: parallel sessions (browsers; a replay's cost nothing)",
                             min=1, max=1024)
    pre_observation_delay: float = _f(0.1, "embedded server: seconds to wait after an action before observing", min=0.0,
                                      max=5.0)
    action_timeout_ms: int = _f(1500, "embedded server: Playwright timeout of each click/fill/press in the page "
                                "(BrowserGym: 500)", min=1, max=60000)
    request_timeout: float = _f(60.0, "seconds before an env HTTP call is abandoned", min=1.0)
    replay: str | None = _f(None, "a recording (`bgwork record`, `python -m envserver.record`): the embedded server "
                                  "replays it instead of driving browsers (no Chromium needed, e.g. on a GPU node); "
                                  "relative to the project root")
    step_deadline_s: float = _f(30.0, "embedded server: seconds a step may take; past it only that session's browser "
                                "is relaunched (503 session_lost, the episode re-runs)", min=0.1)
    evict_idle_s: float = _f(60.0, "embedded server: when its pool is full, a new session evicts the least recently "
                             "used one idle at least this long", min=0.0)
    outage_timeout_s: float = _f(120.0, "how long episodes lost to a server that went away wait for GET /health to "
                                 "answer again before they re-run; past it a checkpoint is saved and training stops "
                                 "with an error", min=0.0)
    urls: list[str] = _f([], "several external envservers (instead of env.url): new sessions go to the least loaded "
                         "one (GET /health's active_sessions); a server that dies is left out and its episodes re-run")
    replicas: int = _f(1, "embedded mode: start this many server processes on free loopback ports, each with "
                       "env.max_sessions (live or replay); one interpreter per replica keeps many browsers from "
                       "queueing behind one", min=1, max=64)

    def _check(self) -> None:
        if self.urls and self.url:
            raise ConfigError(f"env.url = {self.url} and env.urls = {self.urls}: set one of them (env.urls for several "
                              f"servers)")
        if self.replicas > 1 and (self.url or self.urls):
            raise ConfigError(f"env.replicas = {self.replicas} starts embedded servers, but env.url/env.urls name "
                              f"external ones: set one of them")
        if len(set(self.urls)) != len(self.urls):
            raise ConfigError(f"env.urls = {self.urls}: a server is listed twice")


@dataclass
class SmokeParams(_Section):
    """Notebook 01: which tasks to reset, solve with a scripted solver, and feed a malformed action."""

    _key = "smoke"

    tasks: list[str] = _f(["click-test", "click-button", "enter-text", "focus-text", "click-checkboxes", "login-user"],
                          "MiniWoB task names to smoke-test")
    seed: int = _f(0, "seed of each smoke-test reset", min=0)


@dataclass
class DiagnosticsParams(_Section):
    """Notebook 04 and the live guard: thresholds of the training-health detectors (bgwork.diagnostics).

    Steps are logged steps (trainer global_step); "k consecutive" counts logged points, so with
    logging_steps > 1 the window spans k * logging_steps optimizer steps.
    """

    _key = "diagnostics"

    runs: list[str] = _f(["outputs/runs/*"], "notebook 04: run dirs or globs to diagnose (relative to the project "
                         "root; a glob skips dirs without TensorBoard files); [] = the notebook's own run dir, for "
                         "`bgwork run 02 04`")
    write_back: bool = _f(True, "notebook 04: also record each run's verdict in that run's own metrics.json")
    entropy_floor: float = _f(0.1, "collapse: mean token entropy (nats) below this is collapsed, whatever the start",
                              min=0.0)
    entropy_frac: float = _f(0.2, "collapse: entropy below this fraction of its early median is collapsed", min=0.0,
                             max=1.0)
    entropy_early_steps: int = _f(5, "collapse: the first N logged points give the early median (the fraction test "
                                  "starts after them)", min=1)
    entropy_patience: int = _f(2, "collapse: consecutive logged points below threshold before it counts", min=1)
    zero_std_frac: float = _f(0.95, "deadlock: a step is dead when frac_reward_zero_std >= this ...", min=0.0, max=1.0)
    reward_std_eps: float = _f(1e-6, "deadlock: ... or when reward_std <= this", min=0.0)
    deadlock_patience: int = _f(8, "deadlock: consecutive dead logged points before it counts", min=1)
    solved_reward: float = _f(0.9, "deadlock: mean reward >= this over the dead window means 'all solved'")
    failed_reward: float = _f(0.1, "deadlock: mean reward <= this means 'all failed' (between: 'mixed', each group "
                              "uniform)")
    spike_factor: float = _f(5.0, "spike: grad_norm >= this x rolling median of the previous points", min=1.0)
    spike_window: int = _f(10, "spike: how many previous logged points the rolling median uses", min=1)
    spike_min_history: int = _f(3, "spike: previous points needed before spikes are judged", min=1)
    spike_median_floor: float = _f(0.01, "spike: rolling median floored here so near-zero grads (no signal) don't make "
                                   "every blip a spike", min=0.0)
    spike_lead_steps: int = _f(3, "a spike up to this many steps before a collapse is reported as preceding it", min=1)
    plateau_window: int = _f(15, "plateau: compare the mean reward of the last N logged points with the N before",
                             min=2)
    plateau_min_gain: float = _f(0.02, "plateau: a gain below this between the two windows is a plateau", min=0.0)


@dataclass
class GuardParams(_Section):
    """Training: the CollapseGuard callback runs the diagnostics detectors on the live log."""

    _key = "guard"

    mode: Literal["warn", "stop", "off"] = _f("stop", "warn: log and record findings; stop: also save a checkpoint and "
                                              "stop on a stop_on finding; off: do nothing")
    stop_on: list[str] = _f(["collapsed", "deadlocked"], "finding kinds that stop training in mode 'stop' (collapsed, "
                            "deadlocked, spike, plateau)")


@dataclass
class CleanupParams(_Section):
    """Notebook 05: which checkpoints under outputs/ to keep, slim or delete (bgwork.checkpoints)."""

    _key = "cleanup"

    root: str | None = _f(None, "folder to clean: outputs/ or a folder inside it (relative to the project root); null: "
                          "outputs/")
    apply: bool = _f(False, "false: only show the plan (dry run); true: delete exactly what the plan lists")
    keep_last: int = _f(2, "per run: keep the N checkpoints with the highest step", min=0)
    keep_best: int = _f(1, "per run: also keep the N checkpoints best by `metric`", min=0)
    metric: str = _f(metrics.REWARD, "logged metric (trainer_state.json log_history) ranking checkpoints for keep_best")
    metric_mode: Literal["max", "min"] = _f("max", "whether a higher or lower `metric` is better")
    success_metric: str = _f(metrics.SUCCESS_RATE, "logged metric shown as the success rate (first key starting with "
                             "it)")
    pinned: list[str] = _f([], "run directory names (or paths relative to outputs/) never touched")
    slim: bool = _f(True, "drop optimizer.pt / scheduler.pt / rng_state*.pth from kept checkpoints (not resumable "
                    "after)")
    slim_latest: bool = _f(False, "also slim each run's latest checkpoint (false keeps it resumable)")
    copy_checkpoint: str | None = _f(None, "a checkpoint dir to copy out (before cleanup), e.g. the best one; "
                                     "relative to the project root")
    copy_to: str | None = _f(None, "destination of that copy (must not exist; relative to the project root); "
                             "optimizer state is left out")


@dataclass
class ExportParams(_Section):
    """Notebook 06 and the optional end-of-training export: a checkpoint -> GGUF files (bgwork.gguf_export)."""

    _key = "export"

    checkpoint: str | None = _f(None, "checkpoint dir (full or LoRA) or model spec to export; null: latest checkpoint "
                                "under outputs/")
    out_dir: str | None = _f(None, "where the .gguf files go; null: <run dir>/gguf")
    quants: list[Literal["F16", "Q8_0", "Q5_K_M", "Q4_K_M"]] = _f(["F16", "Q8_0", "Q5_K_M", "Q4_K_M"],
                                                                  "GGUF types to write")
    verify: bool = _f(True, "load each file in llama.cpp, generate, and compare next-token logits with the HF model")
    prompts: list[str] = _f(["Goal: Click the button.\n\nPage observation:\n[13] button 'Click Me!'\n\nAction:",
                             "The capital of France is"], "fixed prompts for the logits comparison")
    gen_tokens: int = _f(8, "greedy tokens generated per prompt in llama.cpp (and compared for F16/Q8_0)", min=1,
                         max=256)
    min_cosine: float = _f(0.99, "expected least cosine similarity of next-token logits (mean-centred) with the HF "
                           "model; reported, not a failure (agent success decides)", min=0.0, max=1.0)
    check_reference: bool = _f(True, "also quantize every tensor with llama.cpp's ggml_quantize_chunk and require "
                               "identical bytes (~2x quantize time)")
    after_training: bool = _f(False, "export the final model of a full run automatically when training ends")
    min_cosine_fallback: float = _f(0.97, "expected least cosine instead of min_cosine for a model whose rows are not "
                                    "multiples of 256, so K-quants fall back to Q5_0/Q5_1 (SmolLM2: 0.98 measured)",
                                    min=0.0, max=1.0)
    agent_tasks: list[str] = _f(["click-test", "click-button", "focus-text", "click-test-2"], "notebook 06: held-out "
                                "tasks each file (and the HF model) plays as an agent")
    agent_episodes_per_task: int = _f(5, "notebook 06: held-out episodes per agent task (greedy, the same seeds for "
                                      "every file); 0 = no agent check", min=0)
    agent_tolerance: float = _f(0.1, "notebook 06: a file passes when its agent success rate is at most this far below "
                                "its reference's (the HF model for F16, F16 for the other quants)", min=0.0, max=1.0)


@dataclass
class ModelParams(_Section):
    """Which model is trained (bgwork.models): a hub id, a local dir, `bundled:smollm2-135m-instruct` or
    `tiny-random-lfm2`."""

    _key = "model"

    name: str = _f("bundled:smollm2-135m-instruct", "model spec: hub id (local HF cache), local directory (relative "
                   "to the project root), "
                   "'bundled:smollm2-135m-instruct' (offline default) or 'tiny-random-lfm2' (tests)")
    dtype: Literal["auto", "float32", "bfloat16"] = _f("auto", "training dtype; auto: bfloat16 on a CUDA GPU, float32 "
                                                       "on CPU (bfloat16 on a CPU is fast only with AMX or "
                                                       "AVX512-BF16: ~4x float32 with AMX, ~38x slower without)")


@dataclass
class RolloutParams(_Section):
    """How episodes are played: task curriculum, episode length, prompt budget, action parsing, seeds."""

    _key = "rollout"

    tasks: list[str] = _f(["click-test"], "MiniWoB tasks episodes are drawn from (the curriculum)")
    task_weights: list[float] | None = _f(None, "sampling weight per task, same order as tasks (null = equal)")
    max_episode_steps: int = _f(2, "browser actions per episode at most", min=1, max=50)
    max_action_tokens: int = _f(16, "new tokens the model may generate per action (turn)", min=4, max=1024)
    obs_max_tokens: int = _f(256, "the accessibility tree is truncated to this many tokens in each turn", min=16)
    repair_unquoted_bids: bool = _f(True, "rewrite click(13) as click('13') before sending (still counted as a format "
                                    "error)")
    format_reward: float = _f(0.0, "shaping: added to the reward per well-formed action / steps taken (0 = off)",
                              min=0.0, max=1.0)
    step_penalty: float = _f(0.0, "shaping: subtracted per browser step taken (0 = off)", min=0.0, max=1.0)
    train_seeds: list[int] = _f([0, 1_000_000], "task seeds for training are drawn from [start, end)")
    eval_seeds: list[int] = _f([1_000_000, 1_001_000], "held-out task seeds for evaluation, [start, end); never "
                               "overlaps train_seeds")
    env_retries: int = _f(3, "an episode hit by an infrastructure failure (server down, session lost) is re-run this "
                          "often", min=0, max=20)
    env_workers: int = _f(4, "parallel env requests (threads); at most env.max_sessions are useful", min=1, max=64)
    fast_generation: bool = _f(True, "generate with bgwork.decoding (LFM2 and Llama models; other models and false: "
                                     "transformers' generate)")
    carry_kv_cache: bool = _f(True, "fast_generation: keep each episode's cache across turns, so a turn prefills only "
                                    "the tokens appended since the last")
    share_prompt_prefill: bool = _f(True, "fast_generation: prefill identical prompts (a group's) and the prefix all "
                                          "new episodes share once")
    cuda_graphs: bool = _f(True, "fast_generation on CUDA: replay the decode step as captured CUDA graphs (bucketed "
                                 "batch sizes, captured once per process)")
    compile_decode: bool = _f(False, "fast_generation with cuda_graphs: torch.compile the decode step before capturing "
                                     "it (fewer kernels; compiles once per process)")
    curriculum: Literal["fixed", "adaptive", "signal"] = _f("fixed", "fixed: tasks drawn by task_weights; adaptive: "
                                                            "by the chance that a group of the task carries a "
                                                            "learning signal under the policy's running success on "
                                                            "it (largest at success 0.5, the edge of competence); "
                                                            "signal: by the running share of the task's groups in "
                                                            "which an episode scored above one of the policy's own "
                                                            "(explored episodes included; bgwork.curriculum)")
    curriculum_memory: float = _f(0.95, "adaptive: weight the running success of a task keeps per episode played "
                                  "(EMA; 0.95 ~ the last 20 episodes)", min=0.0, max=0.999)
    curriculum_floor: float = _f(0.05, "adaptive: every task keeps at least this share of the draws, so a task never "
                                 "solved (or always solved) is still probed", min=0.0, max=1.0)
    explore_epsilon: float = _f(0.0, "training rollouts only: with this probability an action the model writes is "
                                "sent with its element id swapped for one drawn uniformly from the ids of the page it "
                                "was shown (bgwork.exploration); lets GRPO find the right element on a task where the "
                                "policy always picks the same wrong one. 0 = off", min=0.0, max=1.0)

    def _check(self) -> None:
        if self.curriculum != "fixed" and self.curriculum_floor * len(self.tasks) > 1:
            raise ConfigError(f"rollout.curriculum_floor = {self.curriculum_floor} x {len(self.tasks)} tasks exceeds "
                              f"all the draws: use at most {1 / len(self.tasks):.3g}")
        if not self.tasks:
            raise ConfigError("rollout.tasks is empty: name at least one MiniWoB task, e.g. [click-test]")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"rollout.tasks = {self.tasks}: a task is listed twice (use task_weights)")
        w = self.task_weights
        if w is not None and (len(w) != len(self.tasks) or any(x <= 0 for x in w)):
            raise ConfigError(f"rollout.task_weights = {w} is not allowed: expected one weight > 0 per task of "
                              f"rollout.tasks = {self.tasks}")
        for key in ("train_seeds", "eval_seeds"):
            r = getattr(self, key)
            if len(r) != 2 or r[0] < 0 or r[1] <= r[0]:
                raise ConfigError(f"rollout.{key} = {r!r} is not allowed: expected [start, end) with 0 <= start < end")
        (a, b), (c, d) = self.train_seeds, self.eval_seeds
        if a < d and c < b:
            raise ConfigError(f"rollout.train_seeds {[a, b]} and rollout.eval_seeds {[c, d]} overlap: "
                              f"held-out evaluation needs seeds never seen in training")


@dataclass
class TrainParams(_Section):
    """GRPO (TRL GRPOTrainer) settings; names follow TRL's GRPOConfig.

    The defaults are a quick CPU debug run (notebook 02 in ~2.5 min on 2 cores with the bundled model and LoRA);
    params/full.yaml and params/lfm2_350m_*.yaml hold the long runs (the original's LR 1e-6, 100 steps).
    """

    _key = "train"

    max_steps: int = _f(3, "optimizer steps; 0 = no GRPO (the warm start only, e.g. an SFT-only arm)", min=0)
    learning_rate: float = _f(1e-4, "peak learning rate (LoRA default; a full fine-tune wants ~1e-6)", min=0.0)
    lr_scheduler_type: Literal["linear", "constant", "constant_with_warmup", "cosine"] = _f("constant_with_warmup",
                                                                                            "LR schedule after warmup")
    warmup_steps: int = _f(0, "linear LR warmup steps", min=0)
    num_generations: int = _f(4, "episodes per (task, seed) group; GRPO's advantage compares them", min=2)
    per_device_train_batch_size: int = _f(4, "episodes per forward/backward micro-batch", min=1)
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step", min=1)
    generation_batch_size: int | None = _f(None, "episodes each process plays per generation round; null = batch size "
                                           "x accumulation; a multiple of num_generations", min=1)
    beta: float = _f(0.0, "KL coefficient against the reference model (0 = no reference model)", min=0.0)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = _f("dapo", "TRL loss normalisation")
    scale_rewards: Literal["group", "batch", "none"] = _f("group", "advantage scaling by the reward std of the group / "
                                                          "batch / not at all")
    epsilon: float = _f(0.2, "PPO clip range", min=0.0)
    num_iterations: int = _f(1, "optimisation passes per generation round", min=1)
    temperature: float = _f(1.0, "sampling temperature (also used when recomputing log-probs)", min=0.01)
    max_completion_length: int = _f(256, "tokens of one episode's completion (actions + later observations) at most; "
                                    "the episode stops there", min=8)
    max_grad_norm: float = _f(1.0, "gradient clipping", min=0.0)
    weight_decay: float = _f(0.0, "AdamW weight decay", min=0.0)
    gradient_checkpointing: bool = _f(False, "trade compute for memory (useful on GPU with long episodes)")
    logging_steps: int = _f(1, "log every N steps", min=1)
    save_steps: int = _f(3, "checkpoint every N steps", min=1)
    save_total_limit: int | None = _f(2, "keep at most N checkpoints (null = all)", min=1)
    resume_from_checkpoint: str | None = _f(None, "'latest' (newest checkpoint in the run dir) or a checkpoint path")
    use_vllm: bool = _f(False, "generate with TRL's vLLM integration (optional extra, GPU only)")
    vllm_mode: Literal["colocate", "server"] = _f("colocate", "TRL vllm_mode")
    num_processes: int = _f(1, "data-parallel training processes (GPUs; on CPU, processes); > 1: notebooks 02/03 start "
                            "`accelerate launch` and each process plays generation_batch_size episodes per round",
                            min=1, max=1024)
    accelerate_config: str | None = _f(None, "accelerate's own config file (`accelerate config`), handed to "
                                       "`accelerate launch --config_file` (multi-node: num_processes counts every "
                                       "process of every node); relative to the project root")
    entropy_coef: float = _f(0.0, "TRL: entropy bonus in the loss (0 = off); with use_adaptive_entropy its start value",
                             min=0.0)
    use_adaptive_entropy: bool = _f(False, "TRL (Skywork-OR1): raise entropy_coef by entropy_coef_delta each step "
                                    "the entropy is below entropy_target, lower it otherwise")
    entropy_target: float = _f(0.2, "TRL: target mean token entropy (nats) of adaptive entropy control; set it near "
                               "the entropy of a healthy early step", min=0.0)
    entropy_coef_min: float = _f(0.0, "TRL: lower bound of the adaptive entropy_coef", min=0.0)
    entropy_coef_max: float = _f(1.0, "TRL: upper bound of the adaptive entropy_coef", min=0.0)
    entropy_coef_delta: float = _f(0.005, "TRL: step of the adaptive entropy_coef", min=0.0)
    top_entropy_quantile: float = _f(1.0, "TRL: train only on the top quantile of tokens by entropy (0.2 in 'Beyond "
                                     "the 80/20 rule'; 1.0 = every token)", min=0.0, max=1.0)
    dynamic_sampling: bool = _f(False, "DAPO dynamic sampling: play extra groups and train on groups whose rewards "
                                "vary first (a group that all succeeds or all fails has advantage 0)")
    max_resample_groups: int = _f(8, "dynamic sampling: extra groups played per generation round at most (the "
                                  "cost cap); the batch is filled with zero-variance groups when they run out", min=0)

    def _check(self) -> None:
        if self.use_adaptive_entropy and not self.entropy_coef_min <= self.entropy_coef <= self.entropy_coef_max:
            raise ConfigError(f"train.entropy_coef = {self.entropy_coef} must lie within [train.entropy_coef_min, "
                              f"train.entropy_coef_max] = [{self.entropy_coef_min}, {self.entropy_coef_max}] when "
                              f"train.use_adaptive_entropy is true")
        gbs = generation_batch_size(self)
        if gbs % self.num_generations:
            raise ConfigError(f"train.generation_batch_size = {gbs} must be a multiple of "
                              f"train.num_generations = {self.num_generations}")


def generation_batch_size(train: TrainParams) -> int:
    """Episodes one process plays per generation round: the field, or (null) batch size x accumulation."""
    return train.generation_batch_size or train.per_device_train_batch_size * train.gradient_accumulation_steps


def global_generation_batch_size(train: TrainParams) -> int:
    """Episodes per generation round over all processes (TRL's generation_batch_size): the per-process batch stays
    the same when processes are added."""
    return generation_batch_size(train) * train.num_processes


@dataclass
class LoraParams(_Section):
    """LoRA adapters (peft) instead of a full fine-tune."""

    _key = "lora"

    enabled: bool = _f(True, "train LoRA adapters only (false: full fine-tune)")
    r: int = _f(8, "adapter rank", min=1)
    alpha: int = _f(16, "lora_alpha", min=1)
    dropout: float = _f(0.0, "lora_dropout", min=0.0, max=1.0)
    target_modules: list[str] = _f(["all-linear"],
                                   "module names that get adapters, each must exist in the model; ['all-linear'] = "
                                   "every linear layer but lm_head. LFM2: q_proj k_proj v_proj out_proj w1 w2 w3 "
                                   "in_proj; SmolLM2/Llama: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj")


@dataclass
class WarmstartParams(_Section):
    """Optional supervised warm start on scripted demonstrations (bgwork.solvers) before GRPO."""

    _key = "warmstart"

    episodes_per_task: int = _f(0, "scripted demonstrations per task of rollout.tasks (train seeds); 0 = no warm start",
                                min=0)
    epochs: int = _f(2, "passes over the demonstrations", min=1)
    learning_rate: float = _f(1e-4, "AdamW learning rate of the warm start", min=0.0)
    batch_size: int = _f(4, "demonstrations per step", min=1)
    tasks: list[str] | None = _f(None, "tasks that get demonstrations (a subset of rollout.tasks; null = all): GRPO "
                                 "must learn the others from reward alone")


@dataclass
class EvalParams(_Section):
    """Held-out evaluation on rollout.eval_seeds, before and after training (notebooks 02 and 03)."""

    _key = "evaluation"

    episodes_per_task: int = _f(0, "held-out episodes per task of rollout.tasks; 0 = no evaluation", min=0)
    greedy: bool = _f(True, "greedy decoding (else sampling at train.temperature)")
    after_warmstart: bool = _f(True, "notebook 03: also evaluate between the warm start and GRPO, so the report shows "
                               "what GRPO itself added")
    before_training: bool = _f(True, "notebook 03: evaluate the untrained model too (off for ablation arms that share "
                               "one base evaluation)")
    screenshots: bool = _f(True, "live env server: a screenshot of every page of an evaluated episode, for the "
                           "transcripts kept per task (first, a success, a failure); ~0.1 s per page. Training never "
                           "asks for them")
    llama_threads: int = _f(1, "llama.cpp threads of a GGUF agent; ggml's threads spin while waiting, so more than the "
                            "free cores slows it many times over", min=1, max=256)


@dataclass
class EvaluateParams(_Section):
    """Notebook 07: models under test on a task set x held-out seeds (rollout.eval_seeds), the same seeds for every
    model; greediness, screenshots and llama.cpp threads come from `evaluation`, episode limits from `rollout`."""

    _key = "evaluate"

    models: list[str] = _f([], "models under test, each a model spec (as model.name), a checkpoint dir, a LoRA adapter "
                           "dir or a .gguf file (paths relative to the project root); `label=what` names one; the "
                           "first is the baseline the others are compared with; [] = model.name")
    tasks: list[str] | None = _f(None, "MiniWoB tasks to evaluate on; null = rollout.tasks")
    episodes_per_task: int = _f(10, "held-out episodes per task and model", min=1)

    def _check(self) -> None:
        if self.tasks is not None and (not self.tasks or len(set(self.tasks)) != len(self.tasks)):
            raise ConfigError(f"evaluate.tasks = {self.tasks}: name each task once, at least one (or null for "
                              f"rollout.tasks)")


@dataclass
class Params(_Section):
    """Root of a run's parameters."""

    name: str = _f("debug", "run name, part of the run directory name")
    seed: int = _f(0, "global seed (training, sampling, task seeds derive from it)", min=0)
    env: EnvParams = field(default_factory=EnvParams, metadata={"help": "env server"})
    smoke: SmokeParams = field(default_factory=SmokeParams, metadata={"help": "notebook 01"})
    diagnostics: DiagnosticsParams = field(default_factory=DiagnosticsParams,
                                           metadata={"help": "notebook 04 / guard thresholds"})
    guard: GuardParams = field(default_factory=GuardParams, metadata={"help": "live collapse guard during training"})
    cleanup: CleanupParams = field(default_factory=CleanupParams, metadata={"help": "notebook 05: checkpoint cleanup"})
    export: ExportParams = field(default_factory=ExportParams,
                                 metadata={"help": "notebook 06 / after-training GGUF export"})
    model: ModelParams = field(default_factory=ModelParams, metadata={"help": "model to train"})
    rollout: RolloutParams = field(default_factory=RolloutParams,
                                   metadata={"help": "episodes: tasks, length, prompt, parsing"})
    train: TrainParams = field(default_factory=TrainParams, metadata={"help": "GRPO trainer"})
    lora: LoraParams = field(default_factory=LoraParams, metadata={"help": "LoRA adapters"})
    evaluation: EvalParams = field(default_factory=EvalParams, metadata={"help": "held-out evaluation"})
    warmstart: WarmstartParams = field(default_factory=WarmstartParams,
                                       metadata={"help": "SFT on scripted demos before GRPO"})
    evaluate: EvaluateParams = field(default_factory=EvaluateParams,
                                     metadata={"help": "notebook 07: models under test"})

    def _check(self) -> None:
        t, r = self.train, self.rollout
        if t.max_completion_length < r.max_action_tokens:
            raise ConfigError(f"train.max_completion_length = {t.max_completion_length} leaves no room for one "
                              f"action of rollout.max_action_tokens = {r.max_action_tokens}")
        demo_tasks = self.warmstart.tasks
        if demo_tasks is not None and (not demo_tasks or set(demo_tasks) - set(r.tasks)):
            raise ConfigError(f"warmstart.tasks = {demo_tasks} must be a non-empty subset of rollout.tasks = {r.tasks} "
                              f"(null = all of them)")
        if r.explore_epsilon and t.use_vllm:
            raise ConfigError(f"rollout.explore_epsilon = {r.explore_epsilon} with train.use_vllm = true: vLLM's "
                              f"importance-sampling correction would weigh explored actions by sampling log-probs they "
                              f"don't have; set one of them off")
        if t.max_steps == 0 and not self.warmstart.episodes_per_task:
            raise ConfigError("train.max_steps = 0 (no GRPO) needs a warm start: warmstart.episodes_per_task > 0")
        n, (lo, hi) = self.evaluation.episodes_per_task, r.eval_seeds
        if n > hi - lo:
            raise ConfigError(f"evaluation.episodes_per_task = {n} exceeds the {hi - lo} seeds of "
                              f"rollout.eval_seeds = {[lo, hi]}")
        for key, n in (("evaluate.episodes_per_task", self.evaluate.episodes_per_task),
                       ("export.agent_episodes_per_task", self.export.agent_episodes_per_task)):
            if n > hi - lo:
                raise ConfigError(f"{key} = {n} exceeds the {hi - lo} seeds of rollout.eval_seeds = {[lo, hi]}")


# --- checking one value against its field's type and bounds -------------------------------------------------------

@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def check_value(value, tp, meta, key: str):
    """`value` converted to the type `tp` within the field's bounds, or ConfigError saying what is allowed."""
    def fail(allowed):
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {allowed}")

    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else fail(f"the section type {tp.__name__}")
    if is_union(tp):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return check_value(value, inner, meta, key)
        except ConfigError:
            fail(f"{_describe(inner, meta)} or null")
    if typing.get_origin(tp) is Literal:
        return value if value in args else fail("one of " + ", ".join(map(repr, args)))
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            fail(f"a list, e.g. [a, b], whose items are each {_describe(args[0], {})}")
        return [check_value(v, args[0], {}, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        return value if isinstance(value, bool) else fail("true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(_describe(tp, meta))
    elif tp is float:
        # YAML 1.1 reads `1e-6` (no dot) as a string: accept any text float() reads as a finite number.
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not math.isfinite(number):
            fail(_describe(tp, meta))
        value = number
    elif tp is str:
        return value if isinstance(value, str) else fail("a string (quote it in YAML)")
    elif tp is dict:
        return value if isinstance(value, dict) else fail("a mapping")
    if ("min" in meta and value < meta["min"]) or ("max" in meta and value > meta["max"]):
        fail(_describe(tp, meta))
    return value


def _describe(tp, meta) -> str:
    name = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{name} in [{lo}, {hi}]"
    if lo is not None:
        return f"{name} >= {lo}"
    if hi is not None:
        return f"{name} <= {hi}"
    return name


def is_union(tp) -> bool:
    return isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union
