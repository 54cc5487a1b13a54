"""Mixed load: clients searching, adding and deleting at once, against a running service.

    python -m benchmarks.mixed_load --url http://127.0.0.1:8000 [--clients 8] [--seconds 60] [--key KEY]

The driver is ``harness/mixed_load.py`` (what each client does, and what must hold after).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.mixed_load import run

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--key", help="the API key, if the service has one")
    parser.add_argument("--gallery", default="data/gallery", help="query images: DIR/<label>/<file>")
    args = parser.parse_args()
    if not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        parser.error("load is only sent to this machine (127.0.0.1)")
    queries = [p.read_bytes() for p in sorted(Path(args.gallery).glob("*/*"))[:64]]
    if not queries:
        parser.error(f"no images under {args.gallery}")
    result = run(args.url, queries, clients=args.clients, seconds=args.seconds, key=args.key)
    print(json.dumps(result, indent=2))
    ok = not result["server_errors"] and result["count_after"] - result["count_before"] == \
        result["created"] - result["deleted"]
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
