"""A Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``: a head and a
worker, each its own raylet and object store), running Lookalike's ingest job and Serve
application; prints, as JSON, the node ids that did the work.

    python -m tests.support.multinode GALLERY WORKDIR

Run by tests/test_cluster.py in a child process (one Ray cluster per process).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

from deployments.app import build_from_settings
from ingest.pipeline import run_ingest
from lookalike.milvus.lite_server import LiteServer
from lookalike.ray_env import use_local_ray_env
from lookalike.settings import load_settings
from harness.servers import HOST, free_port

REPO = Path(__file__).resolve().parents[2]


def stage(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} multinode: {what}", flush=True)


def main(gallery: str, work: str) -> dict:
    use_local_ray_env()
    node = {"num_cpus": 3, "object_store_memory": 128 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    settings = load_settings(REPO / "config" / "lookalike.yaml", overrides={
        "milvus": {"uri": f"{work}/m.db"}, "store": {"local_dir": f"{work}/images"},
        # One embedding actor per node (2 of a node's 3 CPUs each); small read batches: many tasks.
        # The stages separate, as on GPU nodes: each pool spreads over both nodes on its own.
        "ingest": {"stages": "separate", "embed_actors": 2, "embed_actor_cpus": 2, "read_batch_size": 2,
                   "write_batch_size": 8},
        "model": {"batch_size": 4}})
    out: dict = {"nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])}
    try:
        stage("ingest")
        report = run_ingest(gallery, settings, report_path=f"{work}/report.json")
        out["ingest"] = {"indexed": report.indexed, "count": report.run["count"],
                         "nodes": {stage: dict(c) for stage, c in report.nodes.items()}}

        stage("serve")
        port = free_port()
        serve.start(http_options={"host": HOST, "port": port}, proxy_location="HeadOnly")
        spread = {"num_replicas": 2, "max_replicas_per_node": 1, "ray_actor_options": {"num_cpus": 0.5}}
        serve.run(build_from_settings(settings, {"Embedder": spread, "Searcher": spread,
                                                 "Ingress": {"ray_actor_options": {"num_cpus": 0.25}}}),
                  name="lookalike", route_prefix="/")
        stage("search")
        query = sorted(Path(gallery).glob("*/*"))[0].read_bytes()
        answers = [httpx.post(f"http://{HOST}:{port}/api/v1/search", files={"image": ("q", query)}, timeout=60)
                   for _ in range(20)]
        # Each status answer names the nodes of the Embedder and Searcher replicas that gave it.
        statuses = [httpx.get(f"http://{HOST}:{port}/api/v1/status", timeout=60).json() for _ in range(40)]
        out["serve"] = {
            "search_status": sorted({r.status_code for r in answers}),
            "top_hit_is_query": all(r.json()["results"][0]["score"] > 0.999 for r in answers),
            "embedder_nodes": sorted({s["model"]["node"] for s in statuses}),
            "searcher_nodes": sorted({s["milvus"]["node"] for s in statuses}),
        }
    finally:
        stage("shutdown")
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        LiteServer(settings.milvus.uri).stop()
    return out


if __name__ == "__main__":
    started = time.monotonic()
    result = main(sys.argv[1], sys.argv[2])
    result["seconds"] = round(time.monotonic() - started, 1)
    print("RESULT " + json.dumps(result))
