"""Ingest throughput, side by side in one run (timings on shared machines are noisy: compare
the ratios, not the absolute numbers):

  model-only   the same model on pre-decoded tensors, one process, batches of model.batch_size:
               the upper bound of any ingest on this machine
  sequential   written like the seed's scripts: per image decode -> embed one image -> store
               the original -> insert one row (Milvus Lite, in-process)
  ray-data     python -m ingest's pipeline (read/decode tasks -> embedding actors -> writers),
               Ray already started

Images: N (default 2000) from Debian's openclipart-png, either as they are (PNG) or converted
once to ImageNet-like JPEGs (longest side 500 px, quality 90; the seed's data set is ImageNet).

    python -m benchmarks.ingest_throughput [--n 2000] [--format jpeg|png] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import random_weights
from lookalike.milvus.catalog import Catalog, Entry
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
    """Like the seed: one image at a time through decode, the model, the store and Milvus."""
    encoder = ImageEncoder(settings.model).load()
    catalog = Catalog(settings.milvus.model_copy(update={"uri": str(work / "seq.db")}), encoder.dim,
                      uri=str(work / "seq.db"))
    catalog.ensure_ready()
    store = LocalStore(work / "seq-images")
    encoder.encode(np.zeros((1, encoder.input_size, encoder.input_size, 3), np.uint8))  # warm-up
    started = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        prepared = prepare(data, encoder.input_size, settings.images)
        vector = encoder.encode(prepared.pixels[None])[0]
        key = object_key(prepared.id, prepared.extension)
        store.put(key, data, prepared.content_type)
        catalog.upsert([Entry(prepared.id, key, path.parent.name, str(path), vector)])
    catalog.flush()
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
            # The embedding actor's busy time is the pipeline's critical path on one machine;
            # the rest of the wall time is start-up (Ray Data, actors, model load) and the tail.
            "embed_stage_images_per_s": processed / report.stage_seconds["embed"],
            "overhead_s": report.seconds - report.stage_seconds["embed"],
            "stage_seconds": dict(report.stage_seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--cache", default="data/bench-images")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--model", default="efficientnet-lite0",
                        help="resnet50: the seed's model, with random-init weights (throughput only)")
    args = parser.parse_args()

    settings = load_settings()
    if args.model != settings.model.name:
        settings = settings.with_overrides(model={"name": args.model, "weights": random_weights(args.model)})
    folder = build_images(Path(args.cache) / f"{args.format}-{args.n}", args.n, args.format)
    files = [Path(i.path) for i in iter_folder(folder)]
    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    from ingest.pipeline import connect_ray

    connect_ray()  # Ray's own start-up is not part of any measurement; it idles during the others
    try:
        results = {"model_only": model_only(files, settings)}
        print("model-only  ", json.dumps(results["model_only"]))
        results["sequential"] = sequential(files, settings, work)
        print("sequential  ", json.dumps(results["sequential"]))
        results["ray_data"] = ray_data(folder, settings, work)
        print("ray-data    ", json.dumps(results["ray_data"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bound, seq, ray_ = (results[k]["images_per_s"] for k in ("model_only", "sequential", "ray_data"))
    embed_rate = results["ray_data"]["embed_stage_images_per_s"]
    results["ratios"] = {"ray_data_vs_model_only": ray_ / bound, "ray_data_vs_sequential": ray_ / seq,
                         "embed_stage_vs_model_only": embed_rate / bound,
                         "sequential_vs_model_only": seq / bound}
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "images": args.n,
                          "format": args.format, "model": settings.model.name}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ingest-{settings.model.name}-{args.format}-{args.n}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\n{'':12}{'img/s':>10}\n{'model-only':12}{bound:10.1f}\n{'sequential':12}{seq:10.1f}\n"
          f"{'ray-data':12}{ray_:10.1f}   (embedding stage alone: {embed_rate:.1f}; start-up and tail: "
          f"{results['ray_data']['overhead_s']:.1f}s)\n"
          f"ray-data / model-only = {ray_ / bound:.2f}   "
          f"ray-data / sequential = {ray_ / seq:.2f}   sequential / model-only = {seq / bound:.2f}"
          f"\nwritten to {path}")


if __name__ == "__main__":
    main()
