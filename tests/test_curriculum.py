"""Groups that carry signal: the adaptive curriculum, dynamic sampling, and the params that switch them on.

The sampler and trainer tests play real episodes against the committed replay recording (no browser): the bundled
SmolLM2 for the sampler (its sampled actions succeed sometimes), tiny LFM2 for the trainer's plumbing.
"""

from __future__ import annotations

import json

import pytest

from bgwork import metrics as m
from bgwork import models
from bgwork.config import RolloutParams
from bgwork.curriculum import Curriculum, signal_probability
from bgwork.params import ParamsError, load_params
from bgwork.rollout import Episode


def rollout(**kw) -> RolloutParams:
    return RolloutParams(**{"tasks": ["a", "b", "c"], "curriculum": "adaptive", **kw})


def test_signal_probability_is_largest_at_the_edge_of_competence():
    assert signal_probability(0.0, 8) == signal_probability(1.0, 8) == 0.0
    assert signal_probability(0.5, 8) == pytest.approx(1 - 2 / 256)
    assert signal_probability(0.5, 2) == pytest.approx(0.5)
    assert signal_probability(0.1, 8) == pytest.approx(signal_probability(0.9, 8))
    assert signal_probability(0.3, 8) > signal_probability(0.1, 8) > signal_probability(0.02, 8)


def test_adaptive_weights_follow_running_success_and_keep_a_floor():
    cur = Curriculum(rollout(curriculum_floor=0.05, curriculum_memory=0.5), group_size=4, seed=0)
    assert cur.weights() == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})  # uninformed start: equal
    cur.update([("a", True)] * 8 + [("b", False)] * 8 + [("c", True), ("c", False)] * 4)
    w = cur.weights()
    assert cur.success["a"] > 0.99 and cur.success["b"] < 0.01 and cur.success["c"] == pytest.approx(0.5, abs=0.01)
    assert w["c"] > 0.8 and min(w["a"], w["b"]) >= 0.05 and sum(w.values()) == pytest.approx(1.0)
    drawn = [t for t, _ in cur.draw(400)]
    assert drawn.count("c") > 300 and drawn.count("a") > 5 and drawn.count("b") > 5


def test_signal_curriculum_weights_tasks_by_their_share_of_mixed_groups():
    """A task the policy always fails (success 0) whose groups are mixed anyway (exploration) is drawn most under
    `signal`; `adaptive` would give it only the floor. A group weighs like its episodes in the running share."""
    cur = Curriculum(rollout(curriculum="signal", curriculum_floor=0.05, curriculum_memory=0.9), group_size=4, seed=0)
    cur.update([("a", False)] * 48 + [("b", True), ("b", False)] * 24 + [("c", True)] * 48)
    cur.update_groups([("a", True)])
    assert cur.mixed["a"] == pytest.approx(0.5 * 0.9 ** 4 + (1 - 0.9 ** 4))
    cur.update_groups([("a", True)] * 5 + [("b", False)] * 5 + [("c", False)] * 5)
    w = cur.weights()
    assert w["a"] > 0.8 and min(w["b"], w["c"]) >= 0.05 and sum(w.values()) == pytest.approx(1.0)
    adaptive = Curriculum(rollout(curriculum_floor=0.05, curriculum_memory=0.9), group_size=4, seed=0)
    adaptive.update([("a", False)] * 48 + [("b", True), ("b", False)] * 24 + [("c", True)] * 48)
    adaptive.update_groups([("a", True)] * 6)  # followed, but adaptive draws by success alone
    assert adaptive.weights()["a"] < 0.1 and adaptive.weights()["b"] > 0.8
    saved = json.loads(json.dumps(cur.state()))
    again = Curriculum(rollout(curriculum="signal"), 4, seed=1)
    again.load_state(saved)
    assert again.mixed == cur.mixed and again.weights() == pytest.approx(w)


def test_running_success_is_a_moving_average_per_episode():
    cur = Curriculum(rollout(curriculum_memory=0.9), group_size=4, seed=0)
    cur.update([("a", False)] * 2)
    assert cur.success["a"] == pytest.approx(0.5 * 0.81)  # two episodes = two updates of weight 0.1
    assert cur.episodes == {"a": 2, "b": 0, "c": 0}


def test_fixed_curriculum_draws_by_task_weights_and_seeds_from_the_range():
    cur = Curriculum(RolloutParams(tasks=["a", "b"], task_weights=[1, 3], train_seeds=[10, 20]), 4, seed=0)
    specs = cur.draw(2000)
    assert 0.7 < sum(t == "b" for t, _ in specs) / 2000 < 0.8
    assert {s for _, s in specs} <= set(range(10, 20))
    cur.update([("a", True)] * 20)  # followed for the log, but the draws stay fixed
    assert cur.weights() == pytest.approx({"a": 0.25, "b": 0.75})


