"""docker-compose.yml, validated offline by Debian's docker-compose (no engine needed): the
file parses with every key known, images are pinned, only 127.0.0.1 is published, secrets are
required, and Lookalike is pointed at the compose Milvus and MinIO."""

import os
import shutil
import subprocess

import pytest
import yaml

from harness.fixtures import REPO

SECRETS = {"LOOKALIKE_API_KEY": "k" * 32, "MINIO_ROOT_USER": "lookalike", "MINIO_ROOT_PASSWORD": "p" * 32}


def _config(env: dict) -> subprocess.CompletedProcess:
    compose = shutil.which("docker-compose")
    if compose is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing: make test-deps installs Debian's docker-compose")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([compose, "-f", str(REPO / "docker-compose.yml"), "config"], env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_the_compose_file_is_valid_pinned_and_publishes_loopback_only():
    done = _config(SECRETS)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"etcd", "minio", "milvus", "lookalike"}
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), (name, image)
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip')}:{port.get('published')}"
            assert published.startswith("127.0.0.1:"), (name, port)
    assert services["milvus"]["image"].startswith("milvusdb/milvus:v2.6.")
    env = services["lookalike"]["environment"]
    assert env["LOOKALIKE_MILVUS__URI"] == "http://milvus:19530" and env["LOOKALIKE_STORE__S3__ENDPOINT"] == "minio:9000"
    assert env["LOOKALIKE_API__API_KEY"] == SECRETS["LOOKALIKE_API_KEY"]
    assert services["lookalike"]["build"]  # Lookalike comes from the Dockerfile


def test_the_compose_file_refuses_to_run_without_its_secrets():
    done = _config({k: v for k, v in SECRETS.items() if k != "MINIO_ROOT_PASSWORD"})
    assert done.returncode != 0 and "MINIO_ROOT_PASSWORD" in done.stderr
