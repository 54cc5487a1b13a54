"""``lookalike``: serve, index, search, eval, models, status, gallery, local-milvus, migrate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from lookalike.settings import CONFIG_ENV, Settings, load_settings

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


def cmd_local_milvus(args, settings: Settings) -> int:
    from lookalike.milvus.engines import engine, local_service

    service = local_service(settings.milvus)
    if service is None:
        print(f"nothing local to run: Milvus is {engine(settings.milvus)} at {settings.milvus.uri}"
              + (" (milvus.lite_server is off)" if settings.milvus.is_lite else ""), file=sys.stderr)
        return 2
    if args.action == "start":  # started by hand: it runs until stopped by hand
        uri, started = service.start(settings.milvus.local_start_timeout_s, idle_stop_s=0)
        print(f"{service.what}: {'started' if started else 'already running'} at {uri}")
    elif args.action == "stop":
        print(f"{service.what}: {'stopped' if service.stop() else 'not running'}")
    else:
        print(f"{service.what}: {service.running_uri() or 'not running'}")
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


def serve_config_with_host(serve_config: str, host: str | None) -> str:
    """The Serve config to run: the file as it is, or (``--http-host``, e.g. 0.0.0.0 inside a
    container) a copy of it that listens on ``host``."""
    import tempfile

    import yaml

    if not host:
        return serve_config
    config = yaml.safe_load(Path(serve_config).read_text()) or {}
    config.setdefault("http_options", {})["host"] = host
    handle, path = tempfile.mkstemp(prefix="serve-", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(config, out, sort_keys=False)
    return path


def open_writes_refusal(serve_config: str, settings: Settings, host: str | None = None) -> str | None:
    """Why the service must not start: listening beyond this machine (the config's host, or
    ``host`` given instead) with no API key would leave nothing but the peer-address check between
    the network and the write routes."""
    import ipaddress

    import yaml

    if host is None:
        host = str((yaml.safe_load(Path(serve_config).read_text()) or {}).get("http_options", {})
                   .get("host", "127.0.0.1"))
    else:
        serve_config = "the service (--http-host)"
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if local or settings.api.api_key.get_secret_value():
        return None
    return (f"{serve_config} listens on {host}, beyond this machine, and no API key is set: set api.api_key "
            "(LOOKALIKE_API__API_KEY) to serve the write routes there, or listen on 127.0.0.1")


def cmd_serve(args, settings: Settings) -> int:
    """`serve run` the Serve config, with the shared Milvus Lite server up while it runs (and
    stopped with it, if this command started it)."""
    from lookalike.embedding.models import get_model
    from lookalike.milvus.engines import serving
    from lookalike.ray_env import use_local_ray_env

    refusal = open_writes_refusal(args.serve_config, settings, args.http_host)
    if refusal:
        print(f"lookalike: {refusal}", file=sys.stderr)
        return 2
    get_model(settings.model)  # a model folder with a missing or broken file: refused here, naming it
    serve_config = serve_config_with_host(args.serve_config, args.http_host)

    env = use_local_ray_env(dict(os.environ))
    if args.config:
        env[CONFIG_ENV] = str(Path(args.config).resolve())
    with serving(settings.milvus) as uri:
        if uri:
            log.info("the local Milvus for %s is served at %s", settings.milvus.uri, uri)
        serve_bin = Path(sys.executable).with_name("serve")
        # `serve run` shuts Serve and its local Ray down on SIGINT; give it SIGINT's default
        # handling even if ours is ignored (started in the background), and forward TERM/INT.
        proc = subprocess.Popen([str(serve_bin), "run", serve_config], env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        stopping = []

        def forward(signum, frame):
            stopping.append(signum)
            proc.send_signal(signal.SIGINT)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        code = proc.wait()
    if serve_config != args.serve_config:
        Path(serve_config).unlink(missing_ok=True)
    return 0 if stopping else code  # asked to stop: a clean exit, whatever `serve run` says


def cmd_reembed(args, settings: Settings) -> int:
    """Re-embed the gallery under the configured model: the Ray Data job of ``python -m ingest
    --reembed``, run as its own process (the command line never imports the Ray layers)."""
    from lookalike.embedding.models import get_model

    get_model(settings.model)  # a broken model folder: refused here, naming the file
    env = dict(os.environ)
    if args.config:
        env[CONFIG_ENV] = str(Path(args.config).resolve())
    command = [sys.executable, "-m", "ingest", "--reembed"] + (["--report", args.report] if args.report else [])
    return subprocess.call(command, env=env)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description="Reverse image search: index, serve, search.")
    parser.add_argument("--config", help=f"settings YAML (default ${CONFIG_ENV} or config/lookalike.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the Ray Serve application (HTTP API and web page)")
    p.add_argument("--serve-config", default="config/serve.yaml", help="Serve config file")
    p.add_argument("--http-host", help="listen on this address instead of the config's (0.0.0.0 in a container; "
                                       "beyond loopback an API key is required)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("index", help="index a folder tree (<label>/<file>), a list file or s3://bucket/prefix, "
                                     "in-process (for large sets: python -m ingest)")
    p.add_argument("source")
    p.add_argument("--report", help="write the JSON report here")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("reembed", help="re-embed the gallery's stored originals under the configured model into "
                                       "its next version, then switch to it; searches go on meanwhile")
    p.add_argument("--report", help="write the JSON report here")
    p.set_defaults(func=cmd_reembed)

    p = sub.add_parser("search", help="search the gallery for an image file, or by words (--text)")
    p.add_argument("image", nargs="?")
    p.add_argument("--text", help="search by these words instead (a model with a text tower)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--filter", help="only this label")
    p.add_argument("--box", help="search by this part of the image only: x,y,w,h in pixels, or fractions "
                                 "(0.25,0.1,0.5,0.5)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("duplicates", help="groups of near-duplicate images in the library, largest first (JSON)")
    p.add_argument("--threshold", type=float, help="cosine similarity at least (default: duplicates.threshold)")
    p.add_argument("--offset", type=int, default=0, help="skip this many groups")
    p.add_argument("--limit", type=int, default=50, help="groups to print")
    p.set_defaults(func=cmd_duplicates)

    p = sub.add_parser("eval", help="retrieval quality over a labelled folder tree (P@1, P@10, mAP@10, "
                                    "copy detection), through the index and exactly")
    p.add_argument("dir", help="DIR/<label>/<image>; indexed first (already present images are skipped)")
    p.add_argument("--url", help="search through the running service (e.g. http://127.0.0.1:8000); "
                                 "default: the configured Milvus in-process")
    p.add_argument("--queries", type=int, default=0, help="query this many images (0: every one)")
    p.add_argument("--copies", type=int, default=100,
                   help="edited copies and parts of this many images (0: none)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--report", help="write the JSON report here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="check: load the configured model and time one batch of each tower; "
                                      "export: write an open_clip model in immich's folder layout")
    p.add_argument("action", choices=["check", "export"])
    p.add_argument("name", nargs="?", help="export: the open_clip model (ViT-B-32, ViT-B-16-SigLIP, ...)")
    p.add_argument("--pretrained", default="", help="export: an open_clip weights tag (openai, laion2b_s34b_b79k, "
                                                    "...) or a local checkpoint file")
    p.add_argument("--out", help="export: the new folder")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("status", help="backend health, entity count, index, model")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("config", help="the settings in effect as YAML (secrets left out); --defaults: the code's")
    p.add_argument("--defaults", action="store_true", help="the defaults alone (no file, no environment)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("gallery", help="build the sample gallery from Debian's openclipart-png")
    p.add_argument("--source", default="/usr/share/openclipart/png")
    p.add_argument("--out", default="data/gallery")
    p.add_argument("--per-class", type=int, default=40)
    p.set_defaults(func=cmd_gallery)

    p = sub.add_parser("local-milvus", help="the local Milvus process this data directory uses (the shared "
                                            "Milvus Lite server, or the local Milvus server)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=cmd_local_milvus)

    p = sub.add_parser("migrate", help="copy the gallery (ids, vectors, fields; no re-embedding) to another Milvus "
                                       "and check it")
    p.add_argument("--to", required=True, help="`local` (the local Milvus server) or a server URI")
    p.add_argument("--sample", type=int, default=200, help="vectors compared after the copy")
    p.set_defaults(func=cmd_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise (eval sends thousands)
    from pydantic import ValidationError

    from lookalike.errors import LookalikeError

    try:
        settings = load_settings(args.config)
    except ValidationError as exc:  # say which setting and why, not pydantic's traceback
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        print(f"lookalike: invalid settings: {where}: {first['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    try:
        return args.func(args, settings)
    except (LookalikeError, FileNotFoundError) as exc:
        detail = getattr(exc, "detail", "")
        print(f"lookalike: {exc}" + (f" ({detail})" if detail else ""), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
