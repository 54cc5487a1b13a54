"""The gallery's collections and their versions: each is an alias (``images``) over a
versioned collection (``images__1``, ...), made, checked and loaded once (``ensure_ready``).
An index rebuild fills the next version while the current one answers, then moves the alias;
the region rows, when kept, follow the same scheme beside it (``images_regions__1``, ...).
A re-embed under another model (``stage``, then ``switch``) fills the next version behind a
staging alias (``images_reembed``) and moves the alias the same way, keeping the previous
version for the replicas that still run the previous model (``routing.py``) until the next
re-embed."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lookalike.errors import Conflict, GalleryMoved, NotFound
from lookalike.milvus import schema
from lookalike.milvus.connection import Connection
from lookalike.milvus.routing import Router, holds, staging_tables, version_number
from lookalike.milvus.rows import Rows
from lookalike.milvus.schema import Table
from lookalike.milvus.search import search_params
from lookalike.retry import wait_until

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Staged:
    """A re-embed's next version: the gallery's version now (and what it holds), the staging
    alias and the collection behind it; ``since``: when it was made (monotonic)."""

    current: str
    recorded: str | None
    alias: str
    into: str
    since: float = float("-inf")


class Versions:
    def __init__(self, connection: Connection, rows: Rows, dim: int, descriptor: str, router: Router):
        self.connection, self.rows, self.dim, self.descriptor = connection, rows, dim, descriptor
        self.router = router
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
                name = self._routed(table)
                schema.check(self.connection, table._replace(alias=name), self.dim, self.descriptor,
                             self.rows.gallery.alias)
                if not self._call("list_indexes", name):  # one made before indexes were: made here
                    schema.create_index(self.connection, name, exist_ok=True, has_rows=True)
                self._call("load_collection", name, timeout=self.settings.index.build_timeout_s)
            self._ready_at = generation

    def _create(self, table: Table) -> None:
        from pymilvus.exceptions import MilvusException

        first = f"{table.alias}__1"
        try:  # the alias last: once it is there, the collection and its index are
            schema.create(self.connection, first, table, self.dim, self.descriptor)
            schema.create_index(self.connection, first)
            self._call("create_alias", first, table.alias)
        except MilvusException as exc:  # another process (a second replica starting) created it first
            if "exist" not in str(exc.message):
                raise
            # The other process makes the collection and its index first, its alias last: wait for it.
            wait_until(lambda: self._call("has_collection", table.alias), self.settings.timeout_s,
                       f"{table.alias}, being made by another process", interval_s=0.1, retry_on=())
            schema.check(self.connection, table, self.dim, self.descriptor, self.rows.gallery.alias)
            return
        log.info("created collection %s as %s (dim %d)", table.alias, first, self.dim)

    def _routed(self, table: Table) -> str:
        """Where this process reads ``table``: its alias, or the version of its model kept after a
        re-embed; the alias where none holds it (``schema.check`` then says why it is refused)."""
        try:
            return self.router.read(table)
        except GalleryMoved:
            return table.alias

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
        routes = self.router.routes(fresh=True)
        if routes.staging:
            raise Conflict("a re-embed of the gallery is running; rebuild the index after it")
        if not holds(routes.recorded, self.descriptor):
            raise GalleryMoved(self.descriptor, routes.recorded, writing=True)
        versions = [(table, *self._next_version(table, say)) for table in self.rows.tables()]
        with self.rows.held():
            for table, old, new, there in versions:
                alias = table.alias
                now = self.rows.image_ids(old, table)
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
        retiring = [old for table, old, _, _ in versions if old != table.alias]
        if retiring:
            time.sleep(self.settings.index.retire_after_s)  # searches sent to them before the move
        for old in retiring:
            say(f"dropping {old}")
            self._call("drop_collection", old)
        return self.index_info()

    def _next_version(self, table: Table, say: Callable[[str], None]) -> tuple[str, str, set[int]]:
        """The collection behind ``table``'s alias copied into its next version, indexed and
        loaded (writes go on meanwhile); (the current version, the next, the images copied:
        what the next holds, as nothing else writes there)."""
        old = self.physical(table.alias)  # unflushed rows too: a query reads growing segments
        base, _, version = old.rpartition("__")
        new = f"{base}__{int(version) + 1}" if version.isdigit() and base else f"{old}__1"
        if self._call("has_collection", new):  # left by a rebuild that died half-way
            self._call("drop_collection", new)
        schema.create(self.connection, new, table, self.dim, self.descriptor)
        schema.create_index(self.connection, new)
        say(f"copying {old} into {new}")
        images: set[int] = set()

        def write(rows: list[dict]) -> None:
            images.update(int(row[table.image_field]) for row in rows)
            self.rows.write(new, rows, method="insert")

        copied = self.rows.copy(old, table, write)
        self._call("flush", new)
        say(f"copied {copied} rows; building the index")
        self.wait_for_index(self.settings.index.build_timeout_s, collection=new)
        self._call("load_collection", new, timeout=self.settings.index.build_timeout_s)
        self._wait_until_searchable(new)
        return old, new, images

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
        """Drop the collections: each alias, every version behind it or kept, and a re-embed's."""
        tables = self.rows.tables()
        for table in [*tables, *staging_tables(self.rows.gallery.alias)]:
            if self._call("has_collection", table.alias) and self.physical(table.alias) != table.alias:
                self._call("drop_alias", table.alias)
        for name in self._call("list_collections"):  # the versions (a re-embed's among them), or one made before
            if any(name == t.alias or version_number(name, t.alias) is not None for t in tables):
                self._call("drop_collection", name)
        self._ready_at = None

    # -- re-embedding under another model -----------------------------------------------------
    def stage(self, say: Callable[[str], None]) -> Staged:
        """The next version of each collection for this descriptor (and dimension), made empty,
        indexed and loaded behind the staging aliases, or found there to resume a re-embed
        that stopped; versions kept by an earlier re-embed are dropped."""
        gallery = self.rows.gallery.alias
        if not self._call("has_collection", gallery):
            raise NotFound(f"there is no gallery {gallery!r} to re-embed")
        current = self.physical(gallery)
        if current == gallery:
            raise Conflict(f"collection {gallery!r} was made before versions; rebuild its index once first "
                           "(POST /api/v1/index), then re-embed")
        recorded = self.router.routes(fresh=True).recorded
        if holds(recorded, self.descriptor):
            raise Conflict(f"the gallery already holds {self.descriptor} vectors: there is nothing to re-embed")
        staging = staging_tables(gallery)
        if self._call("has_collection", staging[0].alias):
            info = self._call("describe_collection", staging[0].alias)
            if (info.get("properties") or {}).get(schema.DESCRIPTOR_PROPERTY) == self.descriptor:
                say(f"resuming the re-embed into {info['collection_name']}")
                return Staged(current, recorded, staging[0].alias, info["collection_name"])
            say(f"dropping {info['collection_name']}, a re-embed into other vectors that stopped")
            self._drop_staged()
        self._retire(keep={self.physical(t.alias) for t in self.rows.tables() if self._call("has_collection", t.alias)},
                     say=say)
        number = 1 + max((n for name in self._call("list_collections") for t in self.rows.tables()
                          if (n := version_number(name, t.alias)) is not None), default=0)
        for table, stage in zip(self.rows.tables(), staging):
            name = f"{table.alias}__{number}"
            schema.create(self.connection, name, table, self.dim, self.descriptor)
            schema.create_index(self.connection, name)
            self._call("load_collection", name, timeout=self.settings.index.build_timeout_s)
            self._call("create_alias", name, stage.alias)
        say(f"made {gallery}__{number} for {self.descriptor} vectors (the gallery holds {recorded} ones)")
        return Staged(current, recorded, staging[0].alias, f"{gallery}__{number}", since=time.monotonic())

    def switch(self, staged: Staged, catch_up: Callable[[list[int]], None], say: Callable[[str], None]) -> int:
        """Move the aliases to the staged version once it holds exactly the gallery's images:
        ``catch_up`` embeds into it the images written to the gallery since (their ids; with
        writers going on), then, with writers held off, the images deleted meanwhile go and the
        aliases move, unless more were written in between (then again, up to
        ``index.switch_attempts`` times). The previous version is kept for the replicas of the
        previous model. Returns the count."""
        # Every replica checks its routes at least this often: by now each has pinned its reads.
        time.sleep(max(0.0, staged.since + 2 * self.settings.route_check_s - time.monotonic()))
        gallery, entries = self.rows.gallery.alias, self.rows.gallery
        pairs = list(zip(self.rows.tables(), staging_tables(gallery)))
        missing: set[int] = set()
        for _ in range(self.settings.index.switch_attempts):
            self._call("flush", gallery)
            catch_up(sorted(self.rows.image_ids(staged.current, entries) - self.rows.image_ids(staged.into, entries)))
            self._call("flush", staged.alias)
            with self.rows.held():
                now = self.rows.image_ids(staged.current, entries)
                missing = now - self.rows.image_ids(staged.into, entries)
                if missing:
                    continue
                for table, stage in pairs:
                    there = self.rows.image_ids(self.physical(stage.alias), table)
                    if there - now:  # deleted from the gallery meanwhile
                        self.rows.delete_images(self.physical(stage.alias), table, sorted(there - now),
                                                write_locked=True)
                # Every alias moves before any staging alias goes: a replica that finds no staging
                # alias must find the gallery moved (routing.Router._check reads in that order).
                for table, stage in pairs:
                    verb = "alter_alias" if self._call("has_collection", table.alias) else "create_alias"
                    self._call(verb, self.physical(stage.alias), table.alias, write_locked=True)
                for _, stage in pairs:
                    self._call("drop_alias", stage.alias, write_locked=True)
            say(f"{gallery} now points at {staged.into} ({len(now)} images of {self.descriptor}); "
                f"{staged.current} ({staged.recorded}) is kept for replicas of that model until the next re-embed")
            return len(now)
        raise Conflict(f"{len(missing)} images of the gallery are not in {staged.into} (ids {sorted(missing)[:10]}): "
                       "their originals could not be read or embedded (see the report), or writes kept coming; "
                       f"the gallery stays on {staged.current}. Run the re-embed again to resume")

    def _drop_staged(self) -> None:
        for stage in staging_tables(self.rows.gallery.alias):
            if self._call("has_collection", stage.alias):
                physical = self.physical(stage.alias)
                self._call("drop_alias", stage.alias)
                self._call("drop_collection", physical)

    def _retire(self, keep: set[str], say: Callable[[str], None]) -> None:
        """Drop the versions of the gallery's collections other than ``keep``."""
        for name in self._call("list_collections"):
            if name not in keep and any(version_number(name, t.alias) is not None for t in self.rows.tables()):
                say(f"dropping {name}, kept from an earlier re-embed")
                self._call("drop_collection", name)

    def describe_reembed(self) -> dict:
        """For the status: a re-embed's progress, and where this process's reads go when not
        to the alias."""
        out = self.router.describe()
        if "reembed" in out:
            staging = staging_tables(self.rows.gallery.alias)[0].alias
            info = self._call("describe_collection", staging)
            rows = self._call("query", staging, filter="", output_fields=["count(*)"])
            out["reembed"] = {"into": info["collection_name"],
                              "descriptor": (info.get("properties") or {}).get(schema.DESCRIPTOR_PROPERTY),
                              "done": int(rows[0]["count(*)"]) if rows else 0}
        return out

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
