"""An Embedder replica SIGKILLed while clients search: what the clients see, and how long.

    python -m benchmarks.replica_kill [--clients 4] [--out docs/results]

Three ways to run the Embedder, side by side on one local Serve: Serve's default health
checks (every 10 s), config/serve.yaml's (every 2 s), and two replicas (the Kubernetes
configs keep two). For each: requests after the kill, how many failed (and how: a retriable
503 naming the Embedder is the contract), and the stall (the longest wait between two answered
searches).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path


from benchmarks.common import Results
from harness.load import kill_under_load


EXPLAINED = ("Four clients search without pause; 3 s in, one Embedder replica is SIGKILLed and the load goes "
             "on. *Stall*: the longest wait between two answered searches after the kill. With one replica, "
             "requests queue until Serve notices the death at its next health check and a new replica has "
             "loaded the model: config/serve.yaml checks every 2 s instead of Serve's 10. With two (the "
             "Kubernetes configs keep two), the survivor answers meanwhile. A request in flight on the killed "
             "replica gets a 503 with `Retry-After` naming the Embedder.")

VARIANTS = {
    "Serve defaults (health check every 10 s), 1 replica": {"health_check_period_s": 10, "num_replicas": 1},
    "config/serve.yaml (every 2 s), 1 replica": {"num_replicas": 1},
    "config/serve.yaml, 2 replicas (as on Kubernetes)": {"num_replicas": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--after", type=float, default=20.0, help="seconds of load after the kill")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    results = Results("replica-kill", args.out, clients=args.clients)
    from ray import serve

    from benchmarks.common import openclipart_set
    from benchmarks.http_load import prepare_gallery
    from harness.serve import serve_options, serve_session
    from deployments.app import build_from_settings
    from lookalike.milvus.lite_server import LiteServer
    from lookalike.settings import load_settings

    work = Path(tempfile.mkdtemp(prefix="lookalike-kill-"))
    os.environ.update({"LOOKALIKE_MILVUS__URI": str(work / "lookalike.db"),
                       "LOOKALIKE_STORE__LOCAL_DIR": str(work / "images")})
    settings = load_settings()
    gallery = openclipart_set()
    prepare_gallery(settings, gallery)
    query = sorted(gallery.glob("*/*"))[0].read_bytes()
    rows = {}
    try:
        with serve_session() as base:
            for name, embedder in VARIANTS.items():
                options = serve_options()
                for deployment in options.values():
                    deployment.pop("autoscaling_config", None)
                    deployment["ray_actor_options"] = {"num_cpus": 0}
                options["Embedder"].update(embedder)
                serve.run(build_from_settings(settings, options), name="kill", route_prefix="/")
                rows[name] = kill_under_load(base, "kill", query, clients=args.clients, after_s=args.after)
                print(name, rows[name], flush=True)
                serve.delete("kill")
    finally:
        LiteServer(settings.milvus.uri).stop()
        shutil.rmtree(work, ignore_errors=True)
    results.add("rows", rows)
    table = ["| Embedder | requests after the kill | failed (all 503 + Retry-After) | stall (s) | longest wait before the kill (s) |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        table.append(f"| {name} | {r['requests_after_kill']} | {len(r['failed'])} | {r['stall_s']} | {r['gap_before_s']} |")
    results.section("An Embedder replica killed under load", EXPLAINED + "\n\n" + "\n".join(table))
    print(results.write())


if __name__ == "__main__":
    main()
