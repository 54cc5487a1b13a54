"""Environment for Ray processes we start on one machine (the quick start, tests, local ingest).

Set before Ray starts; a value the user exported wins. Pitfalls paid for on these machines:
without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray listens on the machine's address, not
127.0.0.1; an implicit auth mode may switch token auth on and hang drivers; usage stats
try to reach the internet. Serve's throughput mode (direct gRPC between replicas, the ingress
replica serving HTTP itself) cut a search's latency by a fifth and raised QPS by a quarter on
the 2-CPU benchmark machine (benchmarks/http_load.py, "Serve default mode").
"""

from __future__ import annotations

import os

LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single node: every Ray listener on 127.0.0.1
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",  # read by every Serve process as the cluster starts
}


def use_local_ray_env(environ: dict | None = None) -> dict:
    """Apply the defaults to ``environ`` (os.environ by default) unless joining a cluster."""
    env = os.environ if environ is None else environ
    joining = bool(env.get("RAY_ADDRESS"))
    for key, value in LOCAL_RAY_ENV.items():
        if joining and key == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER":
            continue
        env.setdefault(key, value)
    return env
