"""Re-embedding a served gallery under another model: the Ray Data job reads every stored
original back, fills the next version, catches up with the writes made meanwhile and moves the
alias, while the service of the previous model answers every search from its own version; its
writes are then refused (503) until the service runs the new model, which answers from the new
version with the same images.

The two models are the bundled network with two poolings (GeM and average): vectors of the same
dimension, so a search that met the other model's vectors would not fail, it would rank
garbage. An image of the gallery finds itself at cosine ~1 only among vectors of its own model;
that is what each search below checks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ingest.pipeline import run_reembed
from lookalike.embedding.descriptors import descriptor_name
from lookalike.embedding.encoder import ImageEncoder
from lookalike.embedding.images import content_id, prepare
from lookalike.errors import Conflict
from lookalike.indexing.indexer import index_items
from lookalike.indexing.sources import SourceItem
from lookalike.milvus.engines import gallery_catalog
from lookalike.retry import wait_until
from lookalike.storage.store import make_store

from harness.fixtures import REPO, App, deploy
from harness.images import draw, encode

SELF = 0.999  # an image's cosine with its own vector: ~1 under one model, well below across two


def _with(settings, pooling: str):
    return settings.model_copy(update={
        "model": settings.model.model_copy(update={"pooling": pooling}),
        "milvus": settings.milvus.model_copy(update={"collection": "reembedded", "route_check_s": 0.5})})


@pytest.fixture(scope="module")
def before(api, encoder) -> App:
    """An app on /reembed over a gallery of its own (the main app's Milvus Lite and store),
    embedded with GeM pooling (the suite's encoder)."""
    from ray import serve

    settings = _with(api.settings, "gem")
    assert encoder.settings.pooling == "gem"
    files = [p for paths in api.gallery.values() for p in paths[:3]]
    catalog = gallery_catalog(settings)
    report = index_items([SourceItem(str(p), p.parent.name) for p in files], settings, encoder=encoder,
                         catalog=catalog, store=make_store(settings.store))
    assert report.indexed == len(files)
    deploy("reembed", "/reembed", settings)
    yield App(url=api.url + "/reembed", settings=settings, gallery={"indexed": files}, key=api.key)
    serve.delete("reembed")
    catalog.versions.drop()
    catalog.close()


def _top(client, data: bytes) -> tuple[int, float, str]:
    """(status, the top hit's score, its id) of a search by ``data``."""
    response = client.post("/api/v1/search", files={"image": ("q.png", data, "image/png")}, params={"k": 1})
    if response.status_code != 200:
        return response.status_code, 0.0, response.text
    hit = response.json()["results"][0]
    return 200, hit["score"], hit["id"]


class SearchLoad:
    """Searches by the gallery's own images, one after another, until stopped (bounded)."""

    def __init__(self, app: App, files, limit_s: float = 600):
        self.app, self.files, self.limit_s = app, files, limit_s
        self.results: list[tuple[int, float, str, str]] = []  # status, score, hit id, expected id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        with self.app.client() as client:
            i = 0
            while not self._stop.is_set() and time.monotonic() - started < self.limit_s:
                data = self.files[i % len(self.files)].read_bytes()
                self.results.append((*_top(client, data), str(content_id(data))))
                i += 1

    def __enter__(self) -> "SearchLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def failures(self) -> list:
        return [r for r in self.results if r[0] != 200 or r[1] < SELF or r[2] != r[3]]


def test_reembed_under_search_load_then_roll_the_service_to_the_new_model(before, ray_cluster, tmp_path):
    after_settings = _with(before.settings, "avg")
    files = before.gallery["indexed"]
    added = encode(draw("circle", (10, 200, 200), seed=777), "PNG")
    removed = files[-1]
    written: list[int] = []

    def meanwhile(report, total: int) -> None:  # after the first batch: an add and a delete on the old model
        if written:
            return
        with before.client() as client:
            written.append(client.post("/api/v1/images", files={"image": ("new.png", added, "image/png")},
                                       data={"label": "new"}).status_code)
            written.append(client.delete(f"/api/v1/images/{content_id(removed.read_bytes())}").status_code)
            progress = client.get("/api/v1/status").json()["milvus"]["reembed"]  # the operator sees it run
            written.append((progress["descriptor"], progress["done"] > 0))

    with SearchLoad(before, files[:-1]) as load:
        report = run_reembed(after_settings.model_copy(update={"ingest": after_settings.ingest.model_copy(
            update={"read_batch_size": 4, "write_batch_size": 4})}), report_path=str(tmp_path / "r.json"),
            progress=meanwhile)
        time.sleep(2 * after_settings.milvus.route_check_s)  # the old service's searches after the switch too
    assert written == [201, 200, (descriptor_name(after_settings.model, after_settings.images), True)]
    assert load.results and not load.failures(), load.failures()[:5]
    assert report.run["count"] == len(files) and report.run["caught_up"] == 1
    # The bulk: every image listed, less the one deleted meanwhile if its batch came after the delete.
    assert report.indexed - 1 + len(report.skipped) == len(files) and len(report.skipped) <= 1

    with before.client() as client:
        # The old service still answers from its model's version; its writes wait for the new model.
        assert _top(client, files[0].read_bytes())[1] >= SELF
        status = client.get("/api/v1/status").json()["milvus"]
        assert status["moved_to"] == descriptor_name(after_settings.model, after_settings.images)
        refused = client.post("/api/v1/images", files={"image": ("x.png", encode(draw("square", (1, 2, 3), seed=9)),
                                                                  "image/png")})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "gallery_moved"
        assert refused.headers["Retry-After"]

    deploy("reembed", "/reembed", after_settings)  # the rolling update to the new model
    with before.client() as client:
        status = client.get("/api/v1/status").json()["milvus"]
        assert status["descriptor"] == descriptor_name(after_settings.model, after_settings.images)
        assert status["count"] == len(files) and "moved_to" not in status
        for data in [f.read_bytes() for f in files[:-1:4]] + [added]:
            code, score, hit = _top(client, data)
            assert code == 200 and score >= SELF and hit == str(content_id(data))


def test_a_query_is_routed_to_the_version_of_its_own_model(before, encoder):
    """During a rolling update an Embedder of one model may pair with a Searcher of the other: the
    catalog searches the version that holds the query's own descriptor. (Runs after the re-embed:
    the gallery holds average-pooled vectors, the GeM version is kept.)"""
    gem, avg = before.settings, _with(before.settings, "avg")
    avg_encoder = ImageEncoder(avg.model).load()
    data = before.gallery["indexed"][0].read_bytes()
    pixels = prepare(data, encoder.input_size, gem.images).pixels[None]
    catalog = gallery_catalog(gem)  # a Searcher still on GeM
    try:
        for vector, settings in ((encoder.encode(pixels), gem), (avg_encoder.encode(pixels), avg)):
            hit = catalog.search(vector, 1, descriptor=descriptor_name(settings.model, settings.images))[0][0]
            assert hit.id == content_id(data) and hit.score >= SELF
        across = catalog.search(avg_encoder.encode(pixels), 1)[0][0]  # untagged: taken as GeM, as the guard's proof
        assert across.score < SELF
        with pytest.raises(Conflict, match="nothing to re-embed"):
            gallery_catalog(avg).versions.stage(print)
    finally:
        catalog.close()
    assert float(np.dot(encoder.encode(pixels)[0], avg_encoder.encode(pixels)[0])) < SELF


def test_an_operator_reembeds_through_the_index_route(before):
    """POST /api/v1/index with a model: the job of `lookalike reembed`, run in the serving
    cluster by its re-embed actor, its state in the operator's status. (Runs after the re-embed
    above: the app and the gallery are on average pooling; this goes back to GeM.)"""
    gem, files = before.settings, before.gallery["indexed"]
    with before.client() as client:
        refused = [client.post("/api/v1/index", json={"model": model}) for model in (
            {"pooling": "avg"}, {"colour": "red"}, {"name": "immich-clip", "weights": "/no/such/export"})]
        assert [(r.status_code, r.json()["error"]["code"]) for r in refused] == [
            (409, "conflict"), (422, "invalid_parameter"), (422, "invalid_parameter")]
        assert "model.colour" in refused[1].json()["error"]["message"]
        assert "/no/such/export is not a folder" in refused[2].json()["error"]["message"]
        with httpx.Client(base_url=before.url, timeout=60) as anonymous:
            assert anonymous.post("/api/v1/index", json={"model": {"pooling": "gem"}}).status_code == 401
            assert "reembed_job" not in anonymous.get("/api/v1/status").json()

        started = client.post("/api/v1/index", json={"model": {"pooling": "gem"}})
        assert started.status_code == 202 and started.json()["state"] == "reembedding", started.text
        assert started.json()["total"] == len(files)
        joined = client.post("/api/v1/index", json={"model": {"pooling": "gem"}})  # the same job, not another
        assert joined.json()["started"] == started.json()["started"]

        def finished():
            state = client.get("/api/v1/status").json()["reembed_job"]
            return state if state["state"] in ("done", "failed") else None

        state = wait_until(finished, 600, "the re-embed started through the API", interval_s=1)
        assert state["state"] == "done" and state["count"] == len(files), state
        report = Path(state["report"])  # with the app's data, never in the repo (data/reports by default)
        assert report.is_absolute() and report.is_file() and not report.is_relative_to(REPO), report
        # The avg service notices the move at its next check of the routes (milvus.route_check_s):
        # a status read at once may still come from the check made just before the switch.
        def moved():
            milvus = client.get("/api/v1/status").json()["milvus"]
            return milvus if "moved_to" in milvus else None

        status = wait_until(moved, 30, "the service to see the gallery moved", interval_s=0.2)
        assert status["moved_to"] == descriptor_name(gem.model, gem.images)
        assert _top(client, files[0].read_bytes())[1] >= SELF  # the avg service: from its kept version


def test_the_command_refuses_a_gallery_that_is_not_there(tmp_path):
    """`lookalike reembed` runs `python -m ingest --reembed`; with nothing to re-embed it says so
    before starting Ray."""
    env = {**os.environ, "LOOKALIKE_MILVUS__URI": str(tmp_path / "m.db"), "LOOKALIKE_STORE__LOCAL_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "lookalike.cli", "reembed"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "ingest: there is no gallery 'images' to re-embed" in done.stderr, done.stderr
