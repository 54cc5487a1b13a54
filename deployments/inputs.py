"""What no framework reads in one route: the body, refused past its cap before it is read whole,
and one image in four forms (a multipart file, JSON base64 or URL, a raw image/* body), as one
dict of fields for the route's declared model to check (``api_models.body``)."""

import json
import math
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from lookalike.errors import BadRequest, EmptyInput, TooLarge, UnsupportedMedia
from lookalike.settings import Settings
from lookalike.storage.url_fetch import read_capped

MAX_JSON_DEPTH = 8  # a request body is a flat object; anything deeper is refused


async def read_body(request: Request, settings: Settings) -> bytes:
    """The body, refused before it is read whole past the image's limit (as base64: 4/3) + 64 KiB."""
    limit = math.ceil(settings.images.max_bytes * 4 / 3) + 64 * 1024
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit():
        raise BadRequest("invalid Content-Length header")
    if int(declared) > limit:
        raise TooLarge(f"the request body is {declared} bytes; the limit is {limit}")
    return await read_capped(request.stream(), limit, "the request body")


async def read_fields(request: Request, settings: Settings, *, image: bool) -> dict[str, Any]:
    """The query string's fields, then the body's (a form's, a JSON object's); a raw body or a
    file part as ``image`` (its file name as ``name``). ``image``: an empty body is refused."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, settings)
    fields: dict[str, Any] = dict(request.query_params)
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        fields.update(await _form(request, body))
    elif content_type in ("application/json", "text/json") or (not content_type and body[:1] in (b"{", b"[")):
        fields.update(_json_object(body))
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        fields["image"] = body
    elif body:
        raise UnsupportedMedia(f"Content-Type {content_type or '(none)'} is not accepted; send multipart/form-data "
                               "with an 'image' file, application/json with 'image' (base64) or 'url', a raw "
                               "image/* body, or a form's fields")
    elif image:
        raise EmptyInput("the request has no body; send an image")
    return fields


async def _form(request: Request, body: bytes) -> dict[str, Any]:
    async def replay() -> dict:  # the body, read already (capped), for Starlette's form parser
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=32)
    except Exception as exc:  # malformed multipart body; Starlette's HTTPException reads "400: why"
        raise BadRequest(f"cannot parse the multipart body: {getattr(exc, 'detail', None) or exc}") from None
    fields = {key: value for key, value in form.multi_items() if not isinstance(value, UploadFile)}
    if isinstance(file := form.get("image"), UploadFile):
        fields.update(image=await file.read(), name=file.filename or "")
    return fields


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise EmptyInput("the request body is empty; send JSON with 'image' or 'url'")
    try:
        data = json.loads(body)
        too_deep = json_depth(data) > MAX_JSON_DEPTH
    except RecursionError:  # the parser's own depth limit, far past ours
        too_deep = True
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if too_deep:
        raise BadRequest(f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(data, dict):
        raise BadRequest("the JSON body must be an object")
    return {k: v for k, v in data.items() if v is not None}


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
