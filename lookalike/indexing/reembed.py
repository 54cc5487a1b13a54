"""Re-embedding the gallery under another model, without taking search down.

Every stored original is read back from the image store, embedded by the configured model and
written into the gallery's next collection version (``milvus.versions``: ``stage``), which
takes the alias once it holds every image (``switch``: the images written meanwhile are caught
up, the deleted ones dropped). Until then searches answer from the current version; after it,
the replicas still running the previous model answer from that one (``milvus.routing``) until
they are replaced. Ids are content hashes, so an image keeps its id, and a re-embed that stops
resumes where it was.

The Ray Data job (``ingest.pipeline.run_reembed``) embeds the bulk across the cluster with the
same stages as an ingest; this module plans the run and embeds the few images written
meanwhile in this process (``indexer.index_items``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

from lookalike.embedding.encoder import ImageEncoder
from lookalike.indexing.indexer import Report, index_items
from lookalike.indexing.sources import Source, SourceItem
from lookalike.milvus.catalog import Catalog
from lookalike.milvus.engines import gallery_catalog
from lookalike.milvus.versions import Staged
from lookalike.settings import Settings
from lookalike.storage.store import ImageStore, make_store

FIELDS = ["id", "key", "label", "source"]


@dataclass
class Plan:
    """A re-embed: the gallery (under the new model's settings: only its versions are used),
    the staged version, and the catalog and settings that write into it."""

    gallery: Catalog
    staged: Staged
    target: Catalog
    settings: Settings  # the new model's, with milvus.collection the staging alias

    @property
    def source(self) -> Source:
        return Source("gallery", self.staged.current)


def plan(settings: Settings, say: Callable[[str], None]) -> Plan:
    """Stage the next version for the configured model (or find the one a stopped run left)."""
    gallery = gallery_catalog(settings)
    staged = gallery.versions.stage(say)
    target_settings = settings.model_copy(
        update={"milvus": settings.milvus.model_copy(update={"collection": staged.alias})})
    return Plan(gallery, staged, gallery_catalog(target_settings).ensure_ready(), target_settings)


def items(plan: Plan, ids: Collection[int] | None = None) -> list[SourceItem]:
    """As items to index from the image store (its key, label and recorded source): the
    gallery's images that the staged version lacks, or those of ``ids`` (known to be missing)."""
    rows = plan.gallery.rows
    if ids is not None:
        return [SourceItem(r["key"], r["label"], r["source"])
                for batch in rows.of_images(plan.staged.current, rows.gallery, sorted(ids), FIELDS) for r in batch]
    done = rows.image_ids(plan.staged.into, rows.gallery)
    return [SourceItem(r["key"], r["label"], r["source"]) for batch in rows.scan(plan.staged.current, FIELDS)
            for r in batch if int(r["id"]) not in done]


def catch_up(plan: Plan, report: Report) -> Callable[[list[int]], None]:
    """What ``Versions.switch`` calls with the ids written since: embeds them in this process
    (the model loaded at the first that needs it), counting them in ``report``."""
    loaded: list[tuple[ImageEncoder, ImageStore]] = []

    def run(ids: list[int]) -> None:
        if not ids:
            return
        if not loaded:
            loaded.append((ImageEncoder(plan.settings.model).load(), make_store(plan.settings.store)))
        encoder, store = loaded[0]
        done = index_items(items(plan, ids), plan.settings, encoder=encoder, catalog=plan.target, store=store,
                           read=store.get, in_store=True)
        report.total += done.total
        report.indexed += done.indexed
        report.skipped.extend(done.skipped)
        report.run["caught_up"] = report.run.get("caught_up", 0) + done.indexed

    return run
