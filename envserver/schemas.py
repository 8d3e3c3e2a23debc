"""The HTTP API's shapes: request bodies, what /schema documents, and the error every route answers with.

Shared by the core routes (app.py) and the OpenEnv routes (openenv.py); imports no browser code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .grammar import DEFAULT_ACTIONS, MAX_ACTION_CHARS


class ApiError(Exception):
    """Answered as {"error": {"code", "message", ...extra}} with `status`."""

    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


# ---- request bodies -------------------------------------------------------------------------------

class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str | None = Field(None, description="MiniWoB task name (GET /tasks); default: the server's --task")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    session_id: str | None = Field(None, max_length=64, description="reset this session in place")
    episode_id: str | None = Field(None, max_length=255, description="OpenEnv's own episode id (GET /state)")
    include_screenshot: bool = False
    include_pruned_html: bool = False


class ActionObject(BaseModel):
    """The original clients send the action as {"action_str": "..."}."""
    model_config = ConfigDict(extra="ignore")
    action_str: str


class StepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: str = Field(..., max_length=64)
    action: str | ActionObject
    include_screenshot: bool = False
    include_pruned_html: bool = False


class CloseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: str = Field(..., max_length=64)


# ---- what GET /schema documents -------------------------------------------------------------------

class Action(BaseModel):
    action_str: str = Field(..., max_length=MAX_ACTION_CHARS,
                            description="one BrowserGym high-level action call with the element id (bid) quoted, "
                                        f"e.g. click('13'); allowed: {', '.join(DEFAULT_ACTIONS)}")


class Observation(BaseModel):
    goal: str = Field(..., description="the task's instruction")
    text: str = Field(..., description="the page as text: the same string as axtree_txt (the original server "
                                       "left `text` empty, so models never saw the page)")
    axtree_txt: str = Field(..., description="flattened accessibility tree, one element per line: [bid] role 'name'")
    url: str
    last_action: str = Field(..., description="the action as received")
    last_action_error: str = Field(..., description="'' when the last action worked; otherwise why not (an action "
                                                    "the parser rejects is never executed)")
    elapsed: float = Field(..., description="seconds since the episode's reset")
    screenshot: str | None = Field(None, description="base64 PNG; only with include_screenshot: true (live mode)")
    pruned_html: str | None = Field(None, description="BrowserGym's pruned HTML; only with include_pruned_html: true "
                                                      "(live mode)")


class EpisodeState(BaseModel):
    episode_id: str
    step_count: int = Field(..., description="steps received this episode, rejected actions included")
    session_id: str
    task_name: str
    seed: int | None
    goal: str
    url: str
    cum_reward: float
    done: bool
