"""What the model is shown: the page text of a user turn (bgwork.prompting)."""

from __future__ import annotations

import gzip
import json

from bgwork import models
from bgwork.prompting import user_message
from tests.conftest import SINGLE_DECISION_REPLAY


def _first_page(task: str) -> dict:
    with gzip.open(SINGLE_DECISION_REPLAY, "rt") as f:
        row = next(r for r in map(json.loads, f) if r.get("task") == task)
    return {"goal": row["goal"], "axtree_txt": row["obs"][0][0]}


def test_file_urls_are_left_out_so_every_tab_fits_the_budget():
    """MiniWoB's links carry file:// urls of the recording machine; with them a click-tab page overflowed 192 tokens
    and its last tab was cut off, so 'Click on Tab #3' could not be answered."""
    tok = models.resolve_model(models.BUNDLED_SMOLLM2, load_model=False).tokenizer
    obs = _first_page("click-tab")
    assert "file://" in obs["axtree_txt"] and obs["axtree_txt"].count("tab 'Tab #") == 3
    text = user_message(obs, tok, obs_max_tokens=192)
    assert "file://" not in text and "url=" not in text
    assert all(f"tab 'Tab #{k}'" in text for k in (1, 2, 3))
    assert text.startswith("Goal: Click on Tab #2.\n\nPage observation:\nRootWebArea 'Click Tab Task', focused\n")


def test_a_page_over_the_budget_is_cut_at_a_line_end_and_marked():
    tok = models.resolve_model(models.BUNDLED_SMOLLM2, load_model=False).tokenizer
    text = user_message(_first_page("click-tab"), tok, obs_max_tokens=40)
    page = text.split("Page observation:\n", 1)[1]
    assert page.endswith("\n... (page truncated)")
    assert all(line.strip() for line in page.splitlines())  # whole lines only
    assert len(tok.encode(page.removesuffix("\n... (page truncated)"))) <= 40
