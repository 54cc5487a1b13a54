"""Retrieval quality on two labelled sets, through the running service and exactly, plus copy
detection and a comparison of preprocessing choices.

  openclipart     the sample gallery: 31 openclipart sub-folders as labels, 40 images each
  fashion-mnist   Fashion-MNIST test images, 10 classes, 100 each (dark on white)

1. Service: the Serve application (config/serve.yaml) over a Milvus Lite HNSW index; each set
   is indexed and evaluated with `lookalike eval DIR --url ...` (every image a query over HTTP,
   leave-one-out), which also reports exact search over the same stored vectors.
2. Preprocessing: exact search only, in-process, every set embedded once per ``images.fit``
   (pad / crop / stretch): P@10, mAP@10 and copy-detection recall@1, side by side.

    python -m benchmarks.quality [--copies 100] [--fits pad,crop,stretch]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import Results, embed_files, fashion_mnist_set, markdown_table, openclipart_set

EDIT_KINDS = ("crop_70", "rotate_15", "jpeg_q15", "grayscale", "downscale_25", "text_overlay")


def datasets(args) -> dict[str, Path]:
    return {"openclipart": openclipart_set(per_class=args.per_class),
            "fashion-mnist": fashion_mnist_set(per_class=args.fashion_per_class)}


def through_service(sets: dict[str, Path], args, work: Path) -> dict[str, dict]:
    """`lookalike eval --url` against the deployed application, one collection per set."""
    from harness.serve import deploy, serve_session
    from lookalike import cli
    from lookalike.local_milvus import serving
    from lookalike.settings import load_settings

    os.environ.update({"LOOKALIKE_MILVUS__URI": str(work / "quality.db"),
                       "LOOKALIKE_STORE__LOCAL_DIR": str(work / "images")})
    out = {}
    settings = load_settings()
    with serving(settings.milvus), serve_session() as base:
        for name, folder in sets.items():
            collection = name.replace("-", "_")
            os.environ["LOOKALIKE_MILVUS__COLLECTION"] = collection
            deploy(load_settings(), base)
            report = work / f"eval-{name}.json"
            cli.main(["eval", str(folder), "--url", base, "--copies", str(args.copies), "--report", str(report)])
            out[name] = json.loads(report.read_text())
        os.environ.pop("LOOKALIKE_MILVUS__COLLECTION")
    return out


def preprocessing(sets: dict[str, Path], args) -> dict[str, dict[str, dict]]:
    """Exact-search quality per ``images.fit``, the model and everything else unchanged."""
    from lookalike.encoder import ImageEncoder
    from lookalike.evaluation import bytes_embedder, evaluate, load_gallery
    from lookalike.sources import iter_folder
    from lookalike.settings import load_settings

    base = load_settings()
    encoder = ImageEncoder(base.model).load()
    out: dict[str, dict[str, dict]] = {}
    for name, folder in sets.items():
        gallery = load_gallery(list(iter_folder(folder)))
        for fit in args.fits:
            limits = base.images.model_copy(update={"fit": fit})
            gallery.vectors, kept = embed_files(gallery.paths, encoder, limits)
            assert len(kept) == len(gallery.paths), f"{name}: {len(gallery.paths) - len(kept)} images did not decode"

            out.setdefault(name, {})[fit] = evaluate(gallery, search=None, embed=bytes_embedder(encoder, limits),
                                                     copies=args.copies)
            m = out[name][fit]["exact"]
            print(f"  {name} fit={fit}: P@10 {m['p_at_10']:.3f}, mAP@10 {m['map_at_10']:.3f}", flush=True)
    return out


def report(results: Results, service: dict, fits: dict) -> None:
    rows = []
    for name, r in service.items():
        for how in ("index", "exact"):
            m = r[how]
            rows.append({"set": name, "images": r["gallery"], "classes": r["classes"],
                         "search": "service (HNSW, HTTP)" if how == "index" else "exact, same vectors",
                         "p1": m["p_at_1"], "p10": m["p_at_10"], "map10": m["map_at_10"]})
    if rows:
        results.section("Retrieval quality (leave-one-out: every image a query)", markdown_table(
            rows, ["set", "images", "classes", "search", "p1", "p10", "map10"],
            ["set", "images", "classes", "search", "P@1", "P@10", "mAP@10"]))
        copies = []
        for name, r in service.items():
            for kind, c in r.get("copies", {}).items():
                copies.append({"set": name, "edit": kind, "r1": c["index"]["recall_at_1"],
                               "r5": c["index"]["recall_at_5"], "r1x": c["exact"]["recall_at_1"],
                               "r5x": c["exact"]["recall_at_5"]})
        results.section("Copy detection (edited copies, not in the gallery, must find their original)",
                        markdown_table(copies, ["set", "edit", "r1", "r5", "r1x", "r5x"],
                                       ["set", "edit", "recall@1 service", "recall@5 service", "recall@1 exact",
                                        "recall@5 exact"]))
        per_class = []
        for name, r in service.items():
            for label, p in sorted(r["index"]["per_class"].items(), key=lambda kv: kv[1]):
                per_class.append({"set": name, "class": label, "p10": p})
        results.section("Per-class P@10 (service), worst first", markdown_table(per_class, ["set", "class", "p10"],
                                                                                 ["set", "class", "P@10"]))
    prep = []
    for name, by_fit in fits.items():
        for fit, r in by_fit.items():
            c = r.get("copies", {})
            prep.append({"set": name, "fit": fit, "p1": r["exact"]["p_at_1"], "p10": r["exact"]["p_at_10"],
                         "map10": r["exact"]["map_at_10"],
                         "copy_r1": round(float(np.mean([v["exact"]["recall_at_1"] for v in c.values()])), 4)
                         if c else None})
    if prep:
        results.section("Preprocessing: fit to the model's square input (exact search)", markdown_table(
            prep, ["set", "fit", "p1", "p10", "map10", "copy_r1"],
            ["set", "images.fit", "P@1", "P@10", "mAP@10", "copy recall@1 (mean of edits)"]))

        def draw(ax):
            names = list(fits)
            width = 0.8 / max(1, len(next(iter(fits.values()))))
            for n, fit in enumerate(next(iter(fits.values()))):
                ax.bar([i + n * width for i in range(len(names))], [fits[s][fit]["exact"]["map_at_10"] for s in names],
                       width, label=f"fit={fit}")
            ax.set_xticks([i + width for i in range(len(names))], names)
            ax.set_ylabel("mAP@10 (exact)")
            ax.set_title("Preprocessing choices")
            ax.legend(fontsize=8)

        results.plot("quality-preprocessing.png", draw)


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=100, help="originals edited per set")
    parser.add_argument("--fits", default="pad,crop,stretch")
    parser.add_argument("--per-class", type=int, default=40, help="openclipart images per class")
    parser.add_argument("--fashion-per-class", type=int, default=100)
    parser.add_argument("--skip-service", action="store_true", help="only the preprocessing comparison")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.fits = args.fits.split(",") if args.fits else []
    results = Results("quality", args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    sets = datasets(args)
    work = Path(tempfile.mkdtemp(prefix="lookalike-quality-"))
    service = {} if args.skip_service else through_service(sets, args, work)
    results.add("service", service)
    fits = preprocessing(sets, args) if args.fits else {}
    results.add("preprocessing", fits)
    report(results, service, fits)
    results.write()
    return results


if __name__ == "__main__":
    main()
