"""The encoder's network on PyTorch: fp32, or bf16 / fp16 under autocast, on the CPU or CUDA."""

from __future__ import annotations

import numpy as np


def unit_vectors(forward, x, *, device: str, precision: str) -> np.ndarray:
    """``forward(x)`` in the precision (bf16 / fp16 under autocast), L2-normalised, as float32
    NumPy; called under ``torch.inference_mode``."""
    import torch

    if precision == "fp32":
        features = forward(x)
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast(device_type=device, dtype=dtype):
            features = forward(x)
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)


class TorchRuntime:
    """uint8 NHWC images -> unit vectors, through the torch module itself."""

    name = "torch"

    def __init__(self, model, spec, *, device: str, precision: str):
        import torch

        self.device, self.precision = device, precision
        self.providers = [device]
        model = model.eval().to(device)
        self.channels_last = precision != "fp32" or device == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if not batch.flags.writeable:  # arrays from PIL are read-only; torch wants to own them
                batch = batch.copy()
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return unit_vectors(self.model, x, device=self.device, precision=self.precision)
