"""Vector search at the original's scale (210k ImageNet images) and beyond, through Lookalike's
own catalog code, on a real Milvus server and on Milvus Lite.

Data with real structure, never uniform noise alone: the EfficientNet-Lite0 embeddings of every
usable openclipart image (~8k, real), extended by mixtures: each vector is
``normalise(w*e_i + (1-w)*e_j + noise)`` with ``e_j`` one of ``e_i``'s 20 nearest real
neighbours and ``w`` in [0.5, 1]. 2048-d sets (ResNet-50's size) lift the same embeddings with a
fixed random projection (no ResNet-50 weights can be downloaded here). Queries are further draws
from the same process. Ground truth is exact (numpy) top-10 by cosine, computed while the data
streams in, so even 1M vectors never sit in this process at once.

Per backend and size: insert time, per index type its build time, server memory (RSS) and
bytes per vector, single-query p50/p99 and recall@10 for a parameter sweep (IVF nprobe, HNSW
ef), and QPS at 1/8/32 concurrent clients at the configured parameters; one recall-latency
plot per size. The Milvus server (PyPI ``milvus``, standalone) binds every interface, so the
benchmark re-runs itself inside a loopback-only network namespace.

    python -m benchmarks.vector_search                      # the full run (~45 min on 2 vCPUs)
    python -m benchmarks.vector_search --sizes 20000x1280 --lite-sizes 20000 --queries 50
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, Results, Stopwatch, embed_files, markdown_table
from harness.load import latency_stats
from harness.processes import rss_bytes, server_pid, supervisor_pid

K = 10
CHUNK = 20_000
# index type -> the search parameter swept, and its values
SWEEPS = {"FLAT": ("", [None]), "IVF_FLAT": ("nprobe", [4, 16, 64, 128]), "IVF_SQ8": ("nprobe", [16, 64]),
          "HNSW": ("ef", [16, 32, 64, 128, 256])}
ORIGINAL_SEARCH_MS = 15.0  # the original's ~15 ms of search at 210k ImageNet images


# -- data --------------------------------------------------------------------------------------------
def real_embeddings(limit: int = 0) -> np.ndarray:
    """EfficientNet-Lite0 vectors of every usable openclipart PNG, cached under data/bench/."""
    from lookalike.embedding.encoder import ImageEncoder
    from lookalike.quality.gallery import OPENCLIPART, SAMPLE_MAX_PIXELS, usable_image
    from lookalike.settings import load_settings

    cache = DATA / "openclipart-lite0.npy"
    if cache.exists():
        vectors = np.load(cache)
        return vectors[:limit] if limit else vectors
    settings = load_settings()
    paths = sorted(str(p) for p in OPENCLIPART.glob("*/*/*.png") if usable_image(p, SAMPLE_MAX_PIXELS))
    if limit:
        paths = paths[:: max(1, len(paths) // limit)][:limit]
    print(f"embedding {len(paths)} openclipart images (cached for later runs) ...", flush=True)
    encoder = ImageEncoder(settings.model.model_copy(update={"name": "efficientnet-lite0"})).load()
    vectors, _ = embed_files(paths, encoder, settings.images)
    if not limit:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, vectors)
    return vectors


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (float32)."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Mixtures:
    """Deterministic vectors with the real set's structure, generated chunk by chunk."""

    def __init__(self, real: np.ndarray, dim: int, seed: int = 7, neighbours: int = 20, noise: float = 0.25):
        rng = np.random.default_rng(seed)
        if dim != real.shape[1]:
            lift = rng.standard_normal((real.shape[1], dim)).astype(np.float32)
            real = unit_rows(real @ lift)
        self.real = real
        self.dim = dim
        self.seed = seed
        self.noise = noise
        sims = real @ real.T
        np.fill_diagonal(sims, -np.inf)
        self.near = np.argpartition(-sims, neighbours, axis=1)[:, :neighbours]

    def chunk(self, index: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        i = rng.integers(len(self.real), size=n)
        j = self.near[i, rng.integers(self.near.shape[1], size=n)]
        w = rng.uniform(0.5, 1.0, size=(n, 1)).astype(np.float32)
        noise = rng.standard_normal((n, self.dim)).astype(np.float32) * (self.noise / np.sqrt(self.dim))
        return unit_rows(w * self.real[i] + (1 - w) * self.real[j] + noise)

    def queries(self, n: int) -> np.ndarray:
        return self.chunk(10**9, n)  # a chunk index no data chunk uses


class TopK:
    """Exact top-k by cosine over data that arrives in chunks."""

    def __init__(self, queries: np.ndarray, k: int = K):
        self.q = queries
        self.k = k
        self.ids = np.zeros((len(queries), 0), np.int64)
        self.sims = np.zeros((len(queries), 0), np.float32)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        sims = np.concatenate([self.sims, self.q @ vectors.T], axis=1)
        allids = np.concatenate([self.ids, np.broadcast_to(ids, (len(self.q), len(ids)))], axis=1)
        top = np.argpartition(-sims, min(self.k, sims.shape[1] - 1), axis=1)[:, : self.k]
        self.sims = np.take_along_axis(sims, top, 1)
        self.ids = np.take_along_axis(allids, top, 1)


def recall_at_k(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t)) / K for f, t in zip(found, truth.tolist())]))


