"""Step through saved episodes in JupyterLab: which episode (dropdown), which page (slider, ◀ ▶), and per page
the screenshot, the model's output, the action sent, the error and the reward, and the page's accessibility tree.

    from bgwork import viewer
    viewer.show(run_dir)                  # every evaluation saved in a run dir (<run dir>/eval/*.jsonl)
    viewer.EpisodeViewer(records).widget  # {label: episode records} as evaluation.load_run_episodes gives them

Only episodes that kept a transcript are listed (per task and model: the first, a success, a failure). In an HTML
report widgets do not render; there the transcripts are `evaluation.transcripts_html`.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path


class EpisodeViewer:
    def __init__(self, records: dict[str, list[dict]]):
        import ipywidgets as w

        self.episodes = [(label, r) for label, recs in records.items() for r in recs if r.get("transcript")]
        if not self.episodes:
            raise ValueError("no episode with a transcript to show (evaluations keep them since notebook 07)")
        self.pick = w.Dropdown(options=[(_title(label, r), i) for i, (label, r) in enumerate(self.episodes)],
                               description="episode", layout=w.Layout(width="640px"))
        self.page = w.IntSlider(min=1, max=1, description="page", continuous_update=False)
        self.back, self.forward = w.Button(description="◀", layout=w.Layout(width="48px")), \
            w.Button(description="▶", layout=w.Layout(width="48px"))
        self.image = w.Image(format="png", layout=w.Layout(max_width="340px", border="1px solid #ccc"))
        self.text = w.HTML()
        self.back.on_click(lambda _: self._move(-1))
        self.forward.on_click(lambda _: self._move(1))
        self.pick.observe(lambda _: self._episode_changed(), names="value")
        self.page.observe(lambda _: self._draw(), names="value")
        self.widget = w.VBox([self.pick, w.HBox([self.back, self.page, self.forward]),
                              w.HBox([self.image, self.text])])
        self._episode_changed()

    @property
    def current(self) -> tuple[str, dict]:
        return self.episodes[self.pick.value]

    def _move(self, delta: int) -> None:
        self.page.value = min(max(self.page.value + delta, self.page.min), self.page.max)

    def _episode_changed(self) -> None:
        _, r = self.current
        self.page.max = len(r["transcript"])
        if self.page.value == 1:
            self._draw()
        else:
            self.page.value = 1  # redraws through the observer

    def _draw(self) -> None:
        label, r = self.current
        t = r["transcript"][self.page.value - 1]
        self.image.value = base64.b64decode(t["screenshot"]) if t.get("screenshot") else b""
        self.image.layout.display = None if t.get("screenshot") else "none"
        last = self.page.value == len(r["transcript"])
        head = f"<b>{html.escape(label)}</b> · {html.escape(r['task'])} · seed {r['seed']} · " \
               f"{'success' if r['success'] else 'failure'} · page {self.page.value} of {len(r['transcript'])}"
        body = [f"<p><b>goal</b>: {html.escape(r.get('goal') or '')}</p>"]
        if t.get("output") is not None:
            body.append(f"<p><b>model wrote</b> <code>{html.escape(t['output'].strip()[:300])}</code><br>"
                        f"<b>action</b> <code>{html.escape(t['action'] or '(none: not a valid call)')}</code><br>"
                        + (f"<b>error</b> <span style='color:#b00'>{html.escape(str(t['error'])[:300])}</span><br>"
                           if t.get("error") else "")
                        + f"<b>reward</b> {t['reward']:g}{' · <b>done</b>' if t.get('done') else ''}</p>")
        elif last:
            body.append("<p><i>the page the episode ended on</i></p>")
        page = "<i>the same page (nothing was sent)</i>" if t.get("unchanged") else \
            f"<pre style='font-size:11px;max-height:260px;overflow:auto'>{html.escape(t.get('page') or '')}</pre>"
        self.text.value = f"<div style='padding-left:12px'>{head}{''.join(body)}{page}</div>"


def _title(label: str, r: dict) -> str:
    return f"{label} · {r['task']} · seed {r['seed']} · {'success' if r['success'] else 'failure'}"


def show(source):
    """The viewer over a run dir's saved evaluations (or a {label: records} dict). Headless (a papermill run)
    it returns a one-line pointer instead: widgets do not render in the HTML report."""
    from bgwork.progress import headless

    if headless():
        from IPython.display import Markdown

        where = source if isinstance(source, (str, Path)) else "RUN_DIR"
        return Markdown(f"*In JupyterLab this cell shows the episode viewer: `bgwork.viewer.show('{where}')`.*")
    if isinstance(source, (str, Path)):
        from bgwork.evaluation import load_run_episodes

        source = load_run_episodes(source)
    return EpisodeViewer(source).widget
