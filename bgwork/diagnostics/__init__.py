"""Did a GRPO run collapse, deadlock, spike or plateau, and what to change (notebook 04, `import ... as dx`).

- `detectors`: the causal detectors and the verdict (also run live by bgwork.guard);
- `advice`: the settings to change, each tied to a finding;
- `report`: tables, plots with the events marked, verdicts recorded in metrics.json.
"""

from bgwork.diagnostics.advice import peak_learning_rates, recommend
from bgwork.diagnostics.detectors import (
                                          PLOT_TAGS,
                                          Finding,
                                          Verdict,
                                          classify_regime,
                                          detect_collapse,
                                          detect_deadlock,
                                          detect_divergence,
                                          detect_plateau,
                                          detect_spikes,
                                          diagnose,
                                          diagnose_runs,
)
from bgwork.diagnostics.report import (
                                          PANEL_TAGS,
                                          coverage_table,
                                          events_frame,
                                          guard_summary,
                                          guard_table,
                                          outage_table,
                                          plot_runs,
                                          record_verdicts,
                                          runs_verdict,
                                          verdict_table,
)

__all__ = ["PANEL_TAGS", "PLOT_TAGS", "Finding", "Verdict", "classify_regime", "coverage_table", "detect_collapse",
           "detect_deadlock", "detect_divergence", "detect_plateau", "detect_spikes", "diagnose", "diagnose_runs",
           "events_frame",
           "guard_summary", "guard_table", "outage_table", "peak_learning_rates", "plot_runs", "recommend",
           "record_verdicts", "runs_verdict", "verdict_table"]
