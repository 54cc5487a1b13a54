"""The ingest job on Ray Data: list -> read + decode (tasks) -> embed (actor pool) ->
upload + upsert (actor pool) -> flush and index -> JSON report.

Idempotent and resumable: ids are content hashes, rows already in Milvus are skipped before
any decoding or embedding, and every write is an upsert of an object stored first. Killing
the job and running it again ends with exactly one entity per distinct image.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import ray

from lookalike.catalog import Catalog
from lookalike.indexer import Report
from lookalike.lite_server import serving
from lookalike.models import get_model
from lookalike.ray_env import use_local_ray_env
from lookalike.settings import Settings
from lookalike.sources import Source

from .stages import ALREADY_PRESENT, INDEXED, STAGES, Embed, Write, read_prepare

log = logging.getLogger("ingest")


def connect_ray() -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`), or start a local one."""
    if ray.is_initialized():
        return
    use_local_ray_env()
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)


def _pool_sizes(settings: Settings) -> tuple[int, float]:
    gpus = ray.cluster_resources().get("GPU", 0)
    per_actor_gpus = settings.ingest.embed_actor_gpus
    if per_actor_gpus < 0:
        per_actor_gpus = 1.0 if gpus > 0 else 0.0
    actors = settings.ingest.embed_actors or (max(1, int(gpus // per_actor_gpus)) if per_actor_gpus else 1)
    return actors, per_actor_gpus


def build_dataset(source: Source, items: list[dict], settings: Settings) -> ray.data.Dataset:
    ing = settings.ingest
    embed_actors, embed_gpus = _pool_sizes(settings)
    ds = ray.data.from_items(items)
    ds = ds.map_batches(read_prepare, fn_kwargs={"settings": settings, "source": source},
                        batch_size=ing.read_batch_size, num_cpus=ing.read_task_cpus, batch_format="numpy")
    ds = ds.map_batches(Embed, fn_constructor_args=(settings,), batch_size=settings.model.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=embed_actors), num_cpus=ing.embed_actor_cpus,
                        num_gpus=embed_gpus, batch_format="numpy")
    return ds.map_batches(Write, fn_constructor_args=(settings, source), batch_size=ing.write_batch_size,
                          compute=ray.data.ActorPoolStrategy(size=ing.write_actors), num_cpus=0.25,
                          batch_format="numpy")


def collect(ds: ray.data.Dataset, report: Report) -> None:
    """Fold the per-file outcomes into the report. Each distinct image counts once, as indexed
    (written by this run) or already present; every other file with the same bytes is a
    duplicate of the first one (in path order)."""
    outcomes: list[tuple[str, int, str]] = []
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        for stage in STAGES:
            report.stage_seconds[stage] += float(batch[f"t_{stage}"].sum())
        for path, image_id, status, message in zip(batch["path"], batch["id"], batch["status"], batch["message"]):
            report.total += 1
            if status in (INDEXED, ALREADY_PRESENT):
                outcomes.append((str(path), int(image_id), str(status)))
            else:
                report.skip(str(path), str(status), str(message))
    # An image this run wrote may also be seen as "already present" by a later batch.
    written = {image_id for _, image_id, status in outcomes if status == INDEXED}
    first_path: dict[int, str] = {}
    for path, image_id, status in sorted(outcomes):
        if image_id in first_path:
            report.duplicates.append({"path": path, "same_as": first_path[image_id]})
            continue
        first_path[image_id] = path
        if image_id in written:
            report.indexed += 1
        else:
            report.already_present += 1


def run_ingest(spec: str, settings: Settings, *, report_path: str | None = None, limit: int | None = None) -> Report:
    started = time.perf_counter()
    source = Source.parse(spec)
    connect_ray()
    report = Report()
    with serving(settings.milvus.shared_lite_dir, settings.milvus.lite_server_start_timeout_s):
        catalog = Catalog.open(settings.milvus, get_model(settings.model.name).dim, shared=True)
        catalog.ensure_ready()
        listed = time.perf_counter()
        items = [{"path": i.path, "label": i.label} for i in source.items(settings)]
        if limit:
            items = items[:limit]
        report.stage_seconds["list"] = time.perf_counter() - listed
        log.info("ingesting %d files from %s into %s (%s)", len(items), source, settings.milvus.uri,
                 settings.milvus.collection)
        if items:
            collect(build_dataset(source, items, settings), report)
        finishing = time.perf_counter()
        catalog.flush()
        index = catalog.wait_for_index(settings.ingest.index_wait_s)
        report.stage_seconds["index"] = time.perf_counter() - finishing
        report.seconds = time.perf_counter() - started
        count = catalog.count()
        report.extra.update({"source": str(source), "milvus": settings.milvus.uri,
                             "collection": settings.milvus.collection, "count": count, "index": index,
                             "model": settings.model.name})
        warning = catalog.scale_warning(count)
        if warning:
            report.extra["warning"] = warning
            log.warning(warning)
        catalog.close()
    path = Path(report_path) if report_path else Path(settings.ingest.report_dir) / (
        "ingest-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2))
    report.path = str(path)
    reasons = Counter(s["code"] for s in report.skipped)
    log.info("skipped: %s", dict(reasons) or "none")
    return report
