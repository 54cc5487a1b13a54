"""Which collection a read of the gallery goes to, and whether a write may go to it.

A read goes to the alias (``images``), so an index rebuild's move is followed at once, when the
alias holds vectors of the asker's descriptor and no re-embed is staging the next version. A
re-embed (``versions.Versions.stage`` / ``switch``) fills the next version under another model
behind a staging alias (``images_reembed``), then moves the alias to it. Replicas still running
the previous model must keep answering from the version their model made, so while a staging
alias exists, and once the alias holds another descriptor, reads of a descriptor are pinned to
the physical collection that holds it (``images__3``). A search's own vector may come from an
Embedder replica of the other model during a rolling update: it is routed by its descriptor,
so it never meets vectors of another model. What is routed is checked at most every
``milvus.route_check_s`` (two metadata calls); a re-embed waits twice that long after staging
before it moves the alias, so every replica has pinned its reads by then.

A write goes to the alias only, checked first with the write lock held: once the alias holds
another model's vectors it is refused (``GalleryMoved``, a 503 the client retries), never
written where the new version would not see it.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from lookalike.embedding.descriptors import taken_as_unrecorded
from lookalike.errors import GalleryMoved
from lookalike.milvus.connection import Connection
from lookalike.milvus.schema import DESCRIPTOR_PROPERTY, Table, tables

STAGING_SUFFIX = "_reembed"


def staging_alias(alias: str) -> str:
    """The alias a re-embed of ``alias`` fills its next version behind."""
    return alias + STAGING_SUFFIX


def staging_tables(alias: str) -> tuple[Table, Table]:
    """The staging aliases of the gallery ``alias``'s collections (its entries, its region rows)."""
    return tables(staging_alias(alias), 1)


def version_number(name: str, alias: str) -> int | None:
    """n for a version ``<alias>__n`` of ``alias``, else None."""
    match = re.fullmatch(re.escape(alias) + r"__(\d+)", name)
    return int(match.group(1)) if match else None


def holds(recorded: str | None, descriptor: str) -> bool:
    """Whether a collection recording ``recorded`` holds vectors of ``descriptor`` (one made
    before descriptors were recorded holds average-pooled ones)."""
    if not descriptor:
        return True
    return taken_as_unrecorded(descriptor) if recorded is None else recorded == descriptor


@dataclass
class Routes:
    """What the alias holds, as last checked."""

    physical: str = ""  # the collection behind the gallery's alias
    recorded: str | None = None  # its descriptor
    staging: bool = False  # a re-embed is filling the next version
    pinned: dict[str, dict[str, str]] = field(default_factory=dict)  # descriptor -> table alias -> collection
    checked_at: float = float("-inf")
    generation: int = -1


class Router:
    def __init__(self, connection: Connection, tables: list[Table], descriptor: str):
        """``tables``: the gallery's collections (the entries first); ``descriptor``: what this
        process's vectors are."""
        self.connection, self.tables, self.descriptor = connection, tables, descriptor
        self.gallery = tables[0].alias
        self._routes = Routes()
        self._lock = threading.Lock()

    def _call(self, *args, **kwargs):
        return self.connection.call(*args, **kwargs)

    @property
    def interval_s(self) -> float:
        return self.connection.settings.route_check_s

    def routes(self, *, fresh: bool = False) -> Routes:
        routes = self._routes
        if not fresh and routes.generation == self.connection.generation and \
                time.monotonic() - routes.checked_at < self.interval_s:
            return routes
        with self._lock:
            if not fresh and self._routes is not routes:  # another thread has just checked
                return self._routes
            self._routes = self._check(routes)
            return self._routes

    def _check(self, previous: Routes) -> Routes:
        # The staging alias first: a re-embed moves every alias of the gallery before it drops
        # the staging ones, so a check that finds no staging alias finds the aliases moved too.
        # (In the other order a check could see the previous model's alias and no staging alias
        # at once, and send that model's reads to the new version until the next check: a busy
        # CI run saw it.) Each alias's collection and descriptor come from one call, so a pin
        # names a collection that holds the descriptor, even while the aliases move.
        # Its time is when it starts: on a busy machine the calls may take longer than the
        # interval, and what they saw must not be trusted past when the first was made.
        started = time.monotonic()
        staging = bool(self._call("has_collection", staging_alias(self.gallery)))
        described = {t.alias: self._describe(t.alias) for t in self.tables}
        physical, recorded = described[self.gallery]
        now = Routes(physical=physical, recorded=recorded, staging=staging, checked_at=started,
                     generation=self.connection.generation)
        if previous.generation == now.generation:
            now.pinned = dict(previous.pinned)  # a version's descriptor never changes
        if now.staging:  # the current version, by name, for the switch to come
            for descriptor in {recorded, self.descriptor}:
                if descriptor and all(holds(held, descriptor) for _, held in described.values()):
                    now.pinned[descriptor] = {alias: name for alias, (name, _) in described.items()}
        return now

    def _describe(self, alias: str) -> tuple[str, str | None]:
        """The collection behind ``alias`` and the descriptor it records (from one call)."""
        if alias != self.gallery and not self._call("has_collection", alias):
            return alias, None
        info = self._call("describe_collection", alias)
        return info["collection_name"], (info.get("properties") or {}).get(DESCRIPTOR_PROPERTY)

    def read(self, table: Table, descriptor: str = "") -> str:
        """The collection a read of ``table`` with vectors of ``descriptor`` (default: this
        process's) goes to."""
        descriptor = descriptor or self.descriptor
        routes = self.routes()
        if holds(routes.recorded, descriptor) and not routes.staging:
            return table.alias
        pinned = routes.pinned.get(descriptor) or self._find(descriptor, routes)
        if table.alias not in pinned:
            raise GalleryMoved(descriptor, routes.recorded)
        return pinned[table.alias]

    def _find(self, descriptor: str, routes: Routes) -> dict[str, str]:
        """The newest complete version of each table whose vectors are ``descriptor``'s (kept
        after a re-embed for the replicas of the previous model); {} if there is none."""
        staged = {self._describe(t.alias)[0] for t in staging_tables(self.gallery)} if routes.staging else set()
        collections = self._call("list_collections")
        found: dict[str, str] = {}
        for table in self.tables:
            versions = sorted(((n, name) for name in collections
                               if (n := version_number(name, table.alias)) is not None and name not in staged),
                              reverse=True)
            for _, name in versions:
                properties = self._call("describe_collection", name).get("properties") or {}
                if properties.get(DESCRIPTOR_PROPERTY) == descriptor:
                    found[table.alias] = name
                    break
        if len(found) == len(self.tables):
            with self._lock:
                routes.pinned[descriptor] = found
            return found
        return {}

    def check_write(self) -> None:
        """Before a write (with the write lock held): the alias holds this process's vectors."""
        if not self.descriptor:
            return
        routes = self.routes(fresh=True)
        if not holds(routes.recorded, self.descriptor):
            raise GalleryMoved(self.descriptor, routes.recorded, writing=True)

    def describe(self) -> dict:
        """For the status: where this process's reads go, where that is not the alias."""
        routes = self.routes()
        out: dict = {}
        if routes.staging:
            out["reembed"] = "a re-embed is filling the next version"
        if not holds(routes.recorded, self.descriptor):
            pinned = routes.pinned.get(self.descriptor) or self._find(self.descriptor, routes)
            out["moved_to"] = routes.recorded
            out["answering_from"] = pinned.get(self.gallery)
        return out
