"""The ``open-clip:<architecture>`` model source: an open_clip model by name, its weights a
pretrained tag (from the Hugging Face cache on the user's machine) or a local checkpoint file
(``model.weights``), exported once to immich's folder layout under ``model.cache_dir`` (keyed
by the architecture, the weights — the tag, or the file's path, size and time — and the
version of what the exporter writes, ``clip_export.LAYOUT``) and then run
as any export (``clip_folder.py``) on onnxruntime: the CPU's way. On a GPU (``model.runtime``
torch, which ``auto`` picks there) the library's own model runs instead, as open_clip runs it:
``encode_image`` and ``encode_text`` on the device, its own tokenizer, fp16 autocast on CUDA
(``torch_towers``); nothing is exported.

The model's shape (dimension, input size, whether it has a text tower) is read from open_clip's
model config without importing torch, so the HTTP ingress can know it without loading a model.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from filelock import FileLock

from lookalike.embedding import clip_folder
from lookalike.embedding.cache_keys import digest, weights_identity
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
    from lookalike.embedding.clip_export import LAYOUT

    key = digest(architecture(name), weights_identity(weights), f"layout {LAYOUT}")
    return Path(cache_dir) / f"open-clip-{architecture(name)}-{key}"


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


def torch_towers(name: str, weights: str, *, device: str, precision: str):
    """open_clip's model on torch: (its image tower as a module, mean, std, its text tower as a
    callable or None). The image module gives ``encode_image``'s vector (``TorchRuntime``
    normalises the input and the output as for any network)."""
    import open_clip
    import torch

    from lookalike.embedding.clip_export import load_open_clip, preprocess_cfg

    model = load_open_clip(architecture(name), weights).to(device)
    config = model_config(name)
    preprocess = preprocess_cfg(model, config)

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.encode_image(x)

    text = TorchText(model, open_clip.get_tokenizer(architecture(name)), device=device, precision=precision) \
        if "text_cfg" in config else None
    return ImageTower(), tuple(preprocess["mean"]), tuple(preprocess["std"]), text


class TorchText:
    """Words -> unit vectors through open_clip's own tokenizer and ``encode_text`` on the device."""

    def __init__(self, model, tokenizer, *, device: str, precision: str):
        self.model, self.tokenizer, self.device, self.precision = model, tokenizer, device, precision

    def check(self, text: str) -> None:
        """Any text will do (the API bounds its length)."""

    def __call__(self, texts):
        """(N,) texts -> (N, dim) float32, unit length."""
        import torch

        from lookalike.embedding.torch_runtime import unit_vectors

        ids = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            return unit_vectors(self.model.encode_text, ids, device=self.device, precision=self.precision)
