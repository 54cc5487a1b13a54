"""Lookalike on a real multi-node Ray cluster (two raylets on this machine): the ingest job's
read tasks and embedding actors, and the Serve application's replicas, run on both nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness.fixtures import REPO


def test_ingest_and_serve_spread_over_two_nodes(tmp_path, gallery_root):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "multinode.log"  # kept when the run times out: it says which stage it was in
    with open(log, "w") as out:
        run = subprocess.run([sys.executable, "-m", "tests.support.multinode", str(gallery_root), str(tmp_path)],
                             cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, timeout=600)
    output = log.read_text()
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, output[-8000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    print(json.dumps(result, indent=1))
    nodes = set(result["nodes"])
    assert len(nodes) == 2
    ingest = result["ingest"]
    assert ingest["indexed"] == 30 and ingest["count"] == 30
    for stage in ("read", "embed"):
        assert set(ingest["nodes"][stage]) == nodes, f"{stage} ran on {ingest['nodes'][stage]}"
        assert sum(ingest["nodes"][stage].values()) == 30
    serve = result["serve"]
    assert serve["search_status"] == [200] and serve["top_hit_is_query"]
    assert set(serve["embedder_nodes"]) == nodes and set(serve["searcher_nodes"]) == nodes
