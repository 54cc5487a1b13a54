"""Shared fixtures: real servers and a real Ray cluster, started once per session.

Everything listens on 127.0.0.1. ``make test`` runs the suite inside a loopback-only network
namespace, which also proves no test talks to anything else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.ray_env import use_local_ray_env

use_local_ray_env()

from lookalike.encoder import ImageEncoder  # noqa: E402
from lookalike.settings import Settings, load_settings  # noqa: E402

from .support.images import make_gallery  # noqa: E402
from .support.servers import HOST, MilvusStandalone, SeaweedS3, free_port, in_isolated_netns  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "lookalike.yaml"
API_KEY = "test-key-0123456789"


def make_settings(base: Path, **sections) -> Settings:
    """The repo's settings with data under ``base`` and the given overrides."""
    overrides = {"milvus": {"uri": str(base / "milvus.db")}, "store": {"local_dir": str(base / "images")}}
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
def milvus_server(tmp_path_factory):
    if not in_isolated_netns():
        pytest.skip("the Milvus server binds every interface: run the suite with `make test` "
                    "(a loopback-only network namespace)")
    server = MilvusStandalone(tmp_path_factory.mktemp("milvus-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=4, object_store_memory=256 * 1024**2, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(ray_cluster) -> str:
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": HOST, "port": port})
    yield f"http://{HOST}:{port}"
    serve.shutdown()


def pytest_report_header(config):
    return f"network namespace: {'loopback only' if in_isolated_netns() else 'host (Milvus server tests skip)'}"

