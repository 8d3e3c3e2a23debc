"""GRPO training end to end: tiny random LFM2 on CPU against the real envserver (uvicorn + Chromium)."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import torch
from transformers import TrainerCallback

from bgwork import metrics as m
from bgwork import models
from bgwork.curriculum import episode_specs
from bgwork.envclient import EnvClient
from bgwork.params import load_params
from bgwork.rollout import EpisodePlayer, to_rollout_output
from bgwork.tbscalars import load_scalars
from bgwork.trainer import TrainingSetupError, build_trainer, check_tasks_exist, lora_config, train
from bgwork.warmstart import collect_demos, sft
from tests.test_envserver_faults import chromium_of

# Small and quick: 2 turns of 8 tokens per episode, 4 episodes (2 groups of 2) per step.
TINY = {
    "model": {"name": models.TINY_RANDOM_LFM2},
    "rollout": {"tasks": ["click-test"], "max_episode_steps": 2, "max_action_tokens": 8, "obs_max_tokens": 128},
    "train": {"max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
              "warmup_steps": 0, "save_steps": 1, "save_total_limit": 2, "max_completion_length": 256},
    "lora": {"enabled": False},
    "guard": {"mode": "off"},
}
LFM2_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj", "w1", "w2", "w3", "in_proj"]
TB_TAGS = {m.REWARD, m.REWARD_STD, m.FRAC_REWARD_ZERO_STD, m.ENTROPY, m.LOSS, m.GRAD_NORM, m.SUCCESS_RATE,
           m.per_task(m.SUCCESS_RATE, "click-test"), m.FORMAT_ERROR_RATE, m.EPISODE_STEPS}


def tiny_params(**sections):
    return load_params(TINY, **sections)


@pytest.fixture(scope="module")
def tiny():
    return models.resolve_model(models.TINY_RANDOM_LFM2)


def scalars(output_dir) -> dict[str, list]:
    df = load_scalars(output_dir)
    return {tag: sorted(zip(g["step"], g["value"])) for tag, g in df.groupby("tag")}


# --- setup errors ------------------------------------------------------------------------------------

def test_lora_modules_must_exist(tiny):
    llama_names = tiny_params(lora={"enabled": True, "target_modules": ["q_proj", "o_proj", "gate_proj"]}).lora
    with pytest.raises(TrainingSetupError, match=r"\['o_proj', 'gate_proj'\] match no module of Lfm2ForCausalLM"):
        lora_config(llama_names, tiny.model)
    cfg = lora_config(tiny_params(lora={"enabled": True, "target_modules": LFM2_MODULES}).lora, tiny.model)
    assert set(cfg.target_modules) == set(LFM2_MODULES)
    assert lora_config(tiny_params(lora={"enabled": True}).lora, tiny.model).target_modules == "all-linear"


def test_unknown_task_names_the_key(client):
    with pytest.raises(TrainingSetupError, match=r"rollout.tasks: unknown task\(s\) \['click-tset'\]"):
        check_tasks_exist(tiny_params(rollout={"tasks": ["click-tset"]}).rollout, client.tasks())


def test_train_and_eval_seeds_never_overlap_and_runs_extend_as_prefix():
    p = tiny_params(rollout={"tasks": ["click-test", "click-button"], "task_weights": [1, 3]})
    train_specs, longer = episode_specs(p.rollout, 50, 0), episode_specs(p.rollout, 80, 0)
    assert longer[:50] == train_specs
    eval_specs = episode_specs(p.rollout, 50, 0, split="eval")
    assert {s for _, s in train_specs}.isdisjoint({s for _, s in eval_specs})
    assert {t for t, _ in longer} == {"click-test", "click-button"}


# --- rollouts ----------------------------------------------------------------------------------------

def test_multiturn_sample_logprobs_match_trainer_recomputation(envserver, client, tiny, tmp_path):
    """At step 0 the trainer's per-token log-probs of the model's action tokens equal the sampling log-probs.

    Tolerance: max |difference| <= 1e-4 nats (fp32 on CPU; the batched generate and the trainer's forward
    see different padding, so the numbers are not bit-identical).
    """
    trainer, player = build_trainer(tiny_params(), tmp_path / "out", client, tiny)
    try:
        prompts = trainer.train_dataset["prompt"][:2]
        prompts = [p for p in prompts for _ in range(2)]
        out = trainer.rollout_func(prompts, trainer)
    finally:
        player.close()
    for ids, mask, logps in zip(out["completion_ids"], out["env_mask"], out["logprobs"]):
        assert len(ids) == len(mask) == len(logps)
        assert 0 in mask and mask[0] == 1 and mask[-1] == 1  # action | env turn | action
    P = max(map(len, out["prompt_ids"]))
    C = max(map(len, out["completion_ids"]))
    pad = trainer.processing_class.pad_token_id
    prompt = torch.tensor([[pad] * (P - len(p)) + p for p in out["prompt_ids"]])
    pmask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in out["prompt_ids"]])
    comp = torch.tensor([c + [pad] * (C - len(c)) for c in out["completion_ids"]])
    cmask = torch.tensor([[1] * len(c) + [0] * (C - len(c)) for c in out["completion_ids"]])
    with torch.no_grad():
        recomputed, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt, comp], 1), torch.cat([pmask, cmask], 1), C)
    diffs = [abs(recomputed[i, j].item() - out["logprobs"][i][j])
             for i, mask in enumerate(out["env_mask"]) for j, m in enumerate(mask) if m]
    assert len(diffs) >= 4 * 2
    assert max(diffs) <= 1e-4, f"max |logp difference| {max(diffs):.2e}"


class KillingClient(EnvClient):
    """The real client, except that before its first step it SIGKILLs that session's Chromium."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.killed, self.lock = None, threading.Lock()

    def step(self, session_id, action, include_screenshot=False):
        with self.lock:
            if self.killed is None:
                chromium_of(session_id).send_signal(signal.SIGKILL)
                time.sleep(0.5)
                self.killed = session_id
        return super().step(session_id, action, include_screenshot)


