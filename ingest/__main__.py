"""python -m ingest SOURCE [options]
python -m ingest --reembed [options]

SOURCE: a folder tree (<label>/<image>), a list file (one path per line, optional TAB label),
or s3://bucket/prefix. --reembed: the gallery's own stored originals, embedded by the configured
model into the gallery's next version, which then takes its place (searches go on meanwhile).
Runs locally (starting Ray) or, under `ray job submit`, on the cluster in RAY_ADDRESS. Writes a
JSON report and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lookalike.errors import LookalikeError
from lookalike.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?")
    parser.add_argument("--reembed", action="store_true",
                        help="re-embed the gallery's stored originals under the configured model")
    parser.add_argument("--config", help="settings YAML (default $LOOKALIKE_CONFIG or config/lookalike.yaml)")
    parser.add_argument("--report", help="JSON report path (default: ingest.report_dir/ingest-<time>.json)")
    parser.add_argument("--limit", type=int, help="only the first N files of the listing")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (model.batch_size)")
    parser.add_argument("--stages", choices=["auto", "fused", "separate"],
                        help="read, embed and write in one actor pool or in three (ingest.stages, default "
                             "separate; auto: fused without GPUs)")
    parser.add_argument("--embed-actors", type=int,
                        help="embedding actors (default: one per GPU; without GPUs about 3 for every 4 free CPUs, "
                             "or one per free CPU fused)")
    parser.add_argument("--write-actors", type=int, help="upload + upsert actors (separate stages)")
    parser.add_argument("--include", help="comma-separated extensions to take, e.g. .jpg,.png")
    parser.add_argument("--exclude", help="comma-separated extensions to leave out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides: dict = {"model": {}, "ingest": {}}
    if args.batch_size:
        overrides["model"]["batch_size"] = args.batch_size
    if args.stages:
        overrides["ingest"]["stages"] = args.stages
    if args.embed_actors:
        overrides["ingest"]["embed_actors"] = args.embed_actors
    if args.write_actors:
        overrides["ingest"]["write_actors"] = args.write_actors
    if args.include:
        overrides["ingest"]["extensions"] = [e.strip() for e in args.include.split(",") if e.strip()]
    if args.exclude:
        overrides["ingest"]["exclude_extensions"] = [e.strip() for e in args.exclude.split(",") if e.strip()]

    if bool(args.source) == args.reembed:
        parser.error("give a SOURCE, or --reembed")
    from .pipeline import run_ingest, run_reembed

    try:
        settings = load_settings(args.config, overrides=overrides)
        if args.reembed:
            report = run_reembed(settings, report_path=args.report, progress=progress_bar())
        else:
            report = run_ingest(args.source, settings, report_path=args.report, limit=args.limit)
    except (LookalikeError, FileNotFoundError, ValueError) as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    print(f"ingest: {report.summary()}; report: {report.path}")
    return 0


def progress_bar():
    """A progress line on a terminal (rewritten in place), else one log line per tenth."""
    shown = [-1]

    def show(report, total: int) -> None:
        done = report.total
        if sys.stderr.isatty():
            filled = int(30 * done / max(total, 1))
            print(f"\rre-embedding [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end="", file=sys.stderr,
                  flush=True)
            if done >= total:
                print(file=sys.stderr)
        elif done * 10 // max(total, 1) > shown[0]:
            shown[0] = done * 10 // max(total, 1)
            logging.getLogger("ingest").info("re-embedded %d of %d", done, total)

    return show


if __name__ == "__main__":
    sys.exit(main())
