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
from typing import Any, Callable, ContextManager, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from lookalike.embedding import regions as region_rows
from lookalike.embedding.descriptors import taken_as_unrecorded
from lookalike.errors import BackendUnavailable, NotFound, SchemaMismatch
from lookalike.embedding.images import Box
from lookalike.limits import KEY_MAX_BYTES, LABEL_MAX_BYTES, SOURCE_MAX_BYTES
from lookalike.settings import MilvusSettings

log = logging.getLogger(__name__)

OUTPUT_FIELDS = ["key", "label", "source"]
ROW_FIELDS = ["id", *OUTPUT_FIELDS, "embedding"]  # a whole row: what a copy reads and writes
REGION_FIELDS = ["rid", "image", "region", "label", "embedding"]  # a region row (``regions.py``)
MAX_LIMIT = 16384  # Milvus's largest top-k
_READS = frozenset({"search", "query", "get"})
_WRITES = frozenset({"create_collection", "create_index", "insert", "upsert", "delete", "flush", "load_collection",
                     "create_alias", "alter_alias", "drop_alias", "drop_collection"})


class _Table(NamedTuple):
    """One of the gallery's collections, by its alias: the entries, or their region rows."""

    alias: str
    image_field: str  # where a row holds its image's id
    fields: list[str]  # a whole row: what a copy reads and writes
    per_image: int  # rows per image


