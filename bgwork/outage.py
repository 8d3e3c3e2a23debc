"""Riding out an env server that went away: wait for GET /health to answer again, then re-run what was lost.

    waited_s, up = wait_until_up([client], timeout_s)   # 0.0 and [client] when it answers at once

One function for one server or several (replicas): it returns as soon as any of them answers, with those that
did, so a caller can carry on with the servers that are up and keep polling the others later. Past `timeout_s`
it raises EnvOutage, which names every server and how long it was polled. Polling backs off from 0.5 s to 5 s,
so a server that is back is noticed within 5 s and one that is down costs a request every 5 s.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

log = logging.getLogger(__name__)

FIRST_POLL_S, MAX_POLL_S = 0.5, 5.0
PROBE_TIMEOUT_S = 5.0  # one /health request; a hung server must not eat the whole outage budget in one call


class InfrastructureError(RuntimeError):
    """Episodes could not be played for reasons that are not the model's: never a reward of 0."""


class EnvOutage(InfrastructureError):
    """Every env server stayed unreachable for longer than env.outage_timeout_s."""


def is_up(client) -> bool:
    """GET /health answered (any error or timeout is 'down')."""
    try:
        client.health(timeout=PROBE_TIMEOUT_S)
        return True
    except Exception:  # noqa: BLE001 - whatever the reason, the server is not serving
        return False


def wait_until_up(clients: Sequence, timeout_s: float, reason: str = "") -> tuple[float, list]:
    """(seconds waited, the clients whose server answered) once at least one answers; EnvOutage past timeout_s.

    `reason`: what made the caller look (the first lost episode's error), for the log and the error."""
    start = time.monotonic()
    up = [c for c in clients if is_up(c)]
    if up:
        return 0.0, up
    names = ", ".join(c.base_url for c in clients)
    log.warning("env server %s is not answering (%s); waiting up to %.0f s for it (env.outage_timeout_s)",
                names, reason or "no answer", timeout_s)
    pause = FIRST_POLL_S
    while True:
        left = timeout_s - (time.monotonic() - start)
        if left <= 0:
            raise EnvOutage(f"env server {names} did not answer GET /health for {time.monotonic() - start:.0f} s "
                            f"(env.outage_timeout_s = {timeout_s:g}); the episodes were lost to: "
                            f"{reason or 'no answer'}")
        time.sleep(min(pause, left))
        pause = min(pause * 2, MAX_POLL_S)
        up = [c for c in clients if is_up(c)]
        if up:
            waited = time.monotonic() - start
            log.warning("env server %s is back after %.1f s", ", ".join(c.base_url for c in up), waited)
            return waited, up
