"""The original's scale on one machine: 200,000 images ingested with ``python -m ingest`` into
the local Milvus server that a fresh install picks for them, then served and searched over HTTP
at 1 and 8 clients; in the same run, the same service on the 1,000-image sample gallery and on
Milvus Lite at a size it still reaches, so the table shows how each cost grows with the gallery.

    python -m benchmarks.scale --n 200000 --out docs/benchmarks

The images are real data and labelled variants of it: Fashion-MNIST's 70,000 and openclipart's
usable PNGs (the originals), then a mirror image, a centre crop and a colour shift of each, in
that order, until there are ``--n`` files (every variant is distinct bytes: a distinct id).
Ingest throughput is compared on a slice of the same files with the model alone (the bound)
and with a sequential loop (``benchmarks.ingest_throughput``'s three ways).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil

from benchmarks.common import FASHION_CLASSES, FASHION_MNIST, REPO, Results, markdown_table
from harness.load import payloads

OPENCLIPART = Path("/usr/share/openclipart/png")
VARIANTS = ("original", "mirror", "crop", "colour")


# -- the images ----------------------------------------------------------------------------------
def _originals(folder: Path | None = None) -> list[tuple[str, str, object]]:
    """(label, name, source) of every original: Fashion-MNIST arrays and openclipart paths, or
    the images of a ``<label>/<image>`` folder."""
    if folder is not None:
        return [(p.parent.name, p.stem, str(p)) for p in sorted(folder.glob("*/*")) if p.is_file()]
    out: list[tuple[str, str, object]] = []
    for split in ("train", "t10k"):
        with gzip.open(FASHION_MNIST / f"{split}-labels-idx1-ubyte.gz") as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)
        out += [(f"fashion-{FASHION_CLASSES[c]}", f"{split}{i:05d}", i) for i, c in enumerate(labels)]
    for path in sorted(OPENCLIPART.glob("*/*/*.png")):
        if path.stat().st_size < 8_000_000:  # the ~168 Mpx ones trip the decompression-bomb check
            out.append((f"clipart-{path.parent.name}", path.stem, str(path)))
    return out


_FASHION: dict[str, np.ndarray] = {}


def _picture(source: object, name: str):
    from PIL import Image

    if isinstance(source, int):
        split = "train" if name.startswith("train") else "t10k"
        if split not in _FASHION:
            with gzip.open(FASHION_MNIST / f"{split}-images-idx3-ubyte.gz") as f:
                _FASHION[split] = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        return Image.fromarray(255 - _FASHION[split][source], "L").convert("RGB")  # dark on white
    with Image.open(source) as img:
        img.draft("RGB", (512, 512))
        rgba = img.convert("RGBA")
    rgba.thumbnail((256, 256))
    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def _variant(img, kind: str):
    from PIL import ImageOps

    if kind == "mirror":
        return ImageOps.mirror(img)
    if kind == "crop":
        w, h = img.size
        return img.crop((w // 10, h // 10, w - w // 10, h - h // 10))
    if kind == "colour":
        r, g, b = img.split()
        return type(img).merge("RGB", (b, r, g))  # the channels rotated: a strong colour shift
    return img


def _write(jobs: list[tuple[str, str, object, str]], out: str) -> int:
    written = 0
    for label, name, source, kind in jobs:
        target = Path(out) / label / f"{name}-{kind}.png"
        if target.exists():
            continue
        try:
            img = _variant(_picture(source, name), kind)
        except Exception:  # an openclipart file PIL cannot read: fewer originals, said in the report
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        img.save(target, "PNG", compress_level=1)
        written += 1
    return written


def build_set(out: Path, n: int, folder: Path | None = None) -> dict:
    """``n`` files under ``out/<label>/``: every original first, then variants, kind by kind."""
    originals = _originals(folder)
    jobs = [(label, name, source, kind) for kind in VARIANTS for label, name, source in originals][:n]
    if len(jobs) < n:
        raise SystemExit(f"only {len(jobs)} images can be made from the data here")
    started = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write, [jobs[i::64] for i in range(64)], [str(out)] * 64))
    files = sum(1 for _ in out.glob("*/*.png"))
    kinds = {kind: sum(1 for j in jobs if j[3] == kind) for kind in VARIANTS}
    return {"files": files, "originals": kinds["original"], "by_kind": kinds,
            "seconds": round(time.perf_counter() - started, 1)}


# -- processes -------------------------------------------------------------------------------------
def rss_by_role() -> dict[str, int]:
    """MiB of resident memory of every process of the service, by role."""
    from benchmarks.http_load import process_role

    roles: dict[str, int] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "name", "memory_info"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        name = proc.info["name"] or ""
        if name == "milvus":
            role = "Milvus server"
        elif "lookalike.milvus.server" in cmdline or "lookalike.milvus.supervisor" in cmdline or name == "unshare":
            role = "supervisors + relay"
        else:
            role = process_role(proc.info["pid"], cmdline)
        if role in ("rest", "load generator") and "ray" not in cmdline and "gcs_server" not in name \
                and "raylet" not in name:
            continue  # not part of the service
        mem = proc.info["memory_info"]
        if mem is not None:
            roles[role] = roles.get(role, 0) + mem.rss // 2**20
    return dict(sorted(roles.items()))


def ingest(folder: Path, env: dict, report: Path) -> dict:
    """``python -m ingest`` in a child process, as a user runs it."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ingest", str(folder), "--report", str(report)], env=env, cwd=REPO,
                   check=True)
    data = json.loads(report.read_text())
    data["wall_s"] = round(time.perf_counter() - started, 1)
    for listing in ("skipped_files", "duplicate_files"):  # counted in the report; the lists stay in its file
        data.pop(listing, None)
    return data


