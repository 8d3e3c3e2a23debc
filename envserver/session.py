"""One browser session = one thread that owns one Playwright, one Chromium and one BrowserGym env.

Playwright's sync API is bound to the thread that started it, so everything that touches it (start,
launch, reset, step, close, stop) runs as a job on the session's own thread. Closing one session can
never stop another's event loop: nothing is shared between sessions.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import playwright.sync_api
from browsergym.core import env as bg_env
from browsergym.core.constants import BROWSERGYM_ID_ATTRIBUTE
from browsergym.core.env import BrowserEnv
from browsergym.utils.obs import flatten_axtree_to_str, flatten_dom_to_str, prune_html

from . import pwpatch
from .actions import action_mapping
from .browser import LAUNCH_ARGS, chromium_path
from .pool import SessionLost, SessionTimeout
from .tasks import task_factory

pwpatch.apply()

# BrowserEnv captures a screenshot for every observation (~90 ms, ~40 % of observing a MiniWoB page).
# Each session thread says whether its current call wants one; others get a 1x1 placeholder.
_call = threading.local()
_capture_screenshot = bg_env.extract_screenshot


def _screenshot_if_asked(page):
    return _capture_screenshot(page) if getattr(_call, "screenshot", False) else np.zeros((1, 1, 3), np.uint8)


bg_env.extract_screenshot = _screenshot_if_asked

log = logging.getLogger(__name__)

# Chromium >= 156 exposes InlineTextBox nodes: pure noise that doubles the tree for the model.
NOISE_ROLES = ["LineBreak", "InlineTextBox"]


@dataclass
class SessionSettings:
    pre_observation_delay: float = 0.1
    slow_mo: int = 0
    call_timeout: float = 60.0
    action_timeout_ms: int = 1500  # per click/fill/press inside the page (BrowserGym: 500)
    headless: bool = True


class _ChatLog:
    """BrowserGym's chat panel is a second Chromium; MiniWoB only needs its message list."""

    def __init__(self):
        self.messages: list[dict] = []

    def add_message(self, role: str, msg: str) -> None:
        self.messages.append({"role": role, "timestamp": time.time(), "message": msg})

    def wait_for_user_message(self) -> None:  # never asked for: the env runs with wait_for_user_message=False
        raise RuntimeError("envserver sessions do not wait for chat input")

    def close(self) -> None:
        pass


class _ReusableEnv(BrowserEnv):
    """BrowserEnv whose reset reuses the session's browser and page instead of relaunching two browsers."""

    def __init__(self, pw: playwright.sync_api.Playwright, tag: str, settings: SessionSettings):
        super().__init__(task_entrypoint=None, headless=settings.headless, slow_mo=settings.slow_mo,
                         pre_observation_delay=settings.pre_observation_delay,
                         action_mapping=action_mapping(settings.action_timeout_ms))
        self._pw, self._tag = pw, tag

    def _open_browser(self, task) -> None:
        self._pw.selectors.set_test_id_attribute(BROWSERGYM_ID_ATTRIBUTE)
        self.browser = self._pw.chromium.launch(
            executable_path=chromium_path(), headless=self.headless, slow_mo=self.slow_mo,
            args=[*LAUNCH_ARGS, f"--bgwork-session={self._tag}"],  # the tag lets tests find the process
            ignore_default_args=["--hide-scrollbars"])
        self.context = self.browser.new_context(viewport=task.viewport, locale=task.locale,
                                                timezone_id=task.timezone_id)
        self.context.set_default_timeout(task.timeout)
        # BrowserGym tracks the active page through this JS callback (see BrowserEnv.reset).
        self.context.expose_binding("browsergym_page_activated",
                                    lambda source: self._activate_page_from_js(source["page"]))
        self.context.add_init_script(_PAGE_ACTIVATION_JS)
        self.page = self.context.new_page()

    def reset_task(self, task_entrypoint, seed: int | None, screenshot: bool = False):
        _call.screenshot = screenshot
        if self.task:
            self.task.teardown()
        self.task = task_entrypoint(seed=seed)
        if self.browser is None:
            self._open_browser(self.task)
        for extra in self.context.pages[1:]:  # tabs a previous episode opened
            extra.close()
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page_history = {}
        self.chat = _ChatLog()
        goal, task_info = self.task.setup(page=self.page)
        self.goal_object = [{"type": "text", "text": goal}] if isinstance(goal, str) else list(goal or [])
        for message in self.goal_object:
            if message["type"] == "text":
                self.chat.add_message("user", message["text"])
        self._wait_dom_loaded()
        self._active_page_check()
        self.start_time = time.time()
        self.last_action, self.last_action_error = "", ""
        self.infeasible_message_received = False
        return self._get_obs(), {"task_info": task_info}

    def step_action(self, code: str, screenshot: bool = False):
        _call.screenshot = screenshot
        return self.step(code)

    def close(self):
        """Close what is there, piece by piece: after a crash some pieces raise, the rest must still go."""
        for name in ("task", "context", "browser"):
            obj = getattr(self, name)
            if obj is not None:
                _quietly(obj.teardown if name == "task" else obj.close)
            setattr(self, name, None)
        self.page, self.chat = None, None


_PAGE_ACTIVATION_JS = "\n".join(
    ["window.browsergym_page_activated();"]
    + [f'window.addEventListener("{ev}", () => {{window.browsergym_page_activated();}}, {{capture: true}});'
       for ev in ("focus", "focusin", "load", "pageshow", "mousemove", "mouseup", "mousedown", "wheel",
                  "keyup", "keydown", "input", "touchstart", "touchend")]
    + ['document.addEventListener("visibilitychange", () => {'
       ' if (document.visibilityState === "visible") { window.browsergym_page_activated(); } }, {capture: true});'])


