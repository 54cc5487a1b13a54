"""A CLIP's two towers: open_clip on torch fp32 against Lookalike's export on onnxruntime, side
by side in one run, images/s and texts/s at batch 1 and 16; and the bundled model's image
forward pass at batch 1 beside them (what a search by words costs against a search by image).

The architecture is built with random weights (no CLIP weights can be downloaded here; speed
does not depend on their values), exported to immich's layout as `lookalike models export`
writes it (lookalike/embedding/clip_export.py) and loaded as `model.name: immich-clip`.

    python -m benchmarks.clip_towers [--arch ViT-B-32] [--batches 1,16] [--seconds 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Results, markdown_table, openclipart_set
from benchmarks.embedding import prepared_images, rate

CAPTIONS = ["a photo of a red bicycle", "two dogs playing in the snow", "a clock on a wall", "a bowl of fruit",
            "a sailing boat at sunset", "an old violin", "a green beetle on a leaf", "a glass of orange juice"]


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32", help="an open_clip architecture (random weights)")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--gallery", default=None, help="a labelled folder (default: the openclipart sample)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import open_clip
    import torch

    from lookalike.embedding.clip_export import load_open_clip, write_layout
    from lookalike.embedding.encoder import ImageEncoder
    from lookalike.machine import available_cpus
    from lookalike.settings import load_settings

    batches = [int(b) for b in args.batches.split(",")]
    results = Results("clip-towers", args.out, **{k: v for k, v in vars(args).items() if k not in ("out", "gallery")})
    torch.set_num_threads(available_cpus())
    model = load_open_clip(args.arch)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        folder = write_layout(model, open_clip.get_model_config(args.arch), Path(tmp) / args.arch)
        export_s = time.perf_counter() - started
        settings = load_settings().model.model_copy(update={"name": "immich-clip", "weights": str(folder),
                                                            "batch_size": max(batches)})
        clip = ImageEncoder(settings).load()
        bundled = ImageEncoder(load_settings().model.model_copy(update={"batch_size": 1})).load()
        gallery = Path(args.gallery) if args.gallery else openclipart_set()
        images = prepared_images(max(args.images, max(batches)), clip.input_size, gallery)
        mean, std = np.array(clip.spec.mean, np.float32) * 255, np.array(clip.spec.std, np.float32) * 255
        texts = np.array(CAPTIONS * -(-max(args.images, max(batches)) // len(CAPTIONS)))
        tokens = [sum(e.attention_mask) for e in clip.text_engine.tokenizer.encode_batch(CAPTIONS)]

        def torch_images(batch: np.ndarray):
            x = torch.from_numpy(((batch - mean) / std).transpose(0, 3, 1, 2).copy())
            with torch.inference_mode():
                return model.encode_image(x, normalize=True)

        def torch_texts(batch: np.ndarray):
            with torch.inference_mode():
                return model.encode_text(open_clip.tokenize(list(batch)), normalize=True)

        def padded_texts(batch: np.ndarray):  # the same graph run on the whole context, as a fixed-length export
            ids = [e.ids for e in clip.text_engine.tokenizer.encode_batch(list(batch))]
            return clip.text_engine.session.run(None, {"text": np.array(ids, np.int32)})[0]

        runs = [("image", "open_clip, torch fp32", torch_images, images),
                ("image", "Lookalike, onnxruntime fp32", clip.encode, images),
                ("text", "open_clip, torch fp32", torch_texts, texts),
                ("text", "Lookalike, onnxruntime fp32, padded to the context", padded_texts, texts),
                ("text", "Lookalike, onnxruntime fp32, cut to the text", lambda b: clip.encode_text(list(b)), texts)]
        rows = []
        for batch in batches:
            for tower, how, encode, items in runs:
                per_s = rate(encode, items, batch, args.seconds)
                base = next((r["per_s"] for r in rows if (r["tower"], r["batch"]) == (tower, batch)), per_s)
                rows.append({"model": args.arch, "tower": tower, "runtime": how, "batch": batch,
                             "per_s": round(per_s, 1), "ms_per_batch": round(1000 * batch / per_s, 2),
                             "vs_torch": round(per_s / base, 2)})
                print(f"{args.arch} {tower} {how} batch {batch}: {per_s:.1f}/s ({per_s / base:.2f}x torch)", flush=True)
        bundled_rate = rate(bundled.encode, prepared_images(8, bundled.input_size, gallery), 1, args.seconds)
        rows.append({"model": bundled.spec.name, "tower": "image", "runtime": "Lookalike, onnxruntime fp32",
                     "batch": 1, "per_s": round(bundled_rate, 1), "ms_per_batch": round(1000 / bundled_rate, 2),
                     "vs_torch": None})
    results.add("rows", rows)
    results.add("export_seconds", round(export_s, 1))
    results.add("caption_tokens", tokens)
    results.section(f"{args.arch} (random weights): each tower per second, open_clip's torch against the export "
                    f"on onnxruntime (exported in {export_s:.0f} s); texts are captions of {min(tokens)}–"
                    f"{max(tokens)} tokens (context {clip.spec.folder.context_length}), run padded to the context "
                    "as a fixed-length export (immich's) runs them, and cut to the longest text of the batch as "
                    "Lookalike's export allows; the bundled model's image forward pass below",
                    markdown_table(rows, ["model", "tower", "runtime", "batch", "per_s", "ms_per_batch", "vs_torch"],
                                   ["model", "tower", "runtime", "batch", "per s", "ms per batch", "× torch"]))
    results.write()
    return results


if __name__ == "__main__":
    main()
