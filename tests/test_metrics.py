"""Where the time goes, for an operator: the metrics the running service exports on Ray's metrics
port (deployments/metrics.py, and Serve's own) and the Grafana dashboard that reads them
(k8s/monitoring/), held to each other."""

from __future__ import annotations

import json
import re

import httpx

from harness.servers import wait_until

from harness.fixtures import REPO
from .test_k8s import render

DASHBOARD = REPO / "k8s" / "monitoring" / "lookalike-dashboard.json"
OURS = {"ray_lookalike_stage_seconds_bucket", "ray_lookalike_forward_seconds_bucket",
        "ray_lookalike_milvus_search_seconds_bucket", "ray_lookalike_embedder_batch_size_sum"}


def read_metrics(board: dict) -> set[str]:
    """Every metric a panel's query names."""
    return {name for panel in board["panels"] for target in panel["targets"]
            for name in re.findall(r"\b(ray_[a-z_]+)\b", target["expr"])}


def exported(text: str) -> set[str]:
    """The metric names of a Prometheus exposition (the samples', not the comments')."""
    return {re.split(r"[{\s]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_the_dashboard_loads_and_each_panel_queries_the_service():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "lookalike" and [v["name"] for v in board["templating"]["list"]] == ["datasource",
                                                                                             "application"]
    for panel in board["panels"]:
        assert panel["title"] and panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
    assert OURS <= read_metrics(board)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    shipped = {doc["kind"]: doc for doc in render("monitoring", folder="k8s")}
    assert json.loads(shipped["ConfigMap"]["data"]["lookalike-dashboard.json"]) == board
    assert shipped["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert shipped["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_every_metric_the_dashboard_reads_is_exported_by_the_running_service(api, metrics_url):
    wanted = read_metrics(json.loads(DASHBOARD.read_text()))
    data = next(iter(api.gallery.values()))[0].read_bytes()
    with httpx.Client(base_url=api.url, timeout=60) as client:
        for _ in range(3):  # searches: every step, the forward pass and Milvus observed
            assert client.post("/api/v1/search", files={"image": ("q.png", data, "image/png")}).status_code == 200

    def all_exported() -> bool:
        missing = wanted - exported(httpx.get(metrics_url, timeout=10).text)
        assert not missing, f"not exported: {sorted(missing)}"  # the timeout names them
        return True

    # Replicas report their metrics every few seconds; within two minutes, or the name is wrong.
    wait_until(all_exported, 120, "the dashboard's metrics on Ray's metrics port", interval=2)
    scraped = httpx.get(metrics_url, timeout=10).text
    stages = set(re.findall(r'ray_lookalike_stage_seconds_count\{[^}]*stage="(\w+)"', scraped))
    assert {"decode", "embed", "search"} <= stages
