"""One browser session = one thread that owns one Playwright, one Chromium and one BrowserGym env.

Playwright's sync API is bound to the thread that started it, so everything that touches it (start,
launch, reset, step, close, stop) runs as a job on the session's own thread. Closing one session can
never stop another's event loop: nothing is shared between sessions.

A call that passes its deadline (a step: `step_deadline`) is not waited for: that thread's Chromium is
killed, which unblocks it, and a new thread with a fresh Playwright takes over the session (a
"generation"); the caller gets SessionTimeout (HTTP 503 session_lost) at the deadline.
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
import psutil
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
    call_timeout: float = 60.0  # a reset (which may launch Chromium), and starting Playwright
    action_timeout_ms: int = 1500  # per click/fill/press inside the page (BrowserGym: 500)
    headless: bool = True
    step_deadline: float = 30.0  # a step still running then: its browser is torn down and relaunched


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

    def reset_task(self, task_entrypoint, seed: int | None, screenshot: bool = False, fresh_page: bool = False):
        """`fresh_page`: replace the page too (a key or mouse button the last episode held down stays down in it)."""
        _call.screenshot = screenshot
        if self.task:
            self.task.teardown()
        self.task = task_entrypoint(seed=seed)
        if self.browser is None:
            self._open_browser(self.task)
        for extra in self.context.pages[0 if fresh_page else 1:]:  # tabs a previous episode opened
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


class _Worker:
    """One generation of a session's browser: a thread that owns a Playwright (its driver process) and the env.

    `kill()` tears it down from outside: it kills Chromium, so the call blocked in it raises at once; the
    thread then closes what is left and stops its driver (Playwright's rule: in the thread that started it).
    The driver itself is not killed: when it was, Playwright 1.44's sync API often never returned from the
    blocked call, and those threads never exited (seen here in repeated runs)."""

    def __init__(self, tag: str, settings: SessionSettings, generation: int):
        self.jobs: queue.Queue = queue.Queue()
        self.ready: concurrent.futures.Future = concurrent.futures.Future()
        self.killed = False
        self.driver_pid: int | None = None
        self.thread = threading.Thread(target=self._run, args=(tag, settings), daemon=True,
                                       name=f"session-{tag[:8]}-{generation}")
        self.thread.start()

    def submit(self, fn: Callable[[_ReusableEnv], Any]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.put((fn, fut))
        return fut

    def stop(self) -> None:
        """Exit after the job in hand (closing the browser in this thread, as Playwright requires)."""
        self.jobs.put((None, None))

    def kill(self) -> None:
        self.killed = True
        self.stop()
        if self.driver_pid is not None:
            _kill_browser(self.driver_pid)

    def _run(self, tag: str, settings: SessionSettings) -> None:
        pw = None
        try:
            pw = playwright.sync_api.sync_playwright().start()
            # Playwright 1.44 (pinned by BrowserGym) keeps its driver process here; the driver launches Chromium.
            self.driver_pid = pw._impl_obj._connection._transport._proc.pid
            env = _ReusableEnv(pw, tag, settings)
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for `ready`
            if pw is not None:
                _quietly(pw.stop)
            self.ready.set_exception(e)
            return
        self.ready.set_result(None)
        try:
            while True:
                fn, fut = self.jobs.get()
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
        while not self.jobs.empty():
            _, fut = self.jobs.get_nowait()
            if fut is not None and not fut.done():
                fut.set_exception(SessionLost("the session's browser was shut down"))


def _kill_browser(driver_pid: int) -> None:
    """SIGKILL everything the Playwright driver started (Chromium and its helpers), not the driver itself."""
    try:
        family = psutil.Process(driver_pid).children(recursive=True)
    except psutil.Error:
        return
    for proc in family:
        try:
            proc.kill()
        except psutil.Error:
            pass


class BrowserSession:
    """A session's browser, driven from its own thread; `call(fn)` runs fn(env) there and returns its result.

    `reset` and `step` are what the app calls (the replay session has the same two): they return JSON
    observations. `dom_bids` are the element ids of the last observed page, `viewport` its size.

    Every call has a deadline (a step: settings.step_deadline; anything else: settings.call_timeout). A call
    that passes it, or whose browser failed, tears the browser down (Chromium is killed, so no thread stays
    blocked in it) and starts a fresh Playwright in a new thread at once; the session is then `lost` until a
    reset, which launches a new browser there."""

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
        self._input_held = False  # the episode pressed a key or mouse button down (it may still be down)
        self._generation = 0
        self._lock = threading.Lock()  # guards swapping the worker
        self._worker = self._launch()
        try:
            self._wait_ready(self._worker)
        except BaseException:
            self._worker.kill()
            raise

    def reset(self, task: str, seed: int | None, screenshot: bool = False, pruned_html: bool = False):
        """-> (observation, info). A session whose browser was lost gets a fresh one first."""
        factory = task_factory(task)
        if self.lost:
            self.relaunch()
        fresh_page, self._input_held = self._input_held, False

        def job(env):
            obs, info = env.reset_task(factory, seed, screenshot, fresh_page)
            return obs, info, (env.task.viewport["width"], env.task.viewport["height"])

        obs, info, self.viewport = self.call(job)
        self.dom_bids = sorted(obs["extra_element_properties"])
        return make_observation(obs, screenshot, pruned_html), {"task_info": jsonable(info.get("task_info", {}))}

    def step(self, action, screenshot: bool = False, pruned_html: bool = False):
        """A parsed grammar Action -> (observation, reward, done, truncated, info)."""
        self._input_held = self._input_held or action.name in ("keyboard_down", "mouse_down")
        obs, reward, done, truncated, info = self.call(lambda env: env.step_action(action.to_code(), screenshot),
                                                       deadline=self.settings.step_deadline)
        self.dom_bids = sorted(obs["extra_element_properties"])
        return (make_observation(obs, screenshot, pruned_html), float(reward), bool(done), bool(truncated),
                {"task_info": jsonable(info.get("task_info", {}))})

    def call(self, fn: Callable[[_ReusableEnv], Any], deadline: float | None = None) -> Any:
        if self.closed:
            raise SessionLost("the session was closed")
        if self.lost:
            raise SessionLost("the session's browser is gone; reset to start a new episode")
        deadline = deadline or self.settings.call_timeout
        worker = self._worker
        self.last_used = time.monotonic()
        try:
            return worker.submit(fn).result(timeout=deadline)
        except concurrent.futures.TimeoutError:
            self._tear_down(worker)
            raise SessionTimeout(f"the browser did not answer within the {deadline:g} s deadline; it was torn "
                                 "down and a new one is starting") from None
        except Exception as e:  # noqa: BLE001 - the browser or BrowserGym failed (an action's own error is an
            # observation, never raised): an infrastructure failure, answered 503, and the browser starts afresh
            died = worker.killed or self._browser_dead(worker)
            self._tear_down(worker)
            first_line = (str(e).splitlines() or [""])[0][:300]
            raise SessionLost(f"{'browser died' if died else 'the browser failed'}: {type(e).__name__}: "
                              f"{first_line}") from None
        finally:
            self.last_used = time.monotonic()

    def _browser_dead(self, worker: _Worker) -> bool:
        try:
            return worker.submit(lambda env: env.browser is not None and not env.browser.is_connected()).result(10)
        except Exception:  # noqa: BLE001 - a thread that can't even answer this is dead too
            return True

    def _launch(self) -> _Worker:
        self._generation += 1
        return _Worker(self.id, self.settings, self._generation)

    def _wait_ready(self, worker: _Worker) -> None:
        try:
            worker.ready.result(timeout=self.settings.call_timeout)
        except concurrent.futures.TimeoutError:
            raise SessionTimeout(f"Playwright did not start within {self.settings.call_timeout:g} s") from None

    def _tear_down(self, worker: _Worker) -> None:
        """Kill this worker's browser and start the next generation in its own thread (once, whoever calls)."""
        with self._lock:
            if worker is not self._worker:
                return
            self.lost = True
            worker.kill()
            if not self.closed:
                self._worker = self._launch()

    def relaunch(self) -> None:
        """Make a lost session usable: wait for the Playwright started at teardown; SessionLost if it failed."""
        worker = self._worker
        try:
            self._wait_ready(worker)
        except Exception as e:  # noqa: BLE001 - any start failure is an infrastructure failure: 503, never 500
            self._tear_down(worker)  # the next reset tries a fresh one
            raise SessionLost(f"could not relaunch the browser: {type(e).__name__}: {str(e)[:300]}") from None
        self.lost = False

    def close(self, timeout: float = 15.0) -> None:
        """Stop the thread; the browser, its context and Playwright's driver go with it."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            worker = self._worker
        worker.stop()
        worker.thread.join(timeout)
        if worker.thread.is_alive():  # still busy after `timeout`: take the browser down from outside
            worker.kill()
            worker.thread.join(5)


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - best-effort teardown of a possibly dead browser
        log.debug("teardown: %s", e)
