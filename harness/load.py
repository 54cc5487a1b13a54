"""A bounded HTTP load generator: N clients send requests back to back for T seconds (and at
most ``max_requests`` in all), to a loopback address only.

Each request is a JSON search ``{"image": base64}`` built from a list of images (client ``c``
starts at image ``c`` and strides by N, so concurrent requests carry different images). Reports
QPS, latency percentiles, errors by status, and the mean of the server's own timings
(``timings`` in the answer: decode / embed / search / total, in ms). ``record``: a list that
gets every answer as (start, end, status, Retry-After, the backend an error names), monotonic
seconds, for measuring stalls (``kill_under_load``, below).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import httpx
import numpy as np

from .processes import replica_pids


TIMING_KEYS = ("decode_ms", "embed_ms", "search_ms", "total_ms")


def latency_stats(seconds: Sequence[float]) -> dict:
    """p50 / p95 / p99 / mean in milliseconds."""
    if not len(seconds):
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": int(ms.size), "p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(ms.mean()), 3)}


def require_loopback(url: str) -> None:
    """Load is only ever sent to this machine."""
    host = urlsplit(url).hostname or ""
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ValueError(f"load is only sent to loopback addresses, not {host!r}")


@dataclass
class LoadResult:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    timings: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in TIMING_KEYS})

    def summary(self) -> dict:
        ok = self.statuses.get(200, 0)
        errors = sum(n for s, n in self.statuses.items() if s != 200)
        server = {k: round(sum(v) / len(v), 2) if v else None for k, v in self.timings.items()}
        stats = latency_stats(self.latencies)
        parts = [server["decode_ms"] or 0.0, server["embed_ms"], server["search_ms"]]  # by words: nothing to decode
        other = round(stats["mean_ms"] - sum(parts), 2) if stats["mean_ms"] and None not in parts else None
        search = latency_stats(np.asarray(self.timings["search_ms"]) / 1000)  # the service's own, per request
        return {"clients": self.clients, "requests": ok + errors, "ok": ok, "errors": errors,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
                "qps": round(ok / self.seconds, 2), **stats, **{f"server_{k}": v for k, v in server.items()},
                "server_search_p50_ms": search["p50_ms"], "server_search_p99_ms": search["p99_ms"],
                "other_ms": other}


def payloads(images: list[bytes], **fields) -> list[dict]:
    return [{"image": base64.b64encode(data).decode(), **fields} for data in images]


Step = Callable[[httpx.AsyncClient], Awaitable[None]]


async def _drive(make_step: Callable[[int], Step], clients: int, seconds: float, max_requests: int, timeout: float,
                 stop: threading.Event | None, base_url: str = "", headers: dict | None = None) -> float:
    """``clients`` concurrent clients, each running its step (``make_step(c)``) back to back
    until ``seconds`` pass, ``max_requests`` steps are taken in all, or ``stop`` is set; the
    seconds it took."""
    deadline, sent = time.monotonic() + seconds, 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, limits=limits) as client:
        async def one_client(c: int) -> None:
            nonlocal sent
            step = make_step(c)
            while time.monotonic() < deadline and sent < max_requests and not (stop and stop.is_set()):
                sent += 1
                await step(client)

        started = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        return time.perf_counter() - started


def run_steps(base_url: str, make_step: Callable[[int], Step], clients: int, seconds: float, *,
              max_requests: int = 100_000, timeout: float = 60.0, stop: threading.Event | None = None,
              headers: dict | None = None) -> float:
    """Any workload (``make_step(c)``: client ``c``'s step, an async function of the shared
    httpx client), bounded in time and count, to a loopback address only; the seconds it took."""
    require_loopback(base_url)
    return asyncio.run(_drive(make_step, clients, seconds, max_requests, timeout, stop, base_url, headers))


def _search_step(url: str, bodies: list[dict], clients: int, c: int, result: LoadResult, record: list | None) -> Step:
    """Client ``c``'s searches: bodies c, c + N, c + 2N, ... (concurrent requests differ)."""
    i = c

    async def step(client: httpx.AsyncClient) -> None:
        nonlocal i
        body = bodies[i % len(bodies)]
        i += clients
        started = time.monotonic()
        try:
            response = await client.post(url, json=body)
            status: int | str = response.status_code
        except httpx.HTTPError as exc:
            status, response = type(exc).__name__, None
        ended = time.monotonic()
        result.statuses[status] += 1
        if record is not None:
            error = response.json().get("error") or {} if response is not None and status != 200 and \
                response.headers.get("content-type", "").startswith("application/json") else {}
            record.append((started, ended, status, response.headers.get("Retry-After") if response else None,
                           error.get("backend")))
        if status == 200:
            result.latencies.append(ended - started)
            timings = response.json().get("timings", {})
            for key in TIMING_KEYS:
                if timings.get(key) is not None:  # a step a search did not take (decode, by words) is null
                    result.timings[key].append(float(timings[key]))

    return step


def run_load(url: str, bodies: list[dict], clients: int, seconds: float, max_requests: int = 100_000,
             timeout: float = 60.0, stop: threading.Event | None = None, record: list | None = None) -> dict:
    """Searches: JSON ``bodies`` POSTed to ``url``. ``stop``: end early once it is set (load for
    as long as something else takes)."""
    result = LoadResult(clients=clients, seconds=seconds)
    result.seconds = run_steps(url, lambda c: _search_step(url, bodies, clients, c, result, record), clients, seconds,
                               max_requests=max_requests, timeout=timeout, stop=stop)
    return result.summary()


def load_during(url: str, bodies: list[dict], clients: int, action: Callable[[], object]) -> tuple[dict, float]:
    """The searches of ``run_load`` for as long as ``action()`` runs (a rebuild, a re-embed, a
    rollout); (their summary, the action's seconds)."""
    stop, result = threading.Event(), {}
    load = threading.Thread(target=lambda: result.update(run_load(url, bodies, clients, 3600, stop=stop)))
    load.start()
    started = time.perf_counter()
    try:
        action()
    finally:
        seconds = time.perf_counter() - started
        stop.set()
        load.join()
    return result, seconds


def kill_under_load(url: str, app: str, query: bytes, *, clients: int = 4, before_s: float = 3.0,
                    after_s: float = 15.0) -> dict:
    """SIGKILL one Embedder replica while ``clients`` search; what the clients saw after it."""
    stop, log = threading.Event(), []
    load = threading.Thread(target=run_load, args=(f"{url}/api/v1/search", payloads([query]), clients, 3600.0),
                            kwargs={"stop": stop, "record": log}, daemon=True)
    load.start()
    time.sleep(before_s)
    killed = time.monotonic()
    os.kill(replica_pids(app, "Embedder")[0], signal.SIGKILL)
    time.sleep(after_s)
    stop.set()
    load.join(timeout=60)
    after = sorted(e for e in log if e[1] >= killed)
    done = [end for _, end, status, _, _ in after if status == 200]
    gaps = [b - a for a, b in zip([killed] + done, done)]
    before = sorted(end for _, end, status, _, _ in log if status == 200 and end < killed)
    return {"requests_after_kill": len(after), "ok": len(done),
            "failed": [(status, retry, backend) for _, _, status, retry, backend in after if status != 200],
            "stall_s": round(max(gaps, default=after_s), 2),
            # The same measure before the kill: what this machine's load alone makes clients wait.
            "gap_before_s": round(max((b - a for a, b in zip(before, before[1:])), default=0.0), 2)}
