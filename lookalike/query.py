"""The one query path: prepare -> encode -> search -> filter -> URLs, written once.

Each step is a callable, so the path does not know where it runs: the Ingress runs it over the
Embedder's and the Searcher's handles (``deployments/ingress.py``), ``lookalike search`` and
``lookalike eval`` in one process over the encoder and the catalog (``local``). A query by a
stored image (more like this) enters at search with that image's vector; a text query enters
at encode, through the model's text tower.

May import: the base modules, lookalike.embedding, lookalike.milvus, lookalike.storage and itself.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Union

import numpy as np

from lookalike.embedding.descriptors import Tagged
from lookalike.embedding.images import Box, PreparedImage, prepare
from lookalike.milvus.catalog import label_filter
from lookalike.settings import ImageLimits


Vector = Union[np.ndarray, Tagged]


@dataclass(frozen=True)
class Query:
    """What a search asks for beside its image: ``k`` results at most, only images labelled
    ``label``, scoring ``min_score`` or more, by the part ``box`` of the image."""

    k: int
    label: str | None = None
    min_score: float | None = None
    box: Box | None = None


@dataclass
class Answer:
    hits: list[dict]  # id, key, label, source, distance, score, region, url
    timings: dict[str, float] = field(default_factory=dict)  # decode_ms, embed_ms, search_ms


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def keep(hits: list[dict], query: Query, exclude: int | None = None) -> list[dict]:
    """The filter step: the image itself left out (more like this), scores below
    ``min_score`` dropped, ``k`` at most."""
    return [h for h in hits if h["id"] != exclude and (query.min_score is None or h["score"] >= query.min_score)][
        : query.k]


class QueryPath:
    def __init__(self, *, prepare: Callable[[bytes, Box | None], Awaitable[PreparedImage]],
                 encode: Callable[[np.ndarray], Awaitable[Vector]],
                 search: Callable[[Vector, int, str | None], Awaitable[list[dict]]],
                 url: Callable[[str], str], encode_text: Callable[[str], Awaitable[Vector]]):
        """``prepare``: bytes and box -> the model's input; ``encode``: its pixels -> a unit
        vector; ``search``: (vector, limit, label) -> hits as dicts, best first; ``url``: a
        stored image's key -> its URL; ``encode_text``: words -> a unit vector in the images'
        space (raising TextSearchUnavailable for a model without a text tower). A vector is
        what ``encode`` gives and ``search`` takes: an array in one process, an array tagged
        with its model's descriptor between Serve replicas (``descriptors.Tagged``)."""
        self.prepare, self.encode, self.search, self.url = prepare, encode, search, url
        self.encode_text = encode_text

    async def by_image(self, data: bytes, query: Query, timings: dict | None = None) -> Answer:
        timings = {} if timings is None else timings
        started = time.perf_counter()
        prepared = await self.prepare(data, query.box)
        timings["decode_ms"] = ms_since(started)
        started = time.perf_counter()
        vector = await self.encode(prepared.pixels)
        timings["embed_ms"] = ms_since(started)
        return await self.by_vector(vector, query, timings)

    async def by_text(self, text: str, query: Query, timings: dict | None = None) -> Answer:
        timings = {} if timings is None else timings
        started = time.perf_counter()
        vector = await self.encode_text(text)
        timings["embed_ms"] = ms_since(started)
        return await self.by_vector(vector, query, timings)

    async def by_vector(self, vector: Vector, query: Query, timings: dict | None = None,
                        exclude: int | None = None) -> Answer:
        """From the search step on; ``exclude``: an image to leave out (the query's own)."""
        timings = {} if timings is None else timings
        started = time.perf_counter()
        hits = await self.search(vector, query.k + (exclude is not None), query.label)
        timings["search_ms"] = ms_since(started)
        return Answer([{**h, "url": self.url(h["key"])} for h in keep(hits, query, exclude)], timings)


def local(encoder, catalog, store, limits: ImageLimits) -> QueryPath:
    """The path in this process: the encoder, the catalog and the store (``lookalike search``,
    ``lookalike eval``)."""
    async def prepare_image(data: bytes, box: Box | None) -> PreparedImage:
        return prepare(data, encoder.input_size, limits, box)

    async def encode(pixels: np.ndarray) -> np.ndarray:
        return encoder.encode(pixels[None])[0]

    async def encode_text(text: str) -> np.ndarray:
        return encoder.encode_text([text])[0]

    async def search(vector: np.ndarray, limit: int, label: str | None) -> list[dict]:
        return [h.to_dict() for h in catalog.search(vector, limit, expr=label_filter(label))[0]]

    return QueryPath(prepare=prepare_image, encode=encode, search=search, url=store.url, encode_text=encode_text)


def run(answer: Awaitable[Answer]) -> Answer:
    """The path's answer, from synchronous code (the CLI)."""
    return asyncio.run(answer)
