"""``lookalike``: serve, index, search, eval, models, status, gallery, local-milvus, migrate.

The parser and its entry point here; the commands in ``commands.py`` (in-process) and
``processes.py`` (those that run processes).
"""

from __future__ import annotations

import argparse
import logging
import sys

from lookalike.cli.commands import (cmd_config, cmd_duplicates, cmd_eval, cmd_gallery, cmd_index, cmd_migrate,
                                    cmd_models, cmd_search, cmd_status)
from lookalike.cli.processes import cmd_local_milvus, cmd_reembed, cmd_serve
from lookalike.settings import CONFIG_ENV, load_settings


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

