"""Ingest throughput, side by side in one run (timings on shared machines are noisy: compare
the ratios, not the absolute numbers):

  model-only   the same model on pre-decoded tensors, one process, batches of model.batch_size:
               the upper bound of any ingest on this machine
  sequential   written like the seed's scripts: per image decode -> embed one image -> store
               the original -> insert one row (Milvus Lite); timed as the job is, from loading
               the model to an indexed gallery
  ray-data     python -m ingest's pipeline, Ray already started: the stages fused in one actor
               pool sized for the CPUs it finds (the default on CPUs alone), the stages separate
               (--stages separate: read/decode tasks -> embedding actors -> writers), and
               separate with one embedding actor on every thread (the default before those)

Images: N (default 2000) from Debian's openclipart-png, either as they are (PNG) or converted
once to ImageNet-like JPEGs (longest side 500 px, quality 90; the seed's data set is ImageNet).

    python -m benchmarks.ingest_throughput [--n 2000] [--format jpeg|png] [--rounds 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import Results, markdown_table, random_weights
from lookalike.milvus.catalog import Entry
from lookalike.embedding.encoder import ImageEncoder
from lookalike.quality.gallery import OPENCLIPART, SAMPLE_MAX_PIXELS, usable_image
from lookalike.embedding.images import prepare
from lookalike.settings import load_settings
from lookalike.indexing.sources import iter_folder
from lookalike.storage.store import LocalStore, object_key


def build_images(out: Path, n: int, fmt: str) -> Path:
    """Take n openclipart PNGs spread over every class; keep PNG or convert to JPEG."""
    files = sorted(p for p in OPENCLIPART.glob("*/*/*.png"))
    files = [p for p in files if usable_image(p, SAMPLE_MAX_PIXELS)]
    step = max(1, len(files) // n)
    chosen = files[::step][:n]
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} usable images under {OPENCLIPART}")
    for path in chosen:
        label = path.parent.name
        target = out / label / (path.stem + (".png" if fmt == "png" else ".jpg"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            continue
        if fmt == "png":
            shutil.copyfile(path, target)
            continue
        with Image.open(path) as img:
            rgba = img.convert("RGBA")
            rgba.thumbnail((500, 500))
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            canvas.save(target, "JPEG", quality=90)
    return out


def model_only(files: list[Path], settings) -> dict:
    encoder = ImageEncoder(settings.model).load()
    size = encoder.input_size
    pixels = np.stack([prepare(f.read_bytes(), size, settings.images).pixels for f in files])
    encoder.encode(pixels[: settings.model.batch_size])  # warm-up
    started = time.perf_counter()
    encoder.encode(pixels)
    seconds = time.perf_counter() - started
    return {"images": len(files), "seconds": seconds, "images_per_s": len(files) / seconds,
            "device": encoder.device, "precision": encoder.precision, "batch_size": settings.model.batch_size}


def sequential(files: list[Path], settings, work: Path) -> dict:
    """Like the seed: one image at a time through decode, the model, the store and Milvus.
    Timed as the job is, from nothing loaded to a searchable gallery: the model loaded, the
    Milvus Lite server started (the job's own, ``serving``: stopped at the end, so that it writes
    nothing after its folder is removed), each image, the flush and the index."""
    from lookalike.milvus.engines import gallery_catalog, serving

    settings = settings.with_overrides(milvus={"uri": str(work / "seq.db")})
    started = time.perf_counter()
    encoder = ImageEncoder(settings.model).load()
    with serving(settings.milvus):
        catalog = gallery_catalog(settings)
        catalog.ensure_ready()
        store = LocalStore(work / "seq-images")
        for path in files:
            data = path.read_bytes()
            prepared = prepare(data, encoder.input_size, settings.images)
            vector = encoder.encode(prepared.pixels[None])[0]
            key = object_key(prepared.id, prepared.extension)
            store.put(key, data, prepared.content_type)
            catalog.upsert([Entry(prepared.id, key, path.parent.name, str(path), vector)])
        catalog.flush()
        catalog.versions.wait_for_index(settings.ingest.index_wait_s)
        seconds = time.perf_counter() - started
        count = catalog.count()
        catalog.close()
    return {"images": len(files), "seconds": seconds, "images_per_s": len(files) / seconds, "entities": count}


def ray_data(folder: Path, settings, work: Path) -> dict:
    from ingest.pipeline import run_ingest

    settings = settings.with_overrides(milvus={"uri": str(work / "ray.db")},
                                       store={"local_dir": str(work / "ray-images")},
                                       ingest={"report_dir": str(work)})
    report = run_ingest(str(folder), settings, report_path=str(work / "ray-report.json"))
    processed = report.indexed + len(report.duplicates)
    return {"images": report.total, "indexed": report.indexed, "duplicates": len(report.duplicates),
            "seconds": report.seconds, "images_per_s": processed / report.seconds,
            "stage_seconds": dict(report.stage_seconds)}


# The pools compared (ingest/pipeline.py: embed_pool): the stages fused (the default, auto, on
# CPUs alone); separate pools sized for the CPUs; separate, one embedding actor on every CPU's
# thread (the default before those).
POOLS = {"fused": {"ingest": {"stages": "fused"}}, "separate pools": {"ingest": {"stages": "separate"}},
         "one actor, all threads": {"ingest": {"stages": "separate", "embed_actors": 1}}}


def measure(folder: Path, settings, files: list[Path], rounds: int) -> list[dict]:
    """Each way ``rounds`` times in ABBA order (the machine drifts within a run), Ray started
    once before (its start-up is not any one's); the model-only bound first."""
    from ingest.pipeline import connect_ray

    connect_ray()
    runs = [("model-only", model_only(files, settings))]
    order = ["sequential", *POOLS]
    for i in range(rounds):
        for way in order if i % 2 == 0 else order[::-1]:
            work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
            try:
                if way == "sequential":
                    result = sequential(files, settings, work)
                else:
                    result = ray_data(folder, settings.with_overrides(**POOLS[way]), work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"{way:24}{result['images_per_s']:8.1f} img/s", flush=True)
            runs.append((way, result))
    rows = []
    bound = runs[0][1]["images_per_s"]
    loop = np.mean([r["images_per_s"] for way, r in runs if way == "sequential"])
    for way in ["model-only", *order]:
        rates = [r["images_per_s"] for w, r in runs if w == way]
        rows.append({"way": way, "runs": ", ".join(f"{x:.1f}" for x in rates), "images_per_s": float(np.mean(rates)),
                     "vs_bound": float(np.mean(rates)) / bound, "vs_sequential": float(np.mean(rates)) / loop})
    return rows


def report(results: Results, rows: list[dict], images: int, fmt: str) -> None:
    results.section(f"{images:,} {fmt.upper()} files, each way in ABBA order", markdown_table(
        rows, ["way", "runs", "images_per_s", "vs_bound", "vs_sequential"],
        ["", "img/s, each run", "img/s, mean", "÷ model-only", "÷ sequential"])
        + "\n\nThe loop and the job are timed alike, from nothing loaded to an indexed gallery (the model "
          "loaded, the Milvus Lite server started, the flush and the index); model-only is the forward pass "
          "alone on pixels decoded beforehand.")


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache", default="data/bench-images")
    parser.add_argument("--out", default=None)
    parser.add_argument("--model", default="efficientnet-lite0",
                        help="resnet50: the seed's model, with random-init weights (throughput only)")
    args = parser.parse_args(argv)
    results = Results("ingest-throughput", args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    settings = load_settings()
    if args.model != settings.model.name:
        settings = settings.with_overrides(model={"name": args.model, "weights": random_weights(args.model)})
    folder = build_images(Path(args.cache) / f"{args.format}-{args.n}", args.n, args.format)
    files = [Path(i.path) for i in iter_folder(folder)]
    rows = measure(folder, settings, files, args.rounds)
    results.add("rows", rows)
    report(results, rows, len(files), args.format)
    results.write()
    return results


if __name__ == "__main__":
    main()
