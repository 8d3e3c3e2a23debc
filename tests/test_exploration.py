"""ε-uniform element exploration in training rollouts (bgwork.exploration, rollout.explore_epsilon).

The rollout test plays the committed replay recording (no browser) with the bundled SmolLM2, whose sampled actions
parse, so exploration has actions to retarget; the replay answers each retargeted click as the browser did.
"""

from __future__ import annotations

import pytest

from bgwork.exploration import Explorer, page_bids, with_bids
from bgwork.params import ParamsError, load_params
from envserver.grammar import parse_action
from tests.conftest import SINGLE_DECISION_REPLAY

PAGE = ("Goal: Click on Tab #2.\n\nPage observation:\nRootWebArea 'Click Tab Task', focused\n"
        "\t[17] tablist '', multiselectable=False\n\t\t[18] tab 'Tab #1', selected=True\n\t\t\t[19] link 'Tab #1'\n"
        "\t\t[20] tab 'Tab #2'\n\t[24] tabpanel 'Tab #1'\n\t\t\tStaticText 'Press [99] to go on'\n\n"
        "Previous action: click('18')")


def test_page_bids_are_the_ids_of_the_page_in_order():
    """Element lines only: an id in brackets inside text or the previous action is not an element."""
    assert page_bids(PAGE) == ["17", "18", "19", "20", "24"]
    assert page_bids("Goal: x\n\nPage observation:\nRootWebArea '', focused") == []


@pytest.mark.parametrize("action, expected", [
    ("click('13')", "click('7')"),
    ("click('13', button='right')", "click('7', button='right')"),
    ("click(bid='13')", "click(bid='7')"),
    ("fill('13', 'Kim')", "fill('7', 'Kim')"),
    ("press('13', 'Enter')", "press('7', 'Enter')"),
    ("drag_and_drop('13', '14')", "drag_and_drop('7', '7')"),
    ("scroll(0, 100)", "scroll(0, 100)"),
])
def test_with_bids_swaps_only_element_arguments(action, expected):
    assert with_bids(parse_action(action), lambda: "7").to_code() == expected


def test_explorer_swaps_at_rate_epsilon_and_only_what_has_an_element():
    bids = ["3", "5", "8"]
    assert all(Explorer(0.0).swap("click('3')", bids) is None for _ in range(200))
    always = Explorer(1.0, seed=1)
    swapped = [always.swap("click('3')", bids) for _ in range(300)]
    assert {s for s in swapped} == {"click('3')", "click('5')", "click('8')"}  # uniform over the page, own id too
    assert always.swap("noop()", bids) is None and always.swap(None, bids) is None
    assert always.swap("click('3')", []) is None  # an empty page: nothing to draw from
    quarter = Explorer(0.25, seed=2)
    n = sum(quarter.swap("fill('3', 'x')", bids) is not None for _ in range(4000))
    assert 900 <= n <= 1100  # 1000 expected; the bounds are ~6 standard deviations wide
    assert [Explorer(0.5, seed=3).swap("click('3')", bids) for _ in range(5)] == \
        [Explorer(0.5, seed=3).swap("click('3')", bids) for _ in range(5)]  # reproducible from the seed


@pytest.mark.parametrize("sections, message", [
    ({"rollout": {"explore_epsilon": 1.5}}, "rollout.explore_epsilon"),
    ({"rollout": {"explore_epsilon": 0.2}, "train": {"use_vllm": True}}, "rollout.explore_epsilon = 0.2 with "
                                                                         "train.use_vllm"),
])
def test_exploration_params_that_do_not_fit_name_their_keys(sections, message):
    with pytest.raises(ParamsError, match=message.replace(".", r"\.")):
        load_params(sections)


@pytest.mark.heavy
def test_explored_episodes_train_on_the_action_they_played(replay_server):
    """ε = 1 on click-tab: every parsed action is retargeted at an element of its page, the completion's action
    tokens are that action (so GRPO credits what was played), the replay scores that action as the browser did
    (whether a random element succeeds is chance, so the check does not ask for a mix), and the curriculum ignores
    it. Four groups: the base model writes a parseable action ~1 time in 5."""
    import torch

    from bgwork import models
    from bgwork.curriculum import Curriculum
    from bgwork.dynamic_sampling import GroupSampler
    from bgwork.envclient import EnvClient
    from bgwork.metrics import SAMPLING_EXPLORED_FRAC, SAMPLING_EXPLORED_SUCCESS_RATE
    from bgwork.rewards import reward_functions
    from bgwork.rollout import EpisodePlayer
    from envserver.replay import ReplayStore

    p = load_params({"rollout": {"tasks": ["click-tab"], "max_episode_steps": 1, "max_action_tokens": 12,
                                 "obs_max_tokens": 192, "curriculum": "adaptive", "explore_epsilon": 1.0},
                     "train": {"num_generations": 8, "per_device_train_batch_size": 8}})
    resolved = models.resolve_model(models.BUNDLED_SMOLLM2, dtype=torch.bfloat16)
    tok = resolved.tokenizer
    recording = ReplayStore(SINGLE_DECISION_REPLAY)
    with EnvClient(replay_server.url) as client:
        player = EpisodePlayer(client, tok, p.rollout, temperature=1.0, max_completion_length=64, max_parallel=16)
        player.explorer = Explorer(1.0, seed=0)
        cur = Curriculum(p.rollout, 8, seed=0, available=client.seeds())
        sampler = GroupSampler(player, cur, p.train, reward_functions(p.rollout))
        try:
            episodes, stats = sampler.play(resolved.model, [("click-tab", seed) for seed in range(3, 7)], 4)
        finally:
            player.close()
    explored = [e for e in episodes if e.explored]
    assert explored  # ε = 1: every action that parses and names an element was explored
    assert all(e.format_errors or not parse_action(e.actions[0]).bids() for e in episodes if not e.explored)
    for e in explored:
        action = e.actions[0]
        assert parse_action(action).bids()[0] in e.page_bids
        played = [t for t, keep in zip(e.completion_ids, e.env_mask) if keep]
        assert tok.decode(played, skip_special_tokens=True) == action
        assert e.lost is None and e.steps == 1  # the replay has every element's answer recorded
        # Scored as the action played: what Chromium did on it when recorded (the replay records clicks and
        # focus; any other verb gets "not recorded", reward 0).
        browser = recording.get("click-tab", e.seed).outcome(0, parse_action(action).key())
        assert e.success == bool(browser and browser.done and browser.reward > 0), action
    assert sum(cur.episodes.values()) == sum(1 for e in episodes if not e.explored)  # only on-policy ones
    assert stats[SAMPLING_EXPLORED_FRAC] == pytest.approx(len(explored) / 32)
    assert stats[SAMPLING_EXPLORED_SUCCESS_RATE] == pytest.approx(sum(e.success for e in explored) / len(explored))
