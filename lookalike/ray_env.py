"""Environment for Ray processes we start on one machine (the quick start, tests, local ingest).

Set before Ray starts; a value the user exported wins. Pitfalls paid for on these machines:
without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray listens on the machine's address, not
127.0.0.1; usage stats try to reach the internet. Serve's throughput mode (direct gRPC between
replicas, the ingress replica serving HTTP itself) cut a search's latency by a fifth and raised
QPS by a quarter on the 2-CPU benchmark machine (benchmarks/http_load.py, "Serve default mode").

Token authentication is on: every Serve replica starts an inter-deployment gRPC server that
unpickles what it is sent (on the node's address: deployments/replica_rpc.py). With
RAY_AUTH_MODE=token Ray refuses every call that lacks the cluster's token (UNAUTHENTICATED), there
and on Ray's other servers. The token is made once, at the first start, in a file only this user
can read (``token_path()``); drivers, ``ray job submit`` and ``serve`` started from this environment
read it through RAY_AUTH_TOKEN_PATH. Joining a cluster (RAY_ADDRESS set) leaves its auth alone.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single node: every Ray listener on 127.0.0.1
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",  # read by every Serve process as the cluster starts
    # In that mode a stopping ingress replica stays open 30 s "so load balancers can deregister
    # it": Ctrl-C took 33 s. On one machine nothing but Serve's own proxy routes to it.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    # Ray lowers its workers' priority to nice 15 (a batch cluster's choice): on a shared machine
    # every ordinary process then starves the service. Beside another test suite's in-process
    # benchmarks, a Searcher took over 8 min to start and an embedding actor 5 min.
    "RAY_worker_niceness": "0",
}
CLUSTER_OWNED = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE")  # the joined cluster decides


def token_path() -> Path:
    return Path.home() / ".lookalike" / "ray_auth_token"


def ensure_token(path: Path) -> Path:
    """The token file, made if missing: 32 random bytes as hex, mode 0600 in a 0700 folder.
    Created with O_EXCL, so concurrent first starts agree on one token."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def use_local_ray_env(environ: dict | None = None) -> dict:
    """Apply the defaults to ``environ`` (os.environ by default) unless joining a cluster."""
    env = os.environ if environ is None else environ
    joining = bool(env.get("RAY_ADDRESS"))
    for key, value in LOCAL_RAY_ENV.items():
        if joining and key in CLUSTER_OWNED:
            continue
        env.setdefault(key, value)
    if env.get("RAY_AUTH_MODE") == "token" and not env.get("RAY_AUTH_TOKEN"):
        env.setdefault("RAY_AUTH_TOKEN_PATH", str(token_path()))
        ensure_token(Path(env["RAY_AUTH_TOKEN_PATH"]))
    return env
