"""The in-process commands: index, search, eval, status, duplicates, config, gallery, migrate,
models (each opens what it needs of the core and closes it)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from lookalike.settings import Settings

log = logging.getLogger("lookalike")


def _open_core(settings: Settings):
    from lookalike.milvus.engines import gallery_catalog
    from lookalike.embedding.encoder import ImageEncoder
    from lookalike.storage.store import make_store

    encoder = ImageEncoder(settings.model)
    catalog = gallery_catalog(settings, shared=False)
    return encoder, catalog, make_store(settings.store)


def cmd_index(args, settings: Settings) -> int:
    from lookalike.indexing.indexer import index_items
    from lookalike.milvus.engines import choose_for_ingest
    from lookalike.embedding.models import get_model
    from lookalike.indexing.sources import Source

    source = Source.parse(args.source)
    items = list(source.items(settings))
    choose_for_ingest(settings.milvus, len(items), get_model(settings.model).dim)
    encoder, catalog, store = _open_core(settings)
    encoder.load()
    log.info("indexing %s with %s (%s, %s) into %s", source, encoder.spec.name, encoder.device, encoder.precision,
             catalog.uri)
    report = index_items(items, settings, encoder=encoder, catalog=catalog, store=store,
                         read=source.reader(settings), in_store=source.in_store(settings),
                         progress=lambda r: log.info("... %d seen, %d written", r.total, r.rows_written))
    catalog.close()
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    for skipped in report.skipped:
        log.warning("skipped %s: %s (%s)", skipped["path"], skipped["code"], skipped["message"])
    print(report.summary())
    return 0


def cmd_search(args, settings: Settings) -> int:
    from lookalike import query
    from lookalike.embedding.images import Box

    try:
        box = Box.parse(args.box) if args.box else None
    except ValueError as exc:
        print(f"--box: {exc}", file=sys.stderr)
        return 2
    if (args.image is None) == (args.text is None) or (args.text is not None and box):
        print("give an image file or --text (and --box only with an image)", file=sys.stderr)
        return 2
    encoder, catalog, store = _open_core(settings)
    path = query.local(encoder, catalog, store, settings.images)
    asked = query.Query(args.k, args.filter, box=box)
    try:  # a model without words, a word it does not know: main() says so, as for any LookalikeError
        answer = query.run(path.by_text(args.text, asked) if args.text is not None
                           else path.by_image(Path(args.image).read_bytes(), asked))
    finally:
        catalog.close()
    print(json.dumps([{**h, "id": str(h["id"])} for h in answer.hits], indent=2))
    return 0


def cmd_eval(args, settings: Settings) -> int:
    """Index a labelled folder tree, then measure retrieval quality through the index (the
    service over HTTP with --url, else the configured Milvus in-process) and exactly."""
    from lookalike.quality.evaluation import bytes_embedder, evaluate, http_search, load_gallery, report_text
    from lookalike.indexing.indexer import index_items
    from lookalike.indexing.sources import iter_folder

    items = list(iter_folder(args.dir))
    encoder, catalog, store = _open_core(settings)
    encoder.load()
    report = index_items(items, settings, encoder=encoder, catalog=catalog, store=store)
    log.info("gallery: %s", report.summary())
    gallery = load_gallery(items)
    if len(gallery.class_sizes) < 2:
        print("lookalike eval needs a labelled tree: DIR/<label>/<image>, two labels or more", file=sys.stderr)
        return 2
    found = {e.id: e.embedding for start in range(0, len(gallery.ids), 500)
             for e in catalog.get(gallery.ids[start:start + 500], with_vectors=True)}
    gallery.vectors = np.stack([found[i] for i in gallery.ids])
    embed = bytes_embedder(encoder, settings.images)
    seconds: list[float] = []  # the index's own time per search
    search = (http_search(args.url, args.timeout, seconds) if args.url
              else _index_searcher(catalog, encoder, store, settings, seconds))
    result = evaluate(gallery, search=search, embed=embed, queries=args.queries, copies=args.copies, k=args.k,
                      distinct_at=settings.duplicates.threshold)
    result["through"] = args.url or f"in-process: {catalog.uri}"
    if seconds:
        p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
        result["search_ms"] = {"searches": len(seconds), "p50": round(float(p50), 2), "p99": round(float(p99), 2)}
    catalog.close()
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(result, indent=2))
    print(report_text(result))
    return 0


def _index_searcher(catalog, encoder, store, settings: Settings, seconds: list[float]):
    """Search in-process, by the query path; ``seconds`` gets the catalog's time per search."""
    from lookalike import query

    path = query.local(encoder, catalog, store, settings.images)

    def search(data: bytes, k: int):
        answer = query.run(path.by_image(data, query.Query(k)))
        seconds.append(answer.timings["search_ms"] / 1000)
        return [(h["id"], h["label"]) for h in answer.hits]

    return search


