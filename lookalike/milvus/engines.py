"""Which Milvus a process talks to, and how it reaches it: ``open_catalog`` is the one way.

- ``milvus.uri`` a server URI (``http://host:19530``): that server, as is.
- ``milvus.uri`` a local path (``data/lookalike.db``): the data stay on this machine, in one of
  two engines (``milvus.engine``):
  - ``lite``: embedded Milvus Lite, fast up to ~25,000 images; shared between processes
    through its supervised server (``lite_server.py``);
  - ``local_server``: the standalone Milvus server that Lookalike starts and owns, in its own
    loopback-only namespaces behind a Unix socket (``server.py``), fast at 200,000;
  - ``auto`` (the default): what this data directory remembers (``<uri>.engine.json``), else
    Lite; an ingest of more than ``milvus.lite_fast_max_rows`` images into a fresh gallery picks
    the local server and writes that down, so every later serve, ingest and CLI run uses it.

Both local engines are started by whichever process needs them first and stopped once no
process uses them (``supervisor.py``); ``serving`` keeps one up around a command.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

from lookalike.milvus.catalog import Catalog
from lookalike.milvus.lite_server import LiteServer
from lookalike.milvus.server import MilvusServer, namespace_refusal

if TYPE_CHECKING:
    from lookalike.embedding.images import Box
    from lookalike.settings import MilvusSettings, Settings
    from lookalike.milvus.supervisor import LocalService

log = logging.getLogger(__name__)

Engine = Literal["server", "lite", "local_server"]


def engine(settings: "MilvusSettings") -> Engine:
    """The engine this process uses: a server URI is a server; a local path is the setting,
    or under ``auto`` what the data directory remembers (Lite when it remembers nothing)."""
    if not settings.is_lite:
        return "server"
    if settings.engine != "auto":
        return settings.engine
    return remembered(settings) or "lite"


def remembered(settings: "MilvusSettings") -> Engine | None:
    try:
        choice = json.loads(settings.engine_file.read_text())["engine"]
    except (OSError, ValueError, KeyError):
        return None
    return choice if choice in ("lite", "local_server") else None


def remember(settings: "MilvusSettings", choice: Engine, reason: str) -> None:
    settings.engine_file.parent.mkdir(parents=True, exist_ok=True)
    settings.engine_file.write_text(json.dumps({
        "engine": choice, "reason": reason, "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }, indent=2) + "\n")
    log.info("%s: from now on Milvus is %s (%s)", settings.engine_file, choice, reason)


def choose_for_ingest(settings: "MilvusSettings", images: int, dim: int) -> Engine:
    """Before ``images`` are ingested: under ``auto``, a fresh gallery larger than Milvus Lite
    stays fast for goes to the local Milvus server, and the data directory remembers it. A
    gallery already in Lite stays there (``lookalike migrate`` moves it); so does every gallery
    where the local server cannot run (the refusal is logged)."""
    current = engine(settings)
    limit = settings.lite_fast_max_rows
    if settings.engine != "auto" or current != "lite" or images <= limit or remembered(settings):
        return current
    held = lite_rows(settings, dim)
    if held:
        log.warning("%d images to ingest into a Milvus Lite gallery of %d, which stays fast up to about %d: "
                    "`lookalike migrate --to local` moves it to the local Milvus server", images, held, limit)
        return current
    refusal = namespace_refusal()
    if refusal:
        log.warning("%d images is past Milvus Lite's fast size (%d), but %s", images, limit, refusal)
        return current
    remember(settings, "local_server", f"a new gallery of {images} images, past Milvus Lite's fast size ({limit})")
    return "local_server"


def lite_rows(settings: "MilvusSettings", dim: int) -> int:
    """Entities in the configured collection of the Lite data directory (0 if it has none)."""
    if not Path(settings.uri).exists():
        return 0
    catalog = open_catalog(settings.model_copy(update={"engine": "lite"}), dim)
    try:
        return catalog.count() if catalog.exists() else 0
    finally:
        catalog.close()


def local_service(settings: "MilvusSettings") -> "LocalService | None":
    """The local process that serves the configured Milvus to several processes, if any."""
    chosen = engine(settings)
    if chosen == "local_server":
        return MilvusServer(settings.local_server_path)
    if chosen == "lite" and settings.lite_server:
        return LiteServer(settings.uri)
    return None


def share(settings: "MilvusSettings") -> str | None:
    """The URI of the configured local Milvus's shared process, started if needed, with this
    process holding a lease on it; None for a server URI, or Lite with sharing off."""
    service = local_service(settings)
    if service is None:
        return None
    return service.ensure(settings.local_start_timeout_s, settings.local_idle_stop_s)


@contextmanager
def serving(settings: "MilvusSettings"):
    """While the block runs, the configured local Milvus is served to other processes (yields
    the URI; None when there is nothing local to serve). A process this started is stopped at
    the end; one that was already running is left to its other leaseholders."""
    service = local_service(settings)
    if service is None:
        yield None
        return
    service.lease()
    uri, started = service.start(settings.local_start_timeout_s, settings.local_idle_stop_s)
    try:
        yield uri
    finally:
        if started:
            service.stop()


def gallery_catalog(settings: "Settings", *, shared: bool = True) -> Catalog:
    """The catalog of the configured gallery, for vectors of the configured model and descriptor
    (recorded with a new collection, checked against an existing one), with its region rows
    where the settings keep them."""
    from lookalike.embedding.descriptors import descriptor_name
    from lookalike.embedding.models import get_model
    from lookalike.embedding.regions import boxes

    spec = get_model(settings.model)
    return open_catalog(settings.milvus, spec.dim, shared=shared,
                        descriptor=descriptor_name(settings.model, settings.images, spec),
                        regions=boxes(settings.model.regions), region_margin=settings.model.regions.margin)


def open_catalog(settings: "MilvusSettings", dim: int, *, shared: bool = False, descriptor: str = "",
                 regions: Sequence["Box"] = (), region_margin: float = 0.0) -> Catalog:
    """A catalog for the configured Milvus. A server URI is used as is; the local server is
    always reached through its supervised process. A Lite directory shared through its server
    (``lite_server``) is joined if that runs, started if ``shared`` (the caller is one of several
    processes), else opened in-process (a one-shot command while nothing else runs). Joined or
    started, the catalog finds the process again by itself when it reconnects. ``descriptor``:
    what the vectors are (``gallery_catalog``); empty for vectors of no model (benchmarks).
    ``regions``: the parts of each image kept as rows of their own (``regions.boxes``), and
    how much lower their scores count (``region_margin``)."""
    chosen = engine(settings)
    kept = {"descriptor": descriptor, "regions": regions, "region_margin": region_margin}
    if chosen == "server":
        return Catalog(settings, dim, **kept)
    service = local_service(settings)
    if chosen == "lite":
        Path(settings.uri).parent.mkdir(parents=True, exist_ok=True)
        lock = LiteServer(settings.uri).write_lock
        if service is None or (not shared and service.running_uri() is None):
            return Catalog(settings, dim, write_lock=lock, embedded=True, **kept)
        return Catalog(settings, dim, uri=share(settings), locate=lambda: share(settings), write_lock=lock,
                       embedded=True, **kept)
    return Catalog(settings, dim, uri=share(settings), locate=lambda: share(settings), write_lock=service.write_lock,
                   **kept)

