"""Ingress: the HTTP API (Starlette), composed with the Embedder and Searcher through
DeploymentHandles. Decodes and validates uploads itself (no torch here), so bad input is
answered with a 4xx before it reaches a GPU batch. Every route is listed in ``routes()``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from pathlib import Path

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lookalike.errors import BackendUnavailable, LookalikeError, NotFound, Unauthorized
from lookalike.images import PreparedImage, prepare
from lookalike.models import get_model
from lookalike.settings import Settings
from lookalike.store import LocalStore, make_store, object_key

from .inputs import Payload, fetch_image, float_param, id_param, int_param, label_param, read_payload

log = logging.getLogger("ray.serve")
WEB_DIR = Path(__file__).parent / "web"
VERSION = "v1"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def error_response(exc: LookalikeError, *, seed: bool = False) -> JSONResponse:
    body = {"error": exc.to_dict()}
    if seed:
        body = {"ok": False, "msg": exc.message, **body}
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(body, status_code=exc.status, headers=headers)


@serve.deployment(name="Ingress", max_ongoing_requests=200)
@serve.ingress()
class Ingress:
    def __init__(self, embedder: DeploymentHandle, searcher: DeploymentHandle, settings: Settings):
        self.settings = settings
        self.embedder = embedder
        self.searcher = searcher
        self.store = make_store(settings.store)
        self.model = get_model(settings.model.name)

    def __serve_build_asgi_app__(self) -> Starlette:
        app = Starlette(routes=self.routes(), exception_handlers={
            LookalikeError: self._on_error, HTTPException: self._on_http_error, Exception: self._on_crash,
        })
        return app

    def routes(self) -> list:
        web = [Mount("/static", StaticFiles(directory=WEB_DIR), name="static")] if WEB_DIR.is_dir() else []
        return [
            Route("/", self.page, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/api/v1/search", self.search, methods=["POST"]),
            Route("/api/v1/images", self.list_images, methods=["GET"]),
            Route("/api/v1/images", self.add_image, methods=["POST"]),
            Route("/api/v1/images/{id}", self.get_image, methods=["GET"]),
            Route("/api/v1/images/{id}", self.delete_image, methods=["DELETE"]),
            Route("/api/v1/images/{id}/similar", self.similar, methods=["GET"]),
            Route("/api/v1/index", self.build_index, methods=["POST"]),
            Route("/api/v1/status", self.status, methods=["GET"]),
            Route("/images/{key:path}", self.image_file, methods=["GET", "HEAD"]),
            # The seed's routes, so its front end works unchanged.
            Route("/search/", self.seed_search, methods=["POST"]),
            Route("/insert/", self.seed_insert, methods=["POST"]),
            Route("/indexing/", self.seed_indexing, methods=["POST"]),
            Route("/status/", self.seed_status, methods=["GET"]),
            *web,
        ]

    # -- errors ------------------------------------------------------------------------------
    async def _on_error(self, request: Request, exc: LookalikeError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
        return error_response(exc, seed=_is_seed(request))

    async def _on_http_error(self, request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        err = LookalikeError(exc.detail or "", code=code)
        err.status = exc.status_code
        return error_response(err, seed=_is_seed(request))

    async def _on_crash(self, request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        err = LookalikeError(f"internal error: {type(exc).__name__}", code="internal")
        err.status = 500
        return error_response(err, seed=_is_seed(request))

    # -- calls to the other deployments -------------------------------------------------------
    async def _remote(self, backend: str, handle: DeploymentHandle, method: str, *args):
        """Await a handle call with a deadline. Domain errors raised over there come back as
        themselves; a dead, stuck or overloaded deployment becomes a 503 naming it."""
        try:
            return await asyncio.wait_for(getattr(handle, method).remote(*args),
                                          timeout=self.settings.serve.handle_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise BackendUnavailable(backend, "timed out") from None
        except Exception as exc:
            cause = getattr(exc, "cause", None)  # Ray wraps remote exceptions in RayTaskError
            if isinstance(cause, LookalikeError):
                raise cause from None
            if isinstance(exc, LookalikeError):
                raise
            log.warning("%s.%s failed: %r", backend, method, exc)
            raise BackendUnavailable(backend, type(exc).__name__) from None

    async def _embed(self, prepared: PreparedImage):
        return await self._remote("embedder", self.embedder, "embed", prepared.pixels)

    async def _searcher(self, method: str, *args):
        return await self._remote("searcher", self.searcher, method, *args)

    # -- helpers -----------------------------------------------------------------------------
    def _check_key(self, request: Request) -> None:
        expected = self.settings.api.api_key.get_secret_value()
        if not expected:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized("this route needs the API key (Authorization: Bearer <key> or X-API-Key)")

    async def _image_bytes(self, payload: Payload, timings: dict) -> bytes:
        if payload.image is not None:
            return payload.image
        if not self.settings.api.url_fetch:
            raise LookalikeError("searching by URL is disabled on this server", code="url_fetch_disabled")
        started = time.perf_counter()
        data = await fetch_image(payload.url, max_bytes=self.settings.images.max_bytes,
                                 timeout_s=self.settings.api.url_fetch_timeout_s)
        timings["fetch_ms"] = _ms(time.perf_counter() - started)
        return data

    def _prepare(self, data: bytes) -> PreparedImage:
        return prepare(data, size=self.model.input_size, **self.settings.images.model_dump())

    def _public(self, item: dict) -> dict:
        return {**item, "id": str(item["id"]), "url": self.store.url(item["key"])}

    def _query_params(self, payload: Payload) -> tuple[int, str | None, float | None]:
        api = self.settings.api
        k = int_param(payload, "k", api.top_k_default, low=1, high=api.top_k_max)
        return k, label_param(payload), float_param(payload, "min_score", low=-1.0, high=1.0)

    async def _run_search(self, request: Request, payload: Payload) -> tuple[list[dict], dict]:
        timings: dict = {}
        k, label, min_score = self._query_params(payload)
        data = await self._image_bytes(payload, timings)
        started = time.perf_counter()
        prepared = await asyncio.to_thread(self._prepare, data)
        timings["decode_ms"] = _ms(time.perf_counter() - started)
        started = time.perf_counter()
        vector = await self._embed(prepared)
        timings["embed_ms"] = _ms(time.perf_counter() - started)
        started = time.perf_counter()
        hits = await self._searcher("search", vector, k, label, min_score)
        timings["search_ms"] = _ms(time.perf_counter() - started)
        return [self._public(h) for h in hits], timings

    # -- routes ------------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        index = WEB_DIR / "index.html"
        if not index.is_file():
            raise NotFound("no web page is installed")
        return FileResponse(index, media_type="text/html")

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def search(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        payload = await read_payload(request, self.settings)
        results, timings = await self._run_search(request, payload)
        timings["total_ms"] = _ms(time.perf_counter() - started)
        header = ", ".join(f"{name.removesuffix('_ms')};dur={value}" for name, value in timings.items())
        return JSONResponse({"results": results, "timings": timings}, headers={"Server-Timing": header})

    async def similar(self, request: Request) -> JSONResponse:
        image_id = id_param(request.path_params["id"])
        payload = Payload(fields=dict(request.query_params))
        k, label, min_score = self._query_params(payload)
        started = time.perf_counter()
        hits = await self._searcher("similar", image_id, k, label, min_score)
        timings = {"search_ms": _ms(time.perf_counter() - started)}
        return JSONResponse({"id": str(image_id), "results": [self._public(h) for h in hits], "timings": timings})

    async def add_image(self, request: Request) -> JSONResponse:
        self._check_key(request)
        payload = await read_payload(request, self.settings)
        item, created = await self._add(payload)
        return JSONResponse({**item, "created": created}, status_code=201 if created else 200)

    async def _add(self, payload: Payload) -> tuple[dict, bool]:
        label = label_param(payload, "label") or ""
        data = await self._image_bytes(payload, {})
        prepared = await asyncio.to_thread(self._prepare, data)
        if await self._searcher("exists", prepared.id):
            return self._public(await self._searcher("get", prepared.id)), False
        vector = await self._embed(prepared)
        key = object_key(prepared.id, prepared.extension)
        # The object first, then the entry: an entry never points at a missing image.
        await asyncio.to_thread(self.store.put, key, data, prepared.content_type)
        entry = {"id": prepared.id, "key": key, "label": label, "source": payload.name or payload.url or "",
                 "embedding": vector}
        await self._searcher("add", entry)
        return self._public({k: v for k, v in entry.items() if k != "embedding"}), True

    async def get_image(self, request: Request) -> JSONResponse:
        return JSONResponse(self._public(await self._searcher("get", id_param(request.path_params["id"]))))

    async def delete_image(self, request: Request) -> JSONResponse:
        self._check_key(request)
        entry = await self._searcher("delete", id_param(request.path_params["id"]))
        await asyncio.to_thread(self.store.delete, entry["key"])
        return JSONResponse({"deleted": str(entry["id"]), "key": entry["key"]})

    async def list_images(self, request: Request) -> JSONResponse:
        payload = Payload(fields=dict(request.query_params))
        offset = int_param(payload, "offset", 0, low=0, high=10_000_000)
        limit = int_param(payload, "limit", 50, low=1, high=self.settings.api.page_size_max)
        page = await self._searcher("list", offset, limit, label_param(payload))
        return JSONResponse({**page, "items": [self._public(i) for i in page["items"]]})

    async def build_index(self, request: Request) -> JSONResponse:
        self._check_key(request)
        started = time.perf_counter()
        index = await self._searcher("build_index")
        return JSONResponse({"index": index, "seconds": round(time.perf_counter() - started, 3)})

    async def status(self, request: Request) -> JSONResponse:
        return JSONResponse(await self._status())

    async def _status(self) -> dict:
        async def safe(backend, handle, method):
            try:
                return await self._remote(backend, handle, method)
            except BackendUnavailable as exc:
                return {"healthy": False, "error": exc.message}

        milvus, model = await asyncio.gather(safe("searcher", self.searcher, "status"),
                                             safe("embedder", self.embedder, "info"))
        model.setdefault("healthy", "error" not in model)
        store = await asyncio.to_thread(self.store.describe)
        healthy = all(part.get("healthy") for part in (milvus, model, store))
        return {
            "status": "ok" if healthy else "degraded",
            "count": milvus.get("count"),
            "dimension": self.model.dim,
            "model": model,
            "index": milvus.get("index"),
            "milvus": {k: v for k, v in milvus.items() if k != "index"},
            "store": store,
            "version": VERSION,
        }

    async def image_file(self, request: Request) -> Response:
        key = request.path_params["key"]
        if isinstance(self.store, LocalStore):
            path = self.store.path(key)
            if not path.is_file():
                raise NotFound(f"no stored image {key!r}")
            return FileResponse(path, headers={"Cache-Control": "public, max-age=86400, immutable"})
        return RedirectResponse(await asyncio.to_thread(self.store.url, key), status_code=307)

    # -- the seed's routes ---------------------------------------------------------------------
    async def seed_search(self, request: Request) -> JSONResponse:
        payload = await read_payload(request, self.settings)
        if payload.get("topk") is not None:
            payload.fields.setdefault("k", payload.get("topk"))
        results, timings = await self._run_search(request, payload)
        body = {"ok": True, **{f"image{i}": r["url"] for i, r in enumerate(results, start=1)}}
        body["embedding_time"] = round((timings["decode_ms"] + timings["embed_ms"]) / 1000, 4)
        body["search_time"] = round(timings["search_ms"] / 1000, 4)
        return JSONResponse(body)

    async def seed_insert(self, request: Request) -> JSONResponse:
        self._check_key(request)
        item, created = await self._add(await read_payload(request, self.settings))
        return JSONResponse({"ok": True, "id": item["id"], "url": item["url"], "created": created})

    async def seed_indexing(self, request: Request) -> JSONResponse:
        self._check_key(request)
        return JSONResponse({"ok": True, "index": await self._searcher("build_index")})

    async def seed_status(self, request: Request) -> JSONResponse:
        status = await self._status()
        return JSONResponse({"ok": status["status"] == "ok", **status})


def _is_seed(request: Request) -> bool:
    return request.url.path in ("/search/", "/insert/", "/indexing/", "/status/")
