"""A local Ray cluster with Serve's proxy on 127.0.0.1, and the application deployed as `serve run
config/serve.yaml` deploys it (on given settings); for benchmarks and tests alike."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from .servers import HOST, free_port, wait_until

REPO = Path(__file__).resolve().parent.parent


def serve_options(path: Path = REPO / "config" / "serve.yaml") -> dict[str, dict]:
    """Per-deployment options from the Serve config, as `serve run config/serve.yaml` applies them."""
    app = yaml.safe_load(path.read_text())["applications"][0]
    return {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app["deployments"]}


def wait_healthy(url: str, timeout: float = 300.0, proc: subprocess.Popen | None = None) -> None:
    wait_until(lambda: httpx.get(url, timeout=2).status_code == 200, timeout, url, proc)


@contextmanager
def serve_session(num_cpus: int | None = None, **init_options):
    """A local Ray cluster (every CPU of this machine by default) with Serve's proxy on
    127.0.0.1, in the environment `make run` gives it (the caller applies
    ``lookalike.ray_env.use_local_ray_env`` before Ray is imported); yields the base URL.
    Everything it started is shut down afterwards."""
    from lookalike.ray_env import use_local_ray_env

    use_local_ray_env()  # normally done already, before Ray was first imported (it reads its auth mode then)
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, **init_options)
    try:
        port = free_port()
        serve.start(http_options={"host": HOST, "port": port})
        yield f"http://{HOST}:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy(settings, base: str | None = None, name: str = "lookalike", route_prefix: str = "/",
           options: dict | None = None) -> None:
    """The application on these settings, with the Serve config's per-deployment options (or
    ``options``); waits for its liveness route when ``base`` is given."""
    from ray import serve

    from deployments.app import build_from_settings

    serve.run(build_from_settings(settings, options or serve_options()), name=name, route_prefix=route_prefix)
    if base:
        wait_healthy(f"{base}{route_prefix.rstrip('/')}/healthz")


def direct_ingress_urls(app: str = "lookalike", timeout: float = 60.0) -> list[str]:
    """Where the application's Ingress replicas answer HTTP themselves. In Serve's throughput mode
    (``lookalike.ray_env``) each ingress replica also serves its ASGI app on a port of its own,
    taken from RAY_SERVE_DIRECT_INGRESS_{MIN,MAX}_HTTP_PORT on the HTTP host of the Serve config
    (127.0.0.1 here): what an external load balancer sends to, without the proxy's hop."""
    import psutil

    from .processes import replica_pids

    low = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "30000"))
    high = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", "31000"))

    def listening() -> list[str]:
        urls = [f"http://{HOST}:{c.laddr.port}" for pid in replica_pids(app, "Ingress")
                for c in psutil.Process(pid).net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.ip == HOST and low <= c.laddr.port < high]
        return sorted(urls) if urls and all(httpx.get(f"{u}/healthz", timeout=2).status_code == 200 for u in urls) \
            else []

    return wait_until(listening, timeout, f"{app}'s Ingress replicas serving HTTP on their own ports")
