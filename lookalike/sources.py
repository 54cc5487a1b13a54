"""Where images to index come from: a folder tree (``<label>/<file>``, the ImageNet layout),
a list file, or an S3 bucket/prefix. Listing only; reading the bytes is the caller's job."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class SourceItem:
    path: str  # a local path, or an object key for S3 sources
    label: str  # the first folder below the root, or ""


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
