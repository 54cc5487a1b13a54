"""Embedder: the ImageEncoder behind @serve.batch, on the GPU when the replica has one; its text
tower (a model that has one) behind a batch of its own, in the same replica: one model, one
load, one place its version lives.

Requests carry prepared uint8 arrays (the ingress decoded and validated them), so a bad
upload can never spoil a batch. Batch size and wait come from the settings.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np
import ray
from ray import serve

from lookalike.embedding.descriptors import Tagged, descriptor_name
from lookalike.embedding.encoder import ImageEncoder
from lookalike.settings import Settings

from . import metrics
from .replica_rpc import listen_on_node_address


@serve.deployment(name="Embedder", max_ongoing_requests=64)
class Embedder:
    def __init__(self, settings: Settings):
        listen_on_node_address()
        self.encoder = ImageEncoder(settings.model).load()
        # What its vectors are, sent with each: a rolling update to another model may pair this
        # replica with a Searcher of the other one for a while (milvus/routing.py).
        self.descriptor = descriptor_name(settings.model, settings.images, self.encoder.spec)
        self.embed_batch.set_max_batch_size(settings.serve.batch_max_size)
        self.embed_batch.set_batch_wait_timeout_s(settings.serve.batch_wait_timeout_s)
        self.embed_text_batch.set_max_batch_size(settings.serve.batch_max_size)
        self.embed_text_batch.set_batch_wait_timeout_s(settings.serve.batch_wait_timeout_s)
        self.batch_sizes: Counter[int] = Counter()  # for the status route and the benchmarks
        self.forward_seconds = 0.0  # time in the model, for the status route's breakdown
        # The same for Prometheus, on Ray's metrics endpoint (tagged with the replica): metrics.py.
        self.batch_histogram, self.forward_histogram = metrics.batch_size(), metrics.forward_seconds()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)  # replaced from the settings in __init__
    async def embed_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        self.batch_sizes[len(images)] += 1
        self.batch_histogram.observe(len(images))
        # The forward pass runs off the event loop so the replica keeps queueing requests.
        started = time.perf_counter()
        vectors = await asyncio.to_thread(self.encoder.encode, np.stack(images))
        elapsed = time.perf_counter() - started
        self.forward_seconds += elapsed
        self.forward_histogram.observe(elapsed)
        return list(vectors)

    async def embed(self, image: np.ndarray) -> Tagged:
        return Tagged(await self.embed_batch(image), self.descriptor)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)  # replaced from the settings in __init__
    async def embed_text_batch(self, texts: list[str]) -> list[np.ndarray]:
        """The model's text tower, batched as images are (a model without one: the 422 of
        TextSearchUnavailable, which the Ingress checks before it asks)."""
        return list(await asyncio.to_thread(self.encoder.encode_text, texts))

    async def embed_text(self, text: str) -> Tagged:
        self.encoder.check_text(text)  # a text it cannot search by is refused alone, not with its batch
        return Tagged(await self.embed_text_batch(text), self.descriptor)

    def info(self) -> dict:
        return {**self.encoder.describe(), "batch_sizes": dict(sorted(self.batch_sizes.items())),
                "forward_seconds": round(self.forward_seconds, 4), "node": ray.get_runtime_context().get_node_id()}

    def check_health(self) -> None:
        if not self.encoder.loaded:
            raise RuntimeError("the model is not loaded")
