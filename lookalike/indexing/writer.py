"""The one write path into the gallery, for the ingest (batches) and the API (one image).

The original goes to the image store first, then its entry to Milvus: an entry never points
at a missing object, and a write cut short between the two leaves only an object that the
next try of the same image reuses (ids and keys are content hashes), so a retried write
leaves no orphan either. A delete unlinks the entry first, then removes the object, but only
an object the service uploaded itself: an original indexed in place (the user's own file in
the source bucket) stays, unless ``store.delete_foreign_originals`` says otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Sequence

import numpy as np

from lookalike.milvus.catalog import Catalog, Entry
from lookalike.errors import BackendUnavailable
from lookalike.embedding.images import PreparedImage
from lookalike.retry import NO_RETRY, Retry
from lookalike.storage.store import ImageStore, object_key

log = logging.getLogger(__name__)


@dataclass
class NewImage:
    """An embedded image on its way into the gallery."""

    id: int
    data: bytes
    extension: str
    content_type: str
    vector: np.ndarray
    label: str
    source: str
    key: str = ""  # set when the original already lives in the store (indexed in place: nothing to upload)
    regions: np.ndarray | None = None  # its region vectors, where the gallery keeps them (regions.py)

    @classmethod
    def of(cls, prepared: PreparedImage, data: bytes, vector: np.ndarray, label: str, source: str,
           regions: np.ndarray | None = None) -> "NewImage":
        return cls(prepared.id, data, prepared.extension, prepared.content_type, vector, label, source,
                   regions=regions)

    @property
    def store_key(self) -> str:
        return self.key or object_key(self.id, self.extension)

    def entry(self) -> Entry:
        return Entry(id=self.id, key=self.store_key, label=self.label, source=self.source, embedding=self.vector,
                     regions=self.regions)


def uploaded_by_us(entry: Entry) -> bool:
    """Whether the entry's object is one the service stored (its content-addressed key)."""
    return entry.key == object_key(entry.id, PurePosixPath(entry.key).suffix)


class GalleryWriter:
    def __init__(self, catalog: Catalog, store: ImageStore, *, retry: Retry = NO_RETRY,
                 delete_foreign_originals: bool = False):
        self.catalog = catalog
        self.store = store
        self.retry = retry
        self.delete_foreign_originals = delete_foreign_originals

    def _put(self, image: NewImage) -> None:
        if not image.key:
            self.retry(lambda: self.store.put(image.store_key, image.data, image.content_type), "storing an image")

    def write(self, images: Sequence[NewImage]) -> list[Entry]:
        """Store and upsert a batch (the ingest); idempotent, so a failed batch is written again whole."""
        for image in images:
            self._put(image)
        entries = [image.entry() for image in images]
        self.retry(lambda: self.catalog.upsert(entries), "writing entries to Milvus")
        return entries

    def add(self, image: NewImage) -> tuple[Entry, bool]:
        """Store and insert one image unless it is in the gallery; (its entry, created)."""
        if self.catalog.existing_ids([image.id]):
            return self.catalog.get_one(image.id), False
        self._put(image)
        if not self.catalog.insert_new([image.entry()]):  # a concurrent add of the same image came first
            return self.catalog.get_one(image.id), False
        return image.entry(), True

    def remove(self, image_id: int) -> tuple[Entry, bool]:
        """Unlink the entry, then delete its object if the service uploaded it (see the module
        doc); (the entry, whether its object was deleted). A store that fails at that point
        leaves an unreferenced object, logged (a later add of the image reuses it)."""
        entry = self.catalog.get_one(image_id)
        self.catalog.delete([image_id])
        if not (uploaded_by_us(entry) or self.delete_foreign_originals):
            return entry, False
        try:
            self.store.delete(entry.key)
        except BackendUnavailable as exc:
            log.warning("entry %d deleted, its object %s kept: %s", image_id, entry.key, exc.message)
            return entry, False
        return entry, True
