"""The encoder's network on onnxruntime: exported once from the torch model definition and its
weights, cached on disk under a key made of what builds it (``cache_keys``), then run by an
``InferenceSession`` (as is an export's own graph, ``clip_folder.py``, whose batch dimension may
be fixed: ``run_in_batches``).

The graph maps normalised float32 NCHW images to the model's pooled features, exactly the torch
module's ``forward``; the encoder normalises the uint8 input and L2-normalises the output
around it (both cheap in NumPy), the same arithmetic as its torch path.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from lookalike.embedding.cache_keys import cached_file

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
OPSET = 17


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def exported(build: Callable[[], "torch.nn.Module"], name: str, key: str, input_size: int,
             cache_dir: str | os.PathLike) -> Path:
    """The ONNX file of this network (``key``: ``cache_keys.network_key``, made without building
    it), exported now from ``build()`` unless already cached."""
    path = Path(cache_dir) / f"{name}-{key}-opset{OPSET}.onnx"

    def export(tmp: str) -> None:
        import torch

        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the exporter's notes on constant folding and its own future
            torch.onnx.export(build().eval().float().cpu(), torch.zeros(1, 3, input_size, input_size), tmp,
                              dynamo=False, opset_version=OPSET, input_names=["images"],
                              output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        log.info("exported %s to %s", name, path)

    return cached_file(path, export)


def session(path: str | os.PathLike, *, device: str, threads: int, spin_wait: bool = False):
    """An InferenceSession over one graph file; a file onnxruntime cannot load is a
    ConfigurationError naming it."""
    import onnxruntime as ort

    from lookalike.errors import ConfigurationError

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:  # shown in the status's providers too
            log.warning("%s runs on the CPU: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)",
                        Path(path).name)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / ... types
        raise ConfigurationError(f"onnxruntime cannot load {path}: {str(exc)[:300]}") from None


def run_in_batches(graph, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The graph's first output for every row of ``inputs``. A graph whose batch dimension is
    fixed (immich's exports: 1) is run that many rows at a time, the last chunk padded."""
    fixed = graph.get_inputs()[0].shape[0]
    rows = len(next(iter(inputs.values())))
    if not isinstance(fixed, int) or fixed < 1:
        return graph.run(None, inputs)[0]
    out = []
    for start in range(0, rows, fixed):
        chunk = {name: array[start:start + fixed] for name, array in inputs.items()}
        short = fixed - len(next(iter(chunk.values())))
        if short:
            chunk = {name: np.concatenate([array, np.repeat(array[-1:], short, axis=0)])
                     for name, array in chunk.items()}
        out.append(graph.run(None, chunk)[0][:fixed - short])
    return np.concatenate(out)


def unit(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class OnnxRuntime:
    """uint8 NHWC images -> unit vectors, through an InferenceSession over a graph file (the
    exported network, or an export's visual tower), normalising in and out in NumPy: the torch
    path's arithmetic."""

    name = "onnx"
    precision = "fp32"

    def __init__(self, path: str | os.PathLike, spec, *, device: str, threads: int, spin_wait: bool = False):
        self.session = session(path, device=device, threads=threads, spin_wait=spin_wait)
        self.input_name = self.session.get_inputs()[0].name  # ours: images; immich's: image
        self.providers = self.session.get_providers()
        self.mean = np.asarray(spec.mean, np.float32).reshape(1, 1, 1, 3) * 255.0
        self.std = np.asarray(spec.std, np.float32).reshape(1, 1, 1, 3) * 255.0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = ((batch.astype(np.float32) - self.mean) / self.std).transpose(0, 3, 1, 2)
        return unit(run_in_batches(self.session, {self.input_name: np.ascontiguousarray(x)}))
