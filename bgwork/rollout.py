"""Multi-turn browser episodes, played in batches, turned into GRPO samples.

All live episodes of a wave advance together: one batched (left-padded) `generate` per turn across every
live episode, then every env step of that turn in parallel threads. One episode = ONE training sample whose
tokens are exactly what the model was conditioned on:

    prompt_ids     = system + first user turn + assistant header
    completion_ids = action_1 | next turn (env) | action_2 | next turn (env) | ... | action_k
    env_mask       =    1...1 |      0...0      |    1...1 |       0...0     | ... |   1...1

`logprobs` are the sampling log-probs of the action tokens under the sampling temperature (0 for env
tokens). An infrastructure failure (server down, session lost) never becomes a reward: the episode is
re-run once the server answers again (bgwork.outage waits up to env.outage_timeout_s for it); if it still
fails its reward is None, which TRL treats as unscorable (advantage 0, left out of the group baseline).
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from bgwork import decoding
from bgwork.actions import parse_model_output
from bgwork.config import RolloutParams
from bgwork.envclient import EnvClient, EnvError, ServerUnavailable, SessionLost
from bgwork.exploration import page_bids
from bgwork.metrics import FORMAT_ERROR_RATE, SUCCESS_RATE
from bgwork.outage import InfrastructureError, wait_until_up
from bgwork.prompting import Turns, user_message

log = logging.getLogger(__name__)

# Answers that mean "this session is gone", not "the model did something wrong".
_INFRA_CODES = {"session_lost", "unknown_session", "not_found", "pool_full", "unavailable", "http_error"}


def is_infra_failure(e: Exception) -> bool:
    if isinstance(e, (SessionLost, ServerUnavailable)):
        return True
    return isinstance(e, EnvError) and (e.status in (404, 429, 500, 502, 503, 504) or e.code in _INFRA_CODES)


@dataclass
class Episode:
    task: str
    seed: int
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    session_id: str | None = None
    observation: dict | None = None
    reward: float = 0.0
    done: bool = False  # the task ended (success or failure)
    finished: bool = False  # no more turns: done, out of steps, or out of token budget
    steps: int = 0
    format_errors: int = 0
    actions: list[str] = field(default_factory=list)
    lost: str | None = None  # infrastructure failure that voided this attempt
    attempts: int = 1
    explored: int = 0  # actions whose element was swapped by rollout.explore_epsilon (bgwork.exploration)
    page_bids: list[str] = field(default_factory=list)  # element ids of the page the model was last shown
    # Evaluation only (EpisodePlayer(record=True)): the goal and, per page the model saw, what it saw (a
    # screenshot with screenshots=True on a live server), wrote, sent, and what came back; see `record_turn`.
    goal: str | None = None
    transcript: list[dict] | None = None

    @property
    def success(self) -> bool:
        return self.done and self.reward > 0


class SessionPool:
    """Browser sessions reused across episodes: reset in place is ~8x faster than a new session."""

    def __init__(self, client: EnvClient):
        self.client = client
        self.free: list[str] = []

    def reset(self, task: str, seed: int, include_screenshot: bool = False) -> dict:
        sid = self.free.pop() if self.free else None
        try:
            return self.client.reset(task, seed=seed, session_id=sid, include_screenshot=include_screenshot)
        except EnvError as e:
            if sid is None or not is_infra_failure(e):
                raise
            self.discard(sid)  # that session died or was reaped: start a fresh one
            return self.client.reset(task, seed=seed, include_screenshot=include_screenshot)

    def release(self, sid: str | None) -> None:
        if sid:
            self.free.append(sid)

    def discard(self, sid: str | None) -> None:
        if sid:
            try:
                self.client.close(sid)
            except EnvError:
                pass

    def close_all(self) -> None:
        while self.free:
            self.discard(self.free.pop())

    def trim(self, n: int) -> None:
        """Keep at most n idle sessions (the others would hold server capacity this player may no longer use)."""
        while len(self.free) > n:
            self.discard(self.free.pop(0))


class EpisodePlayer:
    """Plays batches of (task, seed) episodes with a model; owns the browser sessions it uses."""

    def __init__(self, client: EnvClient, tokenizer, params: RolloutParams, *, temperature: float,
                 max_completion_length: int, max_parallel: int, greedy: bool = False, record: bool = False,
                 screenshots: bool = False):
        """`record`: keep a transcript of every episode (evaluation); `screenshots`: with it, a screenshot of
        every page from a live server (off in training: ~0.1 s per observation)."""
        self.client, self.tokenizer, self.params = client, tokenizer, params
        self.temperature, self.greedy = temperature, greedy
        self.record, self.screenshots = record, record and screenshots
        self.max_completion_length = max_completion_length
        self.max_parallel = max_parallel
        self.turns = Turns(tokenizer)
        self.sessions = SessionPool(client)
        self.pool = ThreadPoolExecutor(max_workers=params.env_workers, thread_name_prefix="env")
        self.infra_failures = 0  # attempts voided by infrastructure failures, for logging
        self.timings = {"generate_s": 0.0, "env_s": 0.0}  # wall time of the last play(), for logging
        self.outage_s = 0.0  # seconds the last play() waited for a server that went away, for logging
        self.vllm = None  # TRL's VLLMGeneration when train.use_vllm: actions are then sampled by vLLM
        self.decoder = None  # bgwork.decoding.Decoder (rollout.fast_generation), made on first use
        self.budget = None  # optional callable: sessions usable now (shrinks when an env server replica dies)
        self.explorer = None  # bgwork.exploration.Explorer: training rollouts with rollout.explore_epsilon

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
        self.sessions.close_all()
        self.pool.shutdown(wait=True)

    # --- public -------------------------------------------------------------------------------------

    def play(self, model, specs: list[tuple[str, int]]) -> list[Episode]:
        """Episodes for (task, seed) pairs, in order. Lost attempts are re-run up to `env_retries` times, each
        time once the server answers /health (bgwork.outage.EnvOutage when it stays away too long)."""
        self.timings = {"generate_s": 0.0, "env_s": 0.0}
        self.outage_s = 0.0
        episodes = self._play_waves(model, [Episode(t, s) for t, s in specs])
        for attempt in range(1, self.params.env_retries + 1):
            lost = [i for i, e in enumerate(episodes) if e.lost]
            if not lost:
                break
            waited, up = wait_until_up(self.client.clients, self.client.outage_timeout_s,
                                       reason=episodes[lost[0]].lost)
            self.client.revive(up)
            self.outage_s += waited
            if not waited:  # the server never left: a lost session or browser; give it a moment to relaunch
                time.sleep(min(2.0 * attempt, 10.0))
            log.warning("re-running %d episode(s) lost to infrastructure failures (attempt %d): %s",
                        len(lost), attempt + 1, episodes[lost[0]].lost)
            again = self._play_waves(model, [Episode(episodes[i].task, episodes[i].seed, attempts=attempt + 1)
                                             for i in lost])
            for i, e in zip(lost, again):
                episodes[i] = e
        if episodes and all(e.lost for e in episodes):
            raise InfrastructureError(f"every episode failed on infrastructure after {self.params.env_retries} "
                                      f"retries; last error: {episodes[0].lost}")
        return episodes

    # --- waves --------------------------------------------------------------------------------------

    def _play_waves(self, model, episodes: list[Episode]) -> list[Episode]:
        size = self.max_parallel if self.budget is None else max(1, min(self.max_parallel, self.budget()))
        self.sessions.trim(size)
        for start in range(0, len(episodes), size):
            self._play_wave(model, episodes[start:start + size])
        return episodes

    def _play_wave(self, model, wave: list[Episode]) -> None:
        t0 = time.perf_counter()
        list(self.pool.map(self._reset, wave))
        self.timings["env_s"] += time.perf_counter() - t0
        for _ in range(self.params.max_episode_steps):
            live = [e for e in wave if not e.finished and not e.lost]
            if not live:
                break
            t0 = time.perf_counter()
            outputs = self.generate(model, [e.prompt_ids + e.completion_ids for e in live])
            t1 = time.perf_counter()
            texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in outputs]
            if self.explorer is not None:
                self._explore(live, outputs, texts)
            for e, (ids, logps) in zip(live, outputs):
                e.completion_ids += ids
                e.env_mask += [1] * len(ids)
                e.logprobs += logps
            list(self.pool.map(self._act, live, texts))
            self.timings["generate_s"] += t1 - t0
            self.timings["env_s"] += time.perf_counter() - t1
            for e, (ids, _) in zip(live, outputs):
                if not e.finished and not e.lost:
                    self._append_next_turn(e, self.turns.ends_with_eos(ids))
        if self.decoder is not None:
            self.decoder.reset()  # the wave's episodes are over: drop their caches
        for e in wave:
            e.finished = True
            if e.lost:
                self.sessions.discard(e.session_id)
            else:
                self.sessions.release(e.session_id)
            e.session_id = None

    def _explore(self, live: list[Episode], outputs: list, texts: list[str]) -> None:
        """Swap the element of some actions (in place): the episode then trains on the action it really played."""
        for i, e in enumerate(live):
            parsed = parse_model_output(texts[i], self.params.repair_unquoted_bids)
            if parsed.format_error:
                continue  # exploration never hides a format error
            swapped = self.explorer.swap(parsed.action, e.page_bids)
            if swapped is not None:
                ids = self.turns.action_ids(swapped)
                outputs[i], texts[i] = (ids, [0.0] * len(ids)), swapped
                e.explored += 1

    def _reset(self, e: Episode) -> None:
        try:
            out = self.sessions.reset(e.task, e.seed, self.screenshots)
        except EnvError as err:
            if not is_infra_failure(err):
                raise  # unknown task, bad request: a configuration error, not bad luck
            self._lose(e, err)
            return
        e.session_id, e.observation = out["session_id"], out["observation"]
        text = self._user_text(e.observation)
        e.prompt_ids, e.page_bids = self.turns.first_prompt(text), page_bids(text)
        if self.record:
            e.goal, e.transcript = e.observation.get("goal"), [page_record(e.observation)]

    def _act(self, e: Episode, text: str) -> None:
        parsed = parse_model_output(text, self.params.repair_unquoted_bids)
        e.steps += 1
        e.format_errors += parsed.format_error
        e.actions.append(parsed.action or text.strip()[:200])
        reward, new_page = 0.0, None
        if parsed.action is None:  # nothing the browser could run: the page is unchanged
            e.observation = {**e.observation, "last_action": text.strip()[:200], "last_action_error": parsed.error}
        else:
            try:
                out = self.client.step(e.session_id, parsed.action, include_screenshot=self.screenshots)
            except EnvError as err:
                if not is_infra_failure(err):
                    raise
                self._lose(e, err)
                return
            e.observation = new_page = out["observation"]
            reward = float(out.get("reward") or 0.0)
            e.reward += reward
            e.done = bool(out.get("done") or out.get("truncated"))
        if e.transcript is not None:
            record_turn(e.transcript, text, parsed, e.observation.get("last_action_error"), reward, e.done, new_page)
        if e.done or e.steps >= self.params.max_episode_steps:
            e.finished = True

    def _append_next_turn(self, e: Episode, ended_with_eos: bool) -> None:
        obs = e.observation
        text = self._user_text(obs, obs.get("last_action"), obs.get("last_action_error"))
        ids = self.turns.next_turn(text, ended_with_eos)
        if len(e.completion_ids) + len(ids) + self.params.max_action_tokens > self.max_completion_length:
            e.finished = True  # no room for another action within max_completion_length
            return
        e.completion_ids += ids
        e.env_mask += [0] * len(ids)
        e.logprobs += [0.0] * len(ids)
        e.page_bids = page_bids(text)

    def _user_text(self, obs: dict, previous_action: str | None = None, previous_error: str | None = None) -> str:
        return user_message(obs, self.tokenizer, self.params.obs_max_tokens, previous_action, previous_error)

    def _lose(self, e: Episode, err: Exception) -> None:
        e.lost = f"{type(err).__name__}: {err}"
        e.finished = True
        self.infra_failures += 1
        log.warning("episode %s seed %d lost: %s", e.task, e.seed, e.lost)

    # --- generation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, model, sequences: list[list[int]]) -> list[tuple[list[int], list[float]]]:
        """One sampled action per sequence, batched with left padding: (token ids up to and including EOS,
        their log-probs under the temperature-scaled distribution the tokens were drawn from)."""
        if self.vllm is not None:
            return self._generate_vllm(sequences)
        if hasattr(model, "generate_actions"):  # not a torch model: a GGUF file in llama.cpp (bgwork.gguf_agent)
            return model.generate_actions(sequences, self.params.max_action_tokens, self.turns.eos_ids, self.greedy,
                                          self.temperature)
        device = next(model.parameters()).device
        if self.params.fast_generation and decoding.supports(model):
            if self.decoder is None:
                self.decoder = decoding.Decoder.for_player(self)
            with _generation_attention(device):
                return self.decoder.generate(model, sequences)
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=device)
        attention_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
        was_training = model.training
        model.eval()
        try:
            sampling = {} if self.greedy else dict(temperature=self.temperature, top_k=0, top_p=1.0, min_p=None)
            with _generation_attention(device):
                out = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, do_sample=not self.greedy, **sampling,
                    max_new_tokens=self.params.max_action_tokens,
                    pad_token_id=pad, eos_token_id=sorted(self.turns.eos_ids),
                    output_logits=True, return_dict_in_generate=True)
        finally:
            model.train(was_training)
        new = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1).float() / self.temperature
        logps = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        results = []
        for row_ids, row_logps in zip(new.tolist(), logps.tolist()):
            n = next((i + 1 for i, t in enumerate(row_ids) if t in self.turns.eos_ids), len(row_ids))
            results.append((row_ids[:n], row_logps[:n]))
        return results


    def _generate_vllm(self, sequences):
        """Through TRL's vLLM integration (weights synced by the trainer); per-action token limit. GPU only:
        not exercised by the CPU test suite."""
        saved = self.vllm.max_completion_length
        self.vllm.max_completion_length = self.params.max_action_tokens
        try:
            _, completions, logprobs, _ = self.vllm.generate(prompts=sequences, images=None, num_generations=1)
        finally:
            self.vllm.max_completion_length = saved
        return [(list(ids), [float(lp[0]) for lp in lps]) for ids, lps in zip(completions, logprobs)]


def to_rollout_output(episodes: list[Episode]) -> dict:
    """The dict TRL's GRPOTrainer expects back from `rollout_func`; extra keys reach the reward functions."""
    for e in episodes:
        if not e.completion_ids:  # lost before the first action: keep TRL's shapes valid, nothing is trained
            e.completion_ids, e.env_mask, e.logprobs = [e.prompt_ids[-1] if e.prompt_ids else 0], [0], [0.0]
        if not e.prompt_ids:
            e.prompt_ids = [e.completion_ids[0]]
    return {
        "prompt_ids": [e.prompt_ids for e in episodes],
        "completion_ids": [e.completion_ids for e in episodes],
        "logprobs": [e.logprobs for e in episodes],
        "env_mask": [e.env_mask for e in episodes],
        "env_reward": [None if e.lost else e.reward for e in episodes],
        "success": [None if e.lost else e.success for e in episodes],
        "task": [e.task for e in episodes],
        "episode_steps": [e.steps for e in episodes],
        "format_errors": [e.format_errors for e in episodes],
        "attempts": [e.attempts for e in episodes],
        "explored": [e.explored for e in episodes],
    }