def test_state_round_trips_through_json_and_ranks_draw_apart():
    cur = Curriculum(rollout(), 4, seed=3)
    cur.update([("b", True)] * 3)
    saved = json.loads(json.dumps(cur.state()))
    again = Curriculum(rollout(), 4, seed=99)
    again.load_state(saved)
    assert again.success == cur.success and again.draw(20) == cur.draw(20)
    r0, r1 = Curriculum(rollout(), 4, seed=3), Curriculum(rollout(), 4, seed=3)
    r1.reseed(3, rank=1)
    assert r0.draw(20) != r1.draw(20)


@pytest.mark.parametrize("sections, message", [
    ({"rollout": {"tasks": ["a", "b"], "curriculum": "adaptive", "curriculum_floor": 0.6}},
     r"rollout.curriculum_floor = 0.6 x 2 tasks exceeds all the draws"),
    ({"rollout": {"tasks": ["a", "b"]}, "warmstart": {"episodes_per_task": 2, "tasks": ["a", "z"]}},
     r"warmstart.tasks = \['a', 'z'\] must be a non-empty subset of rollout.tasks"),
    ({"train": {"max_steps": 0}}, r"train.max_steps = 0 \(no GRPO\) needs a warm start"),
    ({"train": {"use_adaptive_entropy": True, "entropy_coef": 2.0}},
     r"train.entropy_coef = 2.0 must lie within \[train.entropy_coef_min, train.entropy_coef_max\]"),
    ({"rollout": {"curriculum": "uncertain"}}, r"rollout.curriculum = 'uncertain' is not allowed: expected one of"),
])
def test_params_that_do_not_fit_name_their_keys(sections, message):
    with pytest.raises(ParamsError, match=message):
        load_params(sections)


def test_entropy_params_reach_grpo_config(tmp_path):
    from bgwork.trainer import grpo_config

    p = load_params(train={"entropy_coef": 0.01, "use_adaptive_entropy": True, "entropy_target": 0.7,
                           "entropy_coef_max": 0.1, "entropy_coef_delta": 0.002, "top_entropy_quantile": 0.2})
    args = grpo_config(p, tmp_path, "cpu")
    assert (args.entropy_coef, args.use_adaptive_entropy, args.entropy_target, args.entropy_coef_max,
            args.entropy_coef_delta, args.top_entropy_quantile) == (0.01, True, 0.7, 0.1, 0.002, 0.2)


# --- dynamic sampling ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rewards, explored, expected", [
    ([1.0, 1.0, 1.0, 0.0], [False, False, False, True], False),  # solved task, an explored click failed: old news
    ([0.0, 0.0, 0.0, 1.0], [False, False, False, True], True),   # an explored element beat the policy's choice
    ([1.0, 0.0, 1.0, 0.0], [False, False, False, True], True),   # the policy itself is mixed
    ([0.0, 0.0, 0.0, 0.0], [False, False, True, True], False),
    ([0.0, None, 1.0, 1.0], [False, False, True, False], True),  # an unscorable episode is left out
    ([1.0, 0.0], [True, True], True),                             # all explored: reward variance decides
    ([1.0, 1.0, 1.0], [False, False, False], False),
])
def test_a_group_teaches_when_an_episode_beats_one_of_the_policys_own(rewards, explored, expected):
    from bgwork.dynamic_sampling import has_signal, teaches

    assert teaches(rewards, explored) is expected
    if not any(explored):
        assert teaches(rewards, explored) == has_signal(rewards)  # without exploration: reward variance


def test_has_signal_as_trl_counts_it():
    from bgwork.dynamic_sampling import has_signal

    assert has_signal([0.0, 1.0, 0.0]) and not has_signal([1.0, 1.0]) and not has_signal([0.0, 0.0, 0.0])
    assert not has_signal([1.0, None]) and has_signal([1.0, None, 0.0])  # unscorable episodes left out


def test_total_rewards_add_the_shaping_terms_as_grpo_does():
    from bgwork.dynamic_sampling import total_rewards
    from bgwork.rewards import reward_functions

    eps = [Episode("a", 0, prompt_ids=[1], completion_ids=[2], env_mask=[1], logprobs=[0.0], reward=r, steps=1,
                   format_errors=e, done=True) for r, e in [(1.0, 0), (0.0, 1), (0.0, 0)]]
    eps.append(Episode("a", 0, prompt_ids=[1], completion_ids=[2], env_mask=[1], logprobs=[0.0], lost="gone"))
    funcs = reward_functions(RolloutParams(tasks=["a"], format_reward=0.1))
    assert total_rewards(eps, funcs) == [pytest.approx(1.1), 0.0, pytest.approx(0.1), None]


