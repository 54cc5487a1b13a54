"""Embedding throughput per model and runtime, side by side in one run.

  original   the original's way: one image at a time, fp32 (the seed's Towhee pipeline ran
             ResNet-50 per upload in fp32): Lookalike's encoder in fp32 at batch 1
  fp32       the same, batched
  bf16 / fp16  torch with bf16 autocast + channels_last on CPUs with native bf16, fp16 on CUDA
  onnx       onnxruntime on the network exported from torch (model.runtime: onnx; the
             default on CPU), fp32; its threads sleep between runs (the default), or spin
             (model.spin_wait: faster alone, but they take CPU from the rest of a server)

for batch sizes 1..64 on the same prepared images (real openclipart pictures, decoded once:
this measures the model, not decoding). Reports img/s and the ratio to the original's way.
ResNet-50 runs with random-init weights here (its real weights cannot be downloaded on this
machine); its speed does not depend on the weights' values.

    python -m benchmarks.embedding [--models efficientnet-lite0,resnet50] [--batches 1,4,16,64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Results, markdown_table, openclipart_set, random_weights

ORIGINAL = "original (torch fp32, 1 image)"


def prepared_images(n: int, size: int, gallery: Path) -> np.ndarray:
    from lookalike.embedding.images import prepare
    from lookalike.settings import load_settings

    limits = load_settings().images
    files = sorted(p for p in gallery.glob("*/*") if p.is_file())
    files = files[:: max(1, len(files) // n)][:n]
    return np.stack([prepare(f.read_bytes(), size, limits).pixels for f in files])


def encoder_for(model: str, runtime: str, precision: str, batch: int, spin_wait: bool = False):
    from lookalike.embedding.encoder import ImageEncoder
    from lookalike.settings import load_settings

    settings = load_settings().model.model_copy(update={"name": model, "runtime": runtime, "precision": precision,
                                                        "batch_size": batch, "spin_wait": spin_wait})
    if model == "resnet50":
        settings = settings.model_copy(update={"weights": random_weights("resnet50")})
    return ImageEncoder(settings).load()


def rate(encode, images: np.ndarray, batch: int, seconds: float) -> float:
    """Images per second over at least ``seconds`` and two calls, after one warm-up call."""
    if len(images) < batch:  # a small gallery: repeat it to fill the batch
        images = np.concatenate([images] * -(-batch // len(images)))
    encode(images[:batch])
    done, started, i = 0, time.perf_counter(), 0
    while True:
        chunk = images[i : i + batch]
        if len(chunk) < batch:
            i, chunk = 0, images[:batch]
        encode(chunk)
        done += len(chunk)
        i += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and done >= 2 * batch:
            return done / elapsed


def run_model(model: str, batches: list[int], seconds: float, images: np.ndarray) -> list[dict]:
    """fp32 at batch 1 is the original's way (one upload, one forward pass, fp32): the baseline."""
    import torch

    from lookalike.embedding import onnx_runtime

    fast = "fp16" if torch.cuda.is_available() else "bf16"
    modes = [("torch", "fp32", False)]
    if fast == "fp16" or _native_bf16():
        modes.append(("torch", fast, False))
    if onnx_runtime.available():
        modes += [("onnx", "fp32", False), ("onnx", "fp32", True)]
    batches = sorted(set([1, *batches]))
    rows: list[dict] = []
    for runtime, precision, spin in modes:
        encoder = encoder_for(model, runtime, precision, max(batches), spin)
        label = f"{runtime} {encoder.precision}" + (", spinning threads" if spin else "")
        for batch in batches:
            r = rate(encoder.encode, images, batch, seconds)
            original = (runtime, precision, batch) == ("torch", "fp32", 1)
            base = r if original else rows[0]["img_per_s"]
            rows.append({"model": model, "runtime": ORIGINAL if original else label,
                         "device": encoder.device, "batch": batch, "img_per_s": round(r, 2),
                         "speedup": round(r / base, 2)})
            print(f"{model} {rows[-1]['runtime']} batch {batch}: {r:.1f} img/s ({r / base:.2f}x)", flush=True)
    return rows


def _native_bf16() -> bool:
    from lookalike.embedding.encoder import cpu_has_native_bf16

    return cpu_has_native_bf16()


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet-lite0,resnet50")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--gallery", default=None, help="a labelled folder (default: the openclipart sample)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    results = Results("embedding", args.out, **{k: v for k, v in vars(args).items() if k not in ("out", "gallery")})
    gallery = Path(args.gallery) if args.gallery else openclipart_set()
    images = prepared_images(max(args.images, max(batches)), 224, gallery)
    rows = []
    for model in args.models.split(","):
        rows += run_model(model, batches, args.seconds, images)
        results.add("rows", rows)
    results.section("Images per second (ratio: to the original's way, one image at a time in fp32)",
                    markdown_table(rows, ["model", "runtime", "device", "batch", "img_per_s", "speedup"],
                                   ["model", "runtime", "device", "batch", "img/s", "× original"]))
    for model in args.models.split(","):
        def draw(ax, model=model):
            mine = [r for r in rows if r["model"] == model]
            base = next(r for r in mine if r["runtime"] == ORIGINAL)
            ax.axhline(base["img_per_s"], color="grey", linestyle="--", label="original (1 image, fp32)")
            for runtime in dict.fromkeys(r["runtime"] for r in mine if r["runtime"] != ORIGINAL):
                pts = [r for r in mine if r["runtime"] == runtime or (runtime == "torch fp32" and r is base)]
                ax.plot([p["batch"] for p in pts], [p["img_per_s"] for p in pts], marker="o", label=runtime)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size")
            ax.set_ylabel("images / s")
            ax.set_title(f"{model}: embedding throughput")
            ax.legend(fontsize=8)

        results.plot(f"embedding-{model}.png", draw)
    results.write()
    return results


if __name__ == "__main__":
    main()
