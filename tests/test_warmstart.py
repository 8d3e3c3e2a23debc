"""The scripted-demonstration warm start (bgwork.warmstart) repeats from its seed, whatever ran before it."""

from __future__ import annotations

import pytest
import torch

from bgwork import models
from bgwork.envclient import EnvClient
from bgwork.params import load_params
from bgwork.trainer import lora_config
from bgwork.warmstart import warm_start

PARAMS = {
    "model": {"name": models.TINY_RANDOM_LFM2},
    "rollout": {"tasks": ["click-test"], "max_episode_steps": 1, "max_action_tokens": 8, "obs_max_tokens": 128},
    "warmstart": {"episodes_per_task": 2, "epochs": 1, "batch_size": 2},
    "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["all-linear"]},
}


def warm_started_weights(server, tmp_path, seed: int, draws_before: int) -> dict[str, torch.Tensor]:
    """The merged warm-start weights of a fresh tiny model, after `draws_before` draws from torch's global
    generator (standing for whatever the process did first: loading, evaluating, sampling)."""
    params = load_params({**PARAMS, "seed": seed})
    resolved = models.resolve_model(models.TINY_RANDOM_LFM2)
    torch.rand(draws_before)
    with EnvClient(server.url) as client:
        warm_start(params, resolved, client, tmp_path / f"ws-{seed}-{draws_before}",
                   adapter=lora_config(params.lora, resolved.model))
    return {k: v.detach().clone() for k, v in resolved.model.state_dict().items()}


@pytest.mark.heavy
def test_the_warm_start_repeats_from_its_seed(replay_server, tmp_path):
    """Same seed: the same weights, though the global generator was left in another state; the LoRA init and
    dropout are seeded (two seed-0 ablation runs once warm-started to different held-out results)."""
    first = warm_started_weights(replay_server, tmp_path, seed=0, draws_before=3)
    again = warm_started_weights(replay_server, tmp_path, seed=0, draws_before=1000)
    other = warm_started_weights(replay_server, tmp_path, seed=1, draws_before=3)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)  # the seed does reach the warm start