@pytest.mark.heavy
def test_dynamic_sampling_trains_on_groups_whose_rewards_vary(replay_server):
    """The bundled SmolLM2 at temperature 1.5 on focus-text-2 (pick the n-th of 2-4 boxes): some episodes succeed.
    Extra groups are played until the round has enough mixed ones (or the budget ends); mixed groups come first."""
    from bgwork.dynamic_sampling import GroupSampler, has_signal, total_rewards
    from bgwork.envclient import EnvClient
    from bgwork.rewards import reward_functions
    from bgwork.rollout import EpisodePlayer

    p = load_params({"rollout": {"tasks": ["focus-text-2", "click-test"], "max_episode_steps": 1,
                                 "max_action_tokens": 8, "obs_max_tokens": 64, "curriculum": "adaptive"},
                     "train": {"num_generations": 4, "dynamic_sampling": True, "max_resample_groups": 4,
                               "temperature": 1.5}})
    resolved = models.resolve_model(models.BUNDLED_SMOLLM2, dtype=_bf16())
    with EnvClient(replay_server.url) as client:
        cur = Curriculum(p.rollout, 4, seed=0, available=client.seeds())
        player = EpisodePlayer(client, resolved.tokenizer, p.rollout, temperature=1.5, max_completion_length=64,
                               max_parallel=32)
        funcs = reward_functions(p.rollout)
        sampler = GroupSampler(player, cur, p.train, funcs)
        try:
            episodes, stats = sampler.play(resolved.model, [("focus-text-2", 3), ("click-test", 5)], 2)
        finally:
            player.close()
    assert len(episodes) == 8
    groups = [episodes[:4], episodes[4:]]
    signal = [has_signal(total_rewards(g, funcs)) for g in groups]
    played = int(stats[m.SAMPLING_GROUPS_PLAYED])
    zero_played = round(stats[m.SAMPLING_FRAC_ZERO_STD_PLAYED] * played)
    assert 2 <= played <= 6 and sum(cur.episodes.values()) == 4 * played  # every played episode updates it
    assert signal == sorted(signal, reverse=True)  # mixed groups first
    assert sum(signal) == min(2, played - zero_played)  # as many mixed groups as were played, up to the round
    if played == 2:
        assert zero_played == 0  # no extra group is played when the round already carries signal
    assert {m.per_task(m.CURRICULUM_WEIGHT, "click-test"), m.CURRICULUM_EXPECTED_SIGNAL} <= set(stats)
    assert sampler.timings["generate_s"] > 0


def _bf16():
    import torch

    return torch.bfloat16


@pytest.mark.heavy
def test_grpo_with_adaptive_curriculum_logs_sampling_and_resumes_its_state(replay_server, tmp_path):
    """Two GRPO steps of tiny LFM2 through the trainer: the sampling metrics reach TensorBoard, each checkpoint holds
    the curriculum's state, and a resumed run starts from it."""
    from bgwork.tbscalars import load_scalars
    from bgwork.trainer import train

    sections = {"env": {"url": replay_server.url}, "model": {"name": models.TINY_RANDOM_LFM2},
                "rollout": {"tasks": ["click-test", "focus-text"], "max_episode_steps": 1, "max_action_tokens": 8,
                            "obs_max_tokens": 64, "curriculum": "adaptive"},
                "train": {"max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 4, "save_steps": 1,
                          "max_completion_length": 64, "dynamic_sampling": True, "max_resample_groups": 2,
                          "entropy_coef": 0.01},
                "lora": {"enabled": False}, "guard": {"mode": "off"}}
    result = train(load_params(sections), tmp_path, replay_server.url)
    tags = set(load_scalars(result.output_dir)["tag"])
    assert {m.SAMPLING_GROUPS_PLAYED, m.SAMPLING_FRAC_ZERO_STD_PLAYED, m.FRAC_REWARD_ZERO_STD, m.ENTROPY_COEF,
            m.per_task(m.CURRICULUM_SUCCESS, "focus-text")} <= tags
    saved = json.loads((result.output_dir / "checkpoint-2" / "curriculum-0.json").read_text())
    assert sum(saved["episodes"].values()) >= 2 * 4  # two rounds of two groups of two, at least

    from bgwork.envclient import EnvClient  # resuming: the curriculum starts where checkpoint-2 left it
    from bgwork.trainer import build_trainer

    with EnvClient(replay_server.url) as client:
        trainer, player = build_trainer(load_params(sections), result.output_dir, client)
        try:
            trainer.curriculum_checkpoint.load(result.output_dir / "checkpoint-2")
            assert trainer.curriculum_checkpoint.curriculum.episodes == saved["episodes"]
        finally:
            player.close()
