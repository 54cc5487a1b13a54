"""This machine's load, for the original front end's status panel (``GET /status/``)."""

from __future__ import annotations

import os

import psutil


def cpu_percent() -> float | None:
    """The last minute's load average over the CPUs this process may use, in percent."""
    try:
        cpus = len(os.sched_getaffinity(0))
        return round(100.0 * os.getloadavg()[0] / max(cpus, 1), 1)
    except (AttributeError, OSError):
        return None


def memory_percent() -> float:
    """Memory in use (total − available), in percent."""
    return psutil.virtual_memory().percent