def environment(work: Path, **settings: str) -> dict:
    return {**os.environ, "LOOKALIKE_MILVUS__URI": str(work / "lookalike.db"),
            "LOOKALIKE_STORE__LOCAL_DIR": str(work / "images"),
            "LOOKALIKE_INGEST__REPORT_DIR": str(work / "reports"),
            **{f"LOOKALIKE_{k.upper()}": v for k, v in settings.items()}}


def serve_and_measure(base: str, env: dict, bodies: list[dict], clients: list[int], seconds: float,
                      rebuild: bool = False) -> dict:
    """Deploy the service on ``env``'s settings, measure, note every process's RSS (``rebuild``:
    then rebuild its index under search load), delete it."""
    from ray import serve

    from benchmarks.http_load import measure_lookalike, measure_work
    from harness.serve import deploy
    from benchmarks.rebuild_load import rebuild_under_load
    from lookalike.milvus.engines import engine, local_service
    from lookalike.settings import load_settings

    saved = dict(os.environ)
    os.environ.update(env)  # the settings, and the replicas that read them
    try:
        settings = load_settings()
        deploy(settings, base)
        import httpx

        # The Searcher may still be reaching the local server that ingest stopped and the service
        # started again: its status then has no count yet (a CI run read it too early).
        deadline = time.monotonic() + 120
        while (status := httpx.get(f"{base}/api/v1/status", timeout=60).json()).get("count") is None \
                and time.monotonic() < deadline:
            time.sleep(1)
        rows = measure_lookalike(base, bodies, clients, seconds)
        rss = rss_by_role()
        rebuilt = rebuild_under_load(base, settings, bodies, clients[-1], seconds) if rebuild else None
        serve.delete("lookalike")
        alone = measure_work(settings, bodies, seconds)  # the same searches, same collection, the service gone
        service = local_service(settings.milvus)
        if service is not None:  # the next gallery's figures count only its own processes
            service.stop()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {"count": status.get("count"), "index": status.get("index"), "engine": engine(settings.milvus),
            "rows": rows, "rss_mib": rss, "rebuild": rebuilt, "alone": alone}


