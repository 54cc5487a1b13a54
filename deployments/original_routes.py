"""The original server's routes, field for field as its front end (served from another origin,
its ``baseURL`` pointed here) calls them: ``/search/`` with ``{"key", "image": dataURL}``
answering ``image1`` ... ``image5`` and the times in integer ms, ``/insert/``, ``/indexing/`` and
``/status/``. An APIRouter of their own over the service (the Ingress: the same search, write
path and access rules as the API), included by ``web_app``, which keeps their errors in the
original's shape.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Security

from lookalike import machine
from lookalike.errors import Unauthorized

from . import api_models as m
from . import api_responses as r
from .access import API_KEY_HEADER, BEARER, key_matches, local_base_url, presented_key

ORIGINAL_K = 5  # the original front end shows image1 ... image5
router = APIRouter(tags=["the original's routes"])
IMAGE_BODY = m.body(m.OriginalSearchJson)
KEY_BODY = m.body(m.OriginalKey)
DOCUMENTED_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": m.OriginalSearchJson.model_json_schema()}}}}


def service(request: Request) -> Any:
    """The service the routes call (the Ingress that serves them)."""
    return request.app.state.service


Service = Annotated[Any, Depends(service)]


async def image_writer(request: Request, body: Annotated[m.OriginalSearchJson, Depends(IMAGE_BODY)],
                       _bearer=Security(BEARER), _header=Security(API_KEY_HEADER)) -> None:
    request.app.state.write_policy.check(request, body.key)  # its key may be in the body


async def key_writer(request: Request, body: Annotated[m.OriginalKey, Depends(KEY_BODY)],
                     _bearer=Security(BEARER), _header=Security(API_KEY_HEADER)) -> None:
    request.app.state.write_policy.check(request, body.key)


def _absolute(service: Any, request: Request, url: str) -> str:
    """Store URLs may be relative to this service; the original page lives elsewhere. The base is
    ``api.public_url``, or the address the request was sent to when that names this machine;
    otherwise the URL stays relative (a Host header is no address to trust)."""
    if "://" in url:
        return url
    return (service.settings.api.public_url or local_base_url(request)) + url


@router.post("/search/", response_model=r.OriginalSearchResponse, openapi_extra=DOCUMENTED_BODY,
             summary="Search, as the original server answered its front end",
             responses=r.errors(400, 401, 413, 415, 422, 503))
async def original_search(request: Request, body: Annotated[m.OriginalSearchJson, Depends(IMAGE_BODY)],
                          service: Service) -> dict:
    expected = service.settings.api.api_key.get_secret_value()
    given = presented_key(request, body.key)  # as the original did: a key presented must be the one
    if expected and given and not key_matches(given, expected):
        raise Unauthorized("wrong key")
    results, timings = await service.run_search(body, service.query(body.topk or ORIGINAL_K), False)
    answer = {"ok": True, **{f"image{i}": _absolute(service, request, r["url"]) for i, r in enumerate(results, 1)}}
    answer["embedding_time"] = round(timings["decode_ms"] + timings["embed_ms"])  # integer ms
    answer["search_time"] = round(timings["search_ms"])
    return answer


@router.post("/insert/", response_model=r.OriginalOk, summary="Add an image", openapi_extra=DOCUMENTED_BODY,
             responses=r.errors(400, 401, 403, 413, 415, 422, 503), dependencies=[Depends(image_writer)])
async def original_insert(request: Request, body: Annotated[m.OriginalSearchJson, Depends(IMAGE_BODY)],
                          service: Service) -> dict:
    item, created = await service.store_image(body, body.label)
    return {"ok": True, "id": item["id"], "url": _absolute(service, request, item["url"]), "created": created}


@router.post("/indexing/", response_model=r.OriginalOk, summary="Build the index",
             responses=r.errors(401, 403, 503), dependencies=[Depends(key_writer)])
async def original_indexing(service: Service) -> dict:
    return {"ok": True, **await service.rebuild_index()}


@router.get("/status/", response_model=r.OriginalStatus, summary="Status, with the original's fields")
async def original_status(request: Request, service: Service) -> dict:
    status = await service.describe(service.is_operator(request))
    return {"ok": status["status"] == "ok", "entities_num": status["count"], "cpu": machine.cpu_percent(),
            "memory": machine.memory_percent(), "gpu": status["model"].get("gpu") or "none", **status}
