"""Both image store backends: a local directory and a real S3 server (SeaweedFS)."""

import httpx
import pytest

from lookalike.errors import BackendUnavailable, InvalidParameter, NotFound
from lookalike.settings import S3Settings
from lookalike.storage.store import LocalStore, S3Store, object_key, safe_key

from harness.servers import free_port


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "images")
    server = request.getfixturevalue("s3_server")
    return S3Store(S3Settings(endpoint=server.endpoint, bucket=f"t{abs(hash(request.node.name)) % 10**8}",
                              access_key=server.access_key, secret_key=server.secret_key))


def test_put_get_delete_keys(store):
    key = object_key(0x1234, ".png")
    assert key == "0000000000001234.png"
    assert key not in set(store.keys())
    store.put(key, b"\x89PNG data", "image/png")
    store.put("cats/tabby 1.jpg", b"jpeg", "image/jpeg")
    assert store.get(key) == b"\x89PNG data"
    assert sorted(store.keys()) == sorted([key, "cats/tabby 1.jpg"])
    assert list(store.keys("cats/")) == ["cats/tabby 1.jpg"]
    store.put(key, b"\x89PNG data", "image/png")  # idempotent
    store.delete(key)
    assert key not in set(store.keys())
    with pytest.raises(NotFound):
        store.get(key)
    assert store.describe()["healthy"] is True


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs.png", "a/../../b.png", "a//b.png", "a\\b.png", "",
                                 "x\x00.png", "./a.png", "a/./b.png"])
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(InvalidParameter):
        store.put(key, b"x", "image/png")
    with pytest.raises(InvalidParameter):
        safe_key(key)


def test_local_store_never_leaves_its_root(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    root = tmp_path / "images"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)  # a symlink pointing out of the store
    store = LocalStore(root)
    with pytest.raises(InvalidParameter):
        store.get("link/secret.txt")
    assert store.url("a b/c.png") == "/images/a%20b/c.png"


def test_s3_urls_presigned_and_public(s3_server):
    common = dict(endpoint=s3_server.endpoint, access_key=s3_server.access_key, secret_key=s3_server.secret_key)
    private = S3Store(S3Settings(bucket="private-bucket", **common))
    private.put("p.png", b"private bytes", "image/png")
    assert httpx.get(f"http://{s3_server.endpoint}/private-bucket/p.png").status_code == 403
    presigned = private.url("p.png")
    assert "X-Amz-Signature" in presigned
    response = httpx.get(presigned)
    assert response.status_code == 200 and response.content == b"private bytes"

    base = f"http://{s3_server.endpoint}/public-bucket"
    public = S3Store(S3Settings(bucket="public-bucket", public_read=True, public_url_base=base, **common))
    public.put("dir/q.png", b"public bytes", "image/png")
    assert public.url("dir/q.png") == f"{base}/dir/q.png"
    response = httpx.get(public.url("dir/q.png"))  # anonymous
    assert response.status_code == 200 and response.content == b"public bytes"
    assert response.headers["content-type"] == "image/png"


def test_s3_down_is_backend_unavailable():
    store = S3Store(S3Settings(endpoint=f"127.0.0.1:{free_port()}", bucket="bucket", access_key="k", secret_key="s",
                               timeout_s=2))
    with pytest.raises(BackendUnavailable) as info:
        store.put("a.png", b"x", "image/png")
    assert info.value.backend == "object store"
    assert "127.0.0.1" not in info.value.message and "127.0.0.1" in info.value.detail  # the address: log only
    assert store.describe()["healthy"] is False
