"""The Searcher's hop against Serve's own floor, at one client, in one cluster: what a search's
``search_ms`` (the Ingress's call to the Searcher) spends in Milvus and in the hop around it;
the same searches in one process, the service idle (``http_load.measure_work``: Milvus alone);
and what an empty DeploymentHandle round trip with the same arguments and a reply of the same
shape costs in the same cluster (two replicas that do nothing else, deployed beside the service).

    python -m benchmarks.handle_hop [--searches 300] [--seconds 10] [--out DIR]

The service runs on the sample gallery, as ``benchmarks.http_load`` deploys it; the searches go
one after another to ``/api/v1/search`` (k=10).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from lookalike.ray_env import use_local_ray_env

use_local_ray_env()  # before Ray is imported: `make run`'s environment

from ray import serve  # noqa: E402

from benchmarks import http_load  # noqa: E402
from benchmarks.common import Results, markdown_table, openclipart_set  # noqa: E402
from harness.serve import deploy, serve_session  # noqa: E402

K = 10


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Echo:
    """The far end of an empty hop: the Searcher's ``search`` arguments in, ``limit`` hit-shaped rows out."""

    async def search(self, vector: np.ndarray, limit: int, label: str | None = None, descriptor: str = "") -> list:
        return [{"id": i, "key": f"{i:016x}.png", "label": "", "source": "", "distance": 0.5, "score": 0.75,
                 "region": None} for i in range(limit)]


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Caller:
    """The near end: ``calls`` round trips one after another, as the Ingress makes them; their ms."""

    def __init__(self, echo):
        self.echo = echo

    async def __call__(self, request) -> dict:
        calls, dim = int(request.query_params["calls"]), int(request.query_params["dim"])
        vector, ms = np.random.default_rng(0).random(dim, dtype=np.float32), []
        for _ in range(calls):
            started = time.perf_counter()
            await self.echo.search.remote(vector, K, None, "descriptor")
            ms.append((time.perf_counter() - started) * 1000)
        return {"ms": ms}


def empty_hop(base: str, calls: int, dim: int) -> dict:
    """An empty round trip in the running cluster (``base``: its proxy), p50 and mean ms."""
    serve.run(Caller.bind(Echo.bind()), name="empty-hop", route_prefix="/empty-hop")
    try:
        ms = httpx.get(f"{base}/empty-hop", params={"calls": calls + 20, "dim": dim}, timeout=300).json()["ms"][20:]
    finally:
        serve.delete("empty-hop")
    return {"calls": len(ms), "p50_ms": statistics.median(ms), "mean_ms": statistics.mean(ms)}


def searches(base: str, bodies: list[dict], count: int) -> dict:
    """``count`` searches one after another (after a warm-up): the service's ``search_ms`` and,
    from the status route's counters, the Searcher's mean time in Milvus over them."""
    url = f"{base}/api/v1/search"
    with httpx.Client(timeout=60) as client:
        for body in bodies[:5]:
            client.post(url, json=body).raise_for_status()
        before = http_load.service_counters(base)
        search_ms = []
        for i in range(count):
            answer = client.post(url, json=bodies[i % len(bodies)])
            answer.raise_for_status()
            search_ms.append(answer.json()["timings"]["search_ms"])
    after = http_load.service_counters(base)
    milvus_ms = 1000 * (after["search_seconds"] - before["search_seconds"]) / (after["searches"] - before["searches"])
    return {"searches": count, "search_p50_ms": statistics.median(search_ms),
            "search_mean_ms": statistics.mean(search_ms), "milvus_mean_ms": milvus_ms}


def measure(settings, base: str, bodies: list[dict], count: int, seconds: float) -> dict:
    from lookalike.embedding.models import get_model

    row = {**searches(base, bodies, count),
           **{f"empty_{k}": v for k, v in empty_hop(base, count, get_model(settings.model).dim).items()}}
    row["hop_mean_ms"] = row["search_mean_ms"] - row["milvus_mean_ms"]
    row["alone_mean_ms"] = http_load.measure_work(settings, bodies, seconds)["search_ms"]
    return row


def report(results: Results, row: dict) -> None:
    results.section("One client: the Searcher's hop and an empty one (ms)", markdown_table(
        [row], ["searches", "search_p50_ms", "search_mean_ms", "milvus_mean_ms", "alone_mean_ms", "hop_mean_ms",
                "empty_p50_ms", "empty_mean_ms"],
        ["searches", "search_ms p50", "search_ms mean", "in Milvus (Searcher), mean", "Milvus alone, mean",
         "the hop, mean (search − in Milvus)", "empty hop p50", "empty hop mean"]))


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0, help="of searches in one process (Milvus alone)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    results = Results("handle-hop", args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    from lookalike.milvus.lite_server import LiteServer
    from lookalike.settings import load_settings

    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    os.environ.update({"LOOKALIKE_MILVUS__URI": str(work / "lookalike.db"),
                       "LOOKALIKE_STORE__LOCAL_DIR": str(work / "images")})  # the replicas read the same
    settings = load_settings()
    gallery = openclipart_set()
    bodies = http_load.sample_bodies(gallery, 64, K)
    http_load.prepare_gallery(settings, gallery)
    try:
        with serve_session() as base:
            deploy(settings, base)
            row = measure(settings, base, bodies, args.searches, args.seconds)
    finally:
        LiteServer(settings.milvus.uri).stop()
        shutil.rmtree(work, ignore_errors=True)
    print(row, flush=True)
    results.add("row", row)
    report(results, row)
    results.write()
    return results


if __name__ == "__main__":
    main()
