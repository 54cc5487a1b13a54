"""A search of the gallery: the top-k entries per vector, one hit per image. Where the gallery
keeps region rows, each image's best row counts, whole or part (a part's score less
``region_margin``), and the hit says which part matched."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from lookalike.embedding import regions as region_rows
from lookalike.embedding.images import Box
from lookalike.milvus.connection import Connection
from lookalike.milvus.routing import Router
from lookalike.milvus.schema import MAX_LIMIT, OUTPUT_FIELDS, Entry, Hit, Table
from lookalike.settings import MilvusSettings


def search_params(settings: MilvusSettings, params: dict | None = None) -> dict:
    """What a search sends: the metric, and ``params`` or the configured ones for the index type."""
    return {"metric_type": settings.metric, "params": settings.index.search_params if params is None else params}


def score(settings: MilvusSettings, distance: float) -> float:
    """Cosine similarity of unit vectors from the metric's distance (L2 is squared in Milvus)."""
    return 1.0 - distance / 2.0 if settings.metric == "L2" else distance


class Search:
    def __init__(self, connection: Connection, gallery: Table, parts: Table, regions: Sequence[Box],
                 margin: float, get: Callable[[list[int]], list[Entry]], router: Router):
        """``get``: entries by id, for images found by a region row only; ``router``: which
        version holds vectors of a query's descriptor."""
        self.connection, self.gallery, self.parts, self.router = connection, gallery, parts, router
        self.regions, self.margin, self._get = list(regions), margin, get

    def __call__(self, vectors: np.ndarray, k: int, *, expr: str = "", params: dict | None = None,
                 regions: bool = True, descriptor: str = "") -> list[list[Hit]]:
        settings = self.connection.settings
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32)).tolist()
        sent = search_params(settings, params)
        results = self.connection.call("search", self.router.read(self.gallery, descriptor), data=vectors, limit=k, filter=expr,
                                       output_fields=OUTPUT_FIELDS, search_params=sent)
        hits = [[self._hit(r) for r in found] for found in results]
        if not (self.regions and regions):
            return hits
        parts = self.connection.call("search", self.router.read(self.parts, descriptor), data=vectors,
                                     limit=min(MAX_LIMIT, k * len(self.regions)), filter=expr,
                                     output_fields=["image", "region"], search_params=sent)
        return [self._best_per_image(whole, found, k) for whole, found in zip(hits, parts)]

    def _hit(self, r: dict) -> Hit:
        entity, distance = r.get("entity", {}), float(r["distance"])
        return Hit(id=int(r["id"]), key=entity.get("key", ""), label=entity.get("label", ""),
                   source=entity.get("source", ""), distance=distance,
                   score=score(self.connection.settings, distance))

    def _best_per_image(self, whole: list[Hit], parts: list[dict], k: int) -> list[Hit]:
        """The whole-image hits and the region hits of one query -> one hit per image, its best
        (``regions.best_per_image``; a part's distance is the row's own); images found by a
        region only are read from the gallery (a region whose image is gone, left by a
        cut-short delete, is skipped)."""
        ranked = [(h.id, h.score, h) for h in whole]
        for r in parts:
            distance, entity = float(r["distance"]), r.get("entity", {})
            part = Hit(id=int(entity["image"]), key="", label="", source="", distance=distance,
                       score=score(self.connection.settings, distance) - self.margin,
                       region=str(self.regions[int(entity["region"])]))
            ranked.append((part.id, part.score, part))
        best = [hit for _, _, hit in region_rows.best_per_image(ranked, k)]
        known: dict[int, Hit | Entry] = {h.id: h for h in whole}
        known.update({e.id: e for e in self._get([h.id for h in best if h.id not in known])})
        return [Hit(id=hit.id, key=entry.key, label=entry.label, source=entry.source, distance=hit.distance,
                    score=hit.score, region=hit.region)
                for hit in best if (entry := known.get(hit.id)) is not None]
