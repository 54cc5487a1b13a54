"""The gallery's collections and their versions: each is an alias (``images``) over a
versioned collection (``images__1``, ...), made, checked and loaded once (``ensure_ready``).
An index rebuild fills the next version while the current one answers, then moves the alias;
the region rows, when kept, follow the same scheme beside it (``images_regions__1``, ...)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import Callable

import numpy as np

from lookalike.milvus import schema
from lookalike.milvus.connection import Connection
from lookalike.milvus.rows import Rows
from lookalike.milvus.schema import Table
from lookalike.milvus.search import search_params
from lookalike.retry import wait_until

log = logging.getLogger(__name__)


class Versions:
    def __init__(self, connection: Connection, rows: Rows, dim: int, descriptor: str):
        self.connection, self.rows, self.dim, self.descriptor = connection, rows, dim, descriptor
        self._ready_at: int | None = None  # the connection's generation when the collections were checked
        self._ready_lock = threading.Lock()

    @property
    def settings(self):
        return self.connection.settings

    def _call(self, *args, **kwargs):
        return self.connection.call(*args, **kwargs)

    def ensure_ready(self) -> None:
        """Create the collections and their indexes if missing, check them, load them. Once per
        connection, whichever of the threads calling at once gets here first."""
        if self._ready_at == self.connection.generation:
            return
        with self._ready_lock:
            generation = self.connection.generation
            if self._ready_at == generation:
                return
            for table in self.rows.tables():
                if not self._call("has_collection", table.alias):
                    self._create(table)
                else:
                    schema.check(self.connection, table, self.dim, self.descriptor, self.rows.gallery.alias)
                if not self._call("list_indexes", table.alias):
                    schema.create_index(self.connection, table.alias)
                self._call("load_collection", table.alias, timeout=self.settings.index.build_timeout_s)
            self._ready_at = generation

    def _create(self, table: Table) -> None:
        from pymilvus.exceptions import MilvusException

        first = f"{table.alias}__1"
        try:
            schema.create(self.connection, first, table, self.dim, self.descriptor)
            self._call("create_alias", first, table.alias)
        except MilvusException as exc:  # another process (a second replica starting) created it first
            if "exist" not in str(exc.message):
                raise
            # The other process makes the collection first and its alias just after: wait for both.
            wait_until(lambda: self._call("has_collection", table.alias), self.settings.timeout_s,
                       f"{table.alias}, being made by another process", interval_s=0.1, retry_on=())
            schema.check(self.connection, table, self.dim, self.descriptor, self.rows.gallery.alias)
            return
        log.info("created collection %s as %s (dim %d)", table.alias, first, self.dim)

    def physical(self, alias: str | None = None) -> str:
        """The collection behind the name (the name itself for one created before aliases)."""
        return self._call("describe_collection", alias or self.rows.gallery.alias)["collection_name"]

    def build_index(self, progress: Callable[[str], None] | None = None) -> dict:
        """(Re)build the index with the configured type and parameters, without taking search
        down: the rows are copied into the next version of each collection, indexed and loaded
        there while the current one answers; then, with writers held off (this machine's write
        lock), the rows written meanwhile are carried over, the aliases move, and the old
        versions are dropped. Returns index_info."""
        say = progress or (lambda message: log.info("%s: %s", self.rows.gallery.alias, message))
        self.ensure_ready()
        versions = [(table, *self._next_version(table, say)) for table in self.rows.tables()]
        with self.rows.held():
            for table, old, new in versions:
                alias = table.alias
                now, there = self.rows.image_ids(old, table), self.rows.image_ids(new, table)
                self.rows.copy(old, table, lambda rows: self.rows.write(new, rows, write_locked=True),
                               sorted(now - there))
                if there - now:
                    self.rows.delete_images(new, table, sorted(there - now), write_locked=True)
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

    def _next_version(self, table: Table, say: Callable[[str], None]) -> tuple[str, str]:
        """The collection behind ``table``'s alias copied into its next version, indexed and
        loaded (writes go on meanwhile); (the current version, the next)."""
        self._call("flush", table.alias)
        old = self.physical(table.alias)
        base, _, version = old.rpartition("__")
        new = f"{base}__{int(version) + 1}" if version.isdigit() and base else f"{old}__1"
        if self._call("has_collection", new):  # left by a rebuild that died half-way
            self._call("drop_collection", new)
        schema.create(self.connection, new, table, self.dim, self.descriptor)
        schema.create_index(self.connection, new)
        say(f"copying {old} into {new}")
        copied = self.rows.copy(old, table, lambda rows: self.rows.write(new, rows, method="insert"))
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
        wait_until(lambda: self._call("search", collection, data=probe, limit=1,
                                      search_params=search_params(self.settings)) is not None,
                   self.settings.index.build_timeout_s, f"{collection} to answer a search", interval_s=0.5,
                   retry_on=(MilvusException,))

    def drop(self) -> None:
        """Drop the collections: each alias and every version behind it."""
        for table in self.rows.tables():
            if not self._call("has_collection", table.alias):
                continue
            physical = self.physical(table.alias)
            if physical != table.alias:
                self._call("drop_alias", table.alias)
            self._call("drop_collection", physical)
        self._ready_at = None

    def index_info(self, collection: str | None = None) -> dict:
        collection = collection or self.rows.gallery.alias
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
        info: dict = {}

        def built() -> bool:
            nonlocal info
            info = self.index_info(collection)
            return not info or (info["pending_index_rows"] == 0 and info["state"] in ("Finished", None))

        with contextlib.suppress(TimeoutError):  # past it: as far as it got, for the caller to report
            wait_until(built, timeout_s, "the index", interval_s=0.5, retry_on=())
        return info
