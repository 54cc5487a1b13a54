"""What a reader who is not an operator sees of the server's insides.

Operators (whoever may write: the API key, or this machine when there is none; see
``access.py``) get the status and every entry whole: the Milvus URI, the store's root, the
weights file, Ray node ids, and ``source`` as it was recorded (an absolute path on the server, a
bucket key, a URL). Anyone else gets what a client of a search service needs: health, counts,
the model and index, and ``source`` as a file name. The CLI (``lookalike status``) and the
service's log show everything to whoever runs them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

# Per part of the status: the fields anyone may read (an allow-list: a new field stays private
# until it is added here).
PUBLIC_STATUS_FIELDS = {
    "milvus": {"healthy", "error", "warning", "collection", "metric", "dim", "descriptor", "count", "searches",
               "search_seconds", "engine"},
    "model": {"healthy", "error", "name", "pooling", "dim", "input_size", "device", "gpu", "runtime", "precision",
              "loaded", "batch_sizes", "forward_seconds", "text"},
    "store": {"healthy", "error", "backend", "endpoint", "bucket"},
}


def public_status(status: dict) -> dict:
    out = dict(status)
    for part, fields in PUBLIC_STATUS_FIELDS.items():
        if isinstance(out.get(part), dict):
            out[part] = {k: v for k, v in out[part].items() if k in fields}
    return out


def public_source(source: str) -> str:
    """The file name of a path, bucket key or URL (its query, a presigned signature say, dropped)."""
    if "://" in source:
        source = urlsplit(source).path
    return source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
