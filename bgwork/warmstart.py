"""A short supervised warm start from scripted demonstrations (bgwork.solvers), before GRPO.

A small model rarely hits a valid action by chance, and GRPO learns nothing from groups that all score 0.
Demonstrations are recorded in exactly the episode format GRPO trains on (same prompt, same multi-turn
token layout, same env mask), and the model is fine-tuned on their action tokens only.

    info = warm_start(params, resolved, client, out_dir)              # what training runs (bgwork.trainer)
    demos = collect_demos(client, tokenizer, params.rollout, specs)   # successful scripted episodes
    losses = sft(model, demos, lr=..., epochs=..., batch_size=..., seed=..., pad_token_id=...)
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from bgwork import ranks
from bgwork.config import Params, RolloutParams
from bgwork.curriculum import episode_specs, task_weights
from bgwork.envclient import EnvClient
from bgwork.prompting import Turns, user_message
from bgwork.rollout import Episode
from bgwork.solvers import solve

log = logging.getLogger(__name__)


def collect_demos(client: EnvClient, tokenizer, rollout: RolloutParams, specs: list[tuple[str, int]]) -> list[Episode]:
    """Scripted episodes for (task, seed) pairs; only those that succeed within max_episode_steps are kept."""
    turns = Turns(tokenizer)
    demos, sid = [], None
    for task, seed in specs:
        out = client.reset(task, seed=seed, session_id=sid)
        sid, obs = out["session_id"], out["observation"]
        actions = solve(task, obs)
        if not actions:
            raise ValueError(f"no scripted solver for task {task!r}: warm start needs bgwork.solvers to know it")
        e = Episode(task, seed, prompt_ids=turns.first_prompt(user_message(obs, tokenizer, rollout.obs_max_tokens)))
        for action in actions[: rollout.max_episode_steps]:
            if e.completion_ids:
                nxt = turns.next_turn(user_message(obs, tokenizer, rollout.obs_max_tokens, obs.get("last_action"),
                                                   obs.get("last_action_error")), True)
                e.completion_ids += nxt
                e.env_mask += [0] * len(nxt)
            ids = turns.action_ids(action)
            e.completion_ids += ids
            e.env_mask += [1] * len(ids)
            step = client.step(sid, action)
            obs, e.steps = step["observation"], e.steps + 1
            e.reward += float(step.get("reward") or 0.0)
            e.done = bool(step.get("done") or step.get("truncated"))
            if e.done:
                break
        e.logprobs = [0.0] * len(e.completion_ids)
        if e.success:
            demos.append(e)
        else:
            log.warning("scripted %s seed %d did not succeed; left out of the demonstrations", task, seed)
    if sid:
        client.close(sid)
    return demos


def demo_tasks(params: Params) -> list[str]:
    """The tasks the warm start demonstrates: warmstart.tasks, or (null) every task of the curriculum."""
    return list(params.warmstart.tasks) if params.warmstart.tasks is not None else list(task_weights(params.rollout))


def warm_start(params: Params, resolved, client: EnvClient, out_dir: Path, adapter=None) -> dict:
    """SFT on scripted demonstrations (train seeds) of `demo_tasks`, in place; saved to out_dir. With a LoRA
    `adapter` (a peft LoraConfig) the warm-start adapter is merged into the weights, and GRPO then trains a fresh
    one on top."""
    from bgwork.runs import write_json

    w = params.warmstart
    specs = [(task, seed) for task in demo_tasks(params)
             for _, seed in episode_specs(params.rollout, w.episodes_per_task, params.seed, split="train",
                                          available=client.seeds())]
    # data parallel: each rank plays its share, every rank fine-tunes on all of them (the same weights everywhere)
    demos = sum(ranks.all_gather(collect_demos(client, resolved.tokenizer, params.rollout, ranks.share(specs))), [])
    if not demos:
        raise RuntimeError("warm start: no scripted demonstration succeeded; is the env server healthy?")
    model = resolved.model
    # The LoRA A matrices and dropout draw from torch's global generator, whose state depends on what the process
    # did before: seeded here, two runs with the same seed warm-start the same weights (they did not: one
    # held-out task went 0.00 vs 0.40 between two seed-0 runs of params/ablation.yaml).
    torch.manual_seed(params.seed)
    if adapter is not None:
        from peft import get_peft_model
        model = get_peft_model(model, adapter)
    losses = sft(model, demos, lr=w.learning_rate, epochs=w.epochs, batch_size=w.batch_size, seed=params.seed,
                 pad_token_id=resolved.tokenizer.pad_token_id)
    if adapter is not None:
        resolved.model = model.merge_and_unload()
    # GRPO's LoRA adapters name their base after this: it must be the warm-started weights, not the original.
    resolved.model.config._name_or_path = resolved.model.name_or_path = str(out_dir)
    info = {"demos": len(demos), "tasks": demo_tasks(params), "episodes_tried": len(specs), "first_loss": losses[0],
            "last_loss": losses[-1], "steps": len(losses)}
    if ranks.is_main():
        resolved.model.save_pretrained(out_dir)
        resolved.tokenizer.save_pretrained(out_dir)
        write_json(Path(out_dir) / "warmstart.json", info)
    log.warning("warm start: %d demonstrations, SFT loss %.3f -> %.3f in %d steps", len(demos), losses[0], losses[-1],
                len(losses))
    return info


def sft(model, demos: list[Episode], *, lr: float, epochs: int, batch_size: int, seed: int,
        pad_token_id: int) -> list[float]:
    """Fine-tune on the action tokens of the demonstrations (env tokens masked). Returns the loss per batch."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    losses = []
    model.train()
    for _ in range(epochs):
        order = list(range(len(demos)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [demos[i] for i in order[start:start + batch_size]]
            loss = action_nll(model, batch, pad_token_id, device)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    model.eval()
    return losses


def action_nll(model, episodes: list[Episode], pad: int, device):
    """Mean negative log-likelihood of the action tokens (env_mask 1) given everything before them.

    Left padding puts every completion at the end of its row, so logits are computed for the completion
    positions only (`logits_to_keep`): the vocabulary projection over long prompts is most of the cost.
    """
    seqs = [e.prompt_ids + e.completion_ids for e in episodes]
    width, keep = max(map(len, seqs)), max(len(e.completion_ids) for e in episodes)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
    attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    mask = torch.tensor([[0] * (keep - len(e.env_mask)) + e.env_mask for e in episodes], device=device).bool()
    logits = model(input_ids=ids, attention_mask=attention, logits_to_keep=keep + 1).logits[:, :-1].float()
    targets = ids[:, -keep:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return nll[mask].mean()
