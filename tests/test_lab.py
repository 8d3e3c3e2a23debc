"""`bgwork lab`: JupyterLab started for real, driven in the system Chromium through Playwright.

The browser test opens notebooks/01 from the URL `bgwork lab` prints, runs all its cells (the embedded env server
with its own Chromium included) and saves it, then opens a console and steps through saved episodes with the
episode viewer (`bgwork.viewer`); it takes ~60 s on the 2-core box, so it stays in the default suite.
"""

from __future__ import annotations

import asyncio
import base64
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bgwork.cli import main
from bgwork.runs import PROJECT_ROOT
from envserver.browser import LAUNCH_ARGS, chromium_path

NOTEBOOK = "notebooks/01_env_smoke_test.py"
URL_LINE = re.compile(r"JupyterLab is running: (http://\S+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- bad input: one clear line, exit code 2, no server ----------------------------------------------------------

def test_lab_refuses_a_port_in_use(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["lab", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in err and "Pick another with --port" in err


@pytest.mark.parametrize("args, message", [
    (["--ip", "localhost:80"], "--ip 'localhost:80': expected an IP address"),
    (["--port", "70000"], "--port 70000: expected a port number from 1 to 65535"),
    (["notebooks/99_missing.py"], "notebooks/99_missing.py: no such file or folder"),
    (["/"], "/: outside the project root"),
])
def test_lab_rejects_bad_input(args, message, capsys):
    assert main(["lab", *args]) == 2
    assert message in capsys.readouterr().err


# --- saving from Lab: jupytext's own contents manager, as Lab's server extension builds it ----------------------

@pytest.mark.parametrize("notebook", sorted(p.name for p in (PROJECT_ROOT / "notebooks").glob("[0-9]*.py")))
def test_saving_an_unedited_notebook_leaves_it_byte_identical(notebook, tmp_path):
    """Lab adds kernel/language metadata and per-cell state; none of it may reach the tracked file."""
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
    from jupytext.async_contentsmanager import build_async_jupytext_contents_manager_class

    (tmp_path / "notebooks").mkdir()
    for name in (notebook, "jupytext.toml"):  # the shipped config, found as Lab finds it (next to the notebook)
        (tmp_path / "notebooks" / name).write_bytes((PROJECT_ROOT / "notebooks" / name).read_bytes())
    path = f"notebooks/{notebook}"
    manager = build_async_jupytext_contents_manager_class(AsyncLargeFileManager)(root_dir=str(tmp_path))

    async def open_and_save():
        model = await manager.get(path, type="notebook")
        nb = model["content"]
        nb.metadata["language_info"] = {"name": "python", "version": sys.version.split()[0]}
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
        for cell in nb.cells:
            cell.metadata.update(trusted=True, scrolled=False, execution={"iopub.status.idle": "2026-01-01"})
        await manager.save({"type": "notebook", "format": "json", "content": nb}, path)

    asyncio.run(open_and_save())
    assert (tmp_path / path).read_bytes() == (PROJECT_ROOT / path).read_bytes()


# --- the real thing --------------------------------------------------------------------------------------------

class Lab:
    """`python -m bgwork lab` in its own process group, isolated from the user's Jupyter state."""

    def __init__(self, tmp: Path, path: str):
        self.log = tmp / "lab.log"
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "BGWORK_RUNS_DIR": str(tmp / "runs")}
        for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                         ("JUPYTERLAB_WORKSPACES_DIR", "workspaces")]:
            env[var] = str(tmp / sub)
        env.pop("JUPYTER_TOKEN", None)
        env.pop("BGWORK_HEADLESS", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "bgwork", "lab", "--port", str(_free_port()), path],
                                     cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True,
                                     start_new_session=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                match = URL_LINE.search(lines.get(timeout=1))
            except queue.Empty:
                assert self.proc.poll() is None, f"bgwork lab exited with {self.proc.returncode}:\n{self.tail()}"
                continue
            if match:
                self.url = match.group(1)
                return
        self.stop()
        raise AssertionError(f"bgwork lab printed no URL within 120 s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        """SIGTERM: Jupyter shuts its kernels down; the whole group is killed if it has not exited in 30 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


# Run All done: the kernel is idle, no cell is queued ([*]) and the first code cell has run.
_RUN_FINISHED = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return false;
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
  const status = panel.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status;
  return status === 'idle' && /\\[\\d+\\]/.test(prompts[0] || '') && !prompts.some(p => p.includes('*'));
}"""


@pytest.mark.browser
@pytest.mark.timeout(600)
def test_lab_opens_runs_and_saves_notebook_01(tmp_path):
    from playwright.sync_api import sync_playwright

    notebook = PROJECT_ROOT / NOTEBOOK
    tracked = notebook.read_bytes()
    lab = Lab(tmp_path, NOTEBOOK)
    try:
        assert lab.url.startswith("http://127.0.0.1:") and f"/lab/tree/{NOTEBOOK}?token=" in lab.url
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=LAUNCH_ARGS)
            try:
                _drive(browser.new_page(viewport={"width": 1400, "height": 1000}), lab.url, notebook, tracked,
                       tmp_path)
            finally:
                browser.close()
    except BaseException as e:
        e.add_note(f"JupyterLab's log ends with:\n{lab.tail()}")
        raise
    finally:
        lab.stop()
        saved = notebook.read_bytes()
        if saved != tracked:  # never leave the working tree changed, whatever failed
            (tmp_path / "saved_from_lab.py").write_bytes(saved)
            notebook.write_bytes(tracked)
    assert saved == tracked, f"the file saved from Lab differs from the tracked one: see {tmp_path}/saved_from_lab.py"


def _drive(page, url: str, notebook: Path, tracked: bytes, tmp_path: Path) -> None:
    page.goto(url)
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    # A notebook (not the text editor), on the bgwork kernel, started and idle.
    panel.locator(".jp-NotebookPanel-toolbar").get_by_text("Python (bgwork)").wait_for(timeout=120_000)
    panel.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)
    assert page.locator(".jp-FileEditor").count() == 0
    assert panel.locator(".jp-Cell").count() == 12  # the percent script's 12 cells
    assert panel.locator(".jp-CodeCell").count() == 7

    page.keyboard.press("Control+s")  # save straight after opening: nothing may change
    page.wait_for_timeout(1500)
    assert notebook.read_bytes() == tracked, "opening and saving changed the file"

    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
    page.wait_for_function(_RUN_FINISHED, timeout=300_000, polling=500)

    outputs = panel.locator(".jp-OutputArea-output")
    stderr = panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    errors = [t for t in stderr.all_text_contents() if "Traceback" in t or "Error" in t]
    assert not errors, f"error output: {errors}"
    prompts = [p.strip() for p in panel.locator(".jp-CodeCell .jp-InputPrompt").all_text_contents()]
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), f"cells that did not run: {prompts}"
    verdict = panel.locator(".jp-CodeCell").last.locator(".jp-OutputArea").text_content()
    assert re.search(r"PASS: all \d+ checks passed", verdict), verdict
    # ... and the answer also stands first, under the title: the placeholder was updated in place
    top = panel.locator(".jp-CodeCell .jp-OutputArea-output").first.text_content()
    assert "Does the browser environment work end to end?" in top and re.search(r"PASS: all \d+ checks passed", top)

    # tqdm drew a widget bar (ipywidgets rendered by Lab), not a text bar or an unrendered "HBox(...)".
    bar = panel.locator(".jp-OutputArea-output .widget-hprogress")
    assert bar.count() == 1
    label = panel.locator(".jp-OutputArea-output .widget-hbox").first.text_content()
    assert "tasks" in label and "6/6" in label, label
    text = " ".join(outputs.all_text_contents())
    assert "HBox(" not in text and "tasks: 100%" not in text

    bar.scroll_into_view_if_needed()
    page.screenshot(path=tmp_path / "lab_01_env_smoke_test.png")
    assert (tmp_path / "lab_01_env_smoke_test.png").stat().st_size > 10_000

    page.keyboard.press("Control+s")  # outputs and execution state stay out of the text file
    page.wait_for_timeout(1500)
    assert notebook.read_bytes() == tracked, "running and saving changed the file"

    # A double-click in the file browser opens a notebook too (the default viewer), not the text editor.
    page.locator(".jp-DirListing-item", has_text="02_debug_run.py").dblclick()
    page.locator(".lm-TabBar-tab.lm-mod-current", has_text="02_debug_run.py").wait_for(timeout=60_000)
    second = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    second.locator(".jp-NotebookPanel-toolbar").get_by_text("Python (bgwork)").wait_for(timeout=60_000)
    # Idle before shutting down: a SIGTERM while a kernel is still starting can hang Jupyter's shutdown.
    second.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)
    assert page.locator(".jp-FileEditor").count() == 0

    _drive_viewer(page, tmp_path)


def _drive_viewer(page, tmp_path: Path) -> None:
    """A console on the bgwork kernel opens saved episodes in the viewer; ▶ moves to the next page."""
    from bgwork.evaluation import save_episodes
    from bgwork.rollout import Episode

    shot = base64.b64encode((tmp_path / "lab_01_env_smoke_test.png").read_bytes()).decode()
    episodes = []
    for seed, success in [(1, True), (2, False)]:
        e = Episode("click-test", seed, reward=float(success), done=success, steps=1, actions=["click('13')"],
                    goal="Click the button.")
        e.transcript = [{"page": "[13] button 'Click Me!'", "screenshot": shot, "output": "click('13')",
                         "action": "click('13')", "error": None, "reward": e.reward, "done": success},
                        {"page": "RootWebArea 'done'", "screenshot": shot}]
        episodes.append(e)
    save_episodes(tmp_path / "viewer-run", "checkpoint-2", episodes)

    page.keyboard.press("Control+Shift+l")  # a new launcher
    page.locator(".jp-LauncherCard[data-category='Console']", has_text="Python (bgwork)").first.click()
    console = page.locator(".jp-CodeConsole:not(.lm-mod-hidden)")
    prompt = console.locator(".jp-CodeConsole-promptCell .cm-content")
    prompt.wait_for(timeout=120_000)
    prompt.click()
    page.keyboard.type(f"from bgwork import viewer; viewer.show({str(tmp_path / 'viewer-run')!r})")
    page.keyboard.press("Shift+Enter")
    view = console.locator(".widget-vbox").last
    view.locator(".widget-dropdown select").wait_for(timeout=120_000)
    assert view.locator(".widget-dropdown option").count() == 2
    assert "page 1 of 2" in view.locator(".widget-html").text_content()
    image = view.locator(".widget-image")
    assert image.is_visible() and image.evaluate("img => img.naturalWidth") > 100  # the PNG decoded and drew
    view.locator("button", has_text="▶").click()
    page.wait_for_function("() => [...document.querySelectorAll('.widget-html')].some(e => "
                           "e.textContent.includes('page 2 of 2'))", timeout=30_000)
    page.screenshot(path=tmp_path / "lab_viewer.png")
