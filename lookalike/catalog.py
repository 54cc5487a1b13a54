"""The Milvus catalog: schema, index, writes and searches, over pymilvus.MilvusClient.

The same code runs against Milvus Lite (a ``.db`` data directory) and a Milvus server
(``http://host:19530``). Every call has a deadline; an unreachable server surfaces as
``BackendUnavailable("milvus")`` and the next call reconnects.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, ContextManager, Iterable, Iterator, Sequence

import numpy as np

from .descriptors import taken_as_unrecorded
from .errors import BackendUnavailable, NotFound, SchemaMismatch
from .limits import KEY_MAX_BYTES, LABEL_MAX_BYTES, SOURCE_MAX_BYTES
from .settings import MilvusSettings

log = logging.getLogger(__name__)

OUTPUT_FIELDS = ["key", "label", "source"]
ROW_FIELDS = ["id", *OUTPUT_FIELDS, "embedding"]  # a whole row: what a copy reads and writes
_READS = frozenset({"search", "query", "get"})
_WRITES = frozenset({"create_collection", "create_index", "insert", "upsert", "delete", "flush", "load_collection",
                     "create_alias", "alter_alias", "drop_alias", "drop_collection"})


@dataclass
class Hit:
    id: int
    key: str
    label: str
    source: str
    distance: float
    score: float  # cosine similarity of the unit vectors, whatever the metric

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Entry:
    id: int
    key: str
    label: str
    source: str
    embedding: np.ndarray | None = None

    def to_row(self) -> dict:
        if self.embedding is None:
            raise ValueError("an entry needs its embedding to be written")
        return {"id": int(self.id), "key": _clip(self.key, KEY_MAX_BYTES), "label": _clip(self.label, LABEL_MAX_BYTES),
                "source": _clip(self.source, SOURCE_MAX_BYTES),
                "embedding": np.asarray(self.embedding, np.float32).tolist()}


def _clip(text: str, max_bytes: int) -> str:
    """VARCHAR limits count UTF-8 bytes: cut there without splitting a character."""
    data = text.encode()
    return text if len(data) <= max_bytes else data[:max_bytes].decode(errors="ignore")


def _plain(row: dict) -> dict:
    """A row as read back (vectors may come as numpy or protobuf floats), ready to write again."""
    return {k: (np.asarray(v, np.float32).tolist() if k == "embedding" else v) for k, v in dict(row).items()}


def label_filter(label: str | None) -> str:
    """A Milvus boolean expression matching one label exactly. The label is written as a string
    literal with only backslash and double quote escaped, so any Unicode label ('café', '🍎')
    matches itself (JSON's \\u escapes do not parse in Milvus). Milvus's filter templates
    (``filter_params``) would bind it instead, but Milvus Lite 3.2 rejects their placeholders."""
    if not label:
        return ""
    return 'label == "' + label.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_unavailable(exc: BaseException) -> bool:
    import grpc
    from pymilvus.exceptions import ConnectionConfigException, MilvusException

    if isinstance(exc, ConnectionConfigException):
        return True
    if isinstance(exc, grpc.RpcError):
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    if isinstance(exc, MilvusException):
        text = f"{exc.message}".lower()
        return exc.code == 2 or any(s in text for s in ("fail connecting", "unavailable", "deadline", "timeout",
                                                          "connection refused", "server unavailable"))
    return isinstance(exc, (ConnectionError, TimeoutError))


# The collection property that records what its vectors are (Milvus Lite drops descriptions).
DESCRIPTOR_PROPERTY = "lookalike.descriptor"


class Catalog:
    def __init__(self, settings: MilvusSettings, dim: int, *, uri: str | None = None,
                 locate: Callable[[], str] | None = None, write_lock: Callable[[], ContextManager] | None = None,
                 embedded: bool = False, descriptor: str = ""):
        """``uri``: where Milvus is (default ``settings.uri``); ``locate``: asked for it again at
        each reconnection (the embedded Milvus's supervised server, see
        ``local_milvus.open_catalog``). ``write_lock``: held around writes (Milvus Lite takes
        one writer at a time). ``embedded``: Milvus Lite (which slows down as it grows).
        ``descriptor``: what the vectors are (``descriptors.descriptor_name``), recorded with a
        new collection; an existing one that records another is refused. The catalog never
        starts a process itself."""
        self.embedded = embedded
        self.descriptor = descriptor
        self.settings = settings
        self.dim = dim
        self._locate = locate
        self.uri = uri or settings.uri
        self.name = settings.collection
        self._client = None
        self._lock = threading.Lock()
        self._ready = False
        self._write_lock = write_lock or contextlib.nullcontext
        self._insert_lock = threading.Lock()
        self._ready_lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------
    @property
    def client(self):
        with self._lock:
            if self._client is None:
                from pymilvus import MilvusClient

                try:
                    if self._locate:
                        self.uri = self._locate()
                    self._client = MilvusClient(
                        uri=self.uri, token=self.settings.token.get_secret_value(),
                        db_name=self.settings.db_name, timeout=self.settings.timeout_s,
                    )
                except Exception as exc:
                    raise self._unavailable(exc) from exc
            return self._client

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        reason = getattr(exc, "message", "") or str(exc) or type(exc).__name__
        return BackendUnavailable("milvus", "cannot reach it", detail=f"{self.uri}: {reason}")

    def _call(self, method: str, *args, write_locked: bool = False, **kwargs):
        """Run one client call with the deadline; map connection failures to 503.
        ``write_locked``: the caller holds the write lock already."""
        kwargs.setdefault("timeout", self.settings.timeout_s)
        if method in _READS:
            kwargs.setdefault("consistency_level", self.settings.consistency_level)
        try:
            if method in _WRITES and not write_locked:
                with self._write_lock():
                    return getattr(self.client, method)(*args, **kwargs)
            return getattr(self.client, method)(*args, **kwargs)
        except BackendUnavailable:
            raise
        except Exception as exc:
            if _is_unavailable(exc):
                # Start afresh next time: a new connection, and the collection checked again.
                self._ready = False
                self.close()
                raise self._unavailable(exc) from exc
            raise

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # closing a dead connection may complain; nothing to keep
                    pass
                self._client = None

    # -- schema and index -------------------------------------------------------------------
    # ``settings.collection`` is an alias of a versioned collection (``images__1``, ...): an index
    # rebuild fills the next version while the current one answers, then moves the alias.
    def exists(self) -> bool:
        return bool(self._call("has_collection", self.name))

    def physical(self) -> str:
        """The collection behind the name (the name itself for one created before aliases)."""
        return self._call("describe_collection", self.name)["collection_name"]

    def ensure_ready(self) -> "Catalog":
        """Create the collection and its index if missing, check the dimension, load it. Once,
        whichever of the threads calling at once gets here first."""
        if self._ready:
            return self
        with self._ready_lock:
            if self._ready:
                return self
            if not self._call("has_collection", self.name):
                self._create()
            else:
                self._check_schema()
            if not self._call("list_indexes", self.name):
                self._create_index(self.name)
            self._call("load_collection", self.name, timeout=self.settings.index.build_timeout_s)
            self._ready = True
        return self

    def _create(self) -> None:
        from pymilvus.exceptions import MilvusException

        first = f"{self.name}__1"
        try:
            self._create_physical(first)
            self._call("create_alias", first, self.name)
        except MilvusException as exc:  # another process (a second replica starting) created it first
            if "exist" not in str(exc.message):
                raise
            self._check_schema()
            return
        log.info("created collection %s as %s (dim %d)", self.name, first, self.dim)

    def _create_physical(self, name: str) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description="Lookalike image embeddings")
        schema.add_field("id", DataType.INT64, is_primary=True, description="content hash of the image bytes")
        schema.add_field("key", DataType.VARCHAR, max_length=KEY_MAX_BYTES, description="object-store key")
        schema.add_field("label", DataType.VARCHAR, max_length=LABEL_MAX_BYTES)
        schema.add_field("source", DataType.VARCHAR, max_length=SOURCE_MAX_BYTES, description="original name or path")
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self.dim)
        self._call("create_collection", name, schema=schema, consistency_level=self.settings.consistency_level,
                   properties={DESCRIPTOR_PROPERTY: self.descriptor} if self.descriptor else None)

    def _check_schema(self) -> None:
        info = self._call("describe_collection", self.name)
        fields = {f["name"]: f for f in info["fields"]}
        missing = {"id", "key", "label", "source", "embedding"} - set(fields)
        if missing:
            raise SchemaMismatch(f"collection {self.name!r} lacks fields {sorted(missing)}; "
                                 "use another milvus.collection or drop it")
        dim = int(fields["embedding"]["params"]["dim"])
        if dim != self.dim:
            raise SchemaMismatch(
                f"collection {self.name!r} holds {dim}-d vectors but the model gives {self.dim}-d; "
                "use another milvus.collection for this model, or drop and re-ingest"
            )
        if self.descriptor:
            self._check_descriptor((info.get("properties") or {}).get(DESCRIPTOR_PROPERTY))

    def _check_descriptor(self, recorded: str | None) -> None:
        """Vectors of another descriptor (another pooling or fit) rank garbage: refuse them."""
        if recorded is None:  # made before descriptors were recorded
            if not taken_as_unrecorded(self.descriptor):
                raise SchemaMismatch(
                    f"collection {self.name!r} was made before descriptors were recorded, with average pooling; "
                    f"the settings give {self.descriptor}. Set model.pooling: avg to keep using it, or use another "
                    "milvus.collection and re-ingest")
            return
        if recorded != self.descriptor:
            raise SchemaMismatch(
                f"collection {self.name!r} holds {recorded} vectors but the settings give {self.descriptor}; "
                "set the model settings back, or use another milvus.collection and re-ingest")

    def _index_params(self):
        idx = self.settings.index
        params = self.client.prepare_index_params()
        # Nested under "params": Milvus Lite silently drops build parameters given flat.
        params.add_index(field_name="embedding", index_name="embedding", index_type=idx.type,
                         metric_type=self.settings.metric, params={"params": idx.build_params})
        return params

    def _create_index(self, collection: str) -> None:
        self._call("create_index", collection, self._index_params(), timeout=self.settings.index.build_timeout_s)

    def build_index(self, progress: Callable[[str], None] | None = None) -> dict:
        """(Re)build the index with the configured type and parameters, without taking search
        down: the rows are copied into the next version of the collection, indexed and loaded
        there while the current one answers; then, with writers held off (this machine's write
        lock), the rows written meanwhile are carried over, the alias moves, and the old version
        is dropped. Returns index_info."""
        say = progress or (lambda message: log.info("%s: %s", self.name, message))
        self.ensure_ready()
        self._call("flush", self.name)
        old = self.physical()
        base, _, version = old.rpartition("__")
        new = f"{base}__{int(version) + 1}" if version.isdigit() and base else f"{old}__1"
        if self._call("has_collection", new):  # left by a rebuild that died half-way
            self._call("drop_collection", new)
        self._create_physical(new)
        self._create_index(new)
        say(f"copying {old} into {new}")
        copied = 0
        for batch in self._scan(old, ROW_FIELDS):
            self._call("insert", new, [_plain(r) for r in batch])
            copied += len(batch)
        self._call("flush", new)
        say(f"copied {copied} rows; building the index")
        self.wait_for_index(self.settings.index.build_timeout_s, collection=new)
        self._call("load_collection", new, timeout=self.settings.index.build_timeout_s)
        with self._insert_lock, self._write_lock():
            now, there = self._ids(old), self._ids(new)
            self._copy(old, new, sorted(now - there), write_locked=True)
            if there - now:
                self._call("delete", new, ids=sorted(there - now), write_locked=True)
            if old == self.name:  # a collection from before aliases: the name becomes an alias
                self._call("drop_collection", old, write_locked=True)
                self._call("create_alias", new, self.name, write_locked=True)
            else:
                self._call("alter_alias", new, self.name, write_locked=True)
        say(f"{self.name} now points at {new} ({len(now - there)} rows written meanwhile, "
            f"{len(there - now)} deleted meanwhile); dropping {old}")
        if old != self.name:
            self._call("drop_collection", old)
        return self.index_info()

    def entries(self, *, with_vectors: bool = False, batch_size: int = 1000) -> Iterator[list[Entry]]:
        """Every entry, in batches (for copying a gallery elsewhere)."""
        self.ensure_ready()
        fields = ["id", *OUTPUT_FIELDS] + (["embedding"] if with_vectors else [])
        for batch in self._scan(self.name, fields, batch_size):
            yield [self._entry(r) for r in batch]

    def drop(self) -> None:
        """Drop the collection: the alias and every version behind it."""
        if not self._call("has_collection", self.name):
            return
        physical = self.physical()
        if physical != self.name:
            self._call("drop_alias", self.name)
        self._call("drop_collection", physical)
        self._ready = False

    def _ids(self, collection: str) -> set[int]:
        return {int(row["id"]) for batch in self._scan(collection, ["id"]) for row in batch}

    def _scan(self, collection: str, fields: list[str], batch_size: int = 1000):
        """Every row of ``collection`` in batches (pymilvus's query iterator)."""
        iterator = self._call("query_iterator", collection, batch_size=batch_size, filter="", output_fields=fields)
        try:
            while batch := iterator.next():
                yield batch
        finally:
            iterator.close()

    def _copy(self, source: str, target: str, ids: Iterable[int], *, write_locked: bool = False) -> int:
        """Copy rows (ids, vectors, fields) from one collection to another, no re-embedding."""
        ids = sorted(ids)
        step = self.settings.insert_batch_size
        for i in range(0, len(ids), step):
            rows = self._call("get", source, ids=ids[i: i + step], output_fields=ROW_FIELDS)
            self._call("upsert", target, [_plain(r) for r in rows], write_locked=write_locked)
        return len(ids)

    def index_info(self, collection: str | None = None) -> dict:
        collection = collection or self.name
        names = self._call("list_indexes", collection)
        if not names:
            return {}
        info = self._call("describe_index", collection, names[0])
        params = info.get("params")
        if isinstance(params, str):
            params = json.loads(params)
        return {
            "type": info.get("index_type"),
            "metric": info.get("metric_type"),
            "params": {k: int(v) if str(v).isdigit() else v for k, v in (params or {}).items()},
            "state": info.get("state"),
            "indexed_rows": info.get("indexed_rows"),
            "total_rows": info.get("total_rows"),
            "pending_index_rows": info.get("pending_index_rows", 0),
        }

    def wait_for_index(self, timeout_s: float, collection: str | None = None) -> dict:
        """Wait until the index covers every flushed row (or the timeout); returns index_info."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.index_info(collection)
            done = not info or (info["pending_index_rows"] == 0 and info["state"] in ("Finished", None))
            if done or time.monotonic() > deadline:
                return info
            time.sleep(0.5)

    # -- writes -----------------------------------------------------------------------------
    def upsert(self, entries: Iterable[Entry]) -> int:
        self.ensure_ready()
        rows = [e.to_row() for e in entries]
        step = self.settings.insert_batch_size
        for i in range(0, len(rows), step):
            self._call("upsert", self.name, rows[i : i + step])
        return len(rows)

    def insert_new(self, entries: Sequence[Entry]) -> set[int]:
        """Insert the entries whose ids are not stored yet; returns the ids inserted. The check
        and the write happen under one lock (this process's, and Milvus Lite's across
        processes) and the check reads at Strong, so of concurrent adds of one image exactly one
        inserts it. (With a Milvus server and several writer processes two may both insert the
        same row: upsert keeps one entity, only the answer can say "created" twice.)"""
        self.ensure_ready()
        with self._insert_lock, self._write_lock():
            present = self.existing_ids([e.id for e in entries], consistency_level="Strong")
            new = [e.to_row() for e in entries if e.id not in present]
            if new:
                self._call("upsert", self.name, new, write_locked=True)
        return {row["id"] for row in new}

    def existing_ids(self, ids: Sequence[int], **kwargs) -> set[int]:
        if not ids:
            return set()
        self.ensure_ready()
        found: set[int] = set()
        step = 1000
        for i in range(0, len(ids), step):
            chunk = [int(x) for x in ids[i : i + step]]
            found.update(r["id"] for r in self._call("query", self.name, filter=f"id in {chunk}",
                                                     output_fields=["id"], **kwargs))
        return found

    def delete(self, ids: Sequence[int]) -> int:
        self.ensure_ready()
        present = self.existing_ids(ids)
        if present:
            self._call("delete", self.name, ids=sorted(present))
        return len(present)

    def flush(self) -> None:
        self.ensure_ready()
        self._call("flush", self.name)

    # -- reads ------------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, k: int, *, expr: str = "", params: dict | None = None) -> list[list[Hit]]:
        """Top-``k`` per vector. ``params``: search parameters for this call (``ef``, ``nprobe``)
        instead of the configured ones for the index type."""
        self.ensure_ready()
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        params = self.settings.index.search_params if params is None else params
        results = self._call(
            "search", self.name, data=vectors.tolist(), limit=k, filter=expr, output_fields=OUTPUT_FIELDS,
            search_params={"metric_type": self.settings.metric, "params": params},
        )
        return [[self._hit(r) for r in hits] for hits in results]

    def _hit(self, r: dict) -> Hit:
        entity = r.get("entity", {})
        distance = float(r["distance"])
        return Hit(id=int(r["id"]), key=entity.get("key", ""), label=entity.get("label", ""),
                   source=entity.get("source", ""), distance=distance, score=self.score(distance))

    def score(self, distance: float) -> float:
        """Cosine similarity of unit vectors from the metric's distance (L2 is squared in Milvus)."""
        if self.settings.metric == "L2":
            return 1.0 - distance / 2.0
        return distance

    def get(self, ids: Sequence[int], *, with_vectors: bool = False) -> list[Entry]:
        if not ids:
            return []
        self.ensure_ready()
        fields = OUTPUT_FIELDS + (["embedding"] if with_vectors else [])
        rows = self._call("get", self.name, ids=[int(i) for i in ids], output_fields=fields)
        return [self._entry(r) for r in rows]

    def get_one(self, id_: int, *, with_vectors: bool = False) -> Entry:
        found = self.get([id_], with_vectors=with_vectors)
        if not found:
            raise NotFound(f"no image with id {id_}")
        return found[0]

    def list(self, *, offset: int = 0, limit: int = 50, expr: str = "") -> list[Entry]:
        self.ensure_ready()
        rows = self._call("query", self.name, filter=expr or "id >= 0", output_fields=["id", *OUTPUT_FIELDS],
                          offset=offset, limit=limit)
        return [self._entry(r) for r in rows]

    @staticmethod
    def _entry(r: dict) -> Entry:
        vec = r.get("embedding")
        return Entry(id=int(r["id"]), key=r.get("key", ""), label=r.get("label", ""), source=r.get("source", ""),
                     embedding=None if vec is None else np.asarray(vec, dtype=np.float32))

    def count(self, *, expr: str = "") -> int:
        """Exact (Strong): a Milvus 2.3 server's count(*) lags a delete at Session consistency,
        whose timestamp it does not report. Off the search path: status and list totals."""
        self.ensure_ready()
        rows = self._call("query", self.name, filter=expr, output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def scale_warning(self, count: int) -> str | None:
        """Advice when an embedded Milvus Lite collection has outgrown it, else None."""
        limit = self.settings.lite_fast_max_rows
        if not self.embedded or count <= limit:
            return None
        return (f"{count:,} images in Milvus Lite, which stays fast up to about {limit:,}: every search now "
                "costs more as the gallery grows. Move it to the local Milvus server: lookalike migrate --to local "
                "(see the README's scale section).")

    def describe(self) -> dict[str, Any]:
        """Health and shape, for the status route: never raises for a down backend."""
        base = {"uri": self.uri, "collection": self.name, "metric": self.settings.metric, "dim": self.dim,
                "descriptor": self.descriptor or None}
        try:
            count = self.count()
            out = {**base, "healthy": True, "count": count, "index": self.index_info()}
        except BackendUnavailable as exc:
            return {**base, "healthy": False, "error": exc.message}
        warning = self.scale_warning(count)
        if warning:
            out["warning"] = warning
        return out
