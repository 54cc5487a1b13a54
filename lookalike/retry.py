"""Trying a backend call again, with exponential backoff, while the backend is unavailable."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from lookalike.errors import BackendUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    attempts: int = 0  # tries after the first
    backoff_s: float = 1.0  # the first wait; each next one doubles

    @classmethod
    def of(cls, ingest) -> "Retry":
        """From the ingest settings (``retries``, ``retry_backoff_s``)."""
        return cls(ingest.retries, ingest.retry_backoff_s)

    def __call__(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, tried again while it raises ``BackendUnavailable``; the last one is raised."""
        for attempt in range(self.attempts + 1):
            try:
                return fn()
            except BackendUnavailable as exc:
                if attempt == self.attempts:
                    raise
                wait = self.backoff_s * 2 ** attempt
                log.warning("%s: %s; trying again in %.1fs (%d/%d)", what, exc.message, wait, attempt + 1,
                            self.attempts)
                time.sleep(wait)
        raise AssertionError("unreachable")


NO_RETRY = Retry(0)
