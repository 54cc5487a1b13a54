"""Where images to index come from: a folder tree (``<label>/<file>``, the ImageNet layout),
a list file, or an S3 bucket/prefix (``s3://bucket/prefix``). ``Source`` lists the items and
reads their bytes; both the in-process indexer and the Ray Data ingest use it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

from lookalike.settings import IMAGE_EXTENSIONS, Settings


@dataclass(frozen=True)
class SourceItem:
    path: str  # a local path, or an object key for S3 sources and the gallery's own originals
    label: str  # the first folder below the root, or ""
    source: str = ""  # what the entry records as its origin; "": the path


def read_file(path: str) -> bytes:
    return Path(path).read_bytes()


def _hidden(parts: Iterable[str]) -> bool:
    return any(part.startswith(".") for part in parts)


def _wanted(name: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    lower = name.lower()
    return lower.endswith(include) and not (exclude and lower.endswith(exclude))


def label_of(relative: PurePosixPath) -> str:
    return relative.parts[0] if len(relative.parts) > 1 else ""


def iter_folder(root: str | os.PathLike, *, include: tuple[str, ...] = IMAGE_EXTENSIONS,
                exclude: tuple[str, ...] = ()) -> Iterator[SourceItem]:
    """Files under ``root`` in a stable (sorted) order; hidden files and folders skipped."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    include, exclude = _lower(include), _lower(exclude)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not _wanted(name, include, exclude):
                continue
            path = Path(dirpath) / name
            yield SourceItem(str(path), label_of(PurePosixPath(path.relative_to(root).as_posix())))


def iter_list_file(list_file: str | os.PathLike, *, include: tuple[str, ...] = IMAGE_EXTENSIONS,
                   exclude: tuple[str, ...] = ()) -> Iterator[SourceItem]:
    """One path per line, optionally ``path<TAB>label``; relative paths are taken from the
    list file's folder; blank lines and ``#`` comments skipped."""
    list_file = Path(list_file).resolve()
    include, exclude = _lower(include), _lower(exclude)
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, _, label = line.partition("\t")
        full = (list_file.parent / path.strip()).resolve()
        if _hidden(full.parts) or not _wanted(full.name, include, exclude):
            continue
        yield SourceItem(str(full), label.strip() or full.parent.name)


def iter_keys(keys: Iterable[str], prefix: str = "", *, include: tuple[str, ...] = IMAGE_EXTENSIONS,
              exclude: tuple[str, ...] = ()) -> Iterator[SourceItem]:
    """Object keys under a prefix (an S3 listing); label = first folder below the prefix."""
    include, exclude = _lower(include), _lower(exclude)
    base = PurePosixPath(prefix.strip("/")) if prefix.strip("/") else None
    for key in keys:
        relative = PurePosixPath(key)
        if base is not None:
            try:
                relative = relative.relative_to(base)
            except ValueError:
                continue
        if _hidden(relative.parts) or not _wanted(relative.name, include, exclude):
            continue
        yield SourceItem(key, label_of(relative))


def _lower(exts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in exts)


@dataclass(frozen=True)
class Source:
    kind: str  # "folder" | "list" | "s3" | "gallery" (its originals in the image store: a re-embed)
    location: str  # a local path, or the bucket
    prefix: str = ""

    @classmethod
    def parse(cls, spec: str) -> "Source":
        if spec.startswith("s3://"):
            bucket, _, prefix = spec[5:].partition("/")
            if not bucket:
                raise ValueError(f"no bucket in {spec!r}; use s3://bucket/prefix")
            return cls("s3", bucket, prefix)
        path = Path(spec).expanduser().resolve()
        if path.is_dir():
            return cls("folder", str(path))
        if path.is_file():
            return cls("list", str(path))
        raise FileNotFoundError(f"no such folder or list file: {spec}")

    def __str__(self) -> str:
        return f"s3://{self.location}/{self.prefix}" if self.kind == "s3" else self.location

    def items(self, settings: Settings) -> Iterator[SourceItem]:
        filters = dict(include=tuple(settings.ingest.extensions), exclude=tuple(settings.ingest.exclude_extensions))
        if self.kind == "folder":
            return iter_folder(self.location, **filters)
        if self.kind == "list":
            return iter_list_file(self.location, **filters)
        return iter_keys(self._s3(settings).keys(self.prefix), self.prefix, **filters)

    def reader(self, settings: Settings) -> Callable[[str], bytes]:
        """A function reading one item's bytes (an S3 client is made once per reader)."""
        if self.kind == "gallery":
            from lookalike.storage.store import make_store

            return make_store(settings.store).get
        return self._s3(settings).get if self.kind == "s3" else read_file

    def in_store(self, settings: Settings) -> bool:
        """The source is the image store's own: originals are already where they belong."""
        s3 = settings.store.s3
        return self.kind == "gallery" or (self.kind == "s3" and settings.store.backend == "s3"
                                          and self.location == s3.bucket)

    def _s3(self, settings: Settings):
        from lookalike.storage.store import S3Store

        return S3Store(settings.store.s3.model_copy(update={"bucket": self.location}), create_bucket=False)
