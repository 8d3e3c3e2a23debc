"""Issue 13's ablation table: base, SFT-only, GRPO-only and SFT+GRPO on the same held-out episodes.

Reads the arms' notebook-03 run dirs (made with params/ablation*.yaml, one `bgwork run` per arm and training seed;
docs/benchmarks.md, "GRPO's own share") and prints, as markdown: per-task success with 95 % Wilson intervals per
arm, the paired differences SFT+GRPO - SFT-only and GRPO-only - base with 95 % bootstrap intervals (overall, on
the tasks with and without demonstrations, per task) and per training seed, and the headline verdict.

    .venv/bin/python benchmarks/ablation.py                        # newest run dir of each arm's params name
    .venv/bin/python benchmarks/ablation.py --runs-root outputs/runs --sft RUN --sft-grpo RUN RUN ...
    .venv/bin/python benchmarks/ablation.py --sft LEVER_SFT_RUN --base SFT_RUN --grpo ... --sft-grpo LEVER_RUNS ...

The ratio printed last is the headline: SFT+GRPO's held-out success over SFT-only's, measured in this process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bgwork import ablation as ab  # noqa: E402

# params name of each arm's runs (params/ablation*.yaml); the base model is the SFT-only run's untrained stage.
NAMES = {"sft": ["ablation-sft", "ablation-sft-s1"], "grpo": ["ablation-grpo-s0", "ablation-grpo-s1"],
         "sft_grpo": ["ablation-sft-grpo-s0", "ablation-sft-grpo-s1"]}


def newest(root: Path, name: str, required: bool = True) -> Path | None:
    found = sorted(p for p in root.glob(f"*__03_full_run__{name}") if (p / "eval").is_dir())
    if not found and required:
        raise SystemExit(f"no run dir of notebook 03 named {name!r} with saved evaluations under {root}")
    return found[-1] if found else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-root", type=Path, default=ROOT / "outputs" / "runs")
    ap.add_argument("--sft", type=Path, nargs="+", help="the SFT-only run(s), one per seed (the first one's untrained "
                    "stage is the base arm unless --base)")
    ap.add_argument("--base", type=Path, help="a run whose untrained stage is the base arm (an SFT-only run made "
                    "with evaluation.before_training=false has none; the model and held-out seeds must be the same)")
    ap.add_argument("--grpo", type=Path, nargs="+", help="GRPO-only runs, one per training seed")
    ap.add_argument("--sft-grpo", type=Path, nargs="+", help="SFT+GRPO runs, one per training seed")
    args = ap.parse_args()
    # SFT-only: the seed-0 run is required (its untrained stage is the base arm), a seed-1 run is used when present.
    sft = args.sft or [newest(args.runs_root, NAMES["sft"][0])] + [
        r for r in (newest(args.runs_root, n, required=False) for n in NAMES["sft"][1:]) if r]
    grpo = args.grpo or [r for r in (newest(args.runs_root, n, required=False) for n in NAMES["grpo"]) if r]
    sft_grpo = args.sft_grpo or [newest(args.runs_root, n) for n in NAMES["sft_grpo"]]

    base, sft_only = ab.Arm("base", [args.base or sft[0]], "untrained"), ab.Arm("SFT-only", sft, "trained")
    both = ab.Arm("SFT+GRPO", sft_grpo, "trained")
    grpo_only = ab.Arm("GRPO-only", grpo, "trained") if grpo else None  # an arm not run yet is left out, and said
    short_sft = ab.Arm("SFT (SFT+GRPO's warm start)", sft_grpo, "warm-started")
    demos = ab.demo_tasks(sft_grpo[0])
    no_demo = [t for t in ab.outcomes_tasks(both) if t not in (demos or [])]

    arms = [a for a in (base, sft_only, short_sft, grpo_only, both) if a is not None]
    print("runs:", *(f"  {a.name}: {', '.join(r.name for r in a.runs)} ({a.stage})" for a in arms), sep="\n")
    if grpo_only is None:
        print(f"  GRPO-only: no run named {' or '.join(NAMES['grpo'])} under {args.runs_root}: left out")
    print("\n## Held-out success per task (95 % Wilson interval, episodes)\n")
    print(ab.markdown(ab.success_table(arms, demos)))
    pairs = [("SFT+GRPO - SFT-only", both, sft_only), ("GRPO-only - base", grpo_only, base),
             ("SFT+GRPO - its own warm start (GRPO's share within the runs)", both, short_sft)]
    for title, a, b in [(t, a, b) for t, a, b in pairs if a is not None]:
        print(f"\n## {title} (paired, 95 % bootstrap interval)\n")
        print(ab.difference_markdown(ab.difference_table(a, b, demos)))
        seeds = [f"{d['run']}: {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                 for d in ab.per_seed_differences(a, b)]
        print("\nper training seed:", ", ".join(seeds))
    d = ab.paired_difference(both, sft_only)
    met = d["mean"] >= 0.10 and d["ci_low"] > 0
    print(f"\nGoal 1: SFT+GRPO >= SFT-only + 0.10 with an interval excluding 0: {d['mean']:+.3f} "
          f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] -> {'met' if met else 'NOT met'}")
    if grpo_only is None:
        print("Goal 2: GRPO-only above base on the tasks without demos: not measured (no GRPO-only run)")
    else:
        g = ab.paired_difference(grpo_only, base, no_demo)
        print(f"Goal 2: GRPO-only above base on the tasks without demos {no_demo}: {g['mean']:+.3f} "
              f"[{g['ci_low']:+.3f}, {g['ci_high']:+.3f}] -> {'met' if g['ci_low'] > 0 else 'NOT met'}")
    s_both, s_sft = (ab.success_table([a])[(a.name, "success")][ab.ALL] for a in (both, sft_only))
    print(f"ratio SFT+GRPO / SFT-only held-out success: {s_both:.3f} / {s_sft:.3f} = {s_both / s_sft:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
