"""Ingress: the HTTP API's routes on the FastAPI app of ``web_app.py``, behind ``@serve.ingress``
(Ray Serve's documented ingress), composed with the Embedder and Searcher through
DeploymentHandles; the original server's routes come with it (``original_routes.py``).

It decodes and validates uploads itself (no torch here), so bad input is answered with a 4xx
before it reaches a GPU batch. The models in ``api_models.py`` give /openapi.json and /docs;
``inputs.py`` reads the image in its four forms (multipart, JSON base64 or URL, raw body), which
no framework does in one route; ``access.py`` decides who may write and which origins may read;
``disclosure.py`` what anonymous readers see.
"""


import asyncio
import time
from typing import Annotated

import numpy as np
from fastapi import Depends, Path, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from lookalike.storage import url_fetch
from lookalike.errors import BackendUnavailable, LookalikeError, NotFound
from lookalike.embedding.images import Box, PreparedImage, prepare, prepare_regions
from lookalike.embedding.models import get_model
from lookalike.embedding.regions import boxes
from lookalike.settings import Settings
from lookalike.storage.store import LocalStore, make_store
from lookalike.indexing.writer import NewImage

from . import api_models as m
from .access import WritePolicy, parse_networks, writer
from .disclosure import public_source, public_status
from .inputs import Payload, id_param, image_payload
from .original_routes import OriginalRoutes
from .web_app import VERSION, app, log

def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


IMAGE_ID = Path(description="the image's id (a decimal 63-bit integer)", examples=["4306154112467219081"])


