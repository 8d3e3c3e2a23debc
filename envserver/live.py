"""The live backend: real Chromium sessions through BrowserGym (one thread, Playwright and browser each)."""

from __future__ import annotations

from .browser import chromium_version
from .session import BrowserSession, SessionSettings
from .tasks import registry, task_factory


class LiveBackend:
    mode = "live"

    def __init__(self, settings: SessionSettings):
        self.settings = settings

    def tasks(self) -> list[str]:
        return sorted(registry())

    def check(self, task: str, seed: int | None) -> None:
        task_factory(task)  # raises UnknownTask; every seed exists

    def seeds(self) -> None:
        return None  # any seed

    def health(self) -> dict:
        return {"mode": self.mode, "browser": chromium_version(), "task_count": len(registry())}

    def new_session(self, session_id: str) -> BrowserSession:
        return BrowserSession(session_id, self.settings)