def copy_to_lite(source_env: dict, lite_work: Path, n: int) -> dict:
    """The first ``n`` entries of the big gallery, vectors and fields as they are, into a Milvus
    Lite directory (a search costs what it costs whatever embedded the vectors)."""
    from lookalike.milvus.engines import gallery_catalog, local_service
    from lookalike.settings import load_settings

    saved = dict(os.environ)
    os.environ.update(source_env)
    try:
        settings = load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    source = gallery_catalog(settings)
    lite_settings = settings.milvus.model_copy(update={"uri": str(lite_work / "lookalike.db"), "engine": "lite"})
    # Through its server, which the service then joins.
    target = gallery_catalog(settings.model_copy(update={"milvus": lite_settings}))
    started, copied = time.perf_counter(), 0
    for batch in source.rows.entries(with_vectors=True):
        batch = batch[: n - copied]
        target.upsert(batch)
        copied += len(batch)
        if copied >= n:
            break
    target.flush()
    index = target.versions.wait_for_index(3600)
    count = target.count()
    source.close()
    target.close()
    for settings_of in (settings.milvus, lite_settings):  # the service starts them again: its figures are its own
        local_service(settings_of).stop()
    return {"copied": copied, "count": count, "seconds": round(time.perf_counter() - started, 1), "index": index}


def ingest_ways(files: list[Path], work: Path) -> dict:
    """The model-only bound and a sequential loop on a slice of the same files (img/s)."""
    from benchmarks.ingest_throughput import model_only, sequential
    from lookalike.settings import load_settings

    settings = load_settings()
    work.mkdir(parents=True, exist_ok=True)
    return {"model_only": model_only(files, settings), "sequential": sequential(files, settings, work)}


