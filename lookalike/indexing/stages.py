"""The indexing core: the three stages that turn files into gallery entries, each a plain
callable over a batch (a dict of NumPy arrays with ``path`` and ``label``, and ``source``
where the entry's origin is not its path), Ray-free.

ReadPrepare   path -> bytes -> content id -> already in Milvus? -> images.prepare (and its regions)
Embed         pixels -> unit vectors (the model is loaded once per instance), the parts' too
Write         originals -> image store, then entries -> Milvus (the GalleryWriter)

``lookalike index`` runs them one after the other in this process (``indexer.index_items``);
the Ray Data job (``ingest.pipeline``) runs them as tasks and actor pools across a cluster.
Rows that fail a stage keep flowing with ``status`` set to the reason (their heavy columns
emptied), and each stage adds its seconds (``t_<stage>``) and the node it ran on
(``node_<stage>``) to every row, so ``indexer.Report`` accounts for every file in one place.
Backend calls are retried with backoff (``ingest.retries``); a backend that stays down stops
the run, naming it.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Callable

import numpy as np

from lookalike.milvus.catalog import Catalog
from lookalike.embedding.encoder import ImageEncoder
from lookalike.errors import BackendUnavailable, LookalikeError, NotFound
from lookalike.embedding.images import content_id, prepare, prepare_regions
from lookalike.embedding.models import get_model
from lookalike.embedding.regions import boxes
from lookalike.retry import Retry
from lookalike.settings import Settings
from lookalike.storage.store import ImageStore
from lookalike.indexing.writer import GalleryWriter, NewImage

OK = "ok"
INDEXED = "indexed"
ALREADY_PRESENT = "already_present"
STAGES = ("read", "decode", "lookup", "embed", "write")
NODE_STAGES = ("read", "embed", "write")
OUTCOME_COLUMNS = ("path", "label", "id", "status", "message", *(f"t_{s}" for s in STAGES),
                   *(f"node_{s}" for s in NODE_STAGES))


def node_id() -> str:
    """Where this runs: the Ray node's id inside a Ray worker, else the host name."""
    ray = sys.modules.get("ray")  # never imported here: the core runs without Ray
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def _strings(n: int, value: str = "") -> np.ndarray:
    arr = np.empty(n, dtype=object)
    arr[:] = value
    return arr