# -- one backend, one size -----------------------------------------------------------------------------
@functools.cache
def _configured():
    """The settings, read once per run (a long run must not see later edits of the YAML)."""
    from lookalike.settings import load_settings

    return load_settings()


def milvus_settings(uri: str, collection: str, index_type: str):
    """The configured Milvus settings for this URI, collection and index type."""
    return _configured().with_overrides(milvus={
        "uri": uri, "collection": collection, "lite_server": True, "insert_batch_size": 1000, "timeout_s": 120,
        "index": {"type": index_type, "build_timeout_s": 3600}}).milvus


def single_queries(catalog, queries: np.ndarray, params: dict | None) -> tuple[list[float], list[list[int]]]:
    catalog.search(queries[0], K, params=params)  # warm
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        hits = catalog.search(q, K, params=params)[0]
        times.append(time.perf_counter() - t)
        found.append([h.id for h in hits])
    return times, found


def throughput(catalog, queries: np.ndarray, clients: int, seconds: float) -> dict:
    """``clients`` threads, each sending single queries back to back for ``seconds``."""
    stop = time.monotonic() + seconds
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(n: int) -> None:
        i = n
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                catalog.search(queries[i % len(queries)], K)
                lat[n].append(time.perf_counter() - t)
            except Exception:
                errors[n] += 1
            i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    done = sum(len(x) for x in lat)
    return {"clients": clients, "qps": round(done / wall, 1), "errors": sum(errors),
            **latency_stats([x for xs in lat for x in xs])}