# -- the run ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="images in the large gallery")
    parser.add_argument("--lite-n", type=int, default=25_000, help="entries copied into Milvus Lite (0: none)")
    parser.add_argument("--sample-per-class", type=int, default=40, help="the sample gallery (per class; 0: none)")
    parser.add_argument("--slice", type=int, default=1000,
                        help="files for the model-only and sequential ways (0: not measured)")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--no-rebuild", dest="rebuild", action="store_false",
                        help="skip rebuilding the large gallery's index under search load at the end")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--originals", help="a <label>/<image> folder to take the originals from "
                                            "(default: Fashion-MNIST and openclipart)")
    parser.add_argument("--work", help="keep the images and data here (default: a temporary folder)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    results = Results("scale", args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    work = Path(args.work or tempfile.mkdtemp(prefix="lookalike-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    big, small, lite = work / "big", work / "sample", work / "lite"
    try:
        images = work / "images-set"
        print(f"making {args.n:,} images under {images}", flush=True)
        results.add("set", build_set(images, args.n, Path(args.originals) if args.originals else None))
        files = sorted(images.glob("*/*.png"))
        rng = random.Random(0)
        if args.slice:
            results.add("ingest_ways", ingest_ways(rng.sample(files, args.slice), work / "ways"))
        print(f"ingesting {len(files):,} files with python -m ingest", flush=True)
        big.mkdir(exist_ok=True)
        # A fresh install's own choice (engine auto); a smoke run lowers Lite's size so that it
        # takes the same path at a few thousand images.
        big_env = environment(big, milvus__lite_fast_max_rows=str(min(args.n - 1, 25_000)))
        results.add("ingest", ingest(images, big_env, big / "ingest-report.json"))

        from benchmarks.common import openclipart_set

        galleries_env = []
        if args.sample_per_class:
            sample_dir = openclipart_set(work / "sample-set", per_class=args.sample_per_class)
            small.mkdir(exist_ok=True)
            results.add("sample_ingest", ingest(sample_dir, environment(small), small / "ingest-report.json"))
            galleries_env.append(("sample gallery", environment(small)))
        if args.lite_n:
            lite.mkdir(exist_ok=True)
            results.add("lite_copy", copy_to_lite(big_env, lite, args.lite_n))
            galleries_env.append(("copied into Milvus Lite", {**big_env, "LOOKALIKE_MILVUS__URI": str(lite / "lookalike.db"),
                                                              "LOOKALIKE_MILVUS__ENGINE": "lite"}))
        galleries_env.append(("the large gallery", big_env))

        queries = [f.read_bytes() for f in rng.sample(files, args.queries)]
        bodies = payloads(queries, k=10)
        from harness.serve import serve_session

        galleries = {}
        with serve_session() as base:
            for name, env in galleries_env:
                print(f"{name}:", flush=True)
                galleries[name] = serve_and_measure(base, env, bodies, clients, args.seconds,
                                                    rebuild=args.rebuild and env is big_env)
                results.add("galleries", galleries)
    finally:
        from lookalike.milvus.engines import local_service
        from lookalike.settings import load_settings

        for folder in (big, small, lite):
            os.environ["LOOKALIKE_MILVUS__URI"] = str(folder / "lookalike.db")
            service = local_service(load_settings().milvus)
            if service is not None:
                service.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report(results)
    results.write()
    return results


def _row(name: str, g: dict, clients: list[int]) -> dict:
    by = {r["clients"]: r for r in g["rows"]}
    one, many = by[clients[0]], by[clients[-1]]
    return {"gallery": name, "count": g["count"], "engine": g["engine"], "index": (g.get("index") or {}).get("type"),
            "search_p50": one.get("server_search_p50_ms"), "search_p99": one.get("server_search_p99_ms"),
            "milvus": one.get("milvus_ms"), "alone_p50": (g.get("alone") or {}).get("search_p50_ms"),
            "e2e_p50": one["p50_ms"], "e2e_p95": one.get("p95_ms"), "qps1": one["qps"], "qps8": many["qps"],
            "errors": sum(r["errors"] for r in g["rows"]), "rss": sum(g["rss_mib"].values())}


def report(results: Results) -> None:
    data = results.data
    clients = [int(c) for c in str(data["params"]["clients"]).split(",")]
    galleries = data.get("galleries", {})
    rows = [_row(name, g, clients) for name, g in galleries.items()]
    if rows:
        results.section("Through the service (one run)", markdown_table(
            rows, ["gallery", "count", "engine", "index", "search_p50", "search_p99", "milvus", "alone_p50", "e2e_p50",
                   "e2e_p95", "qps1", "qps8", "errors", "rss"],
            ["gallery", "images", "Milvus", "index", "search_ms p50", "search_ms p99", "in Milvus, mean ms",
             "Milvus alone, p50 ms", f"e2e p50 ms ({clients[0]} client)",
             "e2e p95 ms", f"QPS {clients[0]}", f"QPS {clients[-1]}", "errors", "RSS MiB (all)"]))
        base = rows[0]
        ratios = [{"gallery": r["gallery"], "e2e": round(r["e2e_p50"] / base["e2e_p50"], 2),
                   "qps": round(r["qps8"] / base["qps8"], 2)} for r in rows]
        results.section("Against the sample gallery, same run", markdown_table(
            ratios, ["gallery", "e2e", "qps"], ["gallery", "e2e p50 ÷ sample's", f"QPS at {clients[-1]} ÷ sample's"]))
        results.section("Memory by process (MiB)", markdown_table(
            [{"gallery": name, **g["rss_mib"]} for name, g in galleries.items()],
            ["gallery", *sorted({k for g in galleries.values() for k in g["rss_mib"]})]))
    rebuilt = (galleries.get("the large gallery") or {}).get("rebuild")
    if rebuilt:
        from benchmarks.rebuild_load import report as rebuild_report

        rebuild_report(results, rebuilt)
    ingest, ways = data.get("ingest"), data.get("ingest_ways")
    if ingest and ways:
        stages = ingest.get("stage_seconds", {})
        rate = ingest.get("images_per_s")
        bound = ways["model_only"]["images_per_s"]
        seq = ways["sequential"]["images_per_s"]
        results.section("Ingest", markdown_table([{
            "images": ingest.get("total"), "indexed": ingest.get("indexed"), "engine": ingest["run"].get("engine"),
            "seconds": round(ingest.get("seconds", 0), 1), "rate": round(rate, 1) if rate else None,
            "bound": round(bound, 1), "seq": round(seq, 1),
            "of_bound": round(rate / bound, 2) if rate else None, "vs_seq": round(rate / seq, 2) if rate else None,
            "index_s": round(stages.get("index", 0), 1)}],
            ["images", "indexed", "engine", "seconds", "rate", "bound", "seq", "of_bound", "vs_seq", "index_s"],
            ["files", "indexed", "Milvus", "seconds", "img/s", "model-only img/s", "sequential img/s",
             "÷ bound", "÷ sequential", "index wait after the last insert, s"]))
    if "set" in data:
        s = data["set"]
        source = data["params"].get("originals") or "Fashion-MNIST's 70,000 and openclipart's"
        results.section("The images", f"{s['files']:,} files: {s['originals']:,} originals ({source}), then "
                                      f"variants {s['by_kind']}; made in {s['seconds']} s.")


if __name__ == "__main__":
    main()