@dataclass
class Hit:
    id: int
    key: str
    label: str
    source: str
    distance: float
    score: float  # cosine similarity of the unit vectors, whatever the metric
    region: str | None = None  # the part of the image that matched (fractions x,y,w,h); None: the whole

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Entry:
    id: int
    key: str
    label: str
    source: str
    embedding: np.ndarray | None = None
    regions: np.ndarray | None = None  # (regions, dim): the region vectors, in the layout's order

    def to_row(self) -> dict:
        if self.embedding is None:
            raise ValueError("an entry needs its embedding to be written")
        return {"id": int(self.id), "key": _clip(self.key, KEY_MAX_BYTES), "label": _clip(self.label, LABEL_MAX_BYTES),
                "source": _clip(self.source, SOURCE_MAX_BYTES),
                "embedding": np.asarray(self.embedding, np.float32).tolist()}

    def region_rows(self) -> list[dict]:
        if self.regions is None:
            return []
        label = _clip(self.label, LABEL_MAX_BYTES)
        return [{"rid": region_rows.row_id(self.id, i), "image": int(self.id), "region": i, "label": label,
                 "embedding": np.asarray(vector, np.float32).tolist()} for i, vector in enumerate(self.regions)]


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
                 embedded: bool = False, descriptor: str = "", regions: Sequence[Box] = (),
                 region_margin: float = 0.0):
        """``uri``: where Milvus is (default ``settings.uri``); ``locate``: asked for it again at
        each reconnection (the embedded Milvus's supervised server, see
        ``engines.open_catalog``). ``write_lock``: held around writes (Milvus Lite takes
        one writer at a time). ``embedded``: Milvus Lite (which slows down as it grows).
        ``descriptor``: what the vectors are (``descriptors.descriptor_name``), recorded with a
        new collection; an existing one that records another is refused. ``regions``: the parts
        of each image whose vectors are kept too (``regions.boxes``), in a second collection
        named ``<collection>_regions``; none by default. ``region_margin``: how much lower a
        part's score counts than a whole image's. The catalog never starts a process itself."""
        self.embedded = embedded
        self.descriptor = descriptor
        self.settings = settings
        self.dim = dim
        self._locate = locate
        self.uri = uri or settings.uri
        self.name = settings.collection
        self.regions = list(regions)
        self.region_margin = region_margin
        self.regions_name = f"{self.name}_regions"
        self._gallery = _Table(self.name, "id", ROW_FIELDS, 1)
        self._parts = _Table(self.regions_name, "image", REGION_FIELDS, max(1, len(self.regions)))
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
    # rebuild fills the next version while the current one answers, then moves the alias. The
    # region rows, when kept, follow the same scheme beside it (``images_regions__1``, ...).
    def _tables(self) -> list[_Table]:
        """The gallery's collections: its entries, and their region rows where it keeps them."""
        return [self._gallery] + ([self._parts] if self.regions else [])

    def exists(self) -> bool:
        return bool(self._call("has_collection", self.name))

    def physical(self, alias: str | None = None) -> str:
        """The collection behind the name (the name itself for one created before aliases)."""
        return self._call("describe_collection", alias or self.name)["collection_name"]

    def ensure_ready(self) -> "Catalog":
        """Create the collections and their indexes if missing, check the dimension, load them.
        Once, whichever of the threads calling at once gets here first."""
        if self._ready:
            return self
        with self._ready_lock:
            if self._ready:
                return self
            for table in self._tables():
                if not self._call("has_collection", table.alias):
                    self._create(table)
                else:
                    self._check_schema(table)
                if not self._call("list_indexes", table.alias):
                    self._create_index(table.alias)
                self._call("load_collection", table.alias, timeout=self.settings.index.build_timeout_s)
            self._ready = True
        return self

    def _create(self, table: _Table) -> None:
        from pymilvus.exceptions import MilvusException

        first = f"{table.alias}__1"
        try:
            self._create_physical(first, table)
            self._call("create_alias", first, table.alias)
        except MilvusException as exc:  # another process (a second replica starting) created it first
            if "exist" not in str(exc.message):
                raise
            self._check_schema(table)
            return
        log.info("created collection %s as %s (dim %d)", table.alias, first, self.dim)

    def _create_physical(self, name: str, table: _Table) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description="Lookalike image embeddings")
        if table is self._parts:
            schema.add_field("rid", DataType.INT64, is_primary=True, description="hash of the image id and region")
            schema.add_field("image", DataType.INT64, description="the image's id in the gallery")
            schema.add_field("region", DataType.INT16, description="its place in the layout (regions.boxes)")
            schema.add_field("label", DataType.VARCHAR, max_length=LABEL_MAX_BYTES)
            schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self.dim)
            self._call("create_collection", name, schema=schema, consistency_level=self.settings.consistency_level)
            return
        schema.add_field("id", DataType.INT64, is_primary=True, description="content hash of the image bytes")
        schema.add_field("key", DataType.VARCHAR, max_length=KEY_MAX_BYTES, description="object-store key")
        schema.add_field("label", DataType.VARCHAR, max_length=LABEL_MAX_BYTES)
        schema.add_field("source", DataType.VARCHAR, max_length=SOURCE_MAX_BYTES, description="original name or path")
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self.dim)
        self._call("create_collection", name, schema=schema, consistency_level=self.settings.consistency_level,
                   properties={DESCRIPTOR_PROPERTY: self.descriptor} if self.descriptor else None)

    def _check_schema(self, table: _Table) -> None:
        alias = table.alias
        info = self._call("describe_collection", alias)
        fields = {f["name"]: f for f in info["fields"]}
        missing = set(table.fields) - set(fields)
        if missing:
            raise SchemaMismatch(f"collection {alias!r} lacks fields {sorted(missing)}; "
                                 "use another milvus.collection or drop it")
        dim = int(fields["embedding"]["params"]["dim"])
        if dim != self.dim:
            raise SchemaMismatch(
                f"collection {alias!r} holds {dim}-d vectors but the model gives {self.dim}-d; "
                "use another milvus.collection for this model, or drop and re-ingest"
            )
        if self.descriptor and table is self._gallery:
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
        down: the rows are copied into the next version of each collection, indexed and loaded
        there while the current one answers; then, with writers held off (this machine's write
        lock), the rows written meanwhile are carried over, the aliases move, and the old
        versions are dropped. Returns index_info."""
        say = progress or (lambda message: log.info("%s: %s", self.name, message))
        self.ensure_ready()
        versions = [(table, *self._next_version(table, say)) for table in self._tables()]
        with self._insert_lock, self._write_lock():
            for table, old, new in versions:
                alias = table.alias
                now, there = self._image_ids(old, table), self._image_ids(new, table)
                self._copy(old, new, table, sorted(now - there), write_locked=True)
                if there - now:
                    self._delete_images(new, table, sorted(there - now), write_locked=True)
                if old == alias:  # a collection from before aliases: the name becomes an alias
                    self._call("drop_collection", old, write_locked=True)
                    self._call("create_alias", new, alias, write_locked=True)
                else:
                    self._call("alter_alias", new, alias, write_locked=True)
                say(f"{alias} now points at {new} ({len(now - there)} images written meanwhile, "
                    f"{len(there - now)} deleted meanwhile)")
        retiring = [old for table, old, _ in versions if old != table.alias]
        if retiring:
            time.sleep(self.settings.index.retire_after_s)  # searches sent to them before the move
        for old in retiring:
            say(f"dropping {old}")
            self._call("drop_collection", old)
        return self.index_info()

    def _next_version(self, table: _Table, say: Callable[[str], None]) -> tuple[str, str]:
        """The collection behind ``table``'s alias copied into its next version, indexed and
        loaded (writes go on meanwhile); (the current version, the next)."""
        self._call("flush", table.alias)
        old = self.physical(table.alias)
        base, _, version = old.rpartition("__")
        new = f"{base}__{int(version) + 1}" if version.isdigit() and base else f"{old}__1"
        if self._call("has_collection", new):  # left by a rebuild that died half-way
            self._call("drop_collection", new)
        self._create_physical(new, table)
        self._create_index(new)
        say(f"copying {old} into {new}")
        copied = 0
        for batch in self._scan(old, table.fields):
            self._call("insert", new, [_plain(r) for r in batch])
            copied += len(batch)
        self._call("flush", new)
        say(f"copied {copied} rows; building the index")
        self.wait_for_index(self.settings.index.build_timeout_s, collection=new)
        self._call("load_collection", new, timeout=self.settings.index.build_timeout_s)
        self._wait_until_searchable(new)
        return old, new

    def _wait_until_searchable(self, collection: str) -> None:
        """Until a search of ``collection`` answers (a loaded collection's shards may still be
        finding their leaders), so that the alias never moves to one that fails searches."""
        from pymilvus.exceptions import MilvusException

        probe = np.full((1, self.dim), 1.0 / np.sqrt(self.dim), np.float32).tolist()
        deadline = time.monotonic() + self.settings.index.build_timeout_s
        while True:
            try:
                self._call("search", collection, data=probe, limit=1, search_params=self._search_params())
                return
            except MilvusException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def entries(self, *, with_vectors: bool = False, with_regions: bool = False,
                batch_size: int = 1000) -> Iterator[list[Entry]]:
        """Every entry, in batches (for copying a gallery elsewhere); ``with_vectors``: with its
        vector; ``with_regions``: and its region vectors, where the gallery keeps them."""
        self.ensure_ready()
        fields = ["id", *OUTPUT_FIELDS] + (["embedding"] if with_vectors else [])
        for batch in self._scan(self.name, fields, batch_size):
            entries = [self._entry(r) for r in batch]
            if with_regions and self.regions:
                self._attach_regions(entries)
            yield entries

    def _attach_regions(self, entries: list[Entry]) -> None:
        """Each entry's region vectors, in the layout's order (None where some are missing)."""
        parts: dict[int, dict[int, list]] = {}
        for row in self._rows_of(self.regions_name, self._parts, [e.id for e in entries], ["image", "region", "embedding"]):
            parts.setdefault(int(row["image"]), {})[int(row["region"])] = row["embedding"]
        for e in entries:
            found = parts.get(e.id, {})
            if len(found) == len(self.regions):
                e.regions = np.asarray([found[i] for i in range(len(self.regions))], dtype=np.float32)

    def drop(self) -> None:
        """Drop the collections: each alias and every version behind it."""
        for table in self._tables():
            if not self._call("has_collection", table.alias):
                continue
            physical = self.physical(table.alias)
            if physical != table.alias:
                self._call("drop_alias", table.alias)
            self._call("drop_collection", physical)
        self._ready = False

    def _image_ids(self, collection: str, table: _Table) -> set[int]:
        field = table.image_field
        return {int(row[field]) for batch in self._scan(collection, [field]) for row in batch}

    def _scan(self, collection: str, fields: list[str], batch_size: int = 1000):
        """Every row of ``collection`` in batches (pymilvus's query iterator)."""
        iterator = self._call("query_iterator", collection, batch_size=batch_size, filter="", output_fields=fields)
        try:
            while batch := iterator.next():
                yield batch
        finally:
            iterator.close()

    def _rows_of(self, collection: str, table: _Table, image_ids: Sequence[int], fields: list[str]) -> list[dict]:
        """The rows of these images in ``collection`` (a version of ``table``)."""
        rows: list[dict] = []
        step = max(1, self.settings.insert_batch_size // table.per_image)
        for i in range(0, len(image_ids), step):
            chunk = [int(x) for x in image_ids[i: i + step]]
            rows += self._call("query", collection, filter=f"{table.image_field} in {chunk}", output_fields=fields)
        return rows

    def _copy(self, source: str, target: str, table: _Table, image_ids: Sequence[int], *,
              write_locked: bool = False) -> None:
        """Copy the rows of these images (ids, vectors, fields) to another version, no re-embedding."""
        rows = [_plain(r) for r in self._rows_of(source, table, image_ids, table.fields)]
        self._upsert_rows(target, rows, write_locked=write_locked)

    def _delete_images(self, collection: str, table: _Table, image_ids: Sequence[int], *,
                       write_locked: bool = False) -> None:
        step = 1000
        for i in range(0, len(image_ids), step):
            chunk = [int(x) for x in image_ids[i: i + step]]
            self._call("delete", collection, filter=f"{table.image_field} in {chunk}", write_locked=write_locked)

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
        """Write the entries (and their region rows), replacing any with the same ids."""
        self.ensure_ready()
        entries = list(entries)
        rows, parts = [e.to_row() for e in entries], self._region_rows(entries)  # both checked before a write
        self._upsert_rows(self.name, rows)
        self._upsert_rows(self.regions_name, parts)
        return len(entries)

    def _upsert_rows(self, collection: str, rows: list[dict], *, write_locked: bool = False) -> None:
        step = self.settings.insert_batch_size
        for i in range(0, len(rows), step):
            self._call("upsert", collection, rows[i : i + step], write_locked=write_locked)

    def _region_rows(self, entries: Sequence[Entry]) -> list[dict]:
        """The region rows of the entries, when this gallery keeps them; made (and checked) before
        any write, written after the entry: a write cut short leaves an entry found by its whole
        only, never a region without one."""
        if not self.regions:
            return []
        for e in entries:
            if e.regions is not None and len(e.regions) != len(self.regions):
                raise ValueError(f"entry {e.id} has {len(e.regions)} region vectors; this gallery keeps "
                                 f"{len(self.regions)}")
        return [row for e in entries for row in e.region_rows()]

    def insert_new(self, entries: Sequence[Entry]) -> set[int]:
        """Insert the entries whose ids are not stored yet; returns the ids inserted. The check
        and the write happen under one lock (this process's, and Milvus Lite's across
        processes) and the check reads at Strong, so of concurrent adds of one image exactly one
        inserts it. (With a Milvus server and several writer processes two may both insert the
        same row: upsert keeps one entity, only the answer can say "created" twice.)"""
        self.ensure_ready()
        with self._insert_lock, self._write_lock():
            present = self.existing_ids([e.id for e in entries], consistency_level="Strong")
            new = [e for e in entries if e.id not in present]
            if new:
                rows, parts = [e.to_row() for e in new], self._region_rows(new)
                self._call("upsert", self.name, rows, write_locked=True)
                self._upsert_rows(self.regions_name, parts, write_locked=True)
        return {e.id for e in new}

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
        if self.regions:  # after the entry (see _region_rows); any left by a cut-short write too
            self._delete_images(self.regions_name, self._parts, sorted(int(i) for i in ids))
        return len(present)

    def flush(self) -> None:
        self.ensure_ready()
        for table in self._tables():
            self._call("flush", table.alias)

    # -- reads ------------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, k: int, *, expr: str = "", params: dict | None = None,
               regions: bool = True) -> list[list[Hit]]:
        """Top-``k`` per vector, one hit per image (its best row, where the gallery keeps region
        rows; ``regions=False``: the whole-image vectors only). ``params``: search parameters
        for this call (``ef``, ``nprobe``) instead of the configured ones for the index type."""
        self.ensure_ready()
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        search_params = self._search_params(params)
        results = self._call("search", self.name, data=vectors.tolist(), limit=k, filter=expr,
                             output_fields=OUTPUT_FIELDS, search_params=search_params)
        hits = [[self._hit(r) for r in found] for found in results]
        if not (self.regions and regions):
            return hits
        parts = self._call("search", self.regions_name, data=vectors.tolist(),
                           limit=min(MAX_LIMIT, k * len(self.regions)), filter=expr,
                           output_fields=["image", "region"], search_params=search_params)
        return [self._best_per_image(whole, found, k) for whole, found in zip(hits, parts)]

    def _search_params(self, params: dict | None = None) -> dict:
        """What a search sends: the metric, and ``params`` or the configured ones for the index type."""
        return {"metric_type": self.settings.metric,
                "params": self.settings.index.search_params if params is None else params}

    def _best_per_image(self, whole: list[Hit], parts: list[dict], k: int) -> list[Hit]:
        """The whole-image hits and the region hits of one query -> one hit per image, its best
        (``regions.best_per_image``; a part's score is its cosine less ``region_margin``, its
        distance the row's own); images found by a region only are read from the gallery
        (a region whose image is gone, left by a cut-short delete, is skipped)."""
        ranked = [(h.id, h.score, h) for h in whole]
        for r in parts:
            distance, entity = float(r["distance"]), r.get("entity", {})
            part = Hit(id=int(entity["image"]), key="", label="", source="", distance=distance,
                       score=self.score(distance) - self.region_margin, region=str(self.regions[int(entity["region"])]))
            ranked.append((part.id, part.score, part))
        best = [hit for _, _, hit in region_rows.best_per_image(ranked, k)]
        known = {h.id: h for h in whole}
        missing = [h.id for h in best if h.id not in known]
        known.update({e.id: e for e in self.get(missing)})
        out = []
        for hit in best:
            entry = known.get(hit.id)
            if entry is None:
                continue
            out.append(Hit(id=hit.id, key=entry.key, label=entry.label, source=entry.source,
                           distance=hit.distance, score=hit.score, region=hit.region))
        return out

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
        if self.regions:
            base["regions"] = [str(box) for box in self.regions]
        try:
            count = self.count()
            out = {**base, "healthy": True, "count": count, "index": self.index_info()}
        except BackendUnavailable as exc:
            return {**base, "healthy": False, "error": exc.message}
        warning = self.scale_warning(count)
        if warning:
            out["warning"] = warning
        return out
