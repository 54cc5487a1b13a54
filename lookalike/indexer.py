"""Adding images to the gallery: the write path shared by every face.

``GalleryWriter`` puts each original in the image store first and then upserts its entry,
so a catalog entry never points at a missing object. ``index_items`` is the simple
in-process indexer (read -> prepare -> embed -> write, in batches) used by ``lookalike
index`` for small folders; the Ray Data ingest runs the same steps in parallel.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from .catalog import Catalog, Entry
from .encoder import ImageEncoder
from .errors import LookalikeError, NotFound
from .images import PreparedImage, prepare
from .settings import Settings
from .sources import SourceItem, read_file
from .store import ImageStore, object_key

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What an indexing run did; written as JSON by the CLI and the ingest job."""

    total: int = 0
    indexed: int = 0
    already_present: int = 0
    duplicates: list[dict] = field(default_factory=list)  # {"path", "same_as"}
    skipped: list[dict] = field(default_factory=list)  # {"path", "code", "message"}
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)  # what ran: source, target, final count, index
    path: str = ""  # where the JSON report was written

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds else 0.0

    def skip(self, path: str, code: str, message: str) -> None:
        self.skipped.append({"path": path, "code": code, "message": message})

    def to_dict(self) -> dict:
        reasons: dict[str, int] = defaultdict(int)
        for s in self.skipped:
            reasons[s["code"]] += 1
        return {
            "total": self.total, "indexed": self.indexed, "already_present": self.already_present,
            "duplicates": len(self.duplicates), "skipped": len(self.skipped), "skipped_by_reason": dict(reasons),
            "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "run": self.extra, "skipped_files": self.skipped, "duplicate_files": self.duplicates,
        }

    def summary(self) -> str:
        return (f"{self.indexed} indexed, {self.already_present} already present, {len(self.duplicates)} duplicates, "
                f"{len(self.skipped)} skipped of {self.total} in {self.seconds:.1f}s ({self.images_per_s:.1f} img/s)")


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
    key: str = ""  # set when the original already lives in the store (nothing to upload)

    @classmethod
    def of(cls, prepared: PreparedImage, data: bytes, vector: np.ndarray, label: str, source: str) -> "NewImage":
        return cls(prepared.id, data, prepared.extension, prepared.content_type, vector, label, source)


class GalleryWriter:
    """Store the originals, then upsert the entries: an entry never points at a missing object,
    and a write cut short is finished by running it again (ids and keys are content hashes)."""

    def __init__(self, catalog: Catalog, store: ImageStore):
        self.catalog = catalog
        self.store = store

    def write(self, images: Sequence[NewImage]) -> list[Entry]:
        entries = []
        for image in images:
            key = image.key or object_key(image.id, image.extension)
            if not image.key:
                self.store.put(key, image.data, image.content_type)
            entries.append(Entry(id=image.id, key=key, label=image.label, source=image.source, embedding=image.vector))
        self.catalog.upsert(entries)
        return entries


def index_items(items: Iterable[SourceItem], settings: Settings, *, encoder: ImageEncoder, catalog: Catalog,
                store: ImageStore, read: Callable[[str], bytes] = read_file,
                progress: Callable[[Report], None] | None = None) -> Report:
    """The in-process indexer: sequential reading and decoding, batched embedding."""
    report = Report()
    writer = GalleryWriter(catalog, store)
    seen: dict[int, str] = {}
    started = time.perf_counter()
    batch: list[SourceItem] = []

    def flush_batch() -> None:
        _index_batch(batch, settings, encoder, catalog, writer, report, seen, read)
        batch.clear()
        if progress:
            progress(report)

    for item in items:
        report.total += 1
        batch.append(item)
        if len(batch) >= settings.model.batch_size:
            flush_batch()
    if batch:
        flush_batch()
    with timed(report, "flush"):
        catalog.flush()
    report.seconds = time.perf_counter() - started
    return report


def _index_batch(batch: list[SourceItem], settings: Settings, encoder: ImageEncoder, catalog: Catalog,
                 writer: GalleryWriter, report: Report, seen: dict[int, str], read: Callable[[str], bytes]) -> None:
    ready: list[tuple[PreparedImage, bytes, SourceItem]] = []
    for item in batch:
        with timed(report, "read"):
            try:
                data = read(item.path)
            except (OSError, NotFound) as exc:  # a backend outage is not a bad file: it aborts the run
                report.skip(item.path, "unreadable", f"{type(exc).__name__}: {exc}")
                continue
        with timed(report, "decode"):
            try:
                prepared = prepare(data, size=encoder.input_size, **settings.images.model_dump())
            except LookalikeError as exc:
                report.skip(item.path, exc.code, exc.message)
                continue
        if prepared.id in seen:
            report.duplicates.append({"path": item.path, "same_as": seen[prepared.id]})
            continue
        seen[prepared.id] = item.path
        ready.append((prepared, data, item))
    with timed(report, "lookup"):
        present = catalog.existing_ids([p.id for p, _, _ in ready])
    report.already_present += len(present)
    ready = [r for r in ready if r[0].id not in present]
    if not ready:
        return
    with timed(report, "embed"):
        vectors = encoder.encode(np.stack([p.pixels for p, _, _ in ready]))
    with timed(report, "write"):
        writer.write([NewImage.of(p, data, vec, item.label, item.path) for (p, data, item), vec in zip(ready, vectors)])
    report.indexed += len(ready)


@contextmanager
def timed(report: Report, stage: str):
    """Add the time spent in the block to the report's stage total."""
    t = time.perf_counter()
    try:
        yield
    finally:
        report.stage_seconds[stage] += time.perf_counter() - t