def dir_mib(path: Path) -> float:
    """The bytes of every file under ``path``, in MiB (what a server's data takes on disk)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return round(total / 2**20, 1)


def run_backend(backend: str, uri: str, mix: Mixtures, n: int, queries: np.ndarray, args, pid_of,
                data_dir: Path) -> dict:
    """Insert ``n`` vectors, then build, sweep and load-test each index type; ``data_dir``: where
    the server keeps its data, measured on disk after the insert and after each build."""
    from lookalike.milvus.catalog import Entry
    from lookalike.milvus.engines import open_catalog

    collection = f"bench_{n}_{mix.dim}"
    catalog = open_catalog(milvus_settings(uri, collection, "FLAT"), mix.dim, shared=True)
    pid = pid_of()
    rss_empty = rss_bytes(pid)
    catalog.ensure_ready()
    truth, exact = TopK(queries), Stopwatch()
    t = time.perf_counter()
    for c, start in enumerate(range(0, n, CHUNK)):
        vectors = mix.chunk(c, min(CHUNK, n - start))
        ids = np.arange(start + 1, start + 1 + len(vectors), dtype=np.int64)
        catalog.upsert(Entry(int(i), f"{i:016x}.jpg", "", "", v) for i, v in zip(ids, vectors))
        with exact:  # the exact search is not part of the insert time
            truth.add(vectors, ids)
        if c % 10 == 0:
            print(f"  {backend}: {start + len(vectors):,} / {n:,} inserted", flush=True)
    catalog.flush()
    insert_s = time.perf_counter() - t - exact.seconds
    rss_data = rss_bytes(pid_of())
    out = {"backend": backend, "n": n, "dim": mix.dim, "insert_s": round(insert_s, 1),
           "insert_per_s": round(n / insert_s), "rss_empty_mib": rss_empty // 2**20,
           "rss_after_insert_mib": rss_data // 2**20, "disk_after_insert_mib": dir_mib(data_dir), "index": {}}
    print(f"  {backend} {n}x{mix.dim}: inserted in {insert_s:.1f}s", flush=True)
    for index_type in args.index_types:
        # As an operator changes the index: a catalog on the new settings rebuilds it.
        indexed = open_catalog(milvus_settings(uri, collection, index_type), mix.dim, shared=True)
        t = time.perf_counter()
        indexed.versions.build_index()
        built = indexed.versions.wait_for_index(3600)
        build_s = time.perf_counter() - t
        gc.collect()
        time.sleep(1)
        rss = rss_bytes(pid_of())
        # On disk: every version built so far, until Milvus's garbage collection removes a dropped
        # one's files (dataCoord.gc.dropTolerance: 3 hours), and the write-ahead log of each copy.
        entry = {"built": built.get("type"), "build_s": round(build_s, 1), "rss_mib": rss // 2**20,
                 "disk_mib": dir_mib(data_dir),
                 "bytes_per_vector": round((rss - rss_empty) / n) if rss > rss_empty else None, "sweep": []}
        name, values = SWEEPS[index_type]
        qn = queries[: args.flat_queries] if index_type == "FLAT" else queries
        for value in values:
            params = {name: value} if name else {}
            times, found = single_queries(indexed, qn, params)
            point = {"param": name, "value": value, **latency_stats(times),
                     "recall_at_10": round(recall_at_k(found, truth.ids[: len(qn)]), 4)}
            entry["sweep"].append(point)
            print(f"  {backend} {n}x{mix.dim} {index_type} {name}={value}: p50 {point['p50_ms']} ms, "
                  f"recall@10 {point['recall_at_10']}", flush=True)
        entry["qps"] = [throughput(indexed, queries, c, args.qps_seconds) for c in args.clients]
        indexed.close()
        print(f"  {backend} {index_type} QPS: " + ", ".join(f"{q['clients']}c {q['qps']}" for q in entry["qps"]),
              flush=True)
        out["index"][index_type] = entry
    catalog.versions.drop()
    catalog.close()
    return out


# -- servers -------------------------------------------------------------------------------------------
class MilvusServer:
    """The local Milvus server the service runs at scale (its own namespaces, a Unix socket)."""

    def __init__(self, base: Path):
        from lookalike.milvus.server import MilvusServer as LocalMilvusServer

        self.server = LocalMilvusServer(base)

    def __enter__(self):
        return self.server.start(timeout_s=300, idle_stop_s=0)[0]

    def __exit__(self, *exc):
        self.server.stop()

    def pid(self) -> int:
        return server_pid(self.server) or 0


class LiteDir:
    """A Milvus Lite data directory, served the way the service reaches it (its own local server)."""

    def __init__(self, base: Path):
        from lookalike.milvus.lite_server import LiteServer

        self.server = LiteServer(base / "bench.db")

    def __enter__(self):
        return str(self.server.data_dir)

    def __exit__(self, *exc):
        self.server.stop()

    def pid(self) -> int:
        return supervisor_pid(self.server) or 0


# -- report ----------------------------------------------------------------------------------------------
def report(results: Results, runs: list[dict]) -> None:
    rows, qps_rows = [], []
    for run in runs:
        for index_type, entry in run["index"].items():
            for point in entry["sweep"]:
                rows.append({"backend": run["backend"], "size": f"{run['n']:,}×{run['dim']}", "index": index_type,
                             "param": f"{point['param']}={point['value']}" if point["param"] else "–",
                             "p50": point["p50_ms"], "p99": point["p99_ms"], "recall": point["recall_at_10"],
                             "build": entry["build_s"], "rss": entry["rss_mib"], "disk": entry.get("disk_mib"),
                             "bpv": entry["bytes_per_vector"]})
            qps_rows.append({"backend": run["backend"], "size": f"{run['n']:,}×{run['dim']}", "index": index_type,
                             **{f"qps{q['clients']}": q["qps"] for q in entry["qps"]},
                             **{f"p50_{q['clients']}": q["p50_ms"] for q in entry["qps"]}})
    results.section("Inserts", markdown_table(
        [{"backend": r["backend"], "size": f"{r['n']:,}×{r['dim']}", "insert_s": r["insert_s"],
          "per_s": r["insert_per_s"], "rss": r["rss_after_insert_mib"], "disk": r.get("disk_after_insert_mib")}
         for r in runs],
        ["backend", "size", "insert_s", "per_s", "rss", "disk"],
        ["backend", "vectors", "insert + flush (s)", "vectors/s", "server RSS after insert (MiB)",
         "data on disk (MiB)"]))
    results.section("Single queries: latency and recall@10 against exact search", markdown_table(
        rows, ["backend", "size", "index", "param", "p50", "p99", "recall", "build", "rss", "bpv", "disk"],
        ["backend", "vectors", "index", "search param", "p50 ms", "p99 ms", "recall@10", "build s",
         "server RSS MiB", "bytes/vector", "data on disk MiB"]))
    clients = sorted({q["clients"] for run in runs for e in run["index"].values() for q in e["qps"]})
    results.section("Throughput at the configured search parameters (nprobe 16, ef 64)", markdown_table(
        qps_rows, ["backend", "size", "index", *[f"qps{c}" for c in clients], *[f"p50_{c}" for c in clients]],
        ["backend", "vectors", "index", *[f"QPS {c} clients" for c in clients],
         *[f"p50 ms {c} clients" for c in clients]]))
    lite = [r for r in runs if r["backend"] == "milvus-lite" and "HNSW" in r["index"]]
    if lite:
        fast = [r["n"] for r in lite if min(p["p50_ms"] for p in r["index"]["HNSW"]["sweep"]) <= ORIGINAL_SEARCH_MS]
        slow = [r["n"] for r in lite if r["n"] not in fast]
        verdict = (f"Milvus Lite answered within the original's {ORIGINAL_SEARCH_MS:.0f} ms up to "
                   f"{max(fast):,} vectors" if fast else "Milvus Lite was slower than the original's "
                   f"{ORIGINAL_SEARCH_MS:.0f} ms at every size measured")
        if slow:
            verdict += f" and not from {min(slow):,} on"
        results.data["lite_fast_up_to"] = max(fast) if fast else 0
        results.section("Where Milvus Lite stops being fast", verdict + " (HNSW, best p50 of the ef sweep).")
    for run in runs:
        size = f"{run['n']}x{run['dim']}"

        def draw(ax, run=run):
            for index_type, entry in run["index"].items():
                xs = [p["recall_at_10"] for p in entry["sweep"]]
                ys = [p["p50_ms"] for p in entry["sweep"]]
                ax.plot(xs, ys, marker="o", label=index_type)
                for p, x, y in zip(entry["sweep"], xs, ys):
                    if p["param"]:
                        ax.annotate(str(p["value"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.axhline(ORIGINAL_SEARCH_MS, color="grey", linestyle="--", linewidth=1, label="original: 15 ms")
            ax.set_yscale("log")
            ax.set_xlabel("recall@10 (vs exact)")
            ax.set_ylabel("single-query p50 (ms)")
            ax.set_title(f"{run['backend']}: {run['n']:,} × {run['dim']}-d")
            ax.legend(fontsize=8)

        results.plot(f"vector-search-{run['backend']}-{size}.png", draw)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [(int(n), int(d)) for n, d in (s.lower().split("x") for s in text.split(",") if s)]


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200000x1280,200000x2048,1000000x1280",
                        help="Milvus server sets, NxDIM (1M x 1280 needs ~12 GiB of memory)")
    parser.add_argument("--lite-sizes", default="10000,50000,200000", help="Milvus Lite sets (1280-d)")
    parser.add_argument("--index-types", default="FLAT,IVF_FLAT,IVF_SQ8,HNSW")
    parser.add_argument("--lite-index-types", default="FLAT,HNSW")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--flat-queries", type=int, default=50, help="FLAT is slow at 1M: fewer queries")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--qps-seconds", type=float, default=5.0)
    parser.add_argument("--real", type=int, default=0, help="use only this many real embeddings (0: all)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.index_types = args.index_types.split(",")
    args.clients = [int(c) for c in args.clients.split(",")]
    results = Results("vector-search", args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    real = real_embeddings(args.real)
    results.data["real_embeddings"] = len(real)
    runs: list[dict] = []
    base = Path(tempfile.mkdtemp(prefix="lookalike-vs-"))
    try:
        for n, dim in parse_sizes(args.sizes):
            # A server of its own for each set, its data removed after: a set's dropped versions
            # stay on disk for hours (Milvus's garbage collection), and the 1M set's rebuilds ran out
            # of 72 GB free after both 200k sets on one server.
            server = MilvusServer(base / f"server-{n}x{dim}")
            with server as uri:
                mix = Mixtures(real, dim)
                runs.append(run_backend("milvus-server", uri, mix, n, mix.queries(args.queries), args,
                                        server.pid, server.server.data_dir))
            shutil.rmtree(server.server.data_dir, ignore_errors=True)
            results.add("runs", runs)
        lite_args = argparse.Namespace(**{**vars(args), "index_types": args.lite_index_types.split(",")})
        for n in [int(x) for x in args.lite_sizes.split(",") if x]:
            mix = Mixtures(real, real.shape[1])
            lite = LiteDir(base / f"lite-{n}")
            with lite as uri:
                runs.append(run_backend("milvus-lite", uri, mix, n, mix.queries(args.queries), lite_args, lite.pid,
                                        lite.server.data_dir))
            results.add("runs", runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report(results, runs)
    results.write()
    return results


if __name__ == "__main__":
    main()
