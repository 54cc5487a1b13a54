"""What the service counts for Prometheus, through Ray's metrics: each replica's, served by every
node's metrics port (KubeRay: 8080) with the ``ray_`` prefix. One place for Lookalike's names;
the dashboard (``k8s/monitoring/lookalike-dashboard.json``) reads these and Serve's own, and its test holds
every name it reads to what a running service exports.

- ``lookalike_stage_seconds{stage}``: the Ingress's time per step of a search: ``fetch`` (a URL
  search's download), ``decode`` (read, check and fit the image), ``embed`` (the Embedder's
  call: the hop, its queue, the batch and the forward pass), ``search`` (the Searcher's call:
  the hop and Milvus).
- ``lookalike_forward_seconds``: the Embedder's forward pass, per batch;
  ``lookalike_embedder_batch_size``: images per forward pass (``@serve.batch``).
- ``lookalike_milvus_search_seconds``: the Searcher's time in Milvus, per search.
- Serve's own, by route and status: ``serve_num_http_requests``, ``serve_http_request_latency_ms``,
  and per deployment ``serve_deployment_replica_healthy`` and the rest.
"""

from __future__ import annotations

from ray.serve import metrics

SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


def stage_seconds() -> metrics.Histogram:
    return metrics.Histogram("lookalike_stage_seconds", description="The Ingress's time per step of a search",
                             boundaries=SECONDS, tag_keys=("stage",))


def forward_seconds() -> metrics.Histogram:
    return metrics.Histogram("lookalike_forward_seconds", description="The Embedder's forward pass, per batch",
                             boundaries=SECONDS)


def batch_size() -> metrics.Histogram:
    return metrics.Histogram("lookalike_embedder_batch_size", description="Images per forward pass of the Embedder",
                             boundaries=[1, 2, 4, 8, 16, 32, 64, 128])


def milvus_search_seconds() -> metrics.Histogram:
    return metrics.Histogram("lookalike_milvus_search_seconds", description="The Searcher's time in Milvus, per search",
                             boundaries=SECONDS)
