"""How long a near-duplicate scan takes at the original's scale: ``lookalike.quality.duplicates.find``
over a gallery of N vectors on the local Milvus server (HNSW, the default settings), as
``lookalike duplicates`` and ``GET /api/v1/duplicates`` run it.

The vectors are vector_search's mixtures of real openclipart embeddings (real structure, not
noise), with planted near-copies: every ``--copy-every``-th vector is followed by a slightly
perturbed copy of itself, so the scan has groups to find and their recall is known.

    python -m benchmarks.duplicate_scan [--n 200000] [--batch 256]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Results, markdown_table
from benchmarks.vector_search import CHUNK, Mixtures, unit_rows, real_embeddings


def planted(mix: Mixtures, n: int, every: int, noise: float):
    """(ids, vectors) chunks of ``n`` vectors; every ``every``-th one is followed by its copy
    (cosine ~0.97 at the default noise). Yields the planted (original, copy) id pairs too."""
    made = 0
    for c in range(0, 10**9):
        if made >= n:
            return
        vectors = mix.chunk(c, min(CHUNK, n - made))
        rng = np.random.default_rng([11, c])
        originals = np.arange(0, len(vectors) - 1, every)
        vectors[originals + 1] = unit_rows(vectors[originals] + rng.standard_normal(
            (len(originals), vectors.shape[1])).astype(np.float32) * (noise / np.sqrt(vectors.shape[1])))
        ids = np.arange(made + 1, made + 1 + len(vectors), dtype=np.int64)
        yield ids, vectors, [(int(ids[o]), int(ids[o + 1])) for o in originals]
        made += len(vectors)


def measure(catalog, mix: Mixtures, n: int, *, batch: int = 256, every: int = 100, noise: float = 0.25,
            threshold: float | None = None) -> dict:
    """Insert ``n`` vectors with planted copies into ``catalog``, index them, scan (at the
    default threshold unless given): one row."""
    from lookalike.quality import duplicates
    from lookalike.milvus.catalog import Entry
    from lookalike.settings import DuplicateSettings

    settings = DuplicateSettings(batch_size=batch, **({} if threshold is None else {"threshold": threshold}))
    catalog.ensure_ready()
    started, pairs = time.perf_counter(), []
    for ids, vectors, planted_pairs in planted(mix, n, every, noise):
        catalog.upsert(Entry(int(i), f"{i:016x}.jpg", "", "", v) for i, v in zip(ids, vectors))
        pairs += planted_pairs
        print(f"  {ids[-1]:,} / {n:,} inserted", flush=True)
    catalog.flush()
    catalog.versions.wait_for_index(3600)
    insert_s = time.perf_counter() - started
    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 10:
            last[0] = time.perf_counter()
            print(f"  scanned {done:,} / {total:,}", flush=True)

    scan = duplicates.find(catalog, settings, progress=progress)
    grouped = {i: g for g in scan.groups for i in g.ids}
    found = sum(1 for a, b in pairs if a in grouped and b in grouped[a].ids)
    return {"n": n, "dim": mix.dim, "batch": batch, "threshold": scan.threshold, "neighbours": settings.neighbours,
            "insert_index_s": round(insert_s, 1), "scan_s": round(scan.seconds, 1),
            "images_per_s": round(n / scan.seconds), "groups": len(scan.groups), "planted": len(pairs),
            "planted_found": round(found / max(1, len(pairs)), 4)}


def report(results: Results, row: dict) -> None:
    results.add("scan", row)
    results.section(f"Near-duplicate scan of {row['n']:,} vectors (local Milvus server, HNSW)", markdown_table(
        [row], list(row), ["images", "dim", "batch", "threshold", "neighbours", "insert + index s", "scan s",
                           "images/s", "groups", "planted copies", "planted found"]))


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=256, help="images per batched search (duplicates.batch_size)")
    parser.add_argument("--copy-every", type=int, default=100, help="plant a near-copy after every N-th vector")
    parser.add_argument("--copy-noise", type=float, default=0.25)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from lookalike.milvus.engines import open_catalog, serving
    from lookalike.settings import MilvusSettings

    results = Results("duplicate-scan", args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    work = Path(tempfile.mkdtemp(prefix="lookalike-dupscan-"))
    milvus = MilvusSettings(uri=str(work / "lookalike.db"), engine="local_server", collection="dupscan")
    mix = Mixtures(real_embeddings(), 1280)
    try:
        with serving(milvus):
            catalog = open_catalog(milvus, mix.dim, shared=True)
            row = measure(catalog, mix, args.n, batch=args.batch, every=args.copy_every, noise=args.copy_noise)
            catalog.close()
    finally:  # 200,000 vectors and their index: gigabytes
        shutil.rmtree(work, ignore_errors=True)
    report(results, row)
    results.write()
    print(results.sections[-1])
    return results


if __name__ == "__main__":
    main()
