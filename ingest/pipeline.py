"""The ingest job on Ray Data: list -> read + decode (tasks) -> embed (actor pool) ->
upload + upsert (actor pool) -> flush and index -> JSON report; or the three stages fused in
one actor pool (``ingest.stages``: fused, or auto without GPUs). A re-embed under another model
(``run_reembed``) is the same job over the gallery's stored originals, into its next version.

The stages are the indexing core's (``lookalike.indexing.stages``), the same code ``lookalike index``
runs in-process; this module only places them on the cluster and folds their rows into the
core's ``Report``. Idempotent and resumable: ids are content hashes, rows already in Milvus are
skipped before any decoding or embedding, and every write is an upsert of an object stored
first. A job stopped by a backend that stayed down, or killed, ends with exactly one entity per
distinct image when run again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from lookalike.ray_env import use_local_ray_env

# Before Ray is imported: it reads its auth mode once per process, so a driver that set
# RAY_AUTH_MODE=token after importing it could not talk to the cluster it started.
use_local_ray_env()

import ray  # noqa: E402

from lookalike.errors import LookalikeError  # noqa: E402
from lookalike.indexing import reembed  # noqa: E402
from lookalike.indexing.indexer import Report  # noqa: E402
from lookalike.milvus.engines import choose_for_ingest, gallery_catalog, serving  # noqa: E402
from lookalike.embedding.models import get_model  # noqa: E402
from lookalike.settings import Settings  # noqa: E402
from lookalike.indexing.sources import Source  # noqa: E402
from lookalike.indexing.stages import Embed, ReadPrepare, Write  # noqa: E402
from lookalike.storage.store import make_store  # noqa: E402

log = logging.getLogger("ingest")


def connect_ray() -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`), or start a local one.
    Never the cluster a `ray start` left in /tmp/ray/ray_current_cluster (what address=None
    would join): it may be another user's, another network namespace's, or long gone.
    A local one runs without Ray's dashboard: nobody watches a one-off job's dashboard, and its
    ten processes (1.6 GB against 0.7 without) starting at once on a busy machine kept the node
    from registering within Ray's fixed 30 s ("the GCS has become overloaded")."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=True)


WRITE_ACTOR_CPUS = 0.25  # a write actor waits on Milvus and the store, mostly
# Without GPUs, the forward pass is about 3/4 of an image's CPU and decoding the rest (lite0:
# 14 ms against 4.5 ms per ImageNet-like JPEG, one thread each).
CPU_EMBED_SHARE = 0.75


@dataclass(frozen=True)
class EmbedPool:
    """The embedding stage's actors and what each asks for; ``fused``: each actor also reads,
    decodes and writes its files (one stage instead of three)."""

    actors: int
    cpus: float  # per actor
    gpus: float  # per actor
    threads: int  # model.num_threads in each actor (0: the CPUs it may use)
    fused: bool = False

    @property
    def stage_cpus(self) -> float:
        return self.actors * self.cpus


def embed_pool(settings: Settings, images: int, *, gpus: float, free_cpus: float) -> EmbedPool:
    """One actor per GPU, beside read tasks and writers. The stages fused without GPUs
    (``ingest.stages`` fused, or auto): one actor for every free CPU, each on one inference
    thread doing a file's whole work: with no GPU to feed, handing blocks between three pools
    cost more than it overlapped (2,000 JPEGs on two cores: 74.8 img/s against 66.9 for separate
    pools, and 131 against 109 on a faster machine: docs/benchmarks.md's ingest-throughput).
    Separate stages without GPUs: one actor for every ~4/3 free CPUs, each on one thread,
    asking for no more CPU than leaves a read task and the writers room. The ``ingest`` settings
    may name the actors and their CPUs; never more actors than the ``images`` fill batches for.
    ``gpus``: the cluster's; ``free_cpus``: its CPUs free now (``cluster_pool``)."""
    ing = settings.ingest
    per_actor_gpus = ing.embed_actor_gpus
    if per_actor_gpus < 0:
        per_actor_gpus = 1.0 if gpus > 0 else 0.0
    fused = ing.stages == "fused" or (ing.stages == "auto" and not per_actor_gpus)
    if per_actor_gpus:
        return EmbedPool(ing.embed_actors or max(1, int(gpus // per_actor_gpus)), ing.embed_actor_cpus,
                         per_actor_gpus, settings.model.num_threads, fused)
    if ing.embed_actors:
        return EmbedPool(ing.embed_actors, ing.embed_actor_cpus, 0.0, settings.model.num_threads, fused)
    batches = math.ceil(images / settings.model.batch_size)
    if fused:
        actors = max(1, min(int(free_cpus + 0.5), batches))
        return EmbedPool(actors, max(min(ing.embed_actor_cpus, free_cpus / actors), ing.read_task_cpus), 0.0,
                         settings.model.num_threads or 1, True)
    actors = max(1, min(int(free_cpus * CPU_EMBED_SHARE + 0.5), batches))
    room = (free_cpus - ing.read_task_cpus - WRITE_ACTOR_CPUS * ing.write_actors) / actors
    return EmbedPool(actors, max(min(ing.embed_actor_cpus, room), ing.read_task_cpus), 0.0,
                     settings.model.num_threads or 1)


def cluster_pool(settings: Settings, images: int) -> EmbedPool:
    return embed_pool(settings, images, gpus=ray.cluster_resources().get("GPU", 0),
                      free_cpus=ray.available_resources().get("CPU", 0.0))


# Per worker process: one read stage (its reader and Milvus client) per job's settings.
_read_stages: dict[str, ReadPrepare] = {}


def read_prepare(batch: dict, *, settings: Settings, source: Source) -> dict:
    """The read + prepare stage as a Ray task function (tasks spread and scale freely)."""
    key = f"{source}|{settings.model_dump_json()}"
    if key not in _read_stages:
        catalog = gallery_catalog(settings)
        _read_stages[key] = ReadPrepare(settings, source.reader(settings), catalog)
    return _read_stages[key](batch)


class WriteActor:
    """The write stage in an actor: one Milvus client and one store client per actor."""

    def __init__(self, settings: Settings, source: Source):
        catalog = gallery_catalog(settings)
        self.write = Write(settings, catalog, make_store(settings.store), in_store=source.in_store(settings))

    def __call__(self, batch: dict) -> dict:
        return self.write(batch)


class FusedActor:
    """The three stages in one actor, one after the other on each batch of files: its reader,
    model, Milvus client and store client, loaded once."""

    def __init__(self, settings: Settings, source: Source):
        catalog = gallery_catalog(settings)
        self.read = ReadPrepare(settings, source.reader(settings), catalog)
        self.embed = Embed(settings)
        self.write = Write(settings, catalog, make_store(settings.store), in_store=source.in_store(settings))

    def __call__(self, batch: dict) -> dict:
        return self.write(self.embed(self.read(batch)))


def beside_serving(settings: Settings, pool: EmbedPool) -> float:
    """For a job in a cluster that serves (a re-embed the API started): the share of the stages'
    usual CPU asks that fits in what the cluster has free, at most 1. Serve's replicas hold
    their CPUs as long as they live (`make run` on two cores leaves 0.5 of 2), so a job asking
    for its usual amounts (1.5: a read task, an embedding actor, a write actor) would wait for
    CPUs that never free up; scaled down, its stages run beside the replicas on the cores they
    share, as the same job from the command line does."""
    ing = settings.ingest
    wanted = pool.stage_cpus if pool.fused else (
        ing.read_task_cpus + pool.stage_cpus + WRITE_ACTOR_CPUS * ing.write_actors)
    free = ray.available_resources().get("CPU", 0.0)
    return 1.0 if free >= wanted else max(free * 0.9, 0.01) / wanted


def build_dataset(source: Source, items: list[dict], settings: Settings, *,
                  in_serving_cluster: bool = False) -> ray.data.Dataset:
    """The ingest's stages over ``items``; ``in_serving_cluster``: each stage asks for its share
    of the CPUs the replicas leave (``beside_serving``)."""
    ing = settings.ingest
    pool = cluster_pool(settings, len(items))
    cpu_share = beside_serving(settings, pool) if in_serving_cluster else 1.0
    # A stage's own error (a backend that stayed down, named) reaches the driver as itself,
    # not as Ray Data's generic UserCodeException.
    context = ray.data.DataContext.get_current()
    context.raise_original_map_exception = True
    # Work is spread over every embedding actor, not taken by the first one ready.
    context.wait_for_min_actors_s = math.ceil(ing.actors_ready_timeout_s)
    log.info("stages %s: %d embedding actor(s), %.2g CPU and %.2g GPU each, %s inference thread(s)",
             "fused" if pool.fused else "separate", pool.actors, pool.cpus * cpu_share, pool.gpus,
             pool.threads or "all")
    ds = ray.data.from_items(items)
    model_settings = settings.with_overrides(model={"num_threads": pool.threads})
    if pool.fused:
        return ds.map_batches(FusedActor, fn_constructor_args=(model_settings, source),
                              batch_size=settings.model.batch_size,
                              compute=ray.data.ActorPoolStrategy(size=pool.actors), num_cpus=pool.cpus * cpu_share,
                              num_gpus=pool.gpus, batch_format="numpy")
    ds = ds.map_batches(read_prepare, fn_kwargs={"settings": settings, "source": source},
                        batch_size=ing.read_batch_size, num_cpus=ing.read_task_cpus * cpu_share,
                        batch_format="numpy")
    ds = ds.map_batches(Embed, fn_constructor_args=(model_settings,),
                        batch_size=settings.model.batch_size, compute=ray.data.ActorPoolStrategy(size=pool.actors),
                        num_cpus=pool.cpus * cpu_share, num_gpus=pool.gpus, batch_format="numpy")
    return ds.map_batches(WriteActor, fn_constructor_args=(settings, source), batch_size=ing.write_batch_size,
                          compute=ray.data.ActorPoolStrategy(size=ing.write_actors),
                          num_cpus=WRITE_ACTOR_CPUS * cpu_share, batch_format="numpy")


def collect(ds: ray.data.Dataset, report: Report, progress: Callable[[Report], None] | None = None) -> None:
    """Fold the rows into the report (``progress`` told after each batch). A backend that
    stayed down stops the job: its error (which names it) is raised as itself, not as Ray's
    wrapper."""
    try:
        for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
            report.add(batch)
            if progress:
                progress(report)
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, LookalikeError) and not isinstance(cause, ray.exceptions.RayError):
                raise cause from None
            cause = getattr(cause, "cause", None) or cause.__cause__
        raise
    report.finish()


def run_ingest(spec: str, settings: Settings, *, report_path: str | None = None, limit: int | None = None) -> Report:
    started = time.perf_counter()
    source = Source.parse(spec)
    connect_ray()
    report = Report()
    listed = time.perf_counter()
    items = [{"path": i.path, "label": i.label} for i in source.items(settings)]
    if limit:
        items = items[:limit]
    report.stage_seconds["list"] = time.perf_counter() - listed
    dim = get_model(settings.model).dim
    report.run["engine"] = choose_for_ingest(settings.milvus, len(items), dim)  # a large new gallery: local server
    with serving(settings.milvus):
        catalog = gallery_catalog(settings)
        catalog.ensure_ready()
        log.info("ingesting %d files from %s into %s (%s)", len(items), source, settings.milvus.uri,
                 settings.milvus.collection)
        if items:
            collect(build_dataset(source, items, settings), report)
        finishing = time.perf_counter()
        catalog.flush()
        index = catalog.versions.wait_for_index(settings.ingest.index_wait_s)
        report.stage_seconds["index"] = time.perf_counter() - finishing
        report.seconds = time.perf_counter() - started
        count = catalog.count()
        report.run.update({"source": str(source), "milvus": settings.milvus.uri,
                             "collection": settings.milvus.collection, "count": count, "index": index,
                             "model": settings.model.name, "nodes": sum(1 for n in ray.nodes() if n["Alive"])})
        warning = catalog.describe().get("warning")
        if warning:
            report.run["warning"] = warning
            log.warning(warning)
        catalog.close()
    return _written(report, settings, report_path, "ingest")


def run_reembed(settings: Settings, *, report_path: str | None = None,
                progress: Callable[[Report, int], None] | None = None,
                planned: Callable[[reembed.Plan, int], None] | None = None, in_serving_cluster: bool = False) -> Report:
    """Re-embed the gallery under the configured model (``lookalike.indexing.reembed``): its
    stored originals through the same stages as an ingest into the next version, then the
    switch. ``planned``: told (the plan, the images to embed) once the next version is staged;
    ``progress``: told (the report, the images to embed) after each batch;
    ``in_serving_cluster``: the stages ask for the CPUs the replicas leave (``beside_serving``)."""
    started = time.perf_counter()
    report = Report()
    with serving(settings.milvus):
        plan = reembed.plan(settings, say=log.info)  # refused before Ray starts: no gallery, the same model
        todo = [{"path": i.path, "label": i.label, "source": i.source} for i in reembed.items(plan)]
        log.info("re-embedding %d images of %s into %s (%s)", len(todo), plan.staged.current, plan.staged.into,
                 settings.model.name)
        if planned:
            planned(plan, len(todo))
        if todo:
            connect_ray()
            collect(build_dataset(plan.source, todo, plan.settings, in_serving_cluster=in_serving_cluster), report,
                    progress and (lambda r: progress(r, len(todo))))
        count = plan.gallery.versions.switch(plan.staged, reembed.catch_up(plan, report), log.info)
        report.seconds = time.perf_counter() - started
        report.run.update({"source": f"gallery {plan.staged.current} ({plan.staged.recorded})",
                           "collection": settings.milvus.collection, "into": plan.staged.into,
                           "descriptor": plan.gallery.descriptor, "count": count, "model": settings.model.name,
                           "nodes": sum(1 for n in ray.nodes() if n["Alive"]) if ray.is_initialized() else 0})
        plan.target.close()
        plan.gallery.close()
    return _written(report, settings, report_path, "reembed")


def _written(report: Report, settings: Settings, report_path: str | None, kind: str) -> Report:
    """The report, written as JSON (``report_path``, or a file named by the time)."""
    path = Path(report_path) if report_path else Path(settings.ingest.report_dir) / (
        f"{kind}-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2))
    report.path = str(path)
    reasons = Counter(s["code"] for s in report.skipped)
    log.info("skipped: %s", dict(reasons) or "none")
    return report
