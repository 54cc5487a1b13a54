"""Re-embedding the sample gallery under another model while it is searched, then rolling the
service over to that model, in one run:

  before       N clients search the service (the bundled model, GeM pooling)
  re-embed     the same load while `python -m ingest --reembed` (as `lookalike reembed` runs it:
               its own process and local Ray cluster beside the service's) re-embeds every
               stored original with average pooling into the next version and moves the alias
  after        the same load on the service still running the previous model (it answers from
               its own version, kept)
  rollout      the same load while Serve replaces the replicas with the new model's

Every answer's status is counted, and a checker searches by the gallery's own images one after
another throughout: each must find itself in its top 5 at cosine >= 0.999, which a search that
met the other model's vectors (same dimension: it would not fail, it would rank garbage, at
~0.93) does not.
Reports searches and failures per phase, wrong answers, the count before and after, and the
re-embed's time and rate.

    python -m benchmarks.reembed_load [--clients 4] [--seconds 10] [--out docs/benchmarks]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx

from lookalike.ray_env import use_local_ray_env

use_local_ray_env()  # before Ray is imported

from benchmarks.common import Results, markdown_table, openclipart_set  # noqa: E402
from benchmarks.http_load import prepare_gallery  # noqa: E402
from harness.load import load_during, payloads, run_load  # noqa: E402
from harness.serve import deploy, serve_session  # noqa: E402

SELF = 0.999


class Checker:
    """Searches by gallery images one after another; counts answers that do not find the image
    itself first at cosine >= SELF."""

    def __init__(self, base: str, files: list[Path]):
        self.base, self.files = base, files
        self.phase, self.counts, self.wrong = "before", {}, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from lookalike.embedding.images import content_id

        with httpx.Client(base_url=self.base, timeout=60) as client:
            i = 0
            while not self._stop.is_set():
                data = self.files[i % len(self.files)].read_bytes()
                i += 1
                response = client.post("/api/v1/search", files={"image": ("q", data)}, params={"k": 5})
                count = self.counts.setdefault(self.phase, {"checked": 0, "wrong": 0, "failed": 0})
                count["checked"] += 1
                if response.status_code != 200:
                    count["failed"] += 1
                    continue
                # Itself among the top 5 at cosine ~1 (not necessarily first: the set holds images
                # that look the same at the model's input size, tied at ~1 with it).
                own = [h for h in response.json()["results"] if h["id"] == str(content_id(data))]
                if not own or own[0]["score"] < SELF:
                    count["wrong"] += 1
                    self.wrong.append({"phase": self.phase, "file": self.files[(i - 1) % len(self.files)].name,
                                       "score": own[0]["score"] if own else None})

    def start(self) -> "Checker":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", help="a labelled folder tree (default: the sample gallery's openclipart set)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="the load before and after")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    results = Results("reembed-load", args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    gallery = Path(args.gallery) if args.gallery else openclipart_set()
    work = Path(tempfile.mkdtemp(prefix="lookalike-reembed-"))
    os.environ.update({"LOOKALIKE_MILVUS__URI": str(work / "lookalike.db"),
                       "LOOKALIKE_STORE__LOCAL_DIR": str(work / "images"),
                       "LOOKALIKE_INGEST__REPORT_DIR": str(work / "reports")})
    from lookalike.milvus.engines import local_service
    from lookalike.settings import load_settings

    before = load_settings()
    after = load_settings(overrides={"model": {"pooling": "avg"}})  # what the job's environment gives
    files = sorted(p for p in gallery.rglob("*") if p.is_file())
    picked = random.Random(0).sample(files, min(args.queries, len(files)))
    bodies = payloads([p.read_bytes() for p in picked], k=5)
    rows, reembed = [], {}
    try:
        prepare_gallery(before, gallery)
        with serve_session() as base:
            deploy(before, base)
            url = f"{base}/api/v1/search"
            count_before = httpx.get(f"{base}/api/v1/status", timeout=60).json()["count"]
            checker = Checker(base, picked).start()
            rows.append({"phase": "before", **run_load(url, bodies, args.clients, args.seconds)})

            checker.phase = "re-embed"
            def job():
                env = {**os.environ, "LOOKALIKE_MODEL__POOLING": "avg"}
                env.pop("RAY_ADDRESS", None)
                done = subprocess.run([sys.executable, "-m", "ingest", "--reembed", "--report", str(work / "r.json")],
                                      env=env, capture_output=True, text=True, timeout=3600)
                assert done.returncode == 0, done.stderr[-3000:]
                reembed["report"] = json.loads((work / "r.json").read_text())
            summary, seconds = load_during(url, bodies, args.clients, job)
            rows.append({"phase": "re-embed", **summary})
            reembed["seconds"] = seconds

            checker.phase = "after, previous model"
            rows.append({"phase": "after, previous model", **run_load(url, bodies, args.clients, args.seconds)})

            checker.phase = "rollout"
            summary, rollout_s = load_during(url, bodies, args.clients, lambda: deploy(after, base))
            rows.append({"phase": "rollout", **summary})

            checker.phase = "after, new model"
            rows.append({"phase": "after, new model", **run_load(url, bodies, args.clients, args.seconds)})
            checker.stop()
            status = httpx.get(f"{base}/api/v1/status", timeout=60).json()
    finally:
        service = local_service(before.milvus)
        if service is not None:
            service.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = reembed["report"]
    for row in rows:
        row.update(checker.counts.get(row["phase"], {}))
        row["failed"] = row.get("requests", 0) - row.get("ok", 0)
    results.add("phases", rows)
    results.add("wrong_answers", checker.wrong)
    results.add("reembed", {"images": report["run"]["count"], "seconds": round(reembed["seconds"], 1),
                            "images_per_s": round(report["run"]["count"] / reembed["seconds"], 1),
                            "caught_up": report["run"].get("caught_up", 0), "skipped": report["skipped"],
                            "count_before": count_before, "count_after": status["count"],
                            "rollout_s": round(rollout_s, 1), "descriptor_after": status["milvus"].get("descriptor")})
    results.section("Searches while the gallery is re-embedded and the service rolls to the new model", markdown_table(
        rows, ["phase", "requests", "failed", "qps", "p50_ms", "p99_ms", "checked", "wrong"],
        ["", "searches", "failed", "QPS", "p50 ms", "p99 ms", "checked", "wrong answers"]))
    r = results.data["reembed"]
    results.section("The re-embed", f"{r['count_before']:,} images before, {r['count_after']:,} after; re-embedded in "
                                    f"{r['seconds']:.0f} s ({r['images_per_s']} img/s under the load, "
                                    f"{r['caught_up']} caught up, {r['skipped']} skipped); the rollout took "
                                    f"{r['rollout_s']:.0f} s; the gallery then holds {r['descriptor_after']} vectors.")
    results.write()
    return results


if __name__ == "__main__":
    main()
