"""Indexing runs: the report that accounts for every file, and the in-process runner.

``index_items`` runs the core stages (``stages.py``: read + prepare, embed, write) one batch
after another in this process, without Ray: ``lookalike index`` and ``lookalike eval`` use it.
The Ray Data job (``ingest.pipeline``) runs the same stages across a cluster and folds their
rows into the same ``Report``, so skips, duplicates and counts are decided in one place.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator

import numpy as np

from lookalike.milvus.catalog import Catalog
from lookalike.embedding.encoder import ImageEncoder
from lookalike.settings import Settings
from lookalike.indexing.sources import SourceItem, read_file
from lookalike.indexing.stages import ALREADY_PRESENT, INDEXED, NODE_STAGES, STAGES, Embed, ReadPrepare, Write
from lookalike.storage.store import ImageStore


@dataclass
class Report:
    """What an indexing run did; written as JSON by the CLI and the ingest job."""

    total: int = 0
    indexed: int = 0
    already_present: int = 0
    duplicates: list[dict] = field(default_factory=list)  # {"path", "same_as"}
    skipped: list[dict] = field(default_factory=list)  # {"path", "code", "message"}
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    nodes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # stage -> {node: rows}
    seconds: float = 0.0
    run: dict = field(default_factory=dict)  # what ran: source, target, final count, index
    path: str = ""  # where the JSON report was written
    rows_written: int = 0  # rows the write stage stored so far (for progress; ``finish`` decides ``indexed``)
    _outcomes: list[tuple[str, int, str]] = field(default_factory=list, repr=False)

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds else 0.0

    def skip(self, path: str, code: str, message: str) -> None:
        self.skipped.append({"path": path, "code": code, "message": message})

    def add(self, batch: dict[str, np.ndarray]) -> None:
        """Fold one batch of the Write stage's rows into the report."""
        for stage in STAGES:
            self.stage_seconds[stage] += float(batch[f"t_{stage}"].sum())
        for stage in NODE_STAGES:
            self.nodes[stage].update(str(n) for n in batch[f"node_{stage}"])
        for path, image_id, status, message in zip(batch["path"], batch["id"], batch["status"], batch["message"]):
            self.total += 1
            if status in (INDEXED, ALREADY_PRESENT):
                self._outcomes.append((str(path), int(image_id), str(status)))
                self.rows_written += status == INDEXED
            else:
                self.skip(str(path), str(status), str(message))

    def finish(self) -> "Report":
        """Each distinct image counts once, as indexed (written by this run) or already present;
        every other file with the same bytes is a duplicate of the first one in path order. (An
        image this run wrote may also be seen as already present by a later batch.)"""
        written = {image_id for _, image_id, status in self._outcomes if status == INDEXED}
        first_path: dict[int, str] = {}
        self.indexed = self.already_present = 0
        self.duplicates.clear()
        for path, image_id, _ in sorted(self._outcomes):
            if image_id in first_path:
                self.duplicates.append({"path": path, "same_as": first_path[image_id]})
                continue
            first_path[image_id] = path
            if image_id in written:
                self.indexed += 1
            else:
                self.already_present += 1
        return self

    def to_dict(self) -> dict:
        reasons = Counter(s["code"] for s in self.skipped)
        return {
            "total": self.total, "indexed": self.indexed, "already_present": self.already_present,
            "duplicates": len(self.duplicates), "skipped": len(self.skipped), "skipped_by_reason": dict(reasons),
            "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "nodes": {stage: dict(counts) for stage, counts in self.nodes.items()},
            "run": self.run, "skipped_files": self.skipped, "duplicate_files": self.duplicates,
        }

    def summary(self) -> str:
        return (f"{self.indexed} indexed, {self.already_present} already present, {len(self.duplicates)} duplicates, "
                f"{len(self.skipped)} skipped of {self.total} in {self.seconds:.1f}s ({self.images_per_s:.1f} img/s)")


def _batches(items: Iterable[SourceItem], size: int) -> Iterator[dict[str, np.ndarray]]:
    items = iter(items)
    while chunk := list(islice(items, size)):
        yield {"path": np.array([i.path for i in chunk], dtype=object),
               "label": np.array([i.label for i in chunk], dtype=object),
               "source": np.array([i.source or i.path for i in chunk], dtype=object)}


def index_items(items: Iterable[SourceItem], settings: Settings, *, encoder: ImageEncoder, catalog: Catalog,
                store: ImageStore, read: Callable[[str], bytes] = read_file, in_store: bool = False,
                progress: Callable[[Report], None] | None = None) -> Report:
    """The in-process runner: the stages in turn over batches of ``model.batch_size`` files."""
    report = Report()
    started = time.perf_counter()
    read_prepare = ReadPrepare(settings, read, catalog)
    embed = Embed(settings, encoder)
    write = Write(settings, catalog, store, in_store=in_store)
    for batch in _batches(items, settings.model.batch_size):
        report.add(write(embed(read_prepare(batch))))
        if progress:
            progress(report)
    with timed(report, "flush"):
        catalog.flush()
    report.seconds = time.perf_counter() - started
    return report.finish()


@contextmanager
def timed(report: Report, stage: str):
    """Add the time spent in the block to the report's stage total."""
    t = time.perf_counter()
    try:
        yield
    finally:
        report.stage_seconds[stage] += time.perf_counter() - t
