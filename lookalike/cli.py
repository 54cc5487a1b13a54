"""``lookalike``: serve, index, search, status, gallery, lite-server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from .settings import CONFIG_ENV, Settings, load_settings

log = logging.getLogger("lookalike")


def _open_core(settings: Settings):
    from .catalog import Catalog
    from .encoder import ImageEncoder
    from .store import make_store

    encoder = ImageEncoder(settings.model)
    catalog = Catalog.open(settings.milvus, encoder.dim, shared=False)
    return encoder, catalog, make_store(settings.store)


def cmd_index(args, settings: Settings) -> int:
    from .indexer import index_items
    from .sources import Source

    source = Source.parse(args.source)
    encoder, catalog, store = _open_core(settings)
    encoder.load()
    log.info("indexing %s with %s (%s, %s) into %s", source, encoder.spec.name, encoder.device, encoder.precision,
             catalog.uri)
    report = index_items(source.items(settings), settings, encoder=encoder, catalog=catalog, store=store,
                         read=source.reader(settings),
                         progress=lambda r: log.info("... %d seen, %d indexed", r.total, r.indexed))
    catalog.close()
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    for skipped in report.skipped:
        log.warning("skipped %s: %s (%s)", skipped["path"], skipped["code"], skipped["message"])
    print(report.summary())
    return 0


def cmd_search(args, settings: Settings) -> int:
    from .catalog import label_filter
    from .images import prepare

    encoder, catalog, store = _open_core(settings)
    prepared = prepare(Path(args.image).read_bytes(), size=encoder.input_size, **settings.images.model_dump())
    hits = catalog.search(encoder.encode(prepared.pixels[None]), args.k, expr=label_filter(args.filter))[0]
    catalog.close()
    print(json.dumps([{**h.to_dict(), "id": str(h.id), "url": store.url(h.key)} for h in hits], indent=2))
    return 0


def cmd_status(args, settings: Settings) -> int:
    from .models import get_model

    _, catalog, store = _open_core(settings)
    spec = get_model(settings.model.name)
    status = {"milvus": catalog.describe(), "store": store.describe(),
              "model": {"name": spec.name, "dim": spec.dim, "weights": settings.model.weights or spec.weights_source}}
    catalog.close()
    print(json.dumps(status, indent=2))
    return 0 if status["milvus"]["healthy"] and status["store"]["healthy"] else 1


def cmd_gallery(args, settings: Settings) -> int:
    from .gallery import build_gallery

    counts = build_gallery(args.out, source=args.source, per_class=args.per_class)
    print(f"{sum(counts.values())} images in {len(counts)} classes under {args.out}")
    return 0


def cmd_lite_server(args, settings: Settings) -> int:
    from .lite_server import LiteServer

    if not settings.milvus.is_lite:
        print(f"milvus.uri is a server ({settings.milvus.uri}), not a Milvus Lite directory", file=sys.stderr)
        return 2
    server = LiteServer(settings.milvus.uri)
    if args.action == "start":
        uri, started = server.start(settings.milvus.lite_server_start_timeout_s)
        print(f"{'started' if started else 'already running'}: {uri}")
    elif args.action == "stop":
        print("stopped" if server.stop() else "not running")
    else:
        print(server.running_uri() or "not running")
    return 0


def cmd_serve(args, settings: Settings) -> int:
    """`serve run` the Serve config; own the shared Milvus Lite server while it runs."""
    from .lite_server import serving
    from .ray_env import use_local_ray_env

    env = use_local_ray_env(dict(os.environ))
    if args.config:
        env[CONFIG_ENV] = str(Path(args.config).resolve())
    with serving(settings.milvus.shared_lite_dir, settings.milvus.lite_server_start_timeout_s) as uri:
        if uri:
            log.info("Milvus Lite %s served at %s", settings.milvus.uri, uri)
        serve_bin = Path(sys.executable).with_name("serve")
        # `serve run` shuts Serve and its local Ray down on SIGINT; give it SIGINT's default
        # handling even if ours is ignored (started in the background), and forward TERM/INT.
        proc = subprocess.Popen([str(serve_bin), "run", args.serve_config], env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        stopping = []

        def forward(signum, frame):
            stopping.append(signum)
            proc.send_signal(signal.SIGINT)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        code = proc.wait()
    return 0 if stopping else code  # asked to stop: a clean exit, whatever `serve run` says


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description="Reverse image search: index, serve, search.")
    parser.add_argument("--config", help=f"settings YAML (default ${CONFIG_ENV} or config/lookalike.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the Ray Serve application (HTTP API and web page)")
    p.add_argument("--serve-config", default="config/serve.yaml", help="Serve config file")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("index", help="index a folder tree (<label>/<file>), a list file or s3://bucket/prefix, "
                                     "in-process (for large sets: python -m ingest)")
    p.add_argument("source")
    p.add_argument("--report", help="write the JSON report here")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search the gallery for an image file")
    p.add_argument("image")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--filter", help="only this label")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("status", help="backend health, entity count, index, model")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("gallery", help="build the sample gallery from Debian's openclipart-png")
    p.add_argument("--source", default="/usr/share/openclipart/png")
    p.add_argument("--out", default="data/gallery")
    p.add_argument("--per-class", type=int, default=40)
    p.set_defaults(func=cmd_gallery)

    p = sub.add_parser("lite-server", help="the shared local Milvus Lite server")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=cmd_lite_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .errors import LookalikeError

    try:
        return args.func(args, load_settings(args.config))
    except (LookalikeError, FileNotFoundError) as exc:
        print(f"lookalike: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
