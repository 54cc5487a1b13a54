"""Retrieval quality on two labelled sets, through the running service and exactly, plus copy
detection, a comparison of preprocessing and descriptor choices, region search and near-duplicate
groups on planted copies.

  openclipart     the sample gallery: 31 openclipart sub-folders as labels, 40 images each
  fashion-mnist   Fashion-MNIST test images, 10 classes, 100 each (dark on white)

1. Service: the Serve application (config/serve.yaml) over a Milvus Lite HNSW index; each set
   is indexed and evaluated with `lookalike eval DIR --url ...` (every image a query over HTTP,
   leave-one-out; edited copies and parts of images), which also reports exact search over the
   same stored vectors; openclipart once more with region rows (``SERVICE_VARIANTS``).
2. Preprocessing and descriptors: exact search only, in-process, every set embedded once per
   ``images.fit`` (pad / crop / stretch) and per ``model.pooling`` (avg / gem): P@10, mAP@10 and
   copy-detection recall@1 per edit, side by side.
3. Region search: random boxes (30-70 %, and 50 %, of each side) of openclipart images; the
   whole image's recall@1 / @5.
4. Near-duplicates: openclipart plus planted copies (every edit kind, resized, re-encoded),
   grouped by ``lookalike.quality.duplicates`` per threshold: pair precision and recall.

    python -m benchmarks.quality [--copies 100] [--fits pad,crop,stretch] [--poolings avg,gem]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import Results, embed_files, fashion_mnist_set, markdown_table, openclipart_set

EDIT_KINDS = ("crop_70", "rotate_15", "jpeg_q15", "grayscale", "downscale_25", "text_overlay")


def datasets(args) -> dict[str, Path]:
    return {"openclipart": openclipart_set(per_class=args.per_class),
            "fashion-mnist": fashion_mnist_set(per_class=args.fashion_per_class)}


# Galleries indexed and served besides each set as configured: {name: (set, settings from the
# environment)}. With region rows, a part of an image finds the whole through the service.
SERVICE_VARIANTS = {"openclipart, region rows": ("openclipart", {"LOOKALIKE_MODEL__REGIONS__ENABLED": "true"})}


def through_service(sets: dict[str, Path], args, work: Path) -> dict[str, dict]:
    """`lookalike eval --url` against the deployed application, one collection per set and per
    variant (``SERVICE_VARIANTS``, for the sets measured)."""
    from harness.serve import deploy, serve_session
    from lookalike import cli
    from lookalike.milvus.engines import serving
    from lookalike.settings import load_settings

    os.environ.update({"LOOKALIKE_MILVUS__URI": str(work / "quality.db"),
                       "LOOKALIKE_STORE__LOCAL_DIR": str(work / "images")})
    runs = {name: (name, {}) for name in sets}
    runs.update({name: v for name, v in SERVICE_VARIANTS.items() if v[0] in sets})
    out = {}
    settings = load_settings()
    with serving(settings.milvus), serve_session() as base:
        for n, (name, (set_name, env)) in enumerate(runs.items()):
            os.environ.update({**env, "LOOKALIKE_MILVUS__COLLECTION": f"quality_{n}"})
            deploy(load_settings(), base)
            report = work / f"eval-{n}.json"
            cli.main(["eval", str(sets[set_name]), "--url", base, "--copies", str(args.copies),
                      "--report", str(report)])
            out[name] = json.loads(report.read_text())
            for key in [*env, "LOOKALIKE_MILVUS__COLLECTION"]:
                os.environ.pop(key)
    return out


def variants(base, axis: str, values: list[str]) -> dict[str, object]:
    """``base`` settings with one field changed (``axis``: ``images.fit``, ``model.pooling``)."""
    section, field = axis.split(".")
    return {value: base.with_overrides(**{section: {field: value}}) for value in values}


def exact_quality(sets: dict[str, Path], settings_by_name: dict[str, object], copies: int) -> dict[str, dict]:
    """Exact-search quality of each set under each settings, everything else unchanged:
    {set: {name: evaluate(...)}} (P@1, P@10, mAP@10, copy recall per edit)."""
    from lookalike.embedding.encoder import ImageEncoder
    from lookalike.quality.evaluation import bytes_embedder, evaluate, load_gallery
    from lookalike.indexing.sources import iter_folder

    out: dict[str, dict] = {}
    for name, settings in settings_by_name.items():
        encoder = ImageEncoder(settings.model).load()
        for set_name, folder in sets.items():
            gallery = load_gallery(list(iter_folder(folder)))
            gallery.vectors, kept = embed_files(gallery.paths, encoder, settings.images)
            assert len(kept) == len(gallery.paths), f"{set_name}: {len(gallery.paths) - len(kept)} did not decode"
            out.setdefault(set_name, {})[name] = evaluate(
                gallery, search=None, embed=bytes_embedder(encoder, settings.images), copies=copies)
            m = out[set_name][name]["exact"]
            print(f"  {set_name} {name}: P@10 {m['p_at_10']:.3f}, mAP@10 {m['map_at_10']:.3f}", flush=True)
    return out


def preprocessing(sets: dict[str, Path], args) -> dict[str, dict[str, dict]]:
    """Exact-search quality per ``images.fit``."""
    from lookalike.settings import load_settings

    return exact_quality(sets, variants(load_settings(), "images.fit", args.fits), args.copies)


def descriptors(sets: dict[str, Path], args) -> dict[str, dict[str, dict]]:
    """Exact-search quality per ``model.pooling`` (copy detection and class retrieval together)."""
    from lookalike.settings import load_settings

    return exact_quality(sets, variants(load_settings(), "model.pooling", args.poolings), args.copies)


def embedded_gallery(folder: Path):
    """The labelled tree embedded once with the configured settings, its bytes -> vectors
    function, and the encoder and settings (for region vectors): what the region and duplicate
    measurements share."""
    from lookalike.embedding.encoder import ImageEncoder
    from lookalike.quality.evaluation import bytes_embedder, load_gallery
    from lookalike.settings import load_settings
    from lookalike.indexing.sources import iter_folder

    settings = load_settings()
    encoder = ImageEncoder(settings.model).load()
    gallery = load_gallery(list(iter_folder(folder)))
    gallery.vectors, _ = embed_files(gallery.paths, encoder, settings.images)
    return gallery, bytes_embedder(encoder, settings.images), encoder, settings


# Region layouts compared (model.regions): side fractions x steps per side, and the margin a
# part's score counts below a whole image's (None: the configured one).
REGION_LAYOUTS = {"none": None, "0.5 x 2": ([0.5], 2, None), "0.5 x 3": ([0.5], 3, None),
                  "0.5 x 3, no margin": ([0.5], 3, 0.0), "0.5 x 4": ([0.5], 4, None), "0.7 x 2": ([0.7], 2, None),
                  "0.5 + 0.7 x 2": ([0.5, 0.7], 2, None)}


def regions(embedded, args) -> dict[str, dict]:
    """Search by a part of a gallery image, per region layout (``model.regions``): recall@1 /
    @5 of the whole image for random boxes of 30-70 % of each side and for boxes of exactly
    50 %, exact search over each image's whole and region rows (the best row per image, as the
    catalog merges them, a part's score less the margin). Beside it, what the layout does to
    whole-image search: copy recall@1
    per edit kind and P@10 / mAP@10 with the same rows; and its cost (rows and vector RAM per
    image, region vectors made per second here)."""
    import random
    import time

    from lookalike.quality.evaluation import (EDITS, copy_recall, distinct, edited_copies, pick, random_crop,
                                      retrieval_metrics)
    from lookalike.embedding.images import prepare_regions
    from lookalike.embedding.regions import boxes
    from lookalike.settings import RegionSettings

    gallery, embed, encoder, settings = embedded
    datas = [Path(p).read_bytes() for p in gallery.paths]
    layouts = {name: boxes(RegionSettings(enabled=True, sides=v[0], steps=v[1])) if v else []
               for name, v in REGION_LAYOUTS.items()}
    margins = {name: settings.model.regions.margin if not v or v[2] is None else v[2]
               for name, v in REGION_LAYOUTS.items()}
    every = list({str(b): b for boxes_ in layouts.values() for b in boxes_}.values())
    started = time.perf_counter()
    parts = np.stack([encoder.encode(prepare_regions(d, encoder.input_size, settings.images, every)) for d in datas])
    per_s = round(len(datas) * len(every) / (time.perf_counter() - started), 1)
    column = {str(b): i for i, b in enumerate(every)}
    chosen = pick(args.copies, len(gallery.ids), 2)
    held_once = distinct(gallery.vectors, settings.duplicates.threshold)
    queries = {}  # {name: (query vectors, the gallery image each must find)}
    for name, (low, high), among in [("random 30-70 %", (0.3, 0.7), None), ("50 %", (0.5, 0.5), None),
                                     ("50 %, held once", (0.5, 0.5), held_once)]:
        rng = random.Random(7)
        want = chosen if among is None else [among[j] for j in pick(args.copies, len(among), 2)]
        vectors = embed([random_crop(datas[i], rng, low, high) for i in want]) if want else gallery.vectors[:0]
        queries[name] = (vectors, want)
    originals = pick(args.copies, len(gallery.ids), 1)
    copies = [edited_copies(datas[i]) for i in originals]
    edits = {kind: embed([c[kind] for c in copies]) for kind in EDITS}
    labels = list(gallery.labels)
    sizes = {label: labels.count(label) for label in set(labels)}
    out = {}
    for name, layout in layouts.items():
        rows = np.concatenate([gallery.vectors[:, None], parts[:, [column[str(b)] for b in layout]]], axis=1)
        less = np.array([0.0] + [margins[name]] * len(layout), np.float32)

        def best(q: np.ndarray) -> np.ndarray:  # each image's best row: (queries, images)
            return (np.einsum("qd,nrd->qnr", q, rows) - less).max(axis=2)

        def ranks(scores: np.ndarray, want: list[int]) -> list[int | None]:
            order = np.argsort(-scores, axis=1)[:, :5].tolist()
            return [row.index(i) + 1 if i in row else None for i, row in zip(want, order)]

        r = {"rows_per_image": rows.shape[1], "vector_kb_per_image": round(rows.shape[1] * rows.shape[2] * 4 / 1024, 1),
             "margin": margins[name] if layout else None}
        for q_name, (q, want) in queries.items():
            r[q_name] = copy_recall(ranks(best(q), want))
        r["copies"] = {kind: copy_recall(ranks(best(q), originals))["recall_at_1"] for kind, q in edits.items()}
        whole = best(gallery.vectors)
        np.fill_diagonal(whole, -np.inf)
        top = np.argsort(-whole, axis=1)[:, :10]
        m = retrieval_metrics(labels, [[labels[j] for j in row] for row in top], sizes)
        r["p_at_10"], r["map_at_10"] = m["p_at_10"], m["map_at_10"]
        out[name] = r
        print(f"  regions {name}: part r@1 {r['random 30-70 %']['recall_at_1']:.3f} / 50 % "
              f"{r['50 %']['recall_at_1']:.3f}; P@10 {r['p_at_10']:.3f}; crop_70 {r['copies'].get('crop_70')}",
              flush=True)
    out["region_vectors_per_s"] = per_s
    return out


def planted_duplicates(embedded, args) -> dict:
    """Near-duplicate groups on the gallery plus planted copies of ``args.copies`` originals (each
    edit kind, resized, re-encoded), through ``lookalike.quality.duplicates.scan`` with exact neighbours.
    Pairs in one group count as found; pairs of one original's family are the truth, so the
    originals are drawn from the gallery's distinct images (none of its other images at the
    lowest threshold or more: openclipart holds many recoloured variants of one drawing, which
    would make a copy's "false" links true). Precision counts the pairs that hold a planted
    copy; the groups of the gallery's own near-duplicates are counted apart."""
    from itertools import combinations

    from lookalike.quality import duplicates
    from lookalike.quality.evaluation import PLANTED, distinct, edited_copies, pick
    from lookalike.settings import load_settings

    settings = load_settings()
    gallery, embed = embedded[:2]
    held_once = distinct(gallery.vectors, min(args.thresholds))
    originals = [held_once[i] for i in pick(args.copies, len(held_once), 3)]
    families, datas, kinds = [], [], []
    for i in originals:
        copies = edited_copies(Path(gallery.paths[i]).read_bytes(), PLANTED)
        family = [i]
        for kind, data in copies.items():
            family.append(len(gallery.ids) + len(datas))
            datas.append(data)
            kinds.append(kind)
        families.append(family)
    vectors = np.concatenate([gallery.vectors, embed(datas)])
    ids = list(range(len(vectors)))
    truth = {pair for family in families for pair in combinations(sorted(family), 2)}
    family_of = {member: f[0] for f in families for member in f}

    def search(queries, k):  # exact neighbours: what the index approximates
        sims = queries @ vectors.T
        top = np.argsort(-sims, axis=1)[:, :k]
        return [[(int(j), float(sims[r, j])) for j in row] for r, row in enumerate(top)]

    out = {"images": len(vectors), "planted": len(datas), "distinct_originals": len(held_once), "by_threshold": {}}
    for threshold in args.thresholds:
        scan = duplicates.scan(((ids[i:i + 256], vectors[i:i + 256]) for i in range(0, len(ids), 256)), search,
                               threshold=threshold, neighbours=settings.duplicates.neighbours, total=len(ids))
        found = {pair for g in scan.groups for pair in combinations(sorted(g.ids), 2)
                 if max(pair) >= len(gallery.ids)}  # pairs that hold a planted copy
        hit = found & truth
        grouped = {i: g for g in scan.groups for i in g.ids}
        per_kind: dict[str, list[bool]] = {}
        for n, kind in enumerate(kinds):
            member = len(gallery.ids) + n
            together = member in grouped and family_of[member] in grouped[member].ids
            per_kind.setdefault(kind, []).append(together)
        out["by_threshold"][str(threshold)] = {
            "groups": len(scan.groups),
            "gallery_groups": sum(1 for g in scan.groups if max(g.ids) < len(gallery.ids)),
            "precision": round(len(hit) / max(1, len(found)), 4),
            "recall": round(len(hit) / len(truth), 4),
            "copies_with_original": {k: round(float(np.mean(v)), 4) for k, v in per_kind.items()}}
        r = out["by_threshold"][str(threshold)]
        print(f"  duplicates at {threshold}: precision {r['precision']:.3f}, recall {r['recall']:.3f}", flush=True)
    return out


