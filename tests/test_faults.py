"""Faults with nothing lost: the object store or Milvus down during an add or an ingest."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import numpy as np
import pytest

from ingest.pipeline import run_ingest
from lookalike.milvus.catalog import Catalog
from lookalike.errors import BackendUnavailable
from lookalike.embedding.images import content_id
from lookalike.indexing.indexer import index_items
from lookalike.milvus.engines import open_catalog
from lookalike.milvus.lite_server import LiteServer
from lookalike.retry import Retry
from lookalike.settings import MilvusSettings
from lookalike.indexing.sources import iter_folder
from lookalike.storage.store import LocalStore, make_store
from lookalike.indexing.writer import GalleryWriter, NewImage

from harness.fixtures import make_settings
from harness.images import draw, encode
from harness.servers import LiteServerProcess


def _restart_later(server, delay_s: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay_s), server.start()), daemon=True)
    thread.start()
    return thread


def test_ingest_with_the_store_down_fails_clearly_then_retries_through_an_outage(ray_cluster, s3_server, tmp_path,
                                                                                 gallery_root, encoder, caplog):
    s3 = {"endpoint": s3_server.endpoint, "access_key": s3_server.access_key,
          "secret_key": s3_server.secret_key, "bucket": "outage", "timeout_s": 3}
    settings = make_settings(tmp_path, store={"backend": "s3", "s3": s3},
                             ingest={"retries": 0, "read_batch_size": 8, "write_batch_size": 8})
    s3_server.stop()
    restarted = None
    try:
        # Down for good (no retries): the job stops naming the store, and no entry lacks its image.
        with pytest.raises(BackendUnavailable) as info:
            run_ingest(str(gallery_root), settings, report_path=str(tmp_path / "failed.json"))
        assert info.value.backend == "object store"
        catalog = open_catalog(settings.milvus, 1280, shared=True)  # shared: the next run joins its server
        assert catalog.count() == 0
        catalog.close()
        # Down for a few seconds: the writes are tried again with backoff and the run completes.
        # (The in-process runner: the same stages, and a first write that surely meets the outage.)
        settings = make_settings(tmp_path, store={"backend": "s3", "s3": s3},
                                 ingest={"retries": 6, "retry_backoff_s": 0.5})
        restarted = _restart_later(s3_server, 2.0)
        caplog.set_level(logging.WARNING, logger="lookalike.retry")
        catalog = open_catalog(settings.milvus, 1280, shared=True)
        report = index_items(iter_folder(gallery_root), settings, encoder=encoder, catalog=catalog,
                             store=make_store(settings.store))
        catalog.close()
    finally:
        if restarted:
            restarted.join(timeout=120)
        if s3_server.proc is None:
            s3_server.start()
        LiteServer(settings.milvus.uri).stop()
    assert "trying again" in caplog.text  # the outage was met, and waited out
    assert report.indexed == 30 and not report.skipped
    assert len(list(make_store(settings.store).keys())) == 30  # one object per entry, none orphaned


def _image(seed: int) -> NewImage:
    data = encode(draw("circles", (200, 40, 40), seed), "PNG")
    return NewImage(id=content_id(data), data=data, extension=".png", content_type="image/png",
                    vector=np.random.default_rng(seed).normal(size=8).astype(np.float32), label="x", source="s")


def test_a_write_cut_by_milvus_leaves_no_orphan_once_retried(tmp_path):
    milvus = LiteServerProcess(tmp_path / "w.db").start()
    catalog = Catalog(MilvusSettings(uri=milvus.uri, timeout_s=3), 8)
    store = LocalStore(tmp_path / "images")
    restarted = None
    try:
        catalog.ensure_ready()
        milvus.stop()
        image = _image(1)
        with pytest.raises(BackendUnavailable):  # stored, then Milvus refused the entry
            GalleryWriter(catalog, store).write([image])
        assert list(store.keys()) == [image.store_key]
        restarted = _restart_later(milvus, 1.0)
        GalleryWriter(catalog, store, retry=Retry(6, 0.5)).write([image])  # tried again through the outage
        assert catalog.existing_ids([image.id]) == {image.id}
        assert list(store.keys()) == [image.store_key]  # the same object, now referenced
    finally:
        catalog.close()
        if restarted:  # its start may still be checking the port the write already reached
            restarted.join(timeout=120)
        milvus.stop()


def test_add_with_the_store_down_is_a_503_and_leaves_nothing(api_s3, s3_server):
    data = encode(draw("squares", (40, 200, 40), 4242), "PNG")
    image_id = str(content_id(data))
    with api_s3.client() as client:
        before = client.get("/api/v1/status").json()["count"]
        s3_server.stop()
        try:
            r = client.post("/api/v1/images", files={"image": ("new.png", data, "image/png")})
            assert r.status_code == 503 and r.headers["Retry-After"]
            assert r.json()["error"]["backend"] == "object store"
            assert client.get(f"/api/v1/images/{image_id}").status_code == 404  # no entry without its image
        finally:
            s3_server.start()
        r = client.post("/api/v1/images", files={"image": ("new.png", data, "image/png")})  # the client retries
        assert r.status_code == 201, r.text
        assert client.get("/api/v1/status").json()["count"] == before + 1
        assert httpx.get(r.json()["url"], timeout=10).content == data
        deleted = client.delete(f"/api/v1/images/{image_id}")
        assert deleted.status_code == 200 and deleted.json()["object_deleted"] is True
        assert client.get("/api/v1/status").json()["count"] == before
