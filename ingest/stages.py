"""The three stages of the Ray Data ingest, each a plain function or callable class over a
batch (dict of NumPy arrays), each timing itself into per-row ``t_<stage>`` columns.

read_prepare (tasks)   path -> bytes -> content id -> already in Milvus? -> images.prepare
Embed (actor pool)     pixels -> unit vectors (the model is loaded once per actor, GPU if given)
Write (actor pool)     originals -> image store, then entries -> Milvus (GalleryWriter)

Rows that fail a stage keep flowing with ``status`` set to the reason (and their heavy
columns emptied), so the driver can report every file without a second pass.
"""

from __future__ import annotations

import time

import numpy as np

from lookalike.catalog import Catalog, resolve_uri
from lookalike.encoder import ImageEncoder
from lookalike.errors import LookalikeError, NotFound
from lookalike.images import content_id, prepare
from lookalike.indexer import GalleryWriter, NewImage
from lookalike.models import get_model
from lookalike.settings import Settings
from lookalike.sources import Source
from lookalike.store import make_store

OK = "ok"
INDEXED = "indexed"
ALREADY_PRESENT = "already_present"
STAGES = ("read", "decode", "lookup", "embed", "write")
OUTCOME_COLUMNS = ("path", "label", "id", "status", "message", *(f"t_{s}" for s in STAGES))

# Per worker process: one reader and one Milvus client, reused by every task it runs.
_cache: dict[str, object] = {}


def _cached(key: str, make):
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def read_prepare(batch: dict[str, np.ndarray], *, settings: Settings, source: Source) -> dict[str, np.ndarray]:
    spec = get_model(settings.model.name)
    read = _cached(f"reader:{source}", lambda: source.reader(settings))
    # Workers outlive a job: key the client on where Milvus is now (a Lite server's port changes).
    uri, lite = resolve_uri(settings.milvus, shared=True)
    catalog: Catalog = _cached(f"catalog:{uri}", lambda: Catalog(settings.milvus, spec.dim, uri=uri, lite=lite))
    n = len(batch["path"])
    out = _empty(batch, n)
    pixels = np.zeros((n, spec.input_size, spec.input_size, 3), np.uint8)
    datas = np.empty(n, dtype=object)
    datas[:] = b""
    for i, path in enumerate(batch["path"]):
        started = time.perf_counter()
        try:
            data = read(str(path))
        except (OSError, NotFound) as exc:
            out["status"][i], out["message"][i] = "unreadable", f"{type(exc).__name__}: {exc}"
            continue
        finally:
            out["t_read"][i] = time.perf_counter() - started
        out["id"][i] = content_id(data)
        datas[i] = data

    ids = [int(x) for x, s in zip(out["id"], out["status"]) if s == OK]
    started = time.perf_counter()
    present = catalog.existing_ids(ids)
    out["t_lookup"][:] = (time.perf_counter() - started) / max(n, 1)

    for i in range(n):
        if out["status"][i] != OK:
            continue
        if int(out["id"][i]) in present:
            out["status"][i], datas[i] = ALREADY_PRESENT, b""
            continue
        started = time.perf_counter()
        try:
            prepared = prepare(datas[i], size=spec.input_size, **settings.images.model_dump())
            pixels[i] = prepared.pixels
            out["extension"][i], out["content_type"][i] = prepared.extension, prepared.content_type
        except LookalikeError as exc:
            out["status"][i], out["message"][i], datas[i] = exc.code, exc.message, b""
        out["t_decode"][i] = time.perf_counter() - started
    out["data"], out["pixels"] = datas, pixels
    return out


def _empty(batch: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    def strings(value=""):
        arr = np.empty(n, dtype=object)
        arr[:] = value
        return arr

    out = {"path": np.asarray(batch["path"], dtype=object), "label": np.asarray(batch["label"], dtype=object),
           "id": np.zeros(n, np.int64), "status": strings(OK), "message": strings(), "extension": strings(),
           "content_type": strings()}
    for stage in STAGES:
        out[f"t_{stage}"] = np.zeros(n, np.float64)
    return out


class Embed:
    """The model, loaded once per actor; embeds the rows that are still ``ok``."""

    def __init__(self, settings: Settings):
        self.encoder = ImageEncoder(settings.model).load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["status"] == OK
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)
        started = time.perf_counter()
        if ok.any():
            vectors[ok] = self.encoder.encode(batch["pixels"][ok])
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["t_embed"] = np.where(ok, (time.perf_counter() - started) / max(int(ok.sum()), 1), 0.0)
        out["embedding"] = vectors
        return out


class Write:
    """Uploads originals and upserts entries; keeps only the outcome columns."""

    def __init__(self, settings: Settings, source: Source):
        catalog = Catalog.open(settings.milvus, get_model(settings.model.name).dim, shared=True)
        self.writer = GalleryWriter(catalog, make_store(settings.store))
        self.in_store = source.in_store(settings)

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
                source=str(batch["path"][i]), key=str(batch["path"][i]) if self.in_store else "",
            ))
        if images:
            self.writer.write(images)
        status = batch["status"].copy()
        status[ok] = INDEXED
        out = {k: batch[k] for k in OUTCOME_COLUMNS if k != "status"}
        out["status"] = status
        out["t_write"] = np.where(batch["status"] == OK, (time.perf_counter() - started) / max(len(ok), 1), 0.0)
        return out
