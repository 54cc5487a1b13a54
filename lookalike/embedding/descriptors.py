"""How a network's last feature map becomes the image's vector, and the name that says so.

The models (``models.py``) give the feature map of their last convolution; the pooling here
makes it one vector, inside the network module, so both runtimes (torch, and onnxruntime over
the exported module) compute the same thing:

- ``avg``: global average pooling, what the classifiers were trained with (the original's).
- ``gem``: generalised mean, ``mean(x^p)^(1/p)`` (Radenović et al., "Fine-tuning CNN image
  retrieval with no human annotation"); p = 1 is ``avg``, larger p leans towards the strongest
  activations, which survive crops, recolouring and re-encoding better.

Measured side by side on openclipart (benchmarks/quality.py; efficientnet-lite0, exact search):
``gem`` (p = 3) raises both copy detection and class retrieval over ``avg`` at no cost.

A collection holds vectors of one descriptor (the model, its pooling, the fit to its input):
``descriptor_name`` is recorded with the collection, and a service whose settings give another
is refused (``catalog.Catalog``) instead of comparing incompatible vectors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lookalike.embedding.models import ModelSpec
    from lookalike.settings import ImageLimits, ModelSettings


class Tagged(NamedTuple):
    """A vector with what made it, as it crosses between Serve replicas, which a rolling update
    may leave running two models for a while (``milvus.routing``); "": the receiver's own."""

    vector: "np.ndarray"
    descriptor: str = ""


def descriptor_name(model: "ModelSettings", images: "ImageLimits", spec: "ModelSpec | None" = None) -> str:
    """What a vector is: ``efficientnet-lite0/gem3/pad`` (model / pooling / fit;
    ``immich-clip:ViT-B-32__openai/embedding/crop`` for a model's own vector, named as its spec
    is), and with region rows their layout: ``efficientnet-lite0/gem3/pad/r0.5x2``
    (``regions.layout_name``). ``spec``: ``get_model(model)``, where the caller has it."""
    from lookalike.embedding.models import get_model
    from lookalike.embedding.regions import layout_name

    spec = spec or get_model(model)
    if spec.pooled:
        head = f"{model.name}/" + (f"gem{model.gem_p:g}" if model.pooling == "gem" else model.pooling)
    else:  # its own vector, named by the architecture and its weights, or its folder or file
        head = f"{spec.name}/embedding"
    regions = layout_name(model.regions)
    return f"{head}/{images.fit}" + (f"/{regions}" if regions else "")


def taken_as_unrecorded(descriptor: str) -> bool:
    """Whether a collection made before descriptors were recorded holds vectors of this one:
    those were all average-pooled, without region rows (the fit and the model were not recorded
    either)."""
    parts = descriptor.split("/")
    return parts[1:2] == ["avg"] and len(parts) == 3


def pooled(trunk: "torch.nn.Module", pooling: str, gem_p: float) -> "torch.nn.Module":
    """``trunk`` (images -> (N, C, H, W) feature map) followed by the pooling: images -> (N, C)."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = trunk
            if pooling == "gem":
                # A buffer: saved with the weights; the export's cache key (cache_keys) names p.
                self.register_buffer("p", torch.tensor(float(gem_p)))

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            features = self.trunk(x)
            with torch.autocast(device_type=x.device.type, enabled=False):  # pow in fp32, under bf16/fp16 too
                features = features.float()
                if pooling == "avg":
                    return features.mean(dim=(2, 3))
                return features.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    return Pooled()
