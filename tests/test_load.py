"""The service under load, through the real stack on 127.0.0.1: searches, adds and deletes
at once; an Embedder replica killed mid-load; the Embedder and the Searcher autoscaling on
their own."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from benchmarks import mixed_load

from .conftest import API_KEY, deploy, test_options

MIXED_SECONDS = float(os.environ.get("LOOKALIKE_MIXED_LOAD_S", "12"))  # 60 for the full run


def test_mixed_searches_adds_and_deletes_lose_nothing(api):
    queries = [p.read_bytes() for paths in api.gallery.values() for p in paths[:4]]
    result = mixed_load.run(api.url, queries, clients=8, seconds=MIXED_SECONDS, key=api.key)
    print(result)
    assert result["server_errors"] == []
    assert all(int(k.split()[1]) < 500 for k in result["by_kind_status"])
    assert result["created"] > 0 and result["deleted"] > 0 and result["by_kind_status"].get("search 200", 0) > 0
    assert result["count_after"] - result["count_before"] == result["created"] - result["deleted"]
    assert result["count_final"] == result["count_before"]  # its leftovers deleted: the gallery as it was


def _load(url: str, clients: int, stop: threading.Event, query: bytes, log: list) -> list[threading.Thread]:
    def client():
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                started = time.monotonic()
                r = c.post("/api/v1/search", files={"image": ("q", query)})
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                log.append((started, time.monotonic(), r.status_code, r.headers.get("Retry-After"),
                            (body.get("error") or {}).get("backend")))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads


def replica_pid(app: str, deployment: str) -> int:
    """The process of one replica, by the title Ray Serve gives it (ray::ServeReplica:<app>:<name>)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith(f"ray::ServeReplica:{app}:{deployment}"):
            return int(proc.name)
    raise LookupError(f"no {deployment} replica of {app}")


def kill_under_load(url: str, app: str, query: bytes, *, clients: int = 4, before_s: float = 3.0,
                    after_s: float = 15.0) -> dict:
    """SIGKILL one Embedder replica while ``clients`` search; what the clients saw."""
    stop, log = threading.Event(), []
    threads = _load(url, clients, stop, query, log)
    time.sleep(before_s)
    killed = time.monotonic()
    os.kill(replica_pid(app, "Embedder"), signal.SIGKILL)
    time.sleep(after_s)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    after = sorted(e for e in log if e[1] >= killed)
    done = [end for _, end, status, _, _ in after if status == 200]
    gaps = [b - a for a, b in zip([killed] + done, done)]
    return {"requests_after_kill": len(after), "ok": len(done),
            "failed": [(status, retry, backend) for _, _, status, retry, backend in after if status != 200],
            "stall_s": round(max(gaps, default=after_s), 2),
            "first_ok_started_after_kill_s": round(min((s - killed for s, _, st, _, _ in after
                                                        if st == 200 and s >= killed), default=after_s), 2)}


def test_embedder_replica_killed_under_load(api):
    """In-flight requests get a retriable 503 naming the Embedder (never a 500), and Serve's
    replacement (health checks every 2 s, config/serve.yaml) answers within seconds."""
    query = next(iter(api.gallery.values()))[0].read_bytes()
    result = kill_under_load(api.url, "main", query)
    print(result)
    assert all(status == 503 and retry and backend == "embedder" for status, retry, backend in result["failed"])
    assert result["ok"] > 0 and result["stall_s"] < result["requests_after_kill"] + 15


def _replicas(app: str) -> dict[str, int]:
    from ray import serve

    deployments = serve.status().applications[app].deployments
    return {name: deployments[name].replica_states.get("RUNNING", 0) for name in ("Embedder", "Searcher")}


def test_embedder_and_searcher_autoscale_independently(serve_url, api):
    """Load on the search route: the Embedder (tens of ms per image) scales out, the Searcher
    (a few ms) stays at one replica; both come back to one when the load stops. Same autoscaling
    policy for both, delays shortened to fit a test."""
    from ray import serve

    scaling = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2, "upscale_delay_s": 1,
               "downscale_delay_s": 3, "metrics_interval_s": 0.5, "look_back_period_s": 2}
    options = test_options(**{name: {"autoscaling_config": scaling} for name in ("Embedder", "Searcher")})
    deploy("scale", "/scale", api.settings, options)
    url = serve_url + "/scale"
    timeline: list[tuple[float, dict]] = []
    started = time.monotonic()
    stop, log = threading.Event(), []
    query = next(iter(api.gallery.values()))[0].read_bytes()
    try:
        threads = _load(url, 8, stop, query, log)
        while time.monotonic() - started < 40:
            timeline.append((round(time.monotonic() - started, 1), _replicas("scale")))
            if timeline[-1][1]["Embedder"] >= 2 and time.monotonic() - started > 10:
                break
            time.sleep(0.5)
        loaded_until = time.monotonic() - started
        stop.set()
        for t in threads:
            t.join(timeout=60)
        while time.monotonic() - started < loaded_until + 45:
            timeline.append((round(time.monotonic() - started, 1), _replicas("scale")))
            if timeline[-1][1] == {"Embedder": 1, "Searcher": 1}:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        serve.delete("scale")
    changes = [timeline[0]] + [t for prev, t in zip(timeline, timeline[1:]) if t[1] != prev[1]]
    print(f"replicas over time (s, counts), load stopped at {loaded_until:.1f}s: {changes}")
    assert max(c["Embedder"] for _, c in timeline) >= 2
    assert max(c["Searcher"] for _, c in timeline) == 1
    assert timeline[-1][1] == {"Embedder": 1, "Searcher": 1}
    assert all(status == 200 for _, _, status, _, _ in log)
