"""``lookalike migrate``: move a gallery from one Milvus to another (Milvus Lite to the local
server, say) by copying its ids, vectors and fields, with no re-embedding, then checking that
the counts and a sample of vectors match. Stop the service first: writes made during a
migration may be missed (the count check then fails, and the source is kept either way)."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable

import numpy as np

from lookalike.errors import BadRequest, LookalikeError
from lookalike.milvus.engines import engine, gallery_catalog, remember
from lookalike.settings import MilvusSettings, Settings

log = logging.getLogger(__name__)


class MigrationMismatch(LookalikeError):
    status, code = 500, "migration_mismatch"


def target_settings(source: MilvusSettings, target: str) -> MilvusSettings:
    """``local``: the local Milvus server beside the configured data; else a server URI."""
    if target == "local":
        if not source.is_lite:
            raise BadRequest("--to local moves a local gallery (milvus.uri a .db path) to the local server")
        return source.model_copy(update={"engine": "local_server"})
    if "://" not in target and not target.startswith("unix:"):
        raise BadRequest(f"--to takes `local` or a Milvus server URI such as http://host:19530, not {target!r}")
    return source.model_copy(update={"uri": target, "engine": "auto"})


def migrate(settings: Settings, target: str, *, sample: int = 200,
            progress: Callable[[int], None] | None = None) -> dict:
    """Copy the configured collection to ``target``; returns what was copied and checked.
    Raises MigrationMismatch when the copy does not match its source."""
    started = time.perf_counter()
    to = target_settings(settings.milvus, target)
    if (engine(to), to.uri) == (engine(settings.milvus), settings.milvus.uri):
        raise BadRequest(f"the gallery is already in {target}")
    source, dest = gallery_catalog(settings), gallery_catalog(settings.model_copy(update={"milvus": to}))
    try:
        copied, ids = 0, []

        def write_entries(rows: list[dict]) -> None:
            nonlocal copied
            dest.rows.write(dest.name, rows)
            ids.extend(int(r["id"]) for r in rows)
            copied += len(rows)
            if progress:
                progress(copied)

        source.ensure_ready()
        dest.ensure_ready()
        source.rows.copy(source.name, source.rows.gallery, write_entries)  # the one copy, as a rebuild's
        if source.regions:  # after the entries, as every write: never a region without its entry
            source.rows.copy(source.regions_name, source.rows.parts,
                             lambda rows: dest.rows.write(dest.regions_name, rows))
        dest.flush()
        index = dest.versions.wait_for_index(settings.milvus.index.build_timeout_s)
        counts = {"source": source.count(), "target": dest.count()}
        checked = random.Random(0).sample(ids, min(sample, len(ids)))
        mismatches = _compare(source, dest, checked)
        result = {"from": engine(settings.milvus), "to": engine(to), "target": dest.uri, "copied": copied,
                  "count": counts, "sampled": len(checked), "mismatches": mismatches, "index": index,
                  "seconds": round(time.perf_counter() - started, 1)}
        if counts["source"] != counts["target"] or mismatches:
            raise MigrationMismatch(f"the copy does not match its source: {result}")
    finally:
        source.close()
        dest.close()
    if target == "local":
        remember(settings.milvus, "local_server", f"migrated from {result['from']} by lookalike migrate")
    return result


def _compare(source, dest, ids: list[int]) -> int:
    """How many of ``ids`` differ between the two catalogs (a field, or the vector)."""
    mine = {e.id: e for e in source.get(ids, with_vectors=True)}
    theirs = {e.id: e for e in dest.get(ids, with_vectors=True)}
    bad = 0
    for i in ids:
        a, b = mine.get(i), theirs.get(i)
        if a is None or b is None or (a.key, a.label, a.source) != (b.key, b.label, b.source) \
                or not np.allclose(a.embedding, b.embedding, atol=1e-6):
            bad += 1
    return bad
