"""The Serve application builder: ``deployments.app:build_app``.

Used by ``serve run config/serve.yaml``, ``serve deploy``, a KubeRay RayService's
serveConfigV2 and the tests. ``args`` (the Serve config's ``args:``) may name a settings
file (``config``) and override settings (``settings: {milvus: {uri: ...}}``).
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from lookalike.milvus.engines import share
from lookalike.settings import Settings, load_settings

from .embedder import Embedder
from .ingress import Ingress
from .searcher import Searcher

log = logging.getLogger("ray.serve")


def build_app(args: dict[str, Any] | None = None) -> Application:
    args = dict(args or {})
    unknown = set(args) - {"config", "settings"}
    if unknown:
        raise ValueError(f"unknown application args {sorted(unknown)}; expected 'config' and/or 'settings'")
    return build_from_settings(load_settings(args.get("config"), overrides=args.get("settings")))


def build_from_settings(settings: Settings, options: dict[str, dict] | None = None) -> Application:
    """``options``: per-deployment ``.options()`` (the Serve config file does this at deploy time)."""
    options = options or {}
    uri = share(settings.milvus)  # the replicas are separate processes: one shared Lite server
    if uri:
        log.info("the local Milvus for %s is served at %s", settings.milvus.uri, uri)
    embedder = Embedder.options(**options.get("Embedder", {})).bind(settings)
    searcher = Searcher.options(**options.get("Searcher", {})).bind(settings)
    return Ingress.options(**options.get("Ingress", {})).bind(embedder, searcher, settings)
