"""This machine: the CPUs a process may use (inference threads, decode threads), and its load,
for the original front end's status panel (``GET /status/``)."""

from __future__ import annotations

import os

import psutil


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity; where the OS has none, all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_percent() -> float | None:
    """The last minute's load average over the CPUs this process may use, in percent."""
    try:
        return round(100.0 * os.getloadavg()[0] / available_cpus(), 1)
    except (AttributeError, OSError):  # no load average on this OS
        return None


def memory_percent() -> float:
    """Memory in use (total − available), in percent."""
    return psutil.virtual_memory().percent