class ReadPrepare:
    """Reads each file, skips what Milvus holds already (by content id), decodes the rest."""

    def __init__(self, settings: Settings, read: Callable[[str], bytes], catalog: Catalog):
        self.settings = settings
        self.read = read
        self.catalog = catalog
        self.size = get_model(settings.model).input_size
        self.boxes = boxes(settings.model.regions)
        self.retry = Retry.of(settings.ingest)

    def _read(self, path: str) -> bytes:
        return self.retry(lambda: self.read(path), f"reading {path}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["path"])
        out = {"path": np.asarray(batch["path"], dtype=object), "label": np.asarray(batch["label"], dtype=object),
               "source": np.asarray(batch.get("source", batch["path"]), dtype=object),
               "id": np.zeros(n, np.int64), "status": _strings(n, OK), "message": _strings(n),
               "extension": _strings(n), "content_type": _strings(n), "node_read": _strings(n, node_id()),
               **{f"t_{stage}": np.zeros(n, np.float64) for stage in STAGES}}
        pixels = np.zeros((n, self.size, self.size, 3), np.uint8)
        region_pixels = np.zeros((n, len(self.boxes), self.size, self.size, 3), np.uint8)
        datas = _strings(n)
        datas[:] = b""
        for i, path in enumerate(batch["path"]):
            started = time.perf_counter()
            try:
                data = self._read(str(path))
            except (OSError, NotFound) as exc:  # a bad file is skipped; a backend outage stops the run
                out["status"][i], out["message"][i] = "unreadable", f"{type(exc).__name__}: {exc}"
                continue
            finally:
                out["t_read"][i] = time.perf_counter() - started
            out["id"][i] = content_id(data)
            datas[i] = data

        ids = [int(x) for x, s in zip(out["id"], out["status"]) if s == OK]
        started = time.perf_counter()
        # At Bounded: what earlier runs stored (older than Milvus's graceful time, 5 s by default).
        # At the default level, Session, a client that has just written waits for the server's
        # next time tick (~200 ms) before it reads: where the look-ups and the writes share a
        # client (the fused actor, `lookalike index`), a third of a server ingest's time. A row
        # this run wrote and a later batch misses is written again (an upsert: one entity), and
        # the report counts each image once (``Report.finish``).
        present = self.retry(lambda: self.catalog.existing_ids(ids, consistency_level="Bounded"),
                             "looking up ids in Milvus")
        out["t_lookup"][:] = (time.perf_counter() - started) / max(n, 1)

        for i in range(n):
            if out["status"][i] != OK:
                continue
            if int(out["id"][i]) in present:
                out["status"][i], datas[i] = ALREADY_PRESENT, b""
                continue
            started = time.perf_counter()
            try:
                prepared = prepare(datas[i], self.size, self.settings.images)
                pixels[i] = prepared.pixels
                if self.boxes:
                    region_pixels[i] = prepare_regions(datas[i], self.size, self.settings.images, self.boxes)
                out["extension"][i], out["content_type"][i] = prepared.extension, prepared.content_type
            except LookalikeError as exc:
                if isinstance(exc, BackendUnavailable):
                    raise
                out["status"][i], out["message"][i], datas[i] = exc.code, exc.message, b""
            out["t_decode"][i] = time.perf_counter() - started
        out["data"], out["pixels"] = datas, pixels
        if self.boxes:
            out["region_pixels"] = region_pixels
        return out


class Embed:
    """The model, loaded once per instance; embeds the rows that are still ``ok``."""

    def __init__(self, settings: Settings, encoder: ImageEncoder | None = None):
        self.encoder = encoder or ImageEncoder(settings.model).load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["status"] == OK
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)
        started = time.perf_counter()
        if ok.any():
            vectors[ok] = self.encoder.encode(batch["pixels"][ok])
        out = {k: v for k, v in batch.items() if k not in ("pixels", "region_pixels")}
        if "region_pixels" in batch:  # (n, regions, size, size, 3) -> (n, regions, dim)
            parts = batch["region_pixels"]
            regions = np.zeros((len(ok), parts.shape[1], self.encoder.dim), np.float32)
            if ok.any():
                regions[ok] = self.encoder.encode(parts[ok].reshape(-1, *parts.shape[2:])).reshape(
                    int(ok.sum()), parts.shape[1], -1)
            out["regions"] = regions
        out["t_embed"] = np.where(ok, (time.perf_counter() - started) / max(int(ok.sum()), 1), 0.0)
        out["node_embed"] = _strings(len(ok), node_id())
        out["embedding"] = vectors
        return out


class Write:
    """Uploads originals and upserts entries (``in_store``: the files are the store's own
    objects already, indexed in place); keeps only the outcome columns."""

    def __init__(self, settings: Settings, catalog: Catalog, store: ImageStore, *, in_store: bool = False):
        self.writer = GalleryWriter(catalog, store, retry=Retry.of(settings.ingest))
        self.in_store = in_store

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.flatnonzero(batch["status"] == OK)
        started = time.perf_counter()
        images, seen = [], set()
        for i in ok:
            image_id = int(batch["id"][i])
            if image_id in seen:  # the same bytes twice in one batch: one write
                continue
            seen.add(image_id)
            images.append(NewImage(
                id=image_id, data=batch["data"][i], extension=batch["extension"][i],
                content_type=batch["content_type"][i], vector=batch["embedding"][i], label=str(batch["label"][i]),
                source=str(batch["source"][i]), key=str(batch["path"][i]) if self.in_store else "",
                regions=batch["regions"][i] if "regions" in batch else None,
            ))
        if images:
            self.writer.write(images)
        status = batch["status"].copy()
        status[ok] = INDEXED
        out = {k: batch[k] for k in OUTCOME_COLUMNS if k not in ("status", "node_write")}
        out["status"] = status
        out["t_write"] = np.where(batch["status"] == OK, (time.perf_counter() - started) / max(len(ok), 1), 0.0)
        out["node_write"] = _strings(len(status), node_id())
        return out