def make_observation(obs: dict, include_screenshot: bool, include_pruned_html: bool = False) -> dict[str, Any]:
    """The JSON observation: the goal AND the page (axtree with [bid]s).

    `text` is the same page text as `axtree_txt`: the original clients read `text`, which the original
    server left empty (so their models never saw the page); OpenEnv's BrowserGym env fills it the same way.
    """
    axtree = flatten_axtree_to_str(obs["axtree_object"], extra_properties=obs["extra_element_properties"],
                                   ignored_roles=NOISE_ROLES, filter_visible_only=False)
    out = {
        "goal": obs["goal"],
        "text": axtree,
        "axtree_txt": axtree,
        "url": obs["url"],
        "last_action": obs["last_action"],
        "last_action_error": obs["last_action_error"],
        "elapsed": float(obs["elapsed_time"][0]),
    }
    if include_screenshot:
        out["screenshot"] = _png_base64(obs["screenshot"])
    if include_pruned_html:
        out["pruned_html"] = prune_html(flatten_dom_to_str(obs["dom_object"]))
    return out


def jsonable(value: Any) -> Any:
    """Task info may hold numpy scalars; round-trip through json with a str fallback."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _png_base64(array) -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class BrowserSession:
    """A session's thread; `call(fn)` runs fn(env) there and returns its result.

    `reset` and `step` are what the app calls (the replay session has the same two): they return JSON
    observations. `dom_bids` are the element ids of the last observed page, `viewport` its size."""

    def __init__(self, session_id: str, settings: SessionSettings):
        self.id = session_id
        self.settings = settings
        self.task_name: str | None = None
        self.episode = None  # pool.Episode, kept by the app
        self.last_obs: dict | None = None
        self.viewport: tuple[int, int] | None = None
        self.dom_bids: list[str] = []
        self.last_used = time.monotonic()
        self.lost = False
        self.closed = False
        self._jobs: queue.Queue = queue.Queue()
        self._ready = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name=f"session-{session_id[:8]}", daemon=True)
        self._thread.start()
        self._ready.result(timeout=settings.call_timeout)  # re-raises a failed Playwright start

    def reset(self, task: str, seed: int | None, screenshot: bool = False, pruned_html: bool = False):
        """-> (observation, info). A session whose browser died gets a fresh one first."""
        factory = task_factory(task)
        if self.lost:
            self.relaunch()

        def job(env):
            obs, info = env.reset_task(factory, seed, screenshot)
            return obs, info, (env.task.viewport["width"], env.task.viewport["height"])

        obs, info, self.viewport = self.call(job)
        self.dom_bids = sorted(obs["extra_element_properties"])
        return make_observation(obs, screenshot, pruned_html), {"task_info": jsonable(info.get("task_info", {}))}

    def step(self, action, screenshot: bool = False, pruned_html: bool = False):
        """A parsed grammar Action -> (observation, reward, done, truncated, info)."""
        obs, reward, done, truncated, info = self.call(lambda env: env.step_action(action.to_code(), screenshot))
        self.dom_bids = sorted(obs["extra_element_properties"])
        return (make_observation(obs, screenshot, pruned_html), float(reward), bool(done), bool(truncated),
                {"task_info": jsonable(info.get("task_info", {}))})

    def _run(self) -> None:
        try:
            pw = playwright.sync_api.sync_playwright().start()
            env = _ReusableEnv(pw, self.id, self.settings)
        except BaseException as e:  # noqa: BLE001 - handed to the creator
            self._ready.set_exception(e)
            return
        self._ready.set_result(None)
        fut = None
        try:
            while True:
                fn, fut = self._jobs.get()
                if fn is None:
                    break
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(env))
                    except BaseException as e:  # noqa: BLE001 - delivered to the caller
                        fut.set_exception(e)
        finally:
            _quietly(env.close)
            _quietly(pw.stop)  # stopped in the thread that started it
            self._fail_pending()

    def _fail_pending(self) -> None:
        while not self._jobs.empty():
            _, fut = self._jobs.get_nowait()
            if fut is not None and not fut.done():
                fut.set_exception(RuntimeError("session is closed"))

    def call(self, fn: Callable[[_ReusableEnv], Any]) -> Any:
        if self.closed:
            raise RuntimeError("session is closed")
        if self.lost:
            raise SessionLost("the session's browser is gone; reset to start a new episode")
        self.last_used = time.monotonic()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, fut))
        try:
            return fut.result(timeout=self.settings.call_timeout)
        except concurrent.futures.TimeoutError:
            self.lost = True
            raise SessionTimeout(f"browser did not answer within {self.settings.call_timeout:.0f}s") from None
        except playwright.sync_api.Error as e:
            if self._browser_dead():
                self.lost = True
                raise SessionLost(f"browser died: {str(e).splitlines()[0]}") from None
            raise
        finally:
            self.last_used = time.monotonic()

    def _browser_dead(self) -> bool:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((lambda env: env.browser is not None and not env.browser.is_connected(), fut))
        try:
            return fut.result(timeout=10)
        except Exception:  # noqa: BLE001 - a thread that can't even answer this is dead too
            return True

    def relaunch(self) -> None:
        """After a lost browser: drop it (in its thread) so the next reset launches a fresh one."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((lambda env: env.close(), fut))
        fut.result(timeout=self.settings.call_timeout)
        self.lost = False

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread; the browser, its context and Playwright's driver go with it."""
        if self.closed:
            return
        self.closed = True
        self._jobs.put((None, None))
        self._thread.join(timeout)


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - best-effort teardown of a possibly dead browser
        log.debug("teardown: %s", e)
