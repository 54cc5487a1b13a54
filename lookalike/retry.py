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


def wait_until(check: Callable[[], T], timeout_s: float, what: str, *, interval_s: float = 0.25,
               retry_on: tuple[type[BaseException], ...] = (Exception,),
               give_up_on: tuple[type[BaseException], ...] = ()) -> T:
    """Ask ``check`` until it answers something true, and return that; the one wait of the code
    base (the harness's too). An error of ``retry_on`` counts as "not yet" unless it is one of
    ``give_up_on``, which ends the wait as any other. Past ``timeout_s`` a TimeoutError names
    what ``check`` answered or raised last, so a broken check is not read as a slow one."""
    deadline, last = time.monotonic() + timeout_s, "nothing"
    while True:
        try:
            if value := check():
                return value
            last = f"it answered {value!r}"
        except give_up_on:
            raise
        except retry_on as exc:
            last = f"its last error: {exc!r}"[:500]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not done after {timeout_s:g}s; {last}")
        time.sleep(interval_s)