def report(results: Results, service: dict, fits: dict, descriptors: dict | None = None,
           regions: dict | None = None, duplicates: dict | None = None) -> None:
    rows = []
    for name, r in service.items():
        for how in ("index", "exact"):
            m, t = r[how], r.get("search_ms", {}) if how == "index" else {}
            rows.append({"set": name, "images": r["gallery"], "classes": r["classes"],
                         "search": "service (HNSW, HTTP)" if how == "index" else "exact, same vectors",
                         "p1": m["p_at_1"], "p10": m["p_at_10"], "map10": m["map_at_10"],
                         "p50": t.get("p50"), "p99": t.get("p99")})
    if rows:
        results.section("Retrieval quality (leave-one-out: every image a query)",
                        "Search p50 / p99: the service's own time to search Milvus per query (`timings.search_ms`), "
                        "over every query of the run.\n\n" + markdown_table(
                            rows, ["set", "images", "classes", "search", "p1", "p10", "map10", "p50", "p99"],
                            ["set", "images", "classes", "search", "P@1", "P@10", "mAP@10", "search p50 ms",
                             "search p99 ms"]))
        copies = []
        for name, r in service.items():
            once = r.get("distinct", {})
            once = {**once.get("copies", {}), **once.get("parts", {})}
            for kind, c in {**r.get("copies", {}), **r.get("parts", {})}.items():
                d = once.get(kind, {"index": {}, "exact": {}})
                copies.append({"set": name, "edit": kind, "r1": c["index"]["recall_at_1"],
                               "r5": c["index"]["recall_at_5"], "r1x": c["exact"]["recall_at_1"],
                               "r5x": c["exact"]["recall_at_5"], "d1": d["index"].get("recall_at_1"),
                               "d5": d["index"].get("recall_at_5"), "d1x": d["exact"].get("recall_at_1")})
        results.section("Copy detection (edited copies, not in the gallery, must find their original)",
                        "`part_50`: a box of half of each side of a gallery image, at a random place; `part_30_70`: "
                        "of 30-70 %. Exact search is over the whole-image vectors alone; the service also "
                        "searches the region rows of a gallery that keeps them. \"Held once\": the same, the "
                        "originals drawn from images with no other gallery image at the near-duplicate threshold "
                        "(`duplicates.threshold`), for which the original is the one right answer.\n\n"
                        + markdown_table(copies, ["set", "edit", "r1", "r5", "r1x", "r5x", "d1", "d5", "d1x"],
                                         ["set", "edit", "recall@1 service", "recall@5 service", "recall@1 exact",
                                          "recall@5 exact", "held once: recall@1 service", "recall@5 service",
                                          "recall@1 exact"]))
        per_class = []
        for name, r in service.items():
            for label, p in sorted(r["index"]["per_class"].items(), key=lambda kv: kv[1]):
                per_class.append({"set": name, "class": label, "p10": p})
        results.section("Per-class P@10 (service), worst first", markdown_table(per_class, ["set", "class", "p10"],
                                                                                 ["set", "class", "P@10"]))
    _exact_section(results, fits, "images.fit", "Preprocessing: fit to the model's square input (exact search)")
    _exact_section(results, descriptors or {}, "model.pooling",
                   "Descriptors: pooling of the last feature map (exact search, the same weights)", per_edit=True)
    if fits:
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
    if regions:
        layouts = {k: v for k, v in regions.items() if isinstance(v, dict)}
        rows = [{"layout": name, "rows": r["rows_per_image"], "kb": r["vector_kb_per_image"], "margin": r["margin"],
                 "r1": r["random 30-70 %"]["recall_at_1"], "r5": r["random 30-70 %"]["recall_at_5"],
                 "h1": r["50 %"]["recall_at_1"], "h5": r["50 %"]["recall_at_5"],
                 "d1": r["50 %, held once"]["recall_at_1"], "d5": r["50 %, held once"]["recall_at_5"], "p10": r["p_at_10"],
                 "map10": r["map_at_10"], **r["copies"]} for name, r in layouts.items()]
        kinds = list(next(iter(layouts.values()))["copies"])
        results.section(
            "Region search: a part of a gallery image finds the whole (exact search, best row per image)",
            "Each layout (`model.regions`: side fractions x steps per side) adds that many rows per image, cut "
            "out and embedded as a query box is; a search takes each image's best row, a part's score counting "
            "`margin` below a whole image's. Queries: a random box "
            "of 30-70 % of each side, or of exactly 50 %, of a gallery image; recall of that image (\"held once\": "
            "drawn from images with no other gallery image at the near-duplicate threshold). With the "
            "same rows: copy recall@1 per edit kind and P@10 / mAP@10 (whole gallery images as queries). "
            f"Region vectors made here at {regions.get('region_vectors_per_s')} per second.\n\n"
            + markdown_table(rows, ["layout", "rows", "kb", "margin", "r1", "r5", "h1", "h5", "d1", "d5", "p10", "map10",
                                    *kinds],
                             ["layout", "rows / image", "vector KB / image", "margin", "30-70 % box: recall@1", "recall@5",
                              "50 % box: recall@1", "recall@5", "50 %, image held once: recall@1", "recall@5",
                              "P@10", "mAP@10", *kinds]))
    if duplicates:
        rows = [{"threshold": t, **{k: v for k, v in r.items() if k != "copies_with_original"},
                 **{f"with_{k}": v for k, v in r["copies_with_original"].items()}}
                for t, r in duplicates["by_threshold"].items()]
        kinds = list(next(iter(duplicates["by_threshold"].values()))["copies_with_original"])
        results.section(f"Near-duplicate groups: {duplicates['planted']} planted copies among {duplicates['images']} "
                        "images (exact neighbours)", markdown_table(
                            rows, ["threshold", "groups", "gallery_groups", "precision", "recall",
                                   *[f"with_{k}" for k in kinds]],
                            ["threshold", "groups", "of the gallery's own", "pair precision", "pair recall",
                             *[f"{k}: with its original" for k in kinds]]))


