"""Notebook 01's checks against a live env server; every HTTP call is timed.

Per task: reset, a malformed action (must give last_action_error and reward 0), the scripted solution
(must end the episode with reward > 0), close, and a step on the closed session (must be refused).
A task with no scripted solver (bgwork.solvers) has its solving check skipped, not failed: the env checks
still run, and the report counts the skip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bgwork.envclient import EnvClient, EnvError
from bgwork.solvers import solve

MALFORMED_ACTION = "click(13)"  # the original project's bug: the bid must be a quoted string, click('13')


@dataclass
class SmokeReport:
    calls: list[dict] = field(default_factory=list)   # task, call, seconds, ok (False: the call raised)
    checks: list[dict] = field(default_factory=list)  # task, check, passed, skipped, detail

    def check(self, task: str, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append({"task": task, "check": name, "passed": bool(passed), "skipped": False,
                            "detail": detail[:300]})
        return bool(passed)

    def skip(self, task: str, name: str, detail: str) -> None:
        """A check that could not run: it does not fail the smoke test (passed) and is counted (skipped)."""
        self.checks.append({"task": task, "check": name, "passed": True, "skipped": True, "detail": detail[:300]})

    def timed(self, task: str, call: str, fn, *args):
        start, ok = time.perf_counter(), False
        try:
            result, ok = fn(*args), True
            return result
        finally:
            self.calls.append({"task": task, "call": call, "seconds": time.perf_counter() - start, "ok": ok})


def check_server(client: EnvClient, tasks: list[str], report: SmokeReport) -> dict:
    """Health, and that every task to smoke-test is served."""
    health = report.timed("-", "health", client.health)
    report.check("-", "health", health.get("status") == "healthy", str(health))
    served = set(report.timed("-", "tasks", client.tasks))
    missing = [t for t in tasks if t not in served]
    report.check("-", "tasks served", not missing, f"missing: {missing}" if missing else f"{len(served)} tasks")
    return health


def check_task(client: EnvClient, task: str, seed: int, report: SmokeReport) -> None:
    """One episode of `task`; an env error fails the task's checks but not the whole smoke test."""
    session = None
    try:
        reset = report.timed(task, "reset", client.reset, task, seed)
        session, obs = reset["session_id"], reset["observation"]
        report.check(task, "reset", obs.get("goal") and obs.get("axtree_txt"), obs.get("goal", ""))

        # Before solving: the episode is still open, and a parse error must not change the page.
        bad = report.timed(task, "step_malformed", client.step, session, MALFORMED_ACTION)
        error = bad["observation"]["last_action_error"]
        report.check(task, "malformed action refused", error and bad["reward"] == 0 and not bad["done"],
                     f"reward {bad['reward']}, error: {error}")

        _solve(client, task, session, obs, report)

        report.timed(task, "close", client.close, session)
        session = None
        report.check(task, "close", True)
        _check_closed(client, task, reset["session_id"], report)
    except EnvError as e:
        report.check(task, "no env error", False, str(e))
    finally:
        if session is not None:
            try:
                client.close(session)
            except EnvError:
                pass


def _solve(client: EnvClient, task: str, session: str, obs: dict, report: SmokeReport) -> None:
    try:
        actions = solve(task, obs)
    except LookupError as e:  # the solver did not find its element on the page
        report.check(task, "solved", False, f"solver: {e}")
        return
    if actions is None:
        report.skip(task, "solved", "skipped: no scripted solver for this task (bgwork.solvers)")
        return
    result = {"reward": 0.0, "done": False}
    for action in actions:
        result = report.timed(task, "step", client.step, session, action)
        if result["done"]:
            break
    report.check(task, "solved", result["done"] and result["reward"] > 0,
                 f"{len(actions)} actions {actions}, reward {result['reward']}, done {result['done']}")


def _check_closed(client: EnvClient, task: str, session: str, report: SmokeReport) -> None:
    try:
        client.step(session, "noop()")
    except EnvError as e:
        report.check(task, "closed session refused", e.status == 404, str(e))
        return
    report.check(task, "closed session refused", False, "a step on a closed session was accepted")


