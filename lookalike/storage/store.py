"""Where the original images live, so that every search result has a URL.

``LocalStore``: a directory; the ingress serves it at ``/images/{key}``.
``S3Store``: MinIO or any S3 through the minio SDK; URLs are a public base or presigned GETs.
Keys are validated by ``safe_key`` before they touch either backend.
"""

from __future__ import annotations

import io
import os
import tempfile
import unicodedata
from abc import ABC, abstractmethod
from datetime import timedelta
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

from lookalike.errors import BackendUnavailable, InvalidParameter, NotFound
from lookalike.limits import KEY_MAX_BYTES, utf8_len
from lookalike.settings import S3Settings, StoreSettings

LOCAL_URL_PREFIX = "/images/"


def safe_key(key: str) -> str:
    """Accept a relative object key made of clean segments; reject traversal and oddities."""
    if not isinstance(key, str) or not key:
        raise InvalidParameter("the object key is empty")
    if utf8_len(key) > KEY_MAX_BYTES:
        raise InvalidParameter(f"the object key is longer than {KEY_MAX_BYTES} bytes")
    if key.startswith("/") or "\\" in key:
        raise InvalidParameter("the object key must be a relative path with forward slashes")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in key):
        raise InvalidParameter("the object key contains control or unassigned characters")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidParameter("the object key has an empty, '.' or '..' segment")
    return key


def object_key(image_id: int, extension: str) -> str:
    """Content-addressed key for an image we store: the same bytes map to the same object."""
    return f"{image_id:016x}{extension}"


class ImageStore(ABC):
    backend: str

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def url(self, key: str) -> str: ...

    @abstractmethod
    def keys(self, prefix: str = "") -> Iterator[str]: ...

    @abstractmethod
    def describe(self) -> dict: ...


class LocalStore(ImageStore):
    backend = "local"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        path = (self.root / safe_key(key)).resolve()
        if not path.is_relative_to(self.root):  # symlinks pointing out, belt and braces
            raise InvalidParameter("the object key leaves the store")
        return path

    def put(self, key: str, data: bytes, content_type: str = "") -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: readers never see half a file, a crash never leaves one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no stored image {key!r}") from None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def url(self, key: str) -> str:
        return LOCAL_URL_PREFIX + quote(safe_key(key))

    def keys(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and not path.name.startswith(".") and key.startswith(prefix):
                yield key

    def describe(self) -> dict:
        return {"backend": self.backend, "root": str(self.root), "healthy": os.access(self.root.parent, os.W_OK)}


class S3Store(ImageStore):
    backend = "s3"

    def __init__(self, settings: S3Settings, *, create_bucket: bool = True):
        import urllib3
        from minio import Minio

        self.settings = settings
        self.bucket = settings.bucket
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(5.0, settings.timeout_s), read=settings.timeout_s),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            maxsize=16,
        )
        self.client = Minio(
            settings.endpoint, access_key=settings.access_key.get_secret_value() or None,
            secret_key=settings.secret_key.get_secret_value() or None, secure=settings.secure,
            region=settings.region or None, http_client=http,
        )
        self._create_bucket = create_bucket
        self._bucket_ready = False

    def _guard(self, fn, *args, **kwargs):
        """Run an SDK call; unreachable endpoint -> 503 naming the object store."""
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except S3Error:
            raise
        except (HTTPError, OSError) as exc:
            self._bucket_ready = False
            raise BackendUnavailable("object store", "cannot reach it",
                                     detail=f"{self.settings.endpoint}: {exc!r}") from exc

    def ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from minio.error import S3Error

        if not self._guard(self.client.bucket_exists, bucket_name=self.bucket):
            if not self._create_bucket:
                raise NotFound(f"no bucket {self.bucket!r} at {self.settings.endpoint}")
            try:
                self._guard(self.client.make_bucket, bucket_name=self.bucket, location=self.settings.region or None)
            except S3Error as exc:  # another process created it first
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            if self.settings.public_read:
                self._guard(self.client.set_bucket_policy, bucket_name=self.bucket, policy=self.public_read_policy())
        self._bucket_ready = True

    def public_read_policy(self) -> str:
        import json

        return json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject"],
                           "Resource": [f"arn:aws:s3:::{self.bucket}/*"]}],
        })

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.ensure_bucket()
        self._guard(self.client.put_object, bucket_name=self.bucket, object_name=safe_key(key),
                    data=io.BytesIO(data), length=len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        self.ensure_bucket()
        try:
            response = self._guard(self.client.get_object, bucket_name=self.bucket, object_name=safe_key(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise NotFound(f"no stored image {key!r}") from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def delete(self, key: str) -> None:
        self.ensure_bucket()
        self._guard(self.client.remove_object, bucket_name=self.bucket, object_name=safe_key(key))

    def url(self, key: str) -> str:
        key = safe_key(key)
        if self.settings.public_url_base:
            return self.settings.public_url_base.rstrip("/") + "/" + quote(key)
        # Presigning needs the bucket's region: a request unless settings name it.
        return self._guard(self.client.presigned_get_object, bucket_name=self.bucket, object_name=key,
                           expires=timedelta(seconds=self.settings.presign_expiry_s))

    def keys(self, prefix: str = "") -> Iterator[str]:
        self.ensure_bucket()
        objects = iter(self.client.list_objects(bucket_name=self.bucket, prefix=prefix or None, recursive=True))
        while (obj := self._guard(next, objects, None)) is not None:
            if not obj.is_dir:
                yield obj.object_name

    def describe(self) -> dict:
        base = {"backend": self.backend, "endpoint": self.settings.endpoint, "bucket": self.bucket}
        try:
            self.ensure_bucket()
            return {**base, "healthy": True}
        except BackendUnavailable as exc:
            return {**base, "healthy": False, "error": exc.message}


def make_store(settings: StoreSettings) -> ImageStore:
    if settings.backend == "s3":
        return S3Store(settings.s3)
    return LocalStore(settings.local_dir)
