"""The HTTP API's shapes: request bodies, what /schema documents, and the error every route answers with.

Shared by the core routes (app.py) and the OpenEnv routes (openenv.py); imports no browser code.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Cookie
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .grammar import DEFAULT_ACTIONS, MAX_ACTION_CHARS

COOKIE = "envserver_session"  # set by /reset: the session of a client that sends no session_id


class ApiError(Exception):
    """Answered as {"error": {"code", "message", ...extra}} with `status`."""

    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def safe_text(text: str) -> str:
    """Text that encodes as UTF-8: a lone surrogate from a client (valid in JSON's \\u escapes, invalid in
    UTF-8) comes back escaped instead of failing the whole answer."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utf8(text: str) -> str:
    if safe_text(text) != text:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate such as \\ud800)")
    return text


Text = Annotated[str, AfterValidator(_utf8)]
# The cookie route parameter: FastAPI reads the value of `envserver_session`
SessionCookie = Annotated[str | None, Cookie(min_length=1, max_length=64, description=(
    "set by /reset; names the session when the request gives no session_id (openenv-core 0.1's client sends none)"))]


# ---- errors, as every route answers them ---------------------------------------------------------------

class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. suggestions (unknown_task), session_id (session_lost)
    code: str = Field(..., description="what went wrong, for programs: unknown_session, pool_full, session_lost, ...")
    message: str = Field(..., description="what went wrong and what to do, for people")


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS = {
    400: "unknown_task or unknown_seed (the message names the nearest ones served)",
    401: "unauthorized: missing or wrong bearer token (only when the server was started with a token)",
    404: "unknown_session: it never existed, or was closed, reaped or evicted (the message says which)",
    409: "not_reset: the session has no episode yet; session_busy: another request is using the session; "
         "no_session: the request gives neither a session_id nor the envserver_session cookie",
    413: "body_too_large: the request body is over the server's limit (64 KiB by default)",
    422: "invalid_request: the body, a query parameter or the cookie is malformed (the message names the field)",
    429: "pool_full: every session is busy or recently used (none idle for the eviction threshold)",
    503: "session_lost: the session's browser died or passed the step deadline; it was torn down and is "
         "relaunching: POST /reset to recover. unavailable: no browser could be started. Infrastructure "
         "failures, never an episode outcome",
}


def error_responses(*statuses: int) -> dict[int, dict]:
    return {status: {"model": ErrorBody, "description": ERRORS[status]} for status in statuses}


# ---- request bodies -------------------------------------------------------------------------------

# strict: a body is taken as typed (0 is not false, "5" is not a seed), as the schema says
class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    task: Text | None = Field(None, max_length=100,
                              description="MiniWoB task name (GET /tasks); default: the server's --task")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    session_id: Text | None = Field(None, min_length=1, max_length=64, description="reset this session in place")
    episode_id: Text | None = Field(None, max_length=255, description="OpenEnv's own episode id (GET /state)")
    include_screenshot: bool = False
    include_pruned_html: bool = False


class ActionObject(BaseModel):
    """The original clients send the action as {"action_str": "..."}."""
    model_config = ConfigDict(extra="ignore", strict=True)
    action_str: str


class StepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    session_id: Text | None = Field(None, min_length=1, max_length=64,
                                    description=f"the session; if left out, the one the {COOKIE} cookie names "
                                                "(openenv-core 0.1's client sends no id)")
    action: str | ActionObject
    include_screenshot: bool = False
    include_pruned_html: bool = False
    timeout_s: float | None = Field(None, ge=0, description="accepted from openenv-core 0.1's client and not "
                                    "used: the server's --step-deadline-s bounds every step")


class CloseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    session_id: Text = Field(..., min_length=1, max_length=64)


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