def counts(checks) -> dict[str, int]:
    """Checks passed (not skipped), skipped and failed: what the verdict, the report and metrics.json all count."""
    return {"passed": int((checks.passed & ~checks.skipped).sum()), "skipped": int(checks.skipped.sum()),
            "failed": int((~checks.passed).sum())}


def verdict(checks, latency) -> tuple[str, dict, bool]:
    """(line, figures, ok) answering notebook 01's question: does the env server work end to end?"""
    n = counts(checks)
    skipped = n["skipped"]
    failed = checks[~checks.passed]
    ok = failed.empty
    line = (f"all {len(checks) - skipped} checks passed" + (f", {skipped} skipped" if skipped else "") if ok else
            f"{len(failed)} of {len(checks)} checks failed: "
            + ", ".join(f"{t} {c}" for t, c in zip(failed.task, failed.check))[:300])
    figures = {"tasks": checks.task[checks.task != "-"].nunique(),
               "checks passed": n["passed"], "checks failed": n["failed"], "checks skipped": skipped}
    figures.update({f"{call} (s, mean)": round(float(sec), 3) for call, sec in latency["mean"].items()
                    if call in ("reset", "step", "close")})
    return line, figures, ok


# --- notebook 01's cells ---------------------------------------------------------------------------------

def run_checks(params, run_dir) -> tuple[SmokeReport, dict, str]:
    """(report, /health, url): every check against the params' env server (an embedded one unless env.url)."""
    from bgwork.embedded import env_server
    from bgwork.progress import progress

    report = SmokeReport()
    with env_server(params.env, log_dir=run_dir) as url:
        client = EnvClient.connect(url, params.env)
        try:
            health = check_server(client, params.smoke.tasks, report)
            for task in progress(params.smoke.tasks, desc="tasks"):
                check_task(client, task, params.smoke.seed, report)
        finally:
            client.shutdown()
    return report, health, url


def checks_table(report: SmokeReport):
    import pandas as pd

    return pd.DataFrame(report.checks)


def latency_table(report: SmokeReport):
    """count / mean / min / max seconds per call kind, calls that raised left out."""
    import pandas as pd

    calls = pd.DataFrame(report.calls)
    calls = calls[calls.ok] if len(calls) else calls
    if calls.empty:
        return pd.DataFrame(columns=["count", "mean", "min", "max"])
    return calls.groupby("call")["seconds"].describe()[["count", "mean", "min", "max"]]


def plot_latency(report: SmokeReport):
    """Mean seconds per call, per task and call kind; None when no task call succeeded."""
    import matplotlib.pyplot as plt
    import pandas as pd

    calls = pd.DataFrame(report.calls)
    calls = calls[calls.ok & (calls.task != "-")] if len(calls) else calls
    if calls.empty:
        print("no successful task calls to chart")
        return None
    per_task = calls.pivot_table(index="task", columns="call", values="seconds", aggfunc="mean")
    ax = per_task.plot.bar(figsize=(9, 4), rot=0)
    ax.set_ylabel("seconds per call (mean)")
    ax.set_title("env server latency by task and call")
    plt.tight_layout()
    return ax.figure


def metrics(checks, latency, params, url: str, health: dict) -> dict:
    """What notebook 01 records in metrics.json (smoke/...)."""
    n = counts(checks)
    return {"smoke/passed": n["failed"] == 0,
            "smoke/checks_passed": n["passed"],
            "smoke/checks_skipped": n["skipped"], "smoke/checks_total": len(checks),
            "smoke/tasks": len(params.smoke.tasks), "smoke/env_url": url,
            "smoke/server_version": health.get("version"), "smoke/browser": health.get("browser"),
            **{f"smoke/{call}_seconds_mean": s for call, s in latency["mean"].items()}}


def raise_if_failed(checks) -> None:
    """A failed check fails the notebook (and `bgwork run`), naming every failed check."""
    failed = checks[~checks.passed]
    if not failed.empty:
        raise AssertionError(f"smoke test FAILED {len(failed)} of {len(checks)} checks:\n"
                             f"{failed.to_string(index=False)}")
