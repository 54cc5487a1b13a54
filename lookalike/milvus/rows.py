"""The gallery's rows: entries and the region rows of their parts, written, read, copied and
deleted in batches of ``milvus.insert_batch_size`` (the one batch setting). A write makes (and
checks) the region rows before it writes anything, and writes them after the entry: a write
cut short leaves an entry found by its whole only, never a region without one."""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from lookalike.milvus.connection import Connection
from lookalike.milvus.routing import Router
from lookalike.milvus.schema import OUTPUT_FIELDS, Entry, Table, plain


class Rows:
    def __init__(self, connection: Connection, gallery: Table, parts: Table, regions: int,
                 ready: Callable[[], object], router: Router):
        """``regions``: parts kept per image (0: none); ``ready``: makes sure the collections
        exist and are loaded, before the first call that needs them; ``router``: which version
        a read goes to, and whether a write may go (routing.py)."""
        self.connection, self.router = connection, router
        self.gallery, self.parts, self.regions = gallery, parts, regions
        self._ready = ready
        self._insert_lock = threading.Lock()  # this process's adds: check-and-insert as one step

    @property
    def batch(self) -> int:
        return self.connection.settings.insert_batch_size

    def _call(self, *args, **kwargs):
        return self.connection.call(*args, **kwargs)

    def tables(self) -> list[Table]:
        """The gallery's collections: its entries, and their region rows where it keeps them."""
        return [self.gallery] + ([self.parts] if self.regions else [])

    # -- bulk: scan, copy, delete by image ------------------------------------------------------
    def scan(self, collection: str, fields: list[str], batch_size: int | None = None) -> Iterator[list[dict]]:
        """Every row of ``collection`` in batches (pymilvus's query iterator)."""
        iterator = self._call("query_iterator", collection, batch_size=batch_size or self.batch, filter="",
                              output_fields=fields)
        try:
            while batch := iterator.next():
                yield batch
        finally:
            iterator.close()

    def of_images(self, collection: str, table: Table, image_ids: Sequence[int], fields: list[str]) -> Iterator[list[dict]]:
        """The rows of these images in ``collection`` (a version of ``table``), in batches."""
        step = max(1, self.batch // table.per_image)
        for i in range(0, len(image_ids), step):
            chunk = [int(x) for x in image_ids[i: i + step]]
            yield self._call("query", collection, filter=f"{table.image_field} in {chunk}", output_fields=fields)

    def copy(self, source: str, table: Table, write: Callable[[list[dict]], None],
             image_ids: Sequence[int] | None = None) -> int:
        """The one copy: the whole rows (ids, vectors, fields, no re-embedding) of ``source`` (a
        version of ``table``), all or those of ``image_ids``, handed to ``write`` in batches;
        the rows copied. An index rebuild, its catch-up and ``lookalike migrate`` use it."""
        batches = self.scan(source, table.fields) if image_ids is None else \
            self.of_images(source, table, image_ids, table.fields)
        copied = 0
        for batch in batches:
            if batch:
                write([plain(r) for r in batch])
                copied += len(batch)
        return copied

    def write(self, collection: str, rows: list[dict], *, write_locked: bool = False, method: str = "upsert") -> None:
        for i in range(0, len(rows), self.batch):
            self._call(method, collection, rows[i: i + self.batch], write_locked=write_locked)

    def image_ids(self, collection: str, table: Table) -> set[int]:
        field = table.image_field
        return {int(row[field]) for batch in self.scan(collection, [field]) for row in batch}

    def delete_images(self, collection: str, table: Table, image_ids: Sequence[int], *,
                      write_locked: bool = False) -> None:
        for i in range(0, len(image_ids), self.batch):
            chunk = [int(x) for x in image_ids[i: i + self.batch]]
            self._call("delete", collection, filter=f"{table.image_field} in {chunk}", write_locked=write_locked)

    # -- entries --------------------------------------------------------------------------------
    def _region_rows(self, entries: Sequence[Entry]) -> list[dict]:
        if not self.regions:
            return []
        for e in entries:
            if e.regions is not None and len(e.regions) != self.regions:
                raise ValueError(f"entry {e.id} has {len(e.regions)} region vectors; this gallery keeps "
                                 f"{self.regions}")
        return [row for e in entries for row in e.region_rows()]

    def upsert(self, entries: Iterable[Entry], *, write_locked: bool = False) -> int:
        self._ready()
        entries = list(entries)
        rows, parts = [e.to_row() for e in entries], self._region_rows(entries)  # both checked before a write
        with contextlib.nullcontext() if write_locked else self.connection.write_lock():
            self.router.check_write()
            self.write(self.gallery.alias, rows, write_locked=True)
            self.write(self.parts.alias, parts, write_locked=True)
        return len(entries)

    def insert_new(self, entries: Sequence[Entry]) -> set[int]:
        self._ready()
        with self._insert_lock, self.connection.write_lock():
            self.router.check_write()
            present = self.existing_ids([e.id for e in entries], consistency_level="Strong")
            new = [e for e in entries if e.id not in present]
            if new:
                rows, parts = [e.to_row() for e in new], self._region_rows(new)
                self._call("upsert", self.gallery.alias, rows, write_locked=True)
                self.write(self.parts.alias, parts, write_locked=True)
        return {e.id for e in new}

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Writers held off (this process's adds, and the machine's write lock): a rebuild's
        last step."""
        with self._insert_lock, self.connection.write_lock():
            yield

    def existing_ids(self, ids: Sequence[int], **kwargs) -> set[int]:
        if not ids:
            return set()
        self._ready()
        found: set[int] = set()
        for i in range(0, len(ids), self.batch):
            chunk = [int(x) for x in ids[i: i + self.batch]]
            found.update(r["id"] for r in self._call("query", self.router.read(self.gallery), filter=f"id in {chunk}",
                                                     output_fields=["id"], **kwargs))
        return found

    def delete(self, ids: Sequence[int]) -> int:
        self._ready()
        present = self.existing_ids(ids)
        if present:
            self._call("delete", self.gallery.alias, ids=sorted(present))
        if self.regions:  # after the entry; any left by a cut-short write too
            self.delete_images(self.parts.alias, self.parts, sorted(int(i) for i in ids))
        return len(present)

    def get(self, ids: Sequence[int], *, with_vectors: bool = False) -> list[Entry]:
        if not ids:
            return []
        self._ready()
        fields = OUTPUT_FIELDS + (["embedding"] if with_vectors else [])
        return [Entry.of(r) for r in self._call("get", self.router.read(self.gallery), ids=[int(i) for i in ids],
                                                 output_fields=fields)]

    def list(self, *, offset: int = 0, limit: int = 50, expr: str = "") -> list[Entry]:
        self._ready()
        rows = self._call("query", self.router.read(self.gallery), filter=expr or "id >= 0", output_fields=["id", *OUTPUT_FIELDS],
                          offset=offset, limit=limit)
        return [Entry.of(r) for r in rows]

    def entries(self, *, with_vectors: bool = False, with_regions: bool = False,
                batch_size: int | None = None) -> Iterator[list[Entry]]:
        """Every entry, in batches (``batch_size``, or the setting's); ``with_vectors``: with its
        vector; ``with_regions``: and its region vectors, where the gallery keeps them."""
        self._ready()
        fields = ["id", *OUTPUT_FIELDS] + (["embedding"] if with_vectors else [])
        for batch in self.scan(self.router.read(self.gallery), fields, batch_size):
            entries = [Entry.of(r) for r in batch]
            if with_regions and self.regions:
                self._attach_regions(entries)
            yield entries

    def _attach_regions(self, entries: list[Entry]) -> None:
        """Each entry's region vectors, in the layout's order (None where some are missing)."""
        parts: dict[int, dict[int, list]] = {}
        for batch in self.of_images(self.router.read(self.parts), self.parts, [e.id for e in entries],
                                    ["image", "region", "embedding"]):
            for row in batch:
                parts.setdefault(int(row["image"]), {})[int(row["region"])] = row["embedding"]
        for e in entries:
            found = parts.get(e.id, {})
            if len(found) == self.regions:
                e.regions = np.asarray([found[i] for i in range(self.regions)], dtype=np.float32)

    def count(self, *, expr: str = "") -> int:
        """Exact (Strong): a Milvus 2.3 server's count(*) lags a delete at Session consistency,
        whose timestamp it does not report. Off the search path: status and list totals."""
        self._ready()
        rows = self._call("query", self.router.read(self.gallery), filter=expr, output_fields=["count(*)"],
                          consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def flush(self) -> None:
        self._ready()
        for table in self.tables():
            self._call("flush", table.alias)
