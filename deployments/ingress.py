"""Ingress: the HTTP API's routes on the FastAPI app of ``web_app.py``, behind ``@serve.ingress``
(Ray Serve's documented ingress), composed with the Embedder and Searcher through
DeploymentHandles. The Ingress is also the service the original server's routes
(``original_routes.py``, an APIRouter of their own) call: ``run_search``, ``store_image``,
``rebuild_index``, ``describe``.

It decodes and validates uploads itself (no torch here), so bad input is answered with a 4xx
before it reaches a GPU batch. The models in ``api_models.py`` check every request and, with
those of ``api_responses.py``, give /openapi.json and /docs; ``inputs.py`` reads the image in
its four forms; ``access.py`` decides who may write and which origins may read;
``disclosure.py`` what anonymous readers see. A search runs the one query path
(``lookalike.query``).
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import numpy as np
from fastapi import Depends, Path, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from lookalike.embedding.descriptors import Tagged
from lookalike.embedding.images import Box, PreparedImage, prepare, prepare_regions
from lookalike.embedding.models import get_model
from lookalike.embedding.regions import boxes
from lookalike.errors import (BackendUnavailable, ConfigurationError, InvalidParameter, LookalikeError, NotFound,
                              TextSearchUnavailable)
from lookalike.indexing.writer import NewImage
from lookalike.machine import available_cpus
from lookalike.query import Query as SearchQuery
from lookalike.query import QueryPath, ms_since
from lookalike.settings import Settings
from lookalike.storage import url_fetch
from lookalike.storage.store import LocalStore, make_store

from . import api_models as m
from . import api_responses as r
from . import metrics
from .access import WritePolicy, parse_networks, writer
from .disclosure import public_source, public_status
from .replica_rpc import listen_on_node_address
from .web_app import VERSION, app, log

ImageId = Annotated[int, Path(ge=0, lt=2**63, description="the image's id (a decimal 63-bit integer)",
                              examples=["4306154112467219081"])]
SEARCH_BODY = m.body(m.ImageJson)
# A lone search's upload of up to this many bytes is decoded on the event loop's thread
# (the sample gallery's images: 14 KB at the median, a few ms each): Ingress._prepare_search.
INLINE_DECODE_BYTES = 512 * 1024
ADD_BODY = m.body(m.AddJson)


@serve.deployment(name="Ingress", max_ongoing_requests=200)
@serve.ingress(app)
class Ingress:
    def __init__(self, embedder: DeploymentHandle, searcher: DeploymentHandle, settings: Settings):
        listen_on_node_address()
        self.settings = settings
        self.embedder = embedder
        self.searcher = searcher
        self.store = make_store(settings.store)
        self.model = get_model(settings.model)
        self.region_boxes = boxes(settings.model.regions)
        self.fetch_allow = url_fetch.AllowList.parse(settings.api.url_fetch_allow)
        self.writes = WritePolicy(settings.api.api_key.get_secret_value(), parse_networks(settings.api.trusted_proxies))
        self.path = QueryPath(prepare=self._prepare_search,
                              encode=self._embed, search=self._search, url=self.store.url,
                              encode_text=self._embed_text)
        self.stage_histogram = metrics.stage_seconds()  # each search's steps, for Prometheus
        self.searching = 0  # searches in flight in this replica
        self.decoders = ThreadPoolExecutor(settings.serve.decode_threads or available_cpus(),
                                           thread_name_prefix="decode")
        m.configure(settings.api)  # the settings' bounds on parameters
        # For the dependencies and the original routes: the settings, the write rule, the service.
        app.state.settings, app.state.write_policy, app.state.service = settings, self.writes, self
        app.state.cors_origins = settings.api.cors_origins
        if not settings.api.api_key.get_secret_value():
            log.warning("no API key (api.api_key): write routes are taken only from this machine")

    # -- calls to the other deployments -------------------------------------------------------
    async def _remote(self, backend: str, call):
        """Await a handle's call (``handle.method.remote(...)``) with a deadline. Domain errors
        raised over there come back as themselves; a dead, stuck or overloaded deployment
        becomes a 503 naming it."""
        try:
            return await asyncio.wait_for(call, timeout=self.settings.serve.handle_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise BackendUnavailable(backend, "timed out") from None
        except Exception as exc:
            cause = getattr(exc, "cause", None)  # Ray wraps remote exceptions in RayTaskError
            if isinstance(cause, LookalikeError):
                raise cause from None
            if isinstance(exc, LookalikeError):
                raise
            log.warning("%s failed: %r", backend, exc)
            raise BackendUnavailable(backend, "not responding", detail=repr(exc)) from None

    async def _embed(self, pixels: np.ndarray) -> Tagged:
        return await self._remote("embedder", self.embedder.embed.remote(pixels))

    async def _embed_text(self, text: str) -> Tagged:
        if not self.model.has_text:  # answered here: the Embedder is not asked what the spec says
            raise TextSearchUnavailable(self.model.name)
        return await self._remote("embedder", self.embedder.embed_text.remote(text))

    async def _embed_regions(self, data: bytes) -> np.ndarray | None:
        """The new image's region vectors, where the gallery keeps them (each part through the
        Embedder's batches, as any image)."""
        if not self.region_boxes:
            return None
        parts = await self._decoded(prepare_regions, data, self.model.input_size, self.settings.images,
                                    self.region_boxes)
        return np.stack([tagged.vector for tagged in await asyncio.gather(*(self._embed(p) for p in parts))])

    async def _search(self, vector: Tagged, limit: int, label: str | None) -> list[dict]:
        return await self._remote("searcher", self.searcher.search.remote(vector.vector, limit, label,
                                                                          vector.descriptor))

    # -- the service: what the routes do ----------------------------------------------------------
    def is_operator(self, request: Request) -> bool:
        """Whoever may write may also see the server's insides (disclosure.py)."""
        return self.writes.allows(request)

    def public(self, item: dict, operator: bool) -> dict:
        source = item.get("source", "")
        return {**item, "id": str(item["id"]), "url": item.get("url") or self.store.url(item["key"]),
                "source": source if operator else public_source(source)}

    async def _image_bytes(self, source: m.ImageSource, timings: dict) -> bytes:
        if source.image is not None:
            return source.image
        if not self.settings.api.url_fetch:
            raise LookalikeError("searching by URL is disabled on this server", code="url_fetch_disabled")
        started = time.perf_counter()
        data = await url_fetch.fetch(source.url, max_bytes=self.settings.images.max_bytes,
                                     timeout_s=self.settings.api.url_fetch_timeout_s, allow=self.fetch_allow)
        timings["fetch_ms"] = ms_since(started)
        return data

    def _prepare(self, data: bytes, box: Box | None = None) -> PreparedImage:
        return prepare(data, self.model.input_size, self.settings.images, box)

    async def _decoded(self, fn, *args):
        """``fn(*args)`` (decoding) in the decode threads (``serve.decode_threads``)."""
        return await asyncio.get_running_loop().run_in_executor(self.decoders, fn, *args)

    async def _prepare_search(self, data: bytes, box: Box | None) -> PreparedImage:
        """A search's upload decoded: the only search in flight here decodes on this thread (a
        worker thread's hand-offs took more than 1 ms of CPU and 2.5 ms of a 1-client search's
        23, measured); beside others, in a decode thread, so that theirs go on meanwhile
        (Pillow lets go of the GIL as it decodes and resizes: decoding inline cost 9 % of the
        8-client throughput). A large upload (a photo: tens of ms) goes to a thread even alone,
        so that the loop stays free for the requests that arrive meanwhile."""
        if self.searching <= 1 and len(data) <= INLINE_DECODE_BYTES:
            return self._prepare(data, box)
        return await self._decoded(self._prepare, data, box)

    def query(self, k: int | None, label: str | None = None, min_score: float | None = None,
              box: Box | None = None) -> SearchQuery:
        return SearchQuery(k=k or self.settings.api.top_k_default, label=label, min_score=min_score, box=box)

    async def run_search(self, source: m.ImageSource, query: SearchQuery, operator: bool,
                         text: str | None = None) -> tuple[list[dict], dict]:
        """By the image of ``source``, or by ``text`` (words) where given."""
        timings: dict = {}
        self.searching += 1
        try:
            if text is not None:
                answer = await self.path.by_text(text, query, timings)
            else:
                answer = await self.path.by_image(await self._image_bytes(source, timings), query, timings)
        finally:
            self.searching -= 1
        for name, ms in answer.timings.items():
            self.stage_histogram.observe(ms / 1000, tags={"stage": name.removesuffix("_ms")})
        return [self.public(h, operator) for h in answer.hits], answer.timings

    async def store_image(self, source: m.ImageSource, label: str | None) -> tuple[dict, bool]:
        """Add an image (writers are operators: its entry whole); (the entry, created)."""
        data = await self._image_bytes(source, {})
        prepared = await self._decoded(self._prepare, data)
        if await self._remote("searcher", self.searcher.exists.remote(prepared.id)):  # known: no embedding needed
            return self.public(await self._remote("searcher", self.searcher.get.remote(prepared.id)), True), False
        vector, regions = await asyncio.gather(self._embed(prepared.pixels), self._embed_regions(data))
        image = NewImage.of(prepared, data, vector.vector, label or "", source.name or source.url or "", regions)
        item, created = await self._remote("searcher", self.searcher.add.remote(image, vector.descriptor))
        return self.public(item, True), created

    async def rebuild_index(self) -> dict:
        return await self._remote("searcher", self.searcher.build_index.remote(self.settings.serve.index_wait_s))

    async def start_reembed(self, model: dict) -> dict:
        """Start (or join) the re-embed under ``model`` (the service's model settings with these
        fields replaced): checked here, run by the cluster's re-embed actor."""
        from pydantic import ValidationError

        from ingest.reembed_job import job

        try:
            settings = self.settings.with_overrides(model=model)
            await asyncio.to_thread(get_model, settings.model)  # a folder with a broken file: named here
        except ValidationError as exc:
            error = exc.errors()[0]
            raise InvalidParameter(f"model.{'.'.join(map(str, error['loc'][1:]))}: {error['msg']}") from None
        except ConfigurationError as exc:
            raise InvalidParameter(exc.message) from None
        actor = await asyncio.to_thread(job, True)
        return await self._remote("reembed", actor.start.remote(settings, self.settings.serve.index_wait_s))

    async def reembed_state(self) -> dict | None:
        """The cluster's last re-embed started from the API (None: none was)."""
        from ingest.reembed_job import job

        actor = await asyncio.to_thread(job, False)
        return None if actor is None else await self._remote("reembed", actor.describe.remote())

    async def describe(self, operator: bool) -> dict:
        async def safe(backend, call):
            try:
                return await self._remote(backend, call)
            except BackendUnavailable as exc:
                return {"healthy": False, "error": exc.message}

        milvus, model = await asyncio.gather(safe("searcher", self.searcher.status.remote()),
                                             safe("embedder", self.embedder.info.remote()))
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
        if not operator:
            return public_status(status)
        status["reembed_job"] = await self.reembed_state()  # the operator's: the model and its files
        return status

    # -- search --------------------------------------------------------------------------------
    @app.post("/api/v1/search", response_model=r.SearchResponse, tags=["search"], summary="Search by image or words",
              description="The image as a multipart file field `image`, JSON `{\"image\": base64}` or "
                          "`{\"url\": ...}`, or a raw `image/*` body; or words as `text` (a query, form or JSON "
                          "field), where the model has a text tower (else 422 `text_search_unavailable`); `k`, "
                          "`filter`, `min_score`, `box` as query or body fields (`box`: search by that part of the "
                          "image). Timings also come as a `Server-Timing` header.",
              openapi_extra=m.image_body(m.ImageJson), responses=r.errors(400, 413, 415, 422, 503))
    async def search(self, request: Request, response: Response,
                     body: Annotated[m.ImageJson, Depends(SEARCH_BODY)]) -> dict:
        started = time.perf_counter()
        query = self.query(body.k, body.filter, body.min_score, body.region)
        results, timings = await self.run_search(body, query, self.is_operator(request), text=body.text)
        timings["total_ms"] = ms_since(started)
        response.headers["Server-Timing"] = ", ".join(f"{name.removesuffix('_ms')};dur={value}"
                                                      for name, value in timings.items())
        return {"results": results, "timings": timings}

    @app.get("/api/v1/images/{image_id}/similar", response_model=r.SimilarResponse, tags=["search"],
             summary="More like this: search with a stored image", responses=r.errors(404, 422, 503))
    async def similar(self, request: Request, image_id: ImageId,
                      params: Annotated[m.SearchParams, Query()]) -> dict:
        vector = await self._remote("searcher", self.searcher.vector.remote(image_id))
        answer = await self.path.by_vector(Tagged(vector), self.query(params.k, params.filter, params.min_score),
                                           exclude=image_id)
        operator = self.is_operator(request)
        return {"id": str(image_id), "results": [self.public(h, operator) for h in answer.hits],
                "timings": answer.timings}

    # -- the library ---------------------------------------------------------------------------
    @app.post("/api/v1/images", response_model=r.AddResponse, status_code=201, tags=["library"],
              summary="Add an image", openapi_extra=m.image_body(m.AddJson),
              responses={200: {"model": r.AddResponse, "description": "it was there already"},
                         **r.errors(400, 401, 403, 413, 415, 422, 503)}, dependencies=[Depends(writer)])
    async def add_image(self, response: Response, body: Annotated[m.AddJson, Depends(ADD_BODY)]) -> dict:
        item, created = await self.store_image(body, body.label)
        if not created:
            response.status_code = 200
        return {**item, "created": created}

    @app.get("/api/v1/images", response_model=r.ImagePage, tags=["library"], summary="List images, paged")
    async def list_images(self, request: Request, page: Annotated[m.PageParams, Query()]) -> dict:
        found = await self._remote("searcher", self.searcher.list.remote(page.offset, page.limit, page.filter))
        operator = self.is_operator(request)
        return {**found, "items": [self.public(i, operator) for i in found["items"]]}

    @app.get("/api/v1/images/{image_id}", response_model=r.ImageEntry, tags=["library"], summary="One image",
             responses=r.errors(404, 422, 503))
    async def get_image(self, request: Request, image_id: ImageId) -> dict:
        entry = await self._remote("searcher", self.searcher.get.remote(image_id))
        return self.public(entry, self.is_operator(request))

    @app.delete("/api/v1/images/{image_id}", response_model=r.DeleteResponse, tags=["library"],
                summary="Delete an image: its entry, then the file the service stored for it",
                description="An image indexed in place (the original is the source bucket's own object) is "
                            "only unlinked: its object stays unless `store.delete_foreign_originals` is set.",
                responses=r.errors(401, 403, 404, 422, 503), dependencies=[Depends(writer)])
    async def delete_image(self, image_id: ImageId) -> dict:
        entry = await self._remote("searcher", self.searcher.delete.remote(image_id))
        return {"deleted": str(entry["id"]), "key": entry["key"], "object_deleted": entry["object_deleted"]}

    @app.get("/api/v1/duplicates", response_model=r.DuplicatesResponse, tags=["library"],
             summary="Groups of near-duplicate images, largest first, paged",
             description="Every image's nearest neighbours from the index (batched searches); images at "
                         "`threshold` or more are grouped. The scan is a job: past `serve.index_wait_s` the answer "
                         "is 202 with its progress; ask again. Its result is kept until the library's count "
                         "changes, and anyone may read it; starting a scan (none kept for this threshold, or "
                         "`refresh`) needs what a write needs. Delete the extras with `DELETE /api/v1/images/{id}`.",
             responses={**r.errors(401, 403, 422, 503), 202: {"model": r.DuplicatesResponse, "description": "scanning"}})
    async def list_duplicates(self, request: Request, response: Response,
                              params: Annotated[m.DuplicateParams, Query()]) -> dict:
        operator = self.is_operator(request)
        result = await self._remote("searcher", self.searcher.duplicates.remote(
            params.threshold, params.offset, params.limit, self.settings.serve.index_wait_s, params.refresh, operator))
        if result["state"] == "needs_scan":  # reading a kept scan is free; starting one is the writers'
            self.writes.check(request)
        if result["state"] == "scanning":
            response.status_code = 202
            return result
        for group in result["items"]:
            group["images"] = [self.public(i, operator) for i in group["images"]]
        return result

    @app.post("/api/v1/index", response_model=r.IndexResponse | r.ReembedResponse, tags=["library"],
              summary="(Re)build the index with the configured type and parameters, or re-embed the gallery",
              description="Builds into a new version of the collection while the current one answers, then "
                          "switches to it: searches and writes go on. Answers 202 (state building) when it "
                          "takes longer than `serve.index_wait_s`; a second call joins the running rebuild. "
                          "With `{\"model\": {...}}`: re-embeds every stored original under that model into the "
                          "next version (the job of `lookalike reembed`, in the cluster), 202 while it runs; a "
                          "second call for the same model joins it, for another is refused (409), as is a model "
                          "the gallery is already on; a model that does not load is a 422 naming its file.",
              responses={**r.errors(401, 403, 409, 422, 503),
                         202: {"model": r.IndexResponse | r.ReembedResponse, "description": "still running"}},
              dependencies=[Depends(writer)])
    async def build_index(self, response: Response, body: m.IndexRequest | None = None) -> dict:
        if body is not None and body.model is not None:
            state = await self.start_reembed(body.model)
            response.status_code = 202 if state["state"] in ("staging", "reembedding") else 200
            return state
        started = time.perf_counter()
        result = await self.rebuild_index()
        if result["state"] == "building":
            response.status_code = 202  # it goes on; searches keep answering meanwhile
        return {**result, "seconds": round(time.perf_counter() - started, 3)}

    @app.get("/api/v1/status", response_model=r.Status, tags=["service"],
             summary="Health of Milvus, the store and the model; count; index")
    async def status(self, request: Request) -> dict:
        return await self.describe(self.is_operator(request))

    @app.get("/images/{key:path}", tags=["library"], summary="A stored image (local store), or a redirect to it",
             response_class=Response, responses={200: {"content": {"image/*": {}}}, **r.errors(404)})
    async def image_file(self, key: str) -> Response:
        if isinstance(self.store, LocalStore):
            path = self.store.path(key)
            if not path.is_file():
                raise NotFound(f"no stored image {key!r}")
            return FileResponse(path, headers={"Cache-Control": "public, max-age=86400, immutable"})
        return RedirectResponse(await asyncio.to_thread(self.store.url, key), status_code=307)
