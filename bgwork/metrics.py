"""The metric vocabulary: every name a training run logs, and the keys other modules read back.

TRL's GRPOTrainer logs most training metrics, and its names are the vocabulary (reward, reward_std,
frac_reward_zero_std, entropy, ...); bgwork's reward function adds the episode metrics (success_rate, ...).
Code that writes or reads a metric uses these constants, never a string literal, so a name is spelled once.
TensorBoard stores them as `train/<name>`; `bgwork.tbscalars` drops that prefix again.
"""

from __future__ import annotations

# --- logged by TRL's GRPOTrainer (and transformers' Trainer) at every logging step ------------------------------
REWARD = "reward"  # mean reward of the generation batch (all reward functions summed)
REWARD_STD = "reward_std"  # its spread; 0 everywhere = no learning signal
FRAC_REWARD_ZERO_STD = "frac_reward_zero_std"  # share of groups whose rewards are all equal (advantage 0)
ENTROPY = "entropy"  # mean token entropy of the policy (nats)
LOSS = "loss"
GRAD_NORM = "grad_norm"
LEARNING_RATE = "learning_rate"
STEP_TIME = "step_time"  # seconds per optimizer step

# --- logged by bgwork.rewards.env_reward, once per generation batch -----------------------------------------
SUCCESS_RATE = "success_rate"  # share of scored episodes that solved their task; per task: success_rate/<task>
FORMAT_ERROR_RATE = "format_error_rate"  # share of actions that were not a well-formed call
EPISODE_STEPS = "episode_steps"  # mean browser actions per episode
ENV_RETRIES = "env_retries"  # mean re-runs per episode after infrastructure failures
ENV_OUTAGE_S = "env/outage_s"  # seconds the step's rollout waited for an env server that went away (0: none)
ENV_LOST = "env/frac_lost"  # share of episodes still lost after every re-run: unscored (reward None), never 0
EPISODES = "episodes"  # episodes of the generation batch, every rank's
EPISODES_LOST = "episodes_lost"  # of those, still lost to infrastructure after every retry: unscored, never 0

# --- logged by TRL when train.entropy_coef > 0 or train.use_adaptive_entropy ----------------------------------
ENTROPY_COEF = "entropy_coef"  # the entropy bonus' coefficient (changes each step under adaptive control)

# --- logged once per generation round by the group sampler (bgwork.dynamic_sampling, bgwork.curriculum) --------
SAMPLING_GROUPS_PLAYED = "sampling/groups_played"  # groups played this round, extra dynamic-sampling ones included
SAMPLING_FRAC_ZERO_STD_PLAYED = "sampling/frac_reward_zero_std_played"  # share of PLAYED groups without signal
SAMPLING_SUCCESS_RATE_PLAYED = "sampling/success_rate_played"  # success over every played episode (the kept
#   ones, which success_rate describes, lean toward mixed groups)
SAMPLING_EXPLORED_FRAC = "sampling/explored_frac"  # rollout.explore_epsilon: share of played episodes with an
#   explored action (an element drawn uniformly instead of the model's)
SAMPLING_EXPLORED_SUCCESS_RATE = "sampling/explored_success_rate"  # success of those episodes
CURRICULUM_EXPECTED_SIGNAL = "curriculum/expected_signal"  # share of drawn groups expected to carry signal
CURRICULUM_MIXED = "curriculum/mixed"  # per task: curriculum/mixed/<task>, its share of groups to learn from
CURRICULUM_SUCCESS = "curriculum/success"  # per task: curriculum/success/<task>, the running success estimate
CURRICULUM_WEIGHT = "curriculum/weight"  # per task: curriculum/weight/<task>, its share of the draws


def per_task(metric: str, task: str) -> str:
    """`success_rate/click-test`: a metric of one task of the curriculum."""
    return f"{metric}/{task}"


def rollout_timing(name: str) -> str:
    """`rollout/generate_s`, `rollout/env_s`: wall time of the rollout's parts in one generation batch."""
    return f"rollout/{name}"


# What notebooks 02 and 03 plot per step, and what a run's summary reports.
CURVES = [REWARD, REWARD_STD, ENTROPY, LOSS, SUCCESS_RATE, FORMAT_ERROR_RATE]
# Notebook 03's second row of curves: do the groups carry a signal (TRL's frac_reward_zero_std on the trained groups,
# the same share among all played ones, how many were played), and what the curriculum expects.
SIGNAL_CURVES = [FRAC_REWARD_ZERO_STD, SAMPLING_FRAC_ZERO_STD_PLAYED, SAMPLING_GROUPS_PLAYED,
                 CURRICULUM_EXPECTED_SIGNAL, ENTROPY_COEF, SAMPLING_EXPLORED_FRAC, SAMPLING_EXPLORED_SUCCESS_RATE]
SUMMARY = CURVES + [GRAD_NORM, FRAC_REWARD_ZERO_STD, STEP_TIME, SAMPLING_FRAC_ZERO_STD_PLAYED,
                    SAMPLING_GROUPS_PLAYED, SAMPLING_SUCCESS_RATE_PLAYED]

# --- what the live guard (bgwork.guard) records in a run's metrics.json; notebook 04 reads it back -------------
GUARD_MODE = "guard/mode"
GUARD_STOPPED = "guard/stopped"
GUARD_STOPPED_AT_STEP = "guard/stopped_at_step"
GUARD_REASON = "guard/reason"
GUARD_WARNINGS = "guard/warnings"
GUARD_FINDING = "guard/finding"
GUARD_BEFORE_RESUME = "guard/before_resume"
GUARD_PREFIX = "guard/"

# --- held-out evaluation stages of notebook 03 (metrics.json: eval/<stage>_success_rate[/<task>]) -------------
STAGES = {"untrained": "untrained", "warm-started": "warmstart", "trained": "trained"}  # table column -> key part


def eval_success_key(stage: str, task: str | None = None) -> str:
    """metrics.json key of a stage's held-out success rate: eval/trained_success_rate[/click-test]."""
    key = f"eval/{STAGES[stage]}_{SUCCESS_RATE}"
    return per_task(key, task) if task else key

# --- models under test (notebook 07; notebook 06's agent check): metrics.json eval/<model>/<metric>[/<task>] -----
CI_LOW, CI_HIGH = "ci_low", "ci_high"  # the 95 % Wilson interval of a success rate
MEAN_STEPS = "mean_steps"  # browser actions per held-out episode
EVAL_FIGURES = [SUCCESS_RATE, CI_LOW, CI_HIGH, MEAN_STEPS, FORMAT_ERROR_RATE]
DIFF_FIGURES = ["mean", "ci_low", "ci_high", "pairs"]  # bgwork.stats.paired_difference


def eval_key(model: str, metric: str, task: str | None = None) -> str:
    """metrics.json key of a model's held-out figure: eval/checkpoint-2/success_rate[/click-test]."""
    key = f"eval/{model}/{metric}"
    return per_task(key, task) if task else key


def eval_diff_key(model: str, baseline: str, figure: str, task: str | None = None) -> str:
    """The paired difference of success (model - baseline) on the same episodes: eval/diff/A-vs-B/mean[/task]."""
    key = f"eval/diff/{model}-vs-{baseline}/{figure}"
    return per_task(key, task) if task else key
