"""The original design, rebuilt for side-by-side measurement only (never part of the service).

One process, one thread per request (like Flask's threaded development server, which the
original ran): each ``POST /search/`` decodes its upload, embeds it alone with torch in fp32
(the original ran ResNet-50 per upload through Towhee), and asks Milvus for the top K. It uses
Lookalike's own preprocessing, model and Milvus collection, so that only the serving design
differs. The answer carries the same ``timings`` as Lookalike's search.

    python -m benchmarks.baseline_server --port 8100   # settings as for Lookalike (LOOKALIKE_*)
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lookalike.milvus.catalog import Catalog
from lookalike.embedding.encoder import ImageEncoder
from lookalike.errors import LookalikeError
from lookalike.embedding.images import prepare
from lookalike.milvus.engines import open_catalog
from lookalike.settings import load_settings
from lookalike.storage.store import make_store


def make_handler(settings, encoder: ImageEncoder, catalog: Catalog, store):
    limits = settings.images

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet, like a benchmark target should be
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/healthz":
                return self._send(200, {"ok": True})
            self._send(404, {"ok": False})

        def do_POST(self):
            started = time.perf_counter()
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/search/":
                return self._send(404, {"ok": False})
            try:
                request = json.loads(body)
                image = request["image"].split(",", 1)[-1]  # a data URL or plain base64
                k = int(request.get("k", 5))
                t = time.perf_counter()
                pixels = prepare(base64.b64decode(image), encoder.input_size, limits).pixels
                decode = time.perf_counter() - t
                t = time.perf_counter()
                vector = encoder.encode(pixels[None])
                embed = time.perf_counter() - t
                t = time.perf_counter()
                hits = catalog.search(vector, k)[0]
                search = time.perf_counter() - t
            except LookalikeError as exc:
                return self._send(exc.status, {"ok": False, "msg": exc.message})
            except (ValueError, KeyError, TypeError) as exc:
                return self._send(400, {"ok": False, "msg": str(exc)})
            answer = {"ok": True, **{f"image{i}": store.url(h.key) for i, h in enumerate(hits, start=1)}}
            answer["timings"] = {"decode_ms": decode * 1000, "embed_ms": embed * 1000, "search_ms": search * 1000,
                                 "total_ms": (time.perf_counter() - started) * 1000}
            self._send(200, answer)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    settings = load_settings()
    # The original's way: fp32, one image per forward pass.
    encoder = ImageEncoder(settings.model.model_copy(update={"runtime": "torch", "precision": "fp32",
                                                             "batch_size": 1})).load()
    catalog = open_catalog(settings.milvus, encoder.dim, shared=False)
    catalog.ensure_ready()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(settings, encoder, catalog,
                                                                        make_store(settings.store)))
    print(f"baseline (original design) on http://127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        catalog.close()


if __name__ == "__main__":
    main()
