"""What a report says first: one verdict line and the 3-5 figures that matter, right under the notebook's title.

    verdict = Verdict("Does GRPO training run end to end?")   # the first output: a placeholder until ...
    ...
    verdict.set(*curves.training_verdict(result, frame), ok=True)   # ... the last cell fills it in, in place

The placeholder is an IPython display with a display_id; `set` updates that same output. JupyterLab redraws it
live, and papermill (nbclient) rewrites the stored output, so the HTML report opens with the answer even though
the notebook only knows it at the end. A notebook that fails before `set` keeps "no verdict" at the top, under
the runner's FAILED banner.
"""

from __future__ import annotations

import html
import json


class Verdict:
    def __init__(self, question: str):
        from IPython.display import HTML, display

        self.question = question
        self._handle = display(HTML(_box(question, "no verdict yet: the notebook has not reached its last cell",
                                         {}, None)), display_id=True)

    def set(self, line: str, figures: dict | None = None, ok: bool | None = None) -> str:
        """Show `line` (PASS/FAIL when `ok` is given) and the figures as a small table; returns the line."""
        from IPython.display import HTML

        text = (("PASS: " if ok else "FAIL: ") if ok is not None else "") + line
        if self._handle is not None:
            self._handle.update(HTML(_box(self.question, text, figures or {}, ok)))
        return text


def _box(question: str, line: str, figures: dict, ok: bool | None) -> str:
    colour = {True: "#2e7d32", False: "#c62828", None: "#546e7a"}[ok]
    rows = "".join(f"<tr><td style='text-align:left;padding-right:1.5em'>{html.escape(str(k))}</td>"
                   f"<td style='text-align:left'><b>{html.escape(_plain(v))}</b></td></tr>" for k, v in figures.items())
    return (f"<div style='border-left:6px solid {colour};padding:6px 12px;margin:4px 0;background:#fafafa'>"
            f"<div style='color:#555;font-size:90%'>{html.escape(question)}</div>"
            f"<div style='font-size:125%;font-weight:bold;color:{colour}'>{html.escape(line)}</div>"
            + (f"<table style='margin-top:4px'>{rows}</table>" if rows else "") + "</div>")


def _plain(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def figures_table(figures: dict):
    """A run's recorded figures as a two-column table (figure, value), every row shown (pandas would cut a long
    one in the middle)."""
    import pandas as pd
    from IPython.display import HTML

    frame = pd.DataFrame({"figure": list(figures), "value": [_plain(v) for v in figures.values()]})
    return HTML(frame.to_html(index=False, justify="left"))
