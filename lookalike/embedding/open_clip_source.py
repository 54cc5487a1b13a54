"""The ``open-clip:<architecture>`` model source: an open_clip model by name, its weights a
pretrained tag (from the Hugging Face cache on the user's machine) or a local checkpoint file
(``model.weights``), exported once to immich's folder layout under ``model.cache_dir`` (keyed
by the architecture and the weights: the tag, or the file's path, size and time) and then run
as any export (``clip_folder.py``) on onnxruntime.

The model's shape (dimension, input size, whether it has a text tower) is read from open_clip's
model config without importing torch, so the HTTP ingress can know it without loading a model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from filelock import FileLock

from lookalike.embedding import clip_folder
from lookalike.errors import ConfigurationError

PREFIX = "open-clip:"


def architecture(name: str) -> str:
    return name.removeprefix(PREFIX)


def model_config(name: str) -> dict:
    """open_clip's config for the architecture: from its packaged files (no torch), else from
    open_clip itself (a config a user registered with ``open_clip.add_model_config``)."""
    arch = architecture(name)
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise ConfigurationError(f"model {name} needs open_clip_torch (pip install open_clip_torch)")
    for location in spec.submodule_search_locations or []:
        path = Path(location) / "model_configs" / f"{arch}.json"
        if path.is_file():
            return json.loads(path.read_text())
    import open_clip

    config = open_clip.get_model_config(arch)
    if config is None:
        raise ConfigurationError(f"open_clip has no model {arch!r} (open_clip.list_models() lists them)")
    return config


def weights_label(weights: str) -> str:
    """What the descriptor records of the weights: the tag, or the checkpoint's file name."""
    return Path(weights).name if weights and Path(weights).exists() else weights or "random"


def cache_folder(name: str, weights: str, cache_dir: str) -> Path:
    if weights and Path(weights).is_file():
        stat = Path(weights).stat()
        key = f"{Path(weights).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    else:
        key = f"tag:{weights}"
    digest = hashlib.sha256(f"{architecture(name)};{key}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"open-clip-{architecture(name)}-{digest}"


def exported(name: str, weights: str, cache_dir: str) -> clip_folder.ClipFolder:
    """The export of this architecture and these weights, written now unless cached (one
    process writes it; the others wait for it)."""
    from lookalike.embedding.clip_export import load_open_clip, write_layout

    if not weights:
        raise ConfigurationError(f"model {name} needs model.weights: an open_clip pretrained tag (openai, "
                                 "laion2b_s34b_b79k, ...) or a local checkpoint file")
    folder = cache_folder(name, weights, cache_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not folder.is_dir():
            write_layout(load_open_clip(architecture(name), weights), model_config(name), folder)
    return clip_folder.read(folder)