@serve.deployment(name="Ingress", max_ongoing_requests=200)
@serve.ingress(app)
class Ingress(OriginalRoutes):
    def __init__(self, embedder: DeploymentHandle, searcher: DeploymentHandle, settings: Settings):
        self.settings = settings
        self.embedder = embedder
        self.searcher = searcher
        self.store = make_store(settings.store)
        self.model = get_model(settings.model.name)
        self.region_boxes = boxes(settings.model.regions)
        self.fetch_allow = url_fetch.AllowList.parse(settings.api.url_fetch_allow)
        self.writes = WritePolicy(settings.api.api_key.get_secret_value(), parse_networks(settings.api.trusted_proxies))
        app.state.settings, app.state.write_policy = settings, self.writes  # for the dependencies
        app.state.cors_origins = settings.api.cors_origins
        if not settings.api.api_key.get_secret_value():
            log.warning("no API key (api.api_key): write routes are taken only from this machine")

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
            raise BackendUnavailable(backend, "not responding", detail=repr(exc)) from None

    async def _embed(self, prepared: PreparedImage):
        return await self._remote("embedder", self.embedder, "embed", prepared.pixels)

    async def _embed_regions(self, data: bytes) -> np.ndarray | None:
        """The new image's region vectors, where the gallery keeps them (each part through the
        Embedder's batches, as any image)."""
        if not self.region_boxes:
            return None
        parts = await asyncio.to_thread(prepare_regions, data, self.model.input_size, self.settings.images,
                                        self.region_boxes)
        return np.stack(await asyncio.gather(*(self._remote("embedder", self.embedder, "embed", p) for p in parts)))

    async def _searcher(self, method: str, *args):
        return await self._remote("searcher", self.searcher, method, *args)

    # -- helpers -----------------------------------------------------------------------------
    def _is_operator(self, request: Request) -> bool:
        """Whoever may write may also see the server's insides (disclosure.py)."""
        return self.writes.allows(request)

    async def _image_bytes(self, payload: Payload, timings: dict) -> bytes:
        if payload.image is not None:
            return payload.image
        if not self.settings.api.url_fetch:
            raise LookalikeError("searching by URL is disabled on this server", code="url_fetch_disabled")
        started = time.perf_counter()
        data = await url_fetch.fetch(payload.url, max_bytes=self.settings.images.max_bytes,
                                     timeout_s=self.settings.api.url_fetch_timeout_s, allow=self.fetch_allow)
        timings["fetch_ms"] = _ms(time.perf_counter() - started)
        return data

    def _prepare(self, data: bytes, box: Box | None = None) -> PreparedImage:
        return prepare(data, self.model.input_size, self.settings.images, box)

    def _public(self, item: dict, operator: bool) -> dict:
        source = item.get("source", "")
        return {**item, "id": str(item["id"]), "url": self.store.url(item["key"]),
                "source": source if operator else public_source(source)}

    def _search_params(self, fields: dict, model: type[m.SearchParams] = m.SearchParams):
        """The search's parameters from the query string and the body's fields, by the declared
        model; ``k`` defaulted from the settings."""
        params = m.parse(model, fields, self.settings.api)
        return params.model_copy(update={"k": params.k or self.settings.api.top_k_default})

    async def _run_search(self, payload: Payload, operator: bool) -> tuple[list[dict], dict]:
        timings: dict = {}
        params = self._search_params(payload.fields, m.ImageSearchParams)
        data = await self._image_bytes(payload, timings)
        started = time.perf_counter()
        prepared = await asyncio.to_thread(self._prepare, data, params.region)
        timings["decode_ms"] = _ms(time.perf_counter() - started)
        started = time.perf_counter()
        vector = await self._embed(prepared)
        timings["embed_ms"] = _ms(time.perf_counter() - started)
        started = time.perf_counter()
        hits = await self._searcher("search", vector, params.k, params.filter, params.min_score)
        timings["search_ms"] = _ms(time.perf_counter() - started)
        return [self._public(h, operator) for h in hits], timings

    async def _add(self, payload: Payload) -> tuple[dict, bool]:  # writers are operators: entries whole
        label = m.parse(m.AddParams, payload.fields).label or ""
        data = await self._image_bytes(payload, {})
        prepared = await asyncio.to_thread(self._prepare, data)
        if await self._searcher("exists", prepared.id):  # known: no embedding needed
            return self._public(await self._searcher("get", prepared.id), True), False
        vector, regions = await asyncio.gather(self._embed(prepared), self._embed_regions(data))
        image = NewImage.of(prepared, data, vector, label, payload.name or payload.url or "", regions)
        item, created = await self._searcher("add", image)  # the one write path: store, then Milvus
        return self._public(item, True), created

    async def _status(self, operator: bool) -> dict:
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
        status = {
            "status": "ok" if healthy else "degraded",
            "count": milvus.get("count"),
            "dimension": self.model.dim,
            "model": model,
            "index": milvus.get("index"),
            "milvus": {k: v for k, v in milvus.items() if k != "index"},
            "store": store,
            "version": VERSION,
        }
        return status if operator else public_status(status)

    # -- search --------------------------------------------------------------------------------
    @app.post("/api/v1/search", response_model=m.SearchResponse, tags=["search"], summary="Search by image",
              description="The image as a multipart file field `image`, JSON `{\"image\": base64}` or "
                          "`{\"url\": ...}`, or a raw `image/*` body; `k`, `filter`, `min_score`, `box` as query or "
                          "body fields (`box`: search by that part of the image). Timings also come as a "
                          "`Server-Timing` header.",
              openapi_extra=m.image_body(m.ImageJson), responses=m.errors(400, 413, 415, 422, 503))
    async def search(self, request: Request, response: Response, query: Annotated[m.ImageSearchParams, Query()],
                     payload: Annotated[Payload, Depends(image_payload)]) -> dict:
        """``query`` declares the parameters; they may also come as body fields, so the route
        validates both together with the same model (``_search_params``)."""
        started = time.perf_counter()
        results, timings = await self._run_search(payload, self._is_operator(request))
        timings["total_ms"] = _ms(time.perf_counter() - started)
        response.headers["Server-Timing"] = ", ".join(f"{name.removesuffix('_ms')};dur={value}"
                                                      for name, value in timings.items())
        return {"results": results, "timings": timings}

    @app.get("/api/v1/images/{image_id}/similar", response_model=m.SimilarResponse, tags=["search"],
             summary="More like this: search with a stored image", responses=m.errors(404, 422, 503))
    async def similar(self, request: Request, query: Annotated[m.SearchParams, Query()],
                      image_id: str = IMAGE_ID) -> dict:
        ident = id_param(image_id)
        params = self._search_params(dict(request.query_params))
        started = time.perf_counter()
        hits = await self._searcher("similar", ident, params.k, params.filter, params.min_score)
        operator = self._is_operator(request)
        return {"id": str(ident), "results": [self._public(h, operator) for h in hits],
                "timings": {"search_ms": _ms(time.perf_counter() - started)}}

    # -- the library ---------------------------------------------------------------------------
    @app.post("/api/v1/images", response_model=m.AddResponse, status_code=201, tags=["library"],
              summary="Add an image", openapi_extra=m.image_body(m.AddJson),
              responses={200: {"model": m.AddResponse, "description": "it was there already"},
                         **m.errors(400, 401, 403, 413, 415, 422, 503)}, dependencies=[Depends(writer)])
    async def add_image(self, response: Response, payload: Annotated[Payload, Depends(image_payload)]) -> dict:
        item, created = await self._add(payload)
        if not created:
            response.status_code = 200
        return {**item, "created": created}

    @app.get("/api/v1/images", response_model=m.ImagePage, tags=["library"], summary="List images, paged")
    async def list_images(self, request: Request, query: Annotated[m.PageParams, Query()]) -> dict:
        page_ = m.parse(m.PageParams, dict(request.query_params), self.settings.api)  # + the settings' bound
        page = await self._searcher("list", page_.offset, page_.limit, page_.filter)
        operator = self._is_operator(request)
        return {**page, "items": [self._public(i, operator) for i in page["items"]]}

    @app.get("/api/v1/images/{image_id}", response_model=m.ImageEntry, tags=["library"], summary="One image",
             responses=m.errors(404, 422, 503))
    async def get_image(self, request: Request, image_id: str = IMAGE_ID) -> dict:
        return self._public(await self._searcher("get", id_param(image_id)), self._is_operator(request))

    @app.delete("/api/v1/images/{image_id}", response_model=m.DeleteResponse, tags=["library"],
                summary="Delete an image: its entry, then the file the service stored for it",
                description="An image indexed in place (the original is the source bucket's own object) is "
                            "only unlinked: its object stays unless `store.delete_foreign_originals` is set.",
                responses=m.errors(401, 403, 404, 422, 503), dependencies=[Depends(writer)])
    async def delete_image(self, image_id: str = IMAGE_ID) -> dict:
        entry = await self._searcher("delete", id_param(image_id))
        return {"deleted": str(entry["id"]), "key": entry["key"], "object_deleted": entry["object_deleted"]}

    @app.get("/api/v1/duplicates", response_model=m.DuplicatesResponse, tags=["library"],
             summary="Groups of near-duplicate images, largest first, paged",
             description="Every image's nearest neighbours from the index (batched searches); images at "
                         "`threshold` or more are grouped. The scan is a job: past `serve.index_wait_s` the answer "
                         "is 202 with its progress; ask again. Its result is kept until the library's count "
                         "changes, and anyone may read it; starting a scan (none kept for this threshold, or "
                         "`refresh`) needs what a write needs. Delete the extras with `DELETE /api/v1/images/{id}`.",
             responses={**m.errors(401, 403, 422, 503), 202: {"model": m.DuplicatesResponse, "description": "scanning"}})
    async def list_duplicates(self, request: Request, response: Response,
                              query: Annotated[m.DuplicateParams, Query()]) -> dict:
        params = m.parse(m.DuplicateParams, dict(request.query_params), self.settings.api)  # + the settings' bound
        operator = self._is_operator(request)
        result = await self._searcher("duplicates", params.threshold, params.offset, params.limit,
                                      self.settings.serve.index_wait_s, params.refresh, operator)
        if result["state"] == "needs_scan":  # reading a kept scan is free; starting one is the writers'
            self.writes.check(request)
        if result["state"] == "scanning":
            response.status_code = 202
            return result
        for group in result["items"]:
            group["images"] = [self._public(i, operator) for i in group["images"]]
        return result

    @app.post("/api/v1/index", response_model=m.IndexResponse, tags=["library"],
              summary="(Re)build the index with the configured type and parameters",
              description="Builds into a new version of the collection while the current one answers, then "
                          "switches to it: searches and writes go on. Answers 202 (state building) when it "
                          "takes longer than `serve.index_wait_s`; a second call joins the running rebuild.",
              responses={**m.errors(401, 403, 503),
                         202: {"model": m.IndexResponse, "description": "still building"}},
              dependencies=[Depends(writer)])
    async def build_index(self, response: Response) -> dict:
        started = time.perf_counter()
        result = await self._searcher("build_index", self.settings.serve.index_wait_s)
        if result["state"] == "building":
            response.status_code = 202  # it goes on; searches keep answering meanwhile
        return {**result, "seconds": round(time.perf_counter() - started, 3)}

    @app.get("/api/v1/status", response_model=m.Status, tags=["service"],
             summary="Health of Milvus, the store and the model; count; index")
    async def status(self, request: Request) -> dict:
        return await self._status(self._is_operator(request))

    @app.head("/images/{key:path}", include_in_schema=False)
    @app.get("/images/{key:path}", tags=["library"], summary="A stored image (local store), or a redirect to it",
             response_class=Response, responses={200: {"content": {"image/*": {}}}, **m.errors(404)})
    async def image_file(self, key: str) -> Response:
        if isinstance(self.store, LocalStore):
            path = self.store.path(key)
            if not path.is_file():
                raise NotFound(f"no stored image {key!r}")
            return FileResponse(path, headers={"Cache-Control": "public, max-age=86400, immutable"})
        return RedirectResponse(await asyncio.to_thread(self.store.url, key), status_code=307)
