"""Searcher: owns the Milvus client and the gallery's write path (``GalleryWriter``: the
original to the image store, then the entry). Searches, adds, deletes, index builds, status.

Milvus calls block, so they run in worker threads; writes from one replica are serialised
(and, for the embedded Milvus Lite, across processes by the catalog's write lock). If Milvus
is down at start-up the replica still starts and answers 503 until it comes back; the embedded
Milvus's client finds its (restarted) server by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import ray
from ray import serve

from lookalike.quality import duplicates
from lookalike.milvus.catalog import Entry, label_filter
from lookalike.errors import BackendUnavailable, GalleryMoved
from lookalike.milvus.engines import gallery_catalog
from lookalike.settings import Settings
from lookalike.storage.store import make_store
from lookalike.indexing.writer import GalleryWriter, NewImage

from . import metrics
from .replica_rpc import listen_on_node_address

log = logging.getLogger("ray.serve")


def _entry_dict(entry: Entry) -> dict:
    return {"id": entry.id, "key": entry.key, "label": entry.label, "source": entry.source}


@serve.deployment(name="Searcher", max_ongoing_requests=64)
class Searcher:
    def __init__(self, settings: Settings):
        listen_on_node_address()
        self.catalog = gallery_catalog(settings)
        self.writer = GalleryWriter(self.catalog, make_store(settings.store),
                                    delete_foreign_originals=settings.store.delete_foreign_originals)
        self._write = asyncio.Lock()
        self._rebuild: asyncio.Task | None = None
        self.duplicate_settings = settings.duplicates
        self._scan: duplicates.Scan | None = None  # the last finished near-duplicate scan
        self._scanned_count = -1  # the catalog's count it stands for (kept in step by deletes here)
        self._scanning: asyncio.Task | None = None
        self._scan_progress = {"threshold": None, "done": 0, "total": 0}
        self.searches, self.search_seconds = 0, 0.0  # time in Milvus, for the status route's breakdown
        self.milvus_histogram = metrics.milvus_search_seconds()  # the same for Prometheus
        try:
            self.catalog.ensure_ready()
            warning = self.catalog.describe().get("warning")
            if warning:
                log.warning(warning)
        except BackendUnavailable as exc:
            log.warning("starting without Milvus: %s", exc.message)

    async def _run(self, fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def search(self, vector: np.ndarray, limit: int, label: str | None = None, descriptor: str = "") -> list[dict]:
        """The top ``limit`` images, best first (the query path filters them: ``lookalike.query``);
        ``descriptor``: the model that made ``vector``, where it may not be this replica's."""
        started = time.perf_counter()
        hits = (await self._run(self.catalog.search, vector, limit, expr=label_filter(label),
                                descriptor=descriptor))[0]
        elapsed = time.perf_counter() - started
        self.searches += 1
        self.search_seconds += elapsed
        self.milvus_histogram.observe(elapsed)
        return [h.to_dict() for h in hits]

    async def vector(self, image_id: int) -> np.ndarray:
        """A stored image's vector: what "more like this" searches with."""
        return (await self._run(self.catalog.get_one, image_id, with_vectors=True)).embedding

    async def get(self, image_id: int) -> dict:
        return _entry_dict(await self._run(self.catalog.get_one, image_id))

    async def exists(self, image_id: int) -> bool:
        return bool(await self._run(self.catalog.existing_ids, [image_id]))

    async def add(self, image: NewImage, descriptor: str = "") -> tuple[dict, bool]:
        """Store the image and its entry unless it is in the gallery; (the entry, created).
        ``descriptor``: the model that made its vector, refused where it is not this replica's."""
        if descriptor and descriptor != self.catalog.descriptor:  # a rolling update between models
            raise GalleryMoved(descriptor, self.catalog.descriptor, writing=True)
        async with self._write:
            entry, created = await self._run(self.writer.add, image)
        return _entry_dict(entry), created

    async def delete(self, image_id: int) -> dict:
        """Unlink one entry and delete the object the service stored for it."""
        async with self._write:
            entry, object_deleted = await self._run(self.writer.remove, image_id)
        if self._scan is not None:
            self._scan.forget([image_id])  # a reviewed duplicate is gone: the scan stays true
            self._scanned_count -= 1
        return {**_entry_dict(entry), "object_deleted": object_deleted}

    async def list(self, offset: int, limit: int, label: str | None = None) -> dict:
        expr = label_filter(label)
        entries = await self._run(self.catalog.list, offset=offset, limit=limit, expr=expr)
        total = await self._run(self.catalog.count, expr=expr)
        return {"items": [_entry_dict(e) for e in entries], "offset": offset, "limit": limit, "total": total}

    async def build_index(self, wait_s: float) -> dict:
        """Start an index rebuild (or join the one running) and wait up to ``wait_s`` for it:
        ``{"state": "done" | "building", "index": ...}``. Searches and writes go on meanwhile
        (``Versions.build_index``); at 200,000 images a rebuild takes minutes."""
        if self._rebuild is None or self._rebuild.done():
            self._rebuild = asyncio.create_task(self._run(self.catalog.versions.build_index))
        done, _ = await asyncio.wait({self._rebuild}, timeout=wait_s)
        if done:
            return {"state": "done", "index": self._rebuild.result()}
        return {"state": "building", "index": await self._run(self.catalog.versions.index_info)}

    async def duplicates(self, threshold: float | None, offset: int, limit: int, wait_s: float,
                         refresh: bool = False, may_scan: bool = True) -> dict:
        """Near-duplicate groups, a page of them: ``{"state": "done", ...summary, "items"}``, or
        ``{"state": "scanning", "progress"}`` while a scan runs past ``wait_s``. A finished scan
        is kept and answers again until the catalog's count changes (an image added or deleted
        elsewhere), the threshold differs, or ``refresh``; one scan runs at a time. A caller
        that may not start one (``may_scan``: a scan loads Milvus for minutes at 200,000
        images) gets ``{"state": "needs_scan"}`` instead."""
        threshold = self.duplicate_settings.threshold if threshold is None else threshold
        running = self._scanning is not None and not self._scanning.done()
        if not running:
            fresh = (self._scan is not None and self._scan.threshold == threshold and not refresh
                     and await self._run(self.catalog.count) == self._scanned_count)
            if not fresh and not may_scan:
                return {"state": "needs_scan"}
            if not fresh:
                self._scanning = asyncio.create_task(self._scan_now(threshold))
        if self._scanning is not None and not self._scanning.done():
            await asyncio.wait({self._scanning}, timeout=wait_s)
        if self._scanning is not None and self._scanning.done():
            self._scanning.result()  # a failed scan (Milvus down) answers as itself
        if self._scan is None or self._scan.threshold != threshold or (self._scanning and not self._scanning.done()):
            return {"state": "scanning", "progress": dict(self._scan_progress)}
        items = await self._run(self._scan.described, self.catalog, offset, limit)
        return {"state": "done", **self._scan.summary(), "offset": offset, "limit": limit, "items": items}

    async def _scan_now(self, threshold: float) -> None:
        self._scan_progress = {"threshold": threshold, "done": 0, "total": 0}

        def progress(done: int, total: int) -> None:
            self._scan_progress.update(done=done, total=total)

        count = await self._run(self.catalog.count)
        scan = await self._run(duplicates.find, self.catalog, self.duplicate_settings, threshold=threshold,
                               progress=progress)
        log.info("near-duplicates at %.3f: %s", threshold, scan.summary())
        self._scan, self._scanned_count = scan, count

    async def status(self) -> dict:
        return {**await self._run(self.catalog.describe), "searches": self.searches,
                "search_seconds": round(self.search_seconds, 4), "node": ray.get_runtime_context().get_node_id()}