def success_table(episodes: list[Episode]):
    """Per task: episodes, successes, success rate with its 95 % Wilson interval, mean steps, format-error rate
    (lost episodes left out)."""
    import pandas as pd

    from bgwork.stats import wilson

    rows = [{"task": e.task, "success": e.success, "steps": e.steps, "format_errors": e.format_errors}
            for e in episodes if not e.lost]
    df = pd.DataFrame(rows, columns=["task", "success", "steps", "format_errors"])
    g = df.groupby("task")
    table = pd.DataFrame({"episodes": g.size(), "successes": g["success"].sum(),
                          SUCCESS_RATE: g["success"].mean(), "mean_steps": g["steps"].mean(),
                          FORMAT_ERROR_RATE: g["format_errors"].sum() / g["steps"].sum().clip(lower=1)})
    total = pd.DataFrame({"episodes": [len(df)], "successes": [df["success"].sum()],
                          SUCCESS_RATE: [df["success"].mean() if len(df) else float("nan")],
                          "mean_steps": [df["steps"].mean()],
                          FORMAT_ERROR_RATE: [df["format_errors"].sum() / max(df["steps"].sum(), 1)]}, index=["all"])
    out = pd.concat([table, total])
    bounds = [wilson(int(s), int(n)) for s, n in zip(out["successes"], out["episodes"])]
    out.insert(3, "ci_low", [lo for lo, _ in bounds])
    out.insert(4, "ci_high", [hi for _, hi in bounds])
    return out


