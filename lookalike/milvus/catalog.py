"""The Milvus catalog: one gallery's collections behind a small facade, over
pymilvus.MilvusClient. Its parts, each in its own module:

- ``connection.py``: the client, deadlines, the write lock, a lost server as ``BackendUnavailable``;
- ``schema.py``: the collections' fields, ``Entry`` and ``Hit``, making and checking a collection;
- ``versions.py`` (``catalog.versions``): the versions behind each alias, index rebuilds, drop;
- ``rows.py`` (``catalog.rows``): writes, reads, bulk scans and the one copy;
- ``search.py``: top-k, one hit per image, region rows merged;
- ``routing.py`` (``catalog.router``): which version a read goes to while and after a re-embed
  moves the gallery to another model, and whether a write may go.

The same code runs against Milvus Lite (a ``.db`` data directory) and a Milvus server
(``http://host:19530``). Every call has a deadline; an unreachable server surfaces as
``BackendUnavailable("milvus")`` and the next call reconnects.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Iterable, Sequence

import numpy as np

from lookalike.embedding.images import Box
from lookalike.errors import BackendUnavailable, NotFound
from lookalike.milvus import schema
from lookalike.milvus.connection import Connection
from lookalike.milvus.routing import Router
from lookalike.milvus.rows import Rows
from lookalike.milvus.schema import Entry, Hit, label_filter
from lookalike.milvus.search import Search
from lookalike.milvus.versions import Versions
from lookalike.settings import MilvusSettings

__all__ = ["Catalog", "Entry", "Hit", "label_filter"]


class Catalog:
    def __init__(self, settings: MilvusSettings, dim: int, *, uri: str | None = None,
                 locate: Callable[[], str] | None = None, write_lock: Callable[[], ContextManager] | None = None,
                 embedded: bool = False, descriptor: str = "", regions: Sequence[Box] = (),
                 region_margin: float = 0.0):
        """``uri``: where Milvus is (default ``settings.uri``); ``locate``: asked for it again at
        each reconnection (the embedded Milvus's supervised server, see
        ``engines.open_catalog``). ``write_lock``: held around writes (Milvus Lite takes
        one writer at a time). ``embedded``: Milvus Lite (which slows down as it grows).
        ``descriptor``: what the vectors are (``descriptors.descriptor_name``), recorded with a
        new collection; an existing one that records another is refused. ``regions``: the parts
        of each image whose vectors are kept too (``regions.boxes``), in a second collection
        named ``<collection>_regions``; none by default. ``region_margin``: how much lower a
        part's score counts than a whole image's. The catalog never starts a process itself."""
        self.dim, self.embedded, self.descriptor = dim, embedded, descriptor
        self.regions = list(regions)
        self.connection = Connection(settings, uri, locate, write_lock, embedded)
        gallery, parts = schema.tables(settings.collection, len(self.regions))
        self.name, self.regions_name = gallery.alias, parts.alias
        self.router = Router(self.connection, [gallery] + ([parts] if self.regions else []), descriptor)
        self.rows = Rows(self.connection, gallery, parts, len(self.regions), self.ensure_ready, self.router)
        self.versions = Versions(self.connection, self.rows, dim, descriptor, self.router)
        self._search = Search(self.connection, gallery, parts, self.regions, region_margin, self.rows.get,
                              self.router)

    @property
    def uri(self) -> str:
        return self.connection.uri

    @property
    def settings(self) -> MilvusSettings:
        """The connection's, which every part reads; read-only: other settings are another catalog."""
        return self.connection.settings

    def ensure_ready(self) -> "Catalog":
        """Create the collections and their indexes if missing, check them, load them (once)."""
        self.versions.ensure_ready()
        return self

    def close(self) -> None:
        self.connection.close()

    def exists(self) -> bool:
        return bool(self.connection.call("has_collection", self.name))

    # -- writes -----------------------------------------------------------------------------
    def upsert(self, entries: Iterable[Entry]) -> int:
        """Write the entries (and their region rows), replacing any with the same ids."""
        return self.rows.upsert(entries)

    def insert_new(self, entries: Sequence[Entry]) -> set[int]:
        """Insert the entries whose ids are not stored yet; returns the ids inserted. The check
        and the write happen under one lock (this process's, and Milvus Lite's across
        processes) and the check reads at Strong, so of concurrent adds of one image exactly one
        inserts it. (With a Milvus server and several writer processes two may both insert the
        same row: upsert keeps one entity, only the answer can say "created" twice.)"""
        return self.rows.insert_new(entries)

    def delete(self, ids: Sequence[int]) -> int:
        return self.rows.delete(ids)

    def flush(self) -> None:
        self.rows.flush()

    # -- reads ------------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, k: int, *, expr: str = "", params: dict | None = None,
               regions: bool = True, descriptor: str = "") -> list[list[Hit]]:
        """Top-``k`` per vector, one hit per image (its best row, where the gallery keeps region
        rows; ``regions=False``: the whole-image vectors only). ``params``: search parameters
        for this call (``ef``, ``nprobe``) instead of the configured ones for the index type.
        ``descriptor``: what the vectors are, where they may come from another model than this
        catalog's (an Embedder replica during a rolling update; routing.py)."""
        self.ensure_ready()
        return self._search(vectors, k, expr=expr, params=params, regions=regions, descriptor=descriptor)

    def existing_ids(self, ids: Sequence[int], **kwargs) -> set[int]:
        return self.rows.existing_ids(ids, **kwargs)

    def get(self, ids: Sequence[int], *, with_vectors: bool = False) -> list[Entry]:
        return self.rows.get(ids, with_vectors=with_vectors)

    def get_one(self, id_: int, *, with_vectors: bool = False) -> Entry:
        found = self.rows.get([id_], with_vectors=with_vectors)
        if not found:
            raise NotFound(f"no image with id {id_}")
        return found[0]

    def list(self, *, offset: int = 0, limit: int = 50, expr: str = "") -> list[Entry]:
        return self.rows.list(offset=offset, limit=limit, expr=expr)

    def count(self, *, expr: str = "") -> int:
        return self.rows.count(expr=expr)

    def _scale_warning(self, count: int) -> str | None:
        """Advice when an embedded Milvus Lite collection has outgrown it, else None."""
        limit = self.settings.lite_fast_max_rows
        if not self.embedded or count <= limit:
            return None
        return (f"{count:,} images in Milvus Lite, which stays fast up to about {limit:,}: every search now "
                "costs more as the gallery grows. Move it to the local Milvus server: lookalike migrate --to local "
                "(see the README's scale section).")

    def describe(self) -> dict[str, Any]:
        """Health and shape, for the status route: never raises for a down backend. ``warning``:
        advice when an embedded Milvus Lite collection has outgrown it."""
        base = {"uri": self.uri, "collection": self.name, "metric": self.settings.metric, "dim": self.dim,
                "descriptor": self.descriptor or None}
        if self.regions:
            base["regions"] = [str(box) for box in self.regions]
        try:
            count = self.count()
            out = {**base, "healthy": True, "count": count,
                   "index": self.versions.index_info(self.router.read(self.rows.gallery)),
                   **self.versions.describe_reembed()}
        except BackendUnavailable as exc:
            return {**base, "healthy": False, "error": exc.message}
        warning = self._scale_warning(count)
        if warning:
            out["warning"] = warning
        return out
