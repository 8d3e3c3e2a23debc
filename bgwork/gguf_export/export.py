"""The whole export: a checkpoint -> GGUF files (F16 and the chosen quants), each verified in llama.cpp.

    rows = export_checkpoint("outputs/.../checkpoint-100", "outputs/.../gguf")   # one dict per file
    rows = export_checkpoint(checkpoint, out_dir, params.export)                # with a run's settings

Settings are `bgwork.config.ExportParams` (its defaults are the only ones); keyword arguments change single
fields, e.g. `min_cosine=0.97`. Notebooks 03 and 06 show and record the rows with the helpers below.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from bgwork.config import ConfigError, ExportParams
from bgwork.gguf_export.convert import convert_f16, hf_dir_for
from bgwork.gguf_export.errors import ExportError
from bgwork.gguf_export.gguffile import read_gguf
from bgwork.gguf_export.quantize import quantize_gguf
from bgwork.gguf_export.verify import hf_reference, verify_gguf

QUANTS = tuple(ExportParams().quants)  # every type the export writes: F16, Q8_0, Q5_K_M, Q4_K_M
COLUMNS = ["quant", "MB", "export_s", "load_s", "min_cosine", "cosine_expected", "top_token_same", "greedy_same",
           "bit_identical_to_ggml", "ok", "sample"]  # what a report shows and records of each file
AGENT_COLUMNS = ["agent_success", "agent_ci_low", "agent_ci_high", "agent_reference", "agent_vs_reference",
                 "agent_ok"]  # notebook 06's agent check, per file
FALLBACK_TYPES = ("Q5_0", "Q5_1")  # what Q4_K / Q5_K become in rows that are not multiples of 256


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, settings: ExportParams | None = None, *,
                      strict: bool = True, **changes) -> list[dict]:
    """Export `checkpoint` (dir or model spec) to `out_dir/<name>-<QUANT>.gguf`; one result dict per file.

    With `settings.verify`, each row gets llama.cpp's agreement with the HF model and `ok`; strict raises
    ExportError naming the failing files (they stay for inspection). Safe to call at the end of training
    (see `export_after_training`).
    """
    try:
        s = dataclasses.replace(settings or ExportParams(), **changes)
    except (ConfigError, TypeError) as e:
        raise ExportError(f"export settings: {e}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = _export_name(checkpoint)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bgwork-export-") as work:
        t0 = time.time()
        hf = hf_dir_for(checkpoint, Path(work))
        merge_s = time.time() - t0
        t0 = time.time()
        f16 = convert_f16(hf, out_dir / f"{name}-F16.gguf")
        rows.append(_row("F16", f16, time.time() - t0 + merge_s, {}))
        layout = read_gguf(f16)
        for q in [q for q in s.quants if q != "F16"]:
            t0 = time.time()
            path = out_dir / f"{name}-{q}.gguf"
            types = quantize_gguf(layout, path, q, s.check_reference)
            rows.append(_row(q, path, time.time() - t0, types))
            rows[-1]["bit_identical_to_ggml"] = s.check_reference or None
        if "F16" not in s.quants:
            f16.unlink()
            rows = rows[1:]
        if s.verify:
            _verify_rows(rows, hf, s.prompts, s.gen_tokens, s)
    failed = [f"{r['quant']} (top token same {r['top_token_same']}, greedy same {r['greedy_same']})"
              for r in rows if s.verify and not r["ok"]]
    if strict and failed:
        raise ExportError(f"llama.cpp disagrees with the HF model for: {', '.join(failed)}; files in {out_dir}")
    return rows


def export_after_training(params, model_dir: str | Path, run_dir: str | Path, strict: bool = True) -> list[dict] | None:
    """For the training notebook: export the final model when `params.export.after_training` is set, else None."""
    ep = params.export
    if not ep.after_training:
        return None
    return export_checkpoint(model_dir, ep.out_dir or Path(run_dir) / "gguf", ep, strict=strict)


def _export_name(checkpoint) -> str:
    p = Path(str(checkpoint))
    parts = [x for x in (p.parent.name if p.name.startswith("checkpoint-") else "", p.name) if x]
    return "-".join(parts).replace(":", "-") or "model"


def _row(quant: str, path: Path, seconds: float, types: dict) -> dict:
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    return {"quant": quant, "path": str(path), "MB": path.stat().st_size / 1e6, "export_s": seconds,
            "tensor_types": dict(sorted(counts.items()))}


def expected_cosine(row: dict, settings: ExportParams) -> float:
    """The least logits cosine this file should reach: `min_cosine`, or `min_cosine_fallback` for a K-quant of a
    model whose rows are not multiples of 256 (its tensors fall back to Q5_0/Q5_1, as in llama.cpp: SmolLM2)."""
    falls_back = row["quant"].endswith("_K_M") and any(t in FALLBACK_TYPES for t in row.get("tensor_types", {}))
    return settings.min_cosine_fallback if falls_back else settings.min_cosine


def _verify_rows(rows: list[dict], hf: Path, prompts: list[str], gen_tokens: int, settings: ExportParams) -> None:
    """Each row gets llama.cpp's agreement with the HF model (loaded once from the converter's input)."""
    import torch
    from transformers import AutoModelForCausalLM

    from bgwork.models import load_tokenizer

    tok = load_tokenizer(str(hf))
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    refs = hf_reference(model, tok, prompts, gen_tokens)
    n_vocab = model.config.vocab_size
    del model
    for row in rows:
        row.update(verify_gguf(Path(row["path"]), refs, n_vocab, row["quant"], expected_cosine(row, settings)))
        row["sample"] = tok.decode(row["generated_ids"][0])


# --- for the notebooks ---------------------------------------------------------------------------------------

def export_target(settings: ExportParams, run_dir: str | Path) -> tuple[str | Path, Path]:
    """(checkpoint, out_dir) of notebook 06: `export.checkpoint`, else the newest checkpoint under outputs/;
    `export.out_dir`, else `<run dir>/gguf`.
    Paths are relative to the project root (the notebook's kernel runs in notebooks/); a value that is no path
    there is a model spec (bgwork.models)."""
    from bgwork.checkpoints import latest_checkpoint
    from bgwork.runs import project_path

    checkpoint = settings.checkpoint or latest_checkpoint()
    if checkpoint is None:
        raise ConfigError("export.checkpoint is not set and outputs/ holds no checkpoint: "
                          "pass -p export.checkpoint=DIR")
    if project_path(checkpoint).exists():
        checkpoint = project_path(checkpoint)
    elif str(checkpoint).startswith((".", "/", "~")) or str(checkpoint).count("/") > 1:
        raise ConfigError(f"export.checkpoint = {settings.checkpoint}: no such directory ({project_path(checkpoint)})")
    return checkpoint, project_path(settings.out_dir) if settings.out_dir else Path(run_dir) / "gguf"


def result_table(rows: list[dict] | None):
    """One row per file: size, time, llama.cpp's agreement with the HF model, and a generated sample
    (None when nothing was exported)."""
    import pandas as pd

    return pd.DataFrame(rows).reindex(columns=COLUMNS) if rows else None


def plot_results(rows: list[dict], settings: ExportParams):
    """File size per type, and (verified) the least logits cosine against the HF model with its threshold."""
    import matplotlib.pyplot as plt

    table = result_table(rows)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3))
    table.plot.bar(x="quant", y="MB", ax=a, legend=False, title="file size (MB)")
    if settings.verify:
        table.plot.bar(x="quant", y="min_cosine", ax=b, legend=False, title="least logits cosine vs HF (- - expected)")
        b.scatter(range(len(table)), table["cosine_expected"], marker="_", s=600, color="red", zorder=3)
        b.set_ylim(min(0.95, table["min_cosine"].min() - 0.005), 1.0)
    else:
        b.axis("off")
    fig.tight_layout()
    return fig


def tensor_type_table(rows: list[dict]):
    """Each file's per-tensor types, read back from the files (index: tensor name; first column: its shape)."""
    import pandas as pd

    files = {r["quant"]: read_gguf(r["path"]) for r in rows}
    table = pd.DataFrame({q: {t.name: t.type for t in f.tensors} for q, f in files.items()})
    shapes = {t.name: t.ne for f in files.values() for t in f.tensors}
    table.insert(0, "shape", [shapes[n] for n in table.index])
    return table


def record_export(run_dir: str | Path, rows: list[dict] | None, checkpoint=None, size_check=None) -> dict:
    """The export's figures into the run's metrics.json (`export/...`); returns them (none without rows)."""
    from bgwork.runs import record_metrics

    if not rows:
        return {}
    figures = {"export/files": {r["quant"]: {k: r.get(k) for k in COLUMNS + AGENT_COLUMNS if k != "quant" and k in r}
                                | {"path": r["path"]} for r in rows},
               "export/all_ok": all(r.get("ok", True) and r.get("agent_ok", True) for r in rows)}
    if checkpoint is not None:
        figures["export/checkpoint"] = str(checkpoint)
    if size_check is not None:
        figures["export/lfm2_350m_size_check_max_abs_diff_mib"] = float(size_check["difference MiB"].abs().max())
    record_metrics(run_dir, figures)
    return figures


def check_export(rows: list[dict] | None) -> None:
    """The notebooks' verdict: every verified file agrees with the HF model, and (after `agent_check`) acts as well
    as its reference within the tolerance."""
    failed = [r["quant"] for r in rows or [] if not r.get("ok", True)]
    if failed:
        raise AssertionError(f"llama.cpp disagrees with the HF model for {failed}; see the table above")
    worse = [f"{r['quant']} ({r['agent_success']:.2f} vs {r['agent_reference']} {r['agent_reference_success']:.2f})"
             for r in rows or [] if r.get("agent_ok") is False]
    if worse:
        raise AssertionError(f"as agents these files do worse than their reference beyond the tolerance: "
                             f"{', '.join(worse)}; see the agent table above")


# --- notebook 06: each file as an agent ------------------------------------------------------------------------

HF_LABEL = "HF"


def agent_check(params, checkpoint, rows: list[dict], run_dir: str | Path):
    """The HF model and every exported file play the same held-out episodes (`export.agent_tasks` x
    `export.agent_episodes_per_task`, greedy) on the env server at `env.url` or an embedded one; each file, played
    by llama.cpp with its own tokenizer, passes when its success rate is at most `export.agent_tolerance` below its
    reference's (the HF model for F16, F16 for the other quants). The rows get the agent figures; returns the
    evaluation (None when the check is off: no browser is started then)."""
    from bgwork import evaluation as ev
    from bgwork.embedded import env_server

    ep = params.export
    if not ep.agent_episodes_per_task or not rows:
        return None
    hf = ev.model_under_test(str(checkpoint), key="export.checkpoint")
    models = [ev.ModelUnderTest(HF_LABEL, hf.kind, hf.path),
              *(ev.ModelUnderTest(r["quant"], "gguf", r["path"]) for r in rows)]
    with env_server(params.env, log_dir=run_dir) as url:
        result = ev.evaluate_models(params, run_dir, url, models, ep.agent_tasks, ep.agent_episodes_per_task)
    rate = {label: float(t.loc["all", "success_rate"]) for label, t in result.tables.items()}
    for r in rows:
        ref = HF_LABEL if r["quant"] == "F16" or "F16" not in rate else "F16"
        t = result.tables[r["quant"]].loc["all"]
        r.update(agent_success=rate[r["quant"]], agent_ci_low=float(t["ci_low"]), agent_ci_high=float(t["ci_high"]),
                 agent_reference=ref, agent_reference_success=rate[ref],
                 agent_vs_reference=rate[r["quant"]] - rate[ref],
                 agent_ok=rate[r["quant"]] >= rate[ref] - ep.agent_tolerance - 1e-9)
    return result


def agent_table(rows: list[dict]):
    """One row per file: its agent success with the 95 % interval, its reference and the difference, pass/fail."""
    import pandas as pd

    if not rows or "agent_success" not in rows[0]:
        return None
    return pd.DataFrame(rows).set_index("quant")[AGENT_COLUMNS].round(3)


def export_verdict(rows: list[dict] | None, settings: ExportParams) -> tuple[str, dict, bool]:
    """(line, figures, ok) answering notebook 06's question: are the exported files sound, and do they act as well
    as the model they came from?"""
    if not rows:
        return "nothing exported", {}, False
    ok = all(r.get("ok", True) and r.get("agent_ok", True) for r in rows)
    figures = {r["quant"]: f"{r['MB']:.1f} MB" + (f", cosine {r['min_cosine']:.4f} (expected ≥ {r['cosine_expected']})"
                                                   if "min_cosine" in r else "")
               + (f", agent success {r['agent_success']:.2f} (reference {r['agent_reference_success']:.2f})"
                  if "agent_success" in r else "") for r in rows}
    if "agent_success" in rows[0]:
        hf = next((r["agent_reference_success"] for r in rows if r["agent_reference"] == HF_LABEL), None)
        line = (f"{len(rows)} files; agent success " + ", ".join(f"{r['quant']} {r['agent_success']:.2f}" for r in rows)
                + (f", HF model {hf:.2f}" if hf is not None else "") + f" (tolerance {settings.agent_tolerance})")
    else:
        line = f"{len(rows)} files written and verified in llama.cpp (agent check off)"
    below = [r["quant"] for r in rows if r.get("cosine_as_expected") is False]
    if below:
        figures["cosine below expectation"] = ", ".join(below) + " (reported, not a failure)"
    return line, figures, ok
