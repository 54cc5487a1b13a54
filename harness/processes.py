"""This machine and its processes, by psutil: what the numbers were measured on, resident memory,
CPU seconds by process (for where a benchmark's CPU went), and the processes of a supervised
local service (to kill one on purpose)."""

from __future__ import annotations

import contextlib
import json
import os
import platform

import psutil

from lookalike.milvus.supervisor import pid_alive


def machine() -> dict:
    """What the numbers were measured on."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": cpu_model(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "gpu": None}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def machine_line(info: dict) -> str:
    gpu = info.get("gpu") or "no GPU"
    return f"{info['cpus']} vCPU ({info['cpu']}), {info['memory_gib']} GiB, {gpu}"


def cpu_model() -> str:
    """The CPU's model name (psutil does not give it; Linux's cpuinfo does)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 if it is gone)."""
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def own_processes(*services) -> set[int]:
    """This run's processes: this one, its descendants (a Ray cluster it started, the servers it
    launched) and each local service's (``LiteServer``, ``MilvusServer``: a supervisor and its
    server, detached from whoever started them). Another run on the same machine serves an app of
    the same name, with processes of the same titles: they are not this run's to count."""
    pids = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        pids |= {p.pid for p in psutil.Process().children(recursive=True)}
    for service in services:
        supervisor = supervisor_pid(service)
        if supervisor:
            pids.add(supervisor)
            with contextlib.suppress(psutil.Error):
                pids |= {p.pid for p in psutil.Process(supervisor).children(recursive=True)}
    return pids


def cpu_seconds_by_process(pids: set[int] | None = None) -> dict[int, tuple[str, float]]:
    """The command line and CPU seconds (user + system) so far of each process of ``pids``
    (``own_processes``; None: every process on the machine)."""
    found = {}
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is None or (pids is not None and proc.pid not in pids):
            continue
        found[proc.pid] = (" ".join(proc.info["cmdline"] or []), times.user + times.system)
    return found


def cpu_spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], role) -> dict[str, float]:
    """CPU seconds spent between two ``cpu_seconds_by_process`` snapshots, summed by
    ``role(pid, cmdline)`` (None: not counted)."""
    spent: dict[str, float] = {}
    for pid, (cmdline, seconds) in after.items():
        name = role(pid, cmdline)
        if name is not None:
            spent[name] = spent.get(name, 0.0) + seconds - before.get(pid, ("", 0.0))[1]
    return spent


def replica_pids(app: str, deployment: str) -> list[int]:
    """The processes of a deployment's replicas, by the title Ray Serve gives them, in the Ray
    cluster this process started (its descendants): another run on the same machine may serve an
    app of the same name, and its replicas are not this run's to kill or to read."""
    title = f"ray::ServeReplica:{app}:{deployment}"
    pids = sorted(pid for pid, (cmdline, _) in cpu_seconds_by_process(own_processes()).items()
                  if cmdline.startswith(title))
    if not pids:
        raise LookupError(f"no {deployment} replica of {app} in this process's Ray cluster")
    return pids


def supervisor_pid(service) -> int | None:
    """The supervisor of a local service (``LiteServer``, ``MilvusServer``) while it runs."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        pid = json.loads(service.state_file.read_text())["pid"]
        return pid if pid_alive(pid) else None
    return None


def server_pid(service) -> int | None:
    """The server process itself: the innermost of its supervisor's descendants (a Lite server;
    the Milvus binary inside its namespace)."""
    supervisor = supervisor_pid(service)
    with contextlib.suppress(psutil.Error):
        leaves = [p for p in psutil.Process(supervisor).children(recursive=True) if not p.children()] if supervisor else []
        return leaves[0].pid if leaves else None
    return None
