"""Reading what a client sent: the image (multipart, JSON base64, JSON URL, raw body) and the
query parameters, each bounded and validated. Bad input raises a LookalikeError (4xx)."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from lookalike.errors import BadRequest, EmptyInput, InvalidParameter, TooLarge, UnsupportedMedia
from lookalike.settings import Settings
from lookalike.storage.url_fetch import read_capped

FORM_FIELD = "image"
_MULTIPART_OVERHEAD = 64 * 1024
MAX_JSON_DEPTH = 8  # a request body is a flat object; anything deeper is refused


@dataclass
class Payload:
    """A parsed request: the image bytes (if any) and the other fields, as strings."""

    image: bytes | None = None
    name: str = ""
    url: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def body_limit(settings: Settings) -> int:
    # base64 in JSON costs 4/3 of the image; allow the form/JSON framing around it.
    return math.ceil(settings.images.max_bytes * 4 / 3) + _MULTIPART_OVERHEAD


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them all."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise BadRequest("invalid Content-Length header") from None
        if declared > limit:
            raise TooLarge(f"the request body is {declared} bytes; the limit is {limit}")
    return await read_capped(request.stream(), limit, "the request body")


async def image_payload(request: Request) -> Payload:
    """The dependency of the routes that take an image: the size-capped body in its four forms
    (the limits are the application's settings, ``app.state.settings``)."""
    return await read_payload(request, request.app.state.settings)


async def fields_payload(request: Request) -> Payload:
    """The same for a route whose body has fields only (the original /indexing/)."""
    return await read_payload(request, request.app.state.settings, require_image=False)


def decode_base64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise InvalidParameter("'image' must be a base64 string")
    if text.startswith("data:"):  # a data URL, as browsers' FileReader produces
        _, _, text = text.partition(",")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("'image' is not valid base64") from None


async def read_payload(request: Request, settings: Settings, *, require_image: bool = True) -> Payload:
    """Parse multipart/form-data, application/json or a raw image/* body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, body_limit(settings))
    payload = Payload(fields=dict(request.query_params))
    if content_type == "multipart/form-data":
        await _read_multipart(request, body, payload)
    elif content_type in ("application/json", "text/json") or (not content_type and body[:1] in (b"{", b"[")):
        _read_json(body, payload)
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        payload.image = body
    elif not body:
        if require_image:
            raise EmptyInput("the request has no body; send an image")
    else:
        raise UnsupportedMedia(
            f"Content-Type {content_type or '(none)'} is not accepted; send multipart/form-data with an "
            "'image' file, application/json with 'image' (base64) or 'url', or a raw image/* body"
        )
    if require_image and payload.image is None and payload.url is None:
        raise InvalidParameter(
            "no image in the request: send a multipart file field 'image', JSON {\"image\": base64} "
            "or {\"url\": \"http...\"}, or a raw image/* body"
        )
    if payload.image is not None and not payload.image:
        raise EmptyInput("the image is empty (0 bytes)")
    return payload


async def _read_multipart(request: Request, body: bytes, payload: Payload) -> None:
    async def replay() -> dict:  # the body, read already (capped), for Starlette's form parser
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=32)
    except Exception as exc:  # malformed multipart body; Starlette's HTTPException reads "400: why"
        raise BadRequest(f"cannot parse the multipart body: {getattr(exc, 'detail', None) or exc}") from None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key == FORM_FIELD:
                payload.image = await value.read()
                payload.name = value.filename or ""
        else:
            payload.fields[key] = value
    if payload.image is None and isinstance(payload.fields.get(FORM_FIELD), str):
        payload.image = decode_base64(payload.fields.pop(FORM_FIELD))
    if "url" in payload.fields:
        payload.url = str(payload.fields.pop("url"))


def _read_json(body: bytes, payload: Payload) -> None:
    if not body.strip():
        raise EmptyInput("the request body is empty; send JSON with 'image' or 'url'")
    try:
        data = json.loads(body)
    except RecursionError:  # the parser's own depth limit, far past ours
        raise BadRequest(f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise BadRequest(f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(data, dict):
        raise BadRequest("the JSON body must be an object")
    if data.get("image") is not None:
        payload.image = decode_base64(data.pop("image"))
    if data.get("url") is not None:
        payload.url = str(data.pop("url"))
    payload.name = str(data.pop("name", "") or "")  # "key" stays a field: the original routes' API key
    payload.fields.update({k: v for k, v in data.items() if v is not None})


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


# -- parameters (the rest are the declared models': api_models.parse) ----------------------------
def id_param(raw: str) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise InvalidParameter(f"image id must be an integer; got {raw!r}") from None
    if not 0 <= value < 2**63:
        raise InvalidParameter("image id out of range")
    return value