def _exact_section(results: Results, by_set: dict, setting: str, title: str, per_edit: bool = False) -> None:
    rows = []
    for name, by_value in by_set.items():
        for value, r in by_value.items():
            c = r.get("copies", {})
            row = {"set": name, "value": value, "p1": r["exact"]["p_at_1"], "p10": r["exact"]["p_at_10"],
                   "map10": r["exact"]["map_at_10"],
                   "copy_r1": round(float(np.mean([v["exact"]["recall_at_1"] for v in c.values()])), 4) if c else None}
            if per_edit:
                row.update({kind: v["exact"]["recall_at_1"] for kind, v in c.items()})
            rows.append(row)
    if rows:
        edits = list(EDIT_KINDS) if per_edit else []
        results.section(title, markdown_table(rows, ["set", "value", "p1", "p10", "map10", "copy_r1", *edits],
                                              ["set", setting, "P@1", "P@10", "mAP@10", "copy recall@1 (mean)",
                                               *edits]))


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=100, help="originals edited per set")
    parser.add_argument("--fits", default="pad,crop,stretch")
    parser.add_argument("--poolings", default="avg,gem", help="model.pooling values compared")
    parser.add_argument("--thresholds", default="0.8,0.82,0.85,0.88,0.9",
                        help="near-duplicate thresholds measured on planted copies")
    parser.add_argument("--per-class", type=int, default=40, help="openclipart images per class")
    parser.add_argument("--fashion-per-class", type=int, default=100)
    parser.add_argument("--skip-service", action="store_true", help="only the in-process (exact) comparisons")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.fits = args.fits.split(",") if args.fits else []
    args.poolings = args.poolings.split(",") if args.poolings else []
    args.thresholds = [float(t) for t in args.thresholds.split(",")] if args.thresholds else []
    results = Results("quality", args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    sets = datasets(args)
    work = Path(tempfile.mkdtemp(prefix="lookalike-quality-"))
    try:
        service = {} if args.skip_service else through_service(sets, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.add("service", service)
    fits = preprocessing(sets, args) if args.fits else {}
    results.add("preprocessing", fits)
    pooling = descriptors(sets, args) if args.poolings else {}
    results.add("descriptors", pooling)
    embedded = embedded_gallery(sets["openclipart"])  # once for both measurements
    parts = regions(embedded, args)
    results.add("regions", parts)
    planted = planted_duplicates(embedded, args) if args.thresholds else {}
    results.add("duplicates", planted)
    report(results, service, fits, pooling, parts, planted)
    results.write()
    return results


if __name__ == "__main__":
    main()
