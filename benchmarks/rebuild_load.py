"""An index rebuild under search load, on a gallery already ingested (benchmarks.scale keeps its
under ``--work``): N clients search while ``POST /api/v1/index`` rebuilds the index into the
next version of the collection; reports every answer's status, latency before and during, the
count before and after, and how long the rebuild took.

    python -m benchmarks.rebuild_load --data data/bench/scale/big --out docs/benchmarks

``benchmarks.scale`` runs the same measurement on its large gallery (``rebuild_under_load``).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import httpx

from benchmarks.common import Results, markdown_table
from harness.load import load_during, payloads, run_load


def rebuild_under_load(base: str, settings, bodies: list[dict], clients: int, seconds: float) -> dict:
    """On the application deployed at ``base``: ``seconds`` of search load, then the same load
    while ``POST /api/v1/index`` rebuilds (called again while it answers 202: each call waits
    up to serve.index_wait_s for the running rebuild)."""
    url = f"{base}/api/v1/search"
    key = settings.api.api_key.get_secret_value()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    before = httpx.get(f"{base}/api/v1/status", timeout=60).json()
    steady = run_load(url, bodies, clients, seconds)
    answers: list[int] = []
    took: dict[str, float] = {}

    def rebuild() -> None:
        started = time.perf_counter()
        while not answers or answers[-1] == 202:
            answers.append(httpx.post(f"{base}/api/v1/index", headers=headers, timeout=120).status_code)
        took["rebuild_s"] = time.perf_counter() - started
        time.sleep(2)  # the searches just after the move too

    during, _ = load_during(url, bodies, clients, rebuild)
    rebuild_s = took["rebuild_s"]
    after = httpx.get(f"{base}/api/v1/status", timeout=60).json()
    print(f"  rebuilt in {rebuild_s:.0f}s ({answers}); during it {during['ok']} searches answered, "
          f"{during['errors']} failed", flush=True)
    return {"count_before": before["count"], "count_after": after["count"], "index": after.get("index"),
            "rebuild_s": round(rebuild_s, 1), "index_answers": answers, "steady": steady, "during": during}


def report(results: Results, row: dict) -> None:
    results.section("Searches while the index is rebuilt", markdown_table(
        [{"when": "before", **row["steady"]}, {"when": "during the rebuild", **row["during"]}],
        ["when", "requests", "ok", "errors", "qps", "p50_ms", "p99_ms", "server_search_p50_ms"],
        ["", "searches", "200", "errors", "QPS", "p50 ms", "p99 ms", "search_ms p50"]))
    answers = row["index_answers"]
    said = f"{answers.count(202)} × 202 (still building), then {answers[-1]}" if 202 in answers else str(answers)
    results.section("The rebuild", f"{row['count_before']:,} images before, {row['count_after']:,} after; rebuilt "
                                   f"in {row['rebuild_s']:.0f} s (`POST /api/v1/index` answered {said}).")


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a data directory holding lookalike.db / its engine choice")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="the load before the rebuild")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    results = Results("rebuild-load", args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    data = Path(args.data).resolve()
    os.environ.update({"LOOKALIKE_MILVUS__URI": str(data / "lookalike.db"),
                       "LOOKALIKE_STORE__LOCAL_DIR": str(data / "images")})
    files = sorted(p for p in (data / "images").rglob("*") if p.is_file())
    bodies = payloads([p.read_bytes() for p in random.Random(0).sample(files, min(args.queries, len(files)))], k=10)

    from ray import serve

    from harness.serve import deploy, serve_session
    from lookalike.milvus.engines import local_service
    from lookalike.settings import load_settings

    settings = load_settings()
    try:
        with serve_session() as base:
            deploy(settings, base)
            row = rebuild_under_load(base, settings, bodies, args.clients, args.seconds)
            serve.delete("lookalike")
    finally:
        service = local_service(settings.milvus)
        if service is not None:
            service.stop()
    results.add("rebuild", row)
    report(results, row)
    results.write()
    return results


if __name__ == "__main__":
    main()