@pytest.mark.parametrize("retries", [2, 0])
def test_killed_browser_is_rerun_never_scored_zero(envserver, tiny, retries):
    p = tiny_params(rollout={"env_retries": retries, "repair_unquoted_bids": True})
    with KillingClient(envserver.url) as c:
        player = EpisodePlayer(c, tiny.tokenizer, p.rollout, temperature=p.train.temperature,
                               max_completion_length=p.train.max_completion_length, max_parallel=4)
        # The tiny model never writes a valid action, so force one browser step: answer "click(13)".
        player.generate = lambda model, seqs: [(tiny.tokenizer.encode("click(13)", add_special_tokens=False), [0.0] * 4)
                                               for _ in seqs]
        try:
            episodes = player.play(tiny.model, [("click-test", 7)] * 4)
        finally:
            player.close()
    out = to_rollout_output(episodes)
    assert c.killed and player.infra_failures >= 1
    hit = [e for e in episodes if e.attempts > 1 or e.lost]
    assert len(hit) == 1
    if retries:
        assert hit[0].attempts == 2 and not hit[0].lost and hit[0].success
        assert out["env_reward"] == [1.0] * 4
    else:
        assert hit[0].lost and out["env_reward"].count(None) == 1  # unscorable for TRL, not 0
        assert sorted(r for r in out["env_reward"] if r is not None) == [1.0] * 3


# --- GRPO end to end ---------------------------------------------------------------------------------

class StopAt(TrainerCallback):
    """Interrupt a run after step N (after its checkpoint is written), as a crash would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_full_finetune_two_steps_checkpoint_tensorboard_and_resume(envserver, tmp_path):
    p = tiny_params()
    first = train(p, tmp_path, envserver.url, callbacks=[StopAt(1)])
    assert first.global_step == 1 and (first.output_dir / "checkpoint-1" / "trainer_state.json").exists()
    assert first.output_dir.name.startswith("tiny-random-lfm2-browsergym-")
    resumed = train(load_params(TINY, train={**TINY["train"], "resume_from_checkpoint": "latest"}),
                    tmp_path, envserver.url)
    assert resumed.output_dir == first.output_dir and resumed.global_step == 2
    assert (first.output_dir / "checkpoint-2").exists()
    assert (resumed.final_dir / "model.safetensors").exists() and (resumed.final_dir / "tokenizer_config.json").exists()
    tb = scalars(first.output_dir)
    assert TB_TAGS <= set(tb), sorted(TB_TAGS - set(tb))
    assert [s for s, _ in tb[m.LOSS]] == [1, 2]
    assert tb[m.FORMAT_ERROR_RATE][0][1] > 0.5  # random weights write no valid action


def test_lora_two_steps(envserver, tmp_path):
    r = train(tiny_params(lora={"enabled": True, "r": 4, "alpha": 8, "target_modules": LFM2_MODULES}),
              tmp_path, envserver.url)
    assert r.global_step == 2
    assert (r.final_dir / "adapter_config.json").exists() and not (r.final_dir / "model.safetensors").exists()
    assert TB_TAGS <= set(scalars(r.output_dir))


def test_env_reward_reaches_the_trainer(envserver, client, tmp_path):
    """Warm-start the tiny model on scripted click-test demos; its successes must show up as GRPO's reward."""
    p = tiny_params(train={**TINY["train"], "max_steps": 1, "learning_rate": 1e-5})
    tiny = models.resolve_model(models.TINY_RANDOM_LFM2)
    demos = collect_demos(client, tiny.tokenizer, p.rollout, episode_specs(p.rollout, 4, 1))
    assert len(demos) >= 2  # a scripted episode may miss under heavy load
    losses = sft(tiny.model, demos[:4], lr=2e-2, epochs=10, batch_size=2, seed=0,
                 pad_token_id=tiny.tokenizer.pad_token_id)
    assert losses[-1] < 0.1 * losses[0], losses
    r = train(p, tmp_path, envserver.url, resolved=tiny)
    logged = r.log_history[0]
    assert logged[m.REWARD] > 0 and logged[m.SUCCESS_RATE] > 0
    assert logged[m.REWARD] == pytest.approx(logged["rewards/env_reward/mean"])
