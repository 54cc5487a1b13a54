"""The original server's routes, field for field as its front end (served from another origin,
its ``baseURL`` pointed here) calls them: ``/search/`` with ``{"key", "image": dataURL}``
answering ``image1`` ... ``image5`` and the times in integer ms, ``/insert/``, ``/indexing/`` and
``/status/``. A mixin of the Ingress: the same search, write path and access rules as the API.
"""

from typing import Annotated

from fastapi import Depends, Request

from lookalike import machine
from lookalike.errors import Unauthorized

from . import api_models as m
from .access import key_matches, local_base_url, presented_key
from .inputs import Payload, fields_payload, image_payload
from .web_app import app

ORIGINAL_K = 5  # the original front end shows image1 ... image5


class OriginalRoutes:
    # Its front end (served from another origin, `baseURL` pointed here) sends
    # {"key", "image": dataURL}, shows image1..image5 and the times with "ms" appended.
    def _check_original_key(self, request: Request, payload: Payload) -> None:
        """As the original server did: a key that is presented (the JSON `key` or a header)
        must be the configured one."""
        expected = self.settings.api.api_key.get_secret_value()
        given = presented_key(request, payload.get("key"))
        if expected and given and not key_matches(given, expected):
            raise Unauthorized("wrong key")

    def _absolute(self, request: Request, url: str) -> str:
        """Store URLs may be relative to this service; the original page lives elsewhere. The
        base is ``api.public_url``, or the address the request was sent to when that names this
        machine; otherwise the URL stays relative (a Host header is no address to trust)."""
        if "://" in url:
            return url
        return (self.settings.api.public_url or local_base_url(request)) + url

    @app.post("/search/", response_model=m.OriginalSearchResponse, tags=["the original's routes"],
              summary="Search, as the original server answered its front end",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": m.OriginalSearchJson.model_json_schema()}}}},
              responses=m.errors(400, 401, 413, 415, 422, 503))
    async def original_search(self, request: Request, payload: Annotated[Payload, Depends(image_payload)]) -> dict:
        self._check_original_key(request, payload)
        topk = payload.get("topk")
        payload.fields.setdefault("k", ORIGINAL_K if topk is None or topk == "" else topk)  # 0 is refused, as -1 is
        results, timings = await self._run_search(payload, False)  # only its URLs are answered
        body = {"ok": True, **{f"image{i}": self._absolute(request, r["url"]) for i, r in enumerate(results, 1)}}
        body["embedding_time"] = round(timings["decode_ms"] + timings["embed_ms"])  # integer ms
        body["search_time"] = round(timings["search_ms"])
        return body

    @app.post("/insert/", response_model=m.OriginalOk, tags=["the original's routes"], summary="Add an image",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": m.OriginalSearchJson.model_json_schema()}}}},
              responses=m.errors(400, 401, 403, 413, 415, 422, 503))
    async def original_insert(self, request: Request, payload: Annotated[Payload, Depends(image_payload)]) -> dict:
        self.writes.check(request, payload.get("key"))  # its key may be in the body
        item, created = await self._add(payload)
        return {"ok": True, "id": item["id"], "url": self._absolute(request, item["url"]), "created": created}

    @app.post("/indexing/", response_model=m.OriginalOk, tags=["the original's routes"], summary="Build the index",
              responses=m.errors(401, 403, 503))
    async def original_indexing(self, request: Request, payload: Annotated[Payload, Depends(fields_payload)]) -> dict:
        self.writes.check(request, payload.get("key"))
        return {"ok": True, **await self._searcher("build_index", self.settings.serve.index_wait_s)}

    @app.get("/status/", response_model=m.OriginalStatus, tags=["the original's routes"],
             summary="Status, with the original's fields")
    async def original_status(self, request: Request) -> dict:
        status = await self._status(self._is_operator(request))
        return {"ok": status["status"] == "ok", "entities_num": status["count"], "cpu": machine.cpu_percent(),
                "memory": machine.memory_percent(), "gpu": status["model"].get("gpu") or "none", **status}
