"""Exported models, run as their own ONNX graphs. A CLIP-like model exported in immich's layout:
the folder its users already download (``huggingface-cli download immich-app/ViT-B-32__openai``)
and its exporter writes::

    config.json                  the open_clip model config: embed_dim, vision_cfg, text_cfg
                                 (context_length, tokenizer_kwargs)
    visual/model.onnx            input ``image``: float32 NCHW, normalised; output ``embedding``
    visual/preprocess_cfg.json   size, mean, std (interpolation, resize_mode: the service's own
                                 fit applies, ``images.fit``; ``crop`` is the CLIP family's)
    textual/model.onnx           input ``text``: int32 token ids (1, context_length), or
                                 ``input_ids`` + ``attention_mask`` (multilingual CLIP); output
                                 ``embedding``
    textual/tokenizer.json       a ``tokenizers`` file; textual/tokenizer_config.json names the
                                 pad token

Its graphs may have a fixed batch dimension of 1 (immich's exporter leaves the axes static):
``onnx_runtime.OnnxRuntime`` runs such a graph image by image. A text graph whose metadata holds
``CUT_TO_LENGTH`` (Lookalike's exporter writes it where it holds) takes ids of any length, and
gives the same vector for a text's ids cut after its end token as for the ids padded to the
context: ``text.TextTower`` cuts a batch to its longest text. The ``textual`` folder is
optional: without it the model searches by image only.

An image encoder may also be one ONNX file with a JSON beside it (``read_onnx_file``).

Reading the folder checks every file it names (present, parseable, the keys it needs) and a
problem is a ConfigurationError naming the file, so a broken folder is refused at start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lookalike.errors import ConfigurationError

SOURCE = "immich-clip"
CUT_TO_LENGTH = ("lookalike.text_length", "cut")  # a text graph's metadata: ids may be cut to their length
ONNX_FILE = "onnx-file"  # any ONNX image encoder: a file, and a JSON beside it (read_onnx_file)


@dataclass(frozen=True)
class ClipFolder:
    source: str  # SOURCE (a folder) or ONNX_FILE (one graph file)
    path: Path
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    visual: Path
    textual: Path | None  # None: image only
    tokenizer: Path | None
    pad_token: str
    context_length: int
    canonicalize: bool  # the text is lower-cased and stripped of punctuation first (SigLIP)

    @property
    def name(self) -> str:
        return f"{self.source}:{self.path.name}"


def _json(path: Path, keys: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise ConfigurationError(f"the model folder lacks {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from None
    missing = [key for key in keys if not isinstance(data, dict) or key not in data]
    if missing:
        raise ConfigurationError(f"{path} has no {', '.join(missing)}")
    return data


def _file(path: Path) -> Path:
    if not path.is_file() or path.stat().st_size == 0:
        raise ConfigurationError(f"the model folder lacks {path}" if not path.exists() else f"{path} is empty")
    return path


def _triple(value, path: Path, key: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        value = [value] * 3
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
        raise ConfigurationError(f"{path}: {key} must be three numbers (RGB)")
    return tuple(float(v) for v in value)


def read(folder: str | Path) -> ClipFolder:
    """The folder's model, its files checked (not yet loaded)."""
    path = Path(folder)
    if not str(folder) or not path.is_dir():
        raise ConfigurationError(f"model.name {SOURCE} needs model.weights set to the export's folder; "
                                 f"{str(folder) or '(empty)'} is not a folder")
    config = _json(path / "config.json", ("embed_dim",))
    preprocess_path = path / "visual" / "preprocess_cfg.json"
    preprocess = _json(preprocess_path, ("size", "mean", "std"))
    size = preprocess["size"]
    size = size[0] if isinstance(size, list) and size else size
    if not isinstance(size, int) or size < 8:
        raise ConfigurationError(f"{preprocess_path}: size must be a whole number of pixels")
    if not isinstance(config["embed_dim"], int) or config["embed_dim"] < 1:
        raise ConfigurationError(f"{path / 'config.json'}: embed_dim must be a positive whole number")
    text_cfg = config.get("text_cfg") or {}
    textual = tokenizer = None
    pad_token = ""
    if (path / "textual").exists():
        textual = _file(path / "textual" / "model.onnx")
        tokenizer = _file(path / "textual" / "tokenizer.json")
        pad_token = _json(path / "textual" / "tokenizer_config.json", ("pad_token",))["pad_token"]
        if isinstance(pad_token, dict):  # transformers writes an AddedToken as an object
            pad_token = pad_token.get("content", "")
        if not isinstance(pad_token, str) or not pad_token:
            raise ConfigurationError(f"{path / 'textual' / 'tokenizer_config.json'}: pad_token must be a token")
    return ClipFolder(
        source=SOURCE, path=path, dim=config["embed_dim"], input_size=size,
        mean=_triple(preprocess["mean"], preprocess_path, "mean"),
        std=_triple(preprocess["std"], preprocess_path, "std"),
        visual=_file(path / "visual" / "model.onnx"), textual=textual, tokenizer=tokenizer, pad_token=pad_token,
        context_length=int(text_cfg.get("context_length", 77)),
        canonicalize=(text_cfg.get("tokenizer_kwargs") or {}).get("clean") == "canonicalize",
    )


def read_onnx_file(file: str | Path) -> ClipFolder:
    """Any ONNX image encoder (image only): ``model.onnx`` taking float32 NCHW images, normalised,
    and giving one vector per image; beside it ``model.json`` (the file's name, ``.json``) with
    ``embed_dim`` and the preprocessing's ``size``, ``mean`` and ``std`` (RGB, in [0, 1] units,
    as preprocess_cfg.json has them)."""
    path = Path(file)
    if not str(file) or not path.is_file():
        raise ConfigurationError(f"model.name {ONNX_FILE} needs model.weights set to an .onnx file; "
                                 f"{str(file) or '(empty)'} is not a file")
    described = path.with_suffix(".json")
    config = _json(described, ("embed_dim", "size", "mean", "std"))
    size = config["size"]
    size = size[0] if isinstance(size, list) and size else size
    if not isinstance(size, int) or size < 8 or not isinstance(config["embed_dim"], int) or config["embed_dim"] < 1:
        raise ConfigurationError(f"{described}: size and embed_dim must be positive whole numbers")
    return ClipFolder(source=ONNX_FILE, path=path, dim=config["embed_dim"], input_size=size,
                      mean=_triple(config["mean"], described, "mean"), std=_triple(config["std"], described, "std"),
                      visual=_file(path), textual=None, tokenizer=None, pad_token="", context_length=0,
                      canonicalize=False)