def cmd_status(args, settings: Settings) -> int:
    from lookalike.embedding.models import get_model

    _, catalog, store = _open_core(settings)
    spec = get_model(settings.model)
    status = {"milvus": catalog.describe(), "store": store.describe(),
              "model": {"name": spec.name, "dim": spec.dim, "weights": settings.model.weights or spec.weights_source}}
    catalog.close()
    print(json.dumps(status, indent=2))
    if status["milvus"].get("warning"):
        log.warning(status["milvus"]["warning"])
    return 0 if status["milvus"]["healthy"] and status["store"]["healthy"] else 1


def cmd_duplicates(args, settings: Settings) -> int:
    """Groups of near-duplicate images, largest first, as JSON; progress on stderr."""
    from lookalike.quality import duplicates

    _, catalog, store = _open_core(settings)

    def progress(done: int, total: int) -> None:
        print(f"\rscanned {done:,} of {total:,} images", end="", file=sys.stderr, flush=True)

    found = duplicates.find(catalog, settings.duplicates, threshold=args.threshold, progress=progress)
    print(file=sys.stderr)
    groups = found.described(catalog, args.offset, args.limit)
    catalog.close()
    for group in groups:
        group["images"] = [{**i, "id": str(i["id"]), "url": store.url(i["key"])} for i in group["images"]]
    print(json.dumps({**found.summary(), "offset": args.offset, "items": groups}, indent=2))
    log.info("%d groups, %d images that could go (threshold %.3f, %d images, %.1f s)", len(found.groups),
             found.duplicates, found.threshold, found.images, found.seconds)
    return 0


def cmd_config(args, settings: Settings) -> int:
    """The settings in effect (or the code's defaults alone), as YAML a config file takes;
    secrets left out (they stay in the environment)."""
    import yaml

    from lookalike.settings import defaults, without_secrets

    shown = defaults() if args.defaults else settings
    print("# secrets (api.api_key, milvus.token, store.s3.access_key / secret_key) are not shown: "
          "LOOKALIKE_* environment variables")
    print(yaml.safe_dump(without_secrets(shown), sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_gallery(args, settings: Settings) -> int:
    from lookalike.quality.gallery import build_gallery

    counts = build_gallery(args.out, source=args.source, per_class=args.per_class)
    print(f"{sum(counts.values())} images in {len(counts)} classes under {args.out}")
    return 0


def cmd_migrate(args, settings: Settings) -> int:
    from lookalike.milvus.migrate import migrate

    result = migrate(settings, args.to, sample=args.sample,
                     progress=lambda n: n % 10_000 == 0 and log.info("... %d copied", n))
    print(json.dumps(result, indent=2))
    if args.to == "local":
        print(f"from now on this data directory uses the local Milvus server ({settings.milvus.engine_file}); "
              f"the Lite copy stays in {settings.milvus.uri} until you delete it")
    else:
        print(f"now point Lookalike at it: LOOKALIKE_MILVUS__URI={args.to} (or milvus.uri in the settings file)")
    return 0


def cmd_models(args, settings: Settings) -> int:
    """``export``: an open_clip model in immich's folder layout; ``check``: load the configured
    model and time one batch of each tower."""
    import time

    if args.action == "export":
        from lookalike.embedding.clip_export import export_open_clip

        if not args.name or not args.out:
            print("lookalike models export NAME --pretrained TAG_OR_FILE --out DIR", file=sys.stderr)
            return 2
        folder = export_open_clip(args.name, args.pretrained, args.out)
        print(f"wrote {folder}; serve it with model.name immich-clip, model.weights {folder}")
        return 0
    from lookalike.embedding.encoder import ImageEncoder

    encoder = ImageEncoder(settings.model).load()
    batch = max(1, min(settings.model.batch_size, 16))
    images = np.random.default_rng(0).integers(0, 256, (batch, encoder.input_size, encoder.input_size, 3), np.uint8)
    encoder.encode(images)  # the first run initialises the graph; time the second
    started = time.perf_counter()
    encoder.encode(images)
    info = {**encoder.describe(), "towers": ["image", "text"] if encoder.has_text else ["image"],
            "load_seconds": round(encoder.load_seconds, 2),
            "image_batch": {"size": batch, "ms": round((time.perf_counter() - started) * 1000, 1)}}
    if encoder.has_text:
        texts = ["a photo of a red bicycle"] * batch
        encoder.encode_text(texts)
        started = time.perf_counter()
        encoder.encode_text(texts)
        info["text_batch"] = {"size": batch, "ms": round((time.perf_counter() - started) * 1000, 1)}
    print(json.dumps(info, indent=2))
    return 0
