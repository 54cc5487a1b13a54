"""Property-based fuzzing (hypothesis) of what a client controls: the image bytes
(images.prepare), the request body (inputs.read_fields, then the route's model), JSON and URLs. Whatever comes in, the
answer is a prepared image or a LookalikeError with a 4xx status: never a crash, never a 5xx.
Memory stays bounded by the guards these inputs meet (pixel and aspect-ratio limits from the
header, resizing before padding), each with its own test in test_images.py."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.requests import Request

from deployments.api_models import ImageJson, parse
from deployments.inputs import json_depth, read_fields
from lookalike.errors import LookalikeError
from lookalike.embedding.images import prepare
from lookalike.settings import ImageLimits
from lookalike.settings import Settings
from lookalike.storage.url_fetch import InvalidUrl, parse_url

LIMITS = ImageLimits(max_bytes=2_000_000, max_pixels=4_000_000, min_side=8, max_aspect_ratio=50)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SETTINGS = Settings()


def _prepares_or_4xx(data: bytes, fit: str = "pad") -> None:
    try:
        out = prepare(data, 64, LIMITS.model_copy(update={"fit": fit}))
    except LookalikeError as exc:
        assert 400 <= exc.status < 500, exc
        return
    assert out.pixels.shape == (64, 64, 3) and out.pixels.dtype == np.uint8


@FAST
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    _prepares_or_4xx(data)


@FAST
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ", b"BM",
                        b"II*\0"]), st.binary(max_size=2048))
def test_random_bytes_behind_real_magic_numbers(magic, rest):
    _prepares_or_4xx(magic + rest)


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"]
FORMATS = {"PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}, "JPEG": {"L", "RGB", "CMYK"},
           "GIF": {"L", "P"}, "WEBP": {"RGB", "RGBA"}, "BMP": {"1", "L", "P", "RGB"},
           "TIFF": {"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"}}  # what each format writes


@FAST
@given(st.sampled_from(MODES), st.sampled_from(sorted(FORMATS)), st.integers(1, 700), st.integers(1, 700),
       st.sampled_from(["pad", "crop", "stretch"]), st.integers(0, 2**32 - 1))
def test_random_valid_images_of_every_mode_size_and_aspect(mode, fmt, width, height, fit, seed):
    if mode not in FORMATS[fmt]:
        mode = "RGB" if "RGB" in FORMATS[fmt] else "L"
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    data = buf.getvalue()
    _prepares_or_4xx(data, fit)
    if min(width, height) >= 8 and max(width, height) <= 50 * min(width, height):
        prepare(data, 64, LIMITS.model_copy(update={"fit": fit}))  # a valid image within the limits is never refused


def _request(body: bytes, content_type: str | None) -> Request:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode("latin-1")))
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/api/v1/search", "headers": headers,
                    "query_string": b""}, receive)


def _read(body: bytes, content_type: str | None) -> ImageJson:
    """What a search route does with a body: its fields, checked by the route's model."""
    return parse(ImageJson, asyncio.run(read_fields(_request(body, content_type), SETTINGS, image=True)))


def _parses_or_4xx(body: bytes, content_type: str | None) -> None:
    try:
        _read(body, content_type)
    except LookalikeError as exc:
        assert 400 <= exc.status < 500, exc


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                      max_size=4), max_leaves=40)
CONTENT_TYPES = st.sampled_from([None, "application/json", "text/json", "multipart/form-data",
                                 "multipart/form-data; boundary=x", "image/png", "application/octet-stream",
                                 "text/plain", "", "application/json; charset=utf-8"])


@FAST
@given(JSON)
def test_random_json_bodies(value):
    _parses_or_4xx(json.dumps(value).encode(), "application/json")


@FAST
@given(st.dictionaries(st.sampled_from(["image", "url", "k", "filter", "key", "name", "min_score", "topk"]), JSON,
                       max_size=5))
def test_random_json_objects_with_the_real_field_names(fields):
    _parses_or_4xx(json.dumps(fields).encode(), "application/json")


@FAST
@given(st.binary(max_size=2048), CONTENT_TYPES)
def test_random_bodies_under_every_content_type(body, content_type):
    _parses_or_4xx(body, content_type)


@FAST
@given(st.integers(1, 5000))
def test_json_depth_counts_without_recursion(depth):
    value: object = 1
    for _ in range(depth):
        value = [value]
    assert json_depth(value) == depth


@FAST
@given(st.text(max_size=200))
def test_random_urls_parse_or_are_refused_as_400(text):
    try:
        target = parse_url(text)
    except InvalidUrl as exc:
        assert exc.status == 400
        return
    assert target.scheme in ("http", "https") and target.host and 0 < target.port < 65536


@FAST
@given(st.text(max_size=100))
def test_labels_are_any_printable_text_within_the_byte_bound(text):
    from deployments.api_models import SearchParams
    from lookalike.errors import InvalidParameter
    from lookalike.limits import LABEL_MAX_BYTES

    refused = any(ord(c) < 32 or ord(c) == 127 for c in text) or len(text.encode()) > LABEL_MAX_BYTES
    try:
        got = parse(SearchParams, {"filter": text}).filter
    except InvalidParameter:
        assert refused, f"a printable label within the bound was refused: {text!r}"
        return
    assert not refused, f"passed: {text!r}"
    assert got == (text or None)


def test_json_nested_too_deep_is_a_400_not_a_crash():
    from lookalike.errors import BadRequest

    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"image": "aGk=", "k": ' + b"[" * 9 + b"]" * 9 + b"}"):
        try:
            _read(body, "application/json")
        except BadRequest as exc:
            assert "nested" in exc.message
        else:
            raise AssertionError("accepted")