def episode_records(episodes: list[Episode], keep_transcripts=None) -> list[dict]:
    """One plain dict per episode (what an evaluation keeps on disk to compare models on the same seeds);
    episodes whose index is in `keep_transcripts` also keep their goal and transcript."""
    keep = set(keep_transcripts or ())
    return [{"task": e.task, "seed": e.seed, "success": None if e.lost else e.success, "reward": e.reward,
             "steps": e.steps, "format_errors": e.format_errors, "actions": e.actions, "lost": e.lost,
             **({"goal": e.goal, "transcript": e.transcript} if i in keep and e.transcript is not None else {})}
            for i, e in enumerate(episodes)]


PAGE_CHARS = 1500  # a transcript keeps this much of each page's accessibility tree


def page_record(observation: dict) -> dict:
    """A transcript entry for a page the model is shown: its accessibility tree (shortened), its screenshot
    (base64 PNG) when the server sent one."""
    tree = observation.get("axtree_txt") or ""
    page = tree if len(tree) <= PAGE_CHARS else tree[:PAGE_CHARS] + f"\n... ({len(tree) - PAGE_CHARS} more characters)"
    return {"page": page, "screenshot": observation.get("screenshot")}


def record_turn(transcript: list[dict], output: str, parsed, error: str | None, reward: float, done: bool,
                new_page: dict | None) -> None:
    """Complete the last page's entry with what the model wrote and what came of it; the page the action led to
    starts the next entry (`unchanged` when nothing could be sent: the model sees the same page again)."""
    transcript[-1].update(output=output, action=parsed.action, error=parsed.error if parsed.action is None else error,
                          reward=reward, done=done)
    transcript.append(page_record(new_page) if new_page is not None else
                      {"page": None, "screenshot": None, "unchanged": True})


def _generation_attention(device: torch.device):
    """On CUDA, generate without cuDNN attention: it plans anew for every sequence length it meets, and
    rollouts meet a new one each decode step (H100: batch-1 episodes 2.7x slower, 128-episode waves 1.4x;
    docs/benchmarks.md, "Rollout generation (GPU)"). Training passes keep the default backends."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
