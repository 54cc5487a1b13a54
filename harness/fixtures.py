"""The suite's shared fixtures, a pytest plugin (the repo's conftest.py loads it): real servers,
a real Ray cluster and the Serve apps, started once per session for the tests (tests/) and the
benchmarks' smoke runs (benchmarks/test_smoke.py) alike.

Everything listens on 127.0.0.1. ``make test`` runs the suite inside a loopback-only network
namespace, which also proves no test talks to anything else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lookalike.ray_env import use_local_ray_env

use_local_ray_env()

from .serve import deploy as harness_deploy, serve_options  # noqa: E402
from .servers import (  # noqa: E402
    HOST, LiteServerProcess, LocalServer, SeaweedS3, free_port, in_isolated_netns,
)
from lookalike.embedding.encoder import ImageEncoder  # noqa: E402
from lookalike.settings import Settings, load_settings  # noqa: E402

from .images import make_gallery  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "lookalike.yaml"
API_KEY = "test-key-0123456789"


def make_settings(base: Path, **sections) -> Settings:
    """The repo's settings with data (and the jobs' reports) under ``base`` and the given overrides."""
    overrides = {"milvus": {"uri": str(base / "milvus.db")}, "store": {"local_dir": str(base / "images")},
                 "ingest": {"report_dir": str(base / "reports")}}
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_settings(CONFIG, overrides=overrides)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lookalike")


@pytest.fixture(scope="session")
def gallery(workdir) -> dict[str, list[Path]]:
    return make_gallery(workdir / "gallery")


@pytest.fixture(scope="session")
def gallery_root(gallery, workdir) -> Path:
    return workdir / "gallery"


@pytest.fixture(scope="session")
def encoder() -> ImageEncoder:
    return ImageEncoder(load_settings(CONFIG).model).load()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> LocalServer:
    """A real Milvus server: the local one Lookalike runs (in its own loopback-only namespaces,
    behind a Unix socket), for this session."""
    server = LocalServer(tmp_path_factory.mktemp("milvus") / "server")
    refusal = server.service.refusal()
    if refusal:
        if os.environ.get("CI"):
            pytest.fail(refusal)
        pytest.skip(refusal)
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def ray_cluster(metrics_port):
    """The suite's Ray cluster; its Prometheus endpoint (Ray's metrics port) is ``metrics_url``."""
    import ray

    ray.init(address="local", num_cpus=4, object_store_memory=256 * 1024**2, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
             _metrics_export_port=metrics_port)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def metrics_url(ray_cluster, metrics_port) -> str:
    return f"http://{HOST}:{metrics_port}/metrics"


@pytest.fixture(scope="session")
def serve_url(ray_cluster) -> str:
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": HOST, "port": port})
    yield f"http://{HOST}:{port}"
    serve.shutdown()


def pytest_report_header(config):
    return f"network namespace: {'loopback only' if in_isolated_netns() else 'host'}"


# -- the Serve application ----------------------------------------------------------------------
def suite_options(**overrides: dict) -> dict[str, dict]:
    """The Serve config's per-deployment options (health checks, concurrency), one replica each
    with no CPU reservation, so that several apps fit the 2-core test machine; ``overrides``:
    per-deployment options on top (autoscaling, say)."""
    out = {}
    for name, options in serve_options().items():
        options = {k: v for k, v in options.items() if k not in ("autoscaling_config", "ray_actor_options")}
        out[name] = {**options, "ray_actor_options": {"num_cpus": 0}, **overrides.get(name, {})}
    return out


TEST_OPTIONS = suite_options()


@dataclass
class App:
    url: str  # base URL, route prefix included
    settings: Settings
    gallery: dict[str, list[Path]]
    key: str | None = None

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers, **kwargs)


def deploy(name: str, route_prefix: str, settings: Settings, options: dict | None = None) -> None:
    """An app of the suite's, on the test options (one replica each, no CPU reservation)."""
    harness_deploy(settings, name=name, route_prefix=route_prefix, options=options or TEST_OPTIONS)


@pytest.fixture(scope="session")
def api(serve_url, workdir, gallery, gallery_root, encoder) -> App:
    """The default stack: Milvus Lite through its shared server, local image store, API key on
    writes; the generated gallery indexed beforehand with the in-process indexer."""
    from lookalike.milvus.engines import gallery_catalog
    from lookalike.indexing.indexer import index_items
    from lookalike.milvus.lite_server import LiteServer
    from lookalike.indexing.sources import iter_folder
    from lookalike.storage.store import make_store

    # A low Lite size limit, so that status carries the scale warning (the gallery is larger).
    # The service fetches URLs from itself in tests: 127.0.0.1 is on its allow-list.
    settings = make_settings(workdir / "api", api={"api_key": API_KEY, "url_fetch_allow": ["127.0.0.1/32"]},
                             milvus={"lite_fast_max_rows": 10})
    catalog = gallery_catalog(settings)  # starts the shared server
    report = index_items(iter_folder(gallery_root), settings, encoder=encoder, catalog=catalog,
                         store=make_store(settings.store))
    assert report.indexed == sum(len(v) for v in gallery.values())
    catalog.close()
    deploy("main", "/", settings)
    yield App(url=serve_url, settings=settings, gallery=gallery, key=API_KEY)
    from ray import serve

    serve.delete("main")
    LiteServer(settings.milvus.uri).stop()


@pytest.fixture(scope="session")
def api_regions(serve_url, api, encoder) -> App:
    """A third app on /regions: the main app's Milvus Lite and store, a gallery that keeps region
    vectors (model.regions on) in a collection of its own. Two images per class, indexed by
    the ingest's stages (the in-process indexer), all but the first: left for the API's add."""
    from ray import serve

    from lookalike.indexing.indexer import index_items
    from lookalike.milvus.engines import gallery_catalog
    from lookalike.indexing.sources import SourceItem
    from lookalike.storage.store import make_store

    model = api.settings.model
    settings = api.settings.model_copy(update={
        "model": model.model_copy(update={"regions": model.regions.model_copy(update={"enabled": True})}),
        "milvus": api.settings.milvus.model_copy(update={"collection": "with_regions"})})
    files = [p for paths in api.gallery.values() for p in paths[:2]]
    catalog = gallery_catalog(settings)
    report = index_items([SourceItem(str(p), p.parent.name) for p in files[1:]], settings, encoder=encoder,
                         catalog=catalog, store=make_store(settings.store))
    assert report.indexed == len(files) - 1
    deploy("regions", "/regions", settings)
    yield App(url=serve_url + "/regions", settings=settings, gallery={"indexed": files[1:], "added": files[:1]},
              key=API_KEY)
    serve.delete("regions")
    catalog.versions.drop()
    catalog.close()


@pytest.fixture(scope="session")
def lite_process(workdir):
    """A Milvus Lite server the tests may kill and restart (same port, same data)."""
    server = LiteServerProcess(workdir / "s3app.db").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api_s3(serve_url, workdir, gallery, s3_server, lite_process) -> App:
    """A second app on /s3: a Milvus server URI (the restartable Lite process) and the S3 store."""
    settings = make_settings(workdir / "api_s3", milvus={"uri": lite_process.uri, "timeout_s": 5},
                             store={"backend": "s3", "s3": {
                                 "endpoint": s3_server.endpoint, "bucket": "gallery",
                                 "access_key": s3_server.access_key, "secret_key": s3_server.secret_key}})
    deploy("s3", "/s3", settings)
    yield App(url=serve_url + "/s3", settings=settings, gallery=gallery)
    from ray import serve

    serve.delete("s3")

