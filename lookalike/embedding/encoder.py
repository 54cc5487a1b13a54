"""ImageEncoder: a batch of prepared uint8 images -> L2-normalised float32 vectors.

Two runtimes behind one contract (``model.runtime``), picked in one place (``_pick_runtime``):
PyTorch (``torch_runtime.py``) and onnxruntime over the same network exported from it
(``onnx_runtime.py``). Each is a callable, uint8 NHWC batch -> unit vectors, with ``name``,
``precision`` and ``providers``; their vectors are interchangeable.

A model exported with its own towers (``clip_folder.py``) runs on onnxruntime as it is, and
its text tower (``text.py``) gives ``encode_text``; an open_clip model by name runs as its
export on the CPU and as open_clip's own torch model on a GPU (``open_clip_source.py``).

One callable class, loaded once per process and used by every face: the Serve Embedder,
the Ray Data ingest actors and the in-process CLI indexer.
"""

from __future__ import annotations

import contextlib
import glob
import inspect
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from lookalike.embedding.cache_keys import cached_array, network_key
from lookalike.embedding.descriptors import pooled
from lookalike.embedding.models import ModelSpec, get_model
from lookalike.embedding.open_clip_source import PREFIX as OPEN_CLIP
from lookalike.machine import available_cpus
from lookalike.settings import ModelSettings

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """The CPU computes bf16 natively (AVX512-BF16 or AMX), from its flags (torch only says so
    through private functions)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_visible() -> bool:
    """Whether torch would see a CUDA device, asked only where the NVIDIA driver is loaded:
    importing torch costs 2.5 s per process, and a CPU-only process never needs it (an
    export runs on onnxruntime)."""
    if not (Path("/proc/driver/nvidia").exists() or glob.glob("/dev/nvidia[0-9]*")):
        return False
    import torch

    return torch.cuda.is_available()


class ImageEncoder:
    """Lazy: construction is cheap; ``load()`` (or the first ``encode``) builds the model."""

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.spec: ModelSpec = get_model(settings)
        self.engine = None
        self.text_engine = None  # a model with a text tower: words -> vectors in the same space
        self._lock = threading.Lock()
        self.device = "cpu"
        self.runtime = "torch"
        self.precision = "fp32"
        self.load_seconds = 0.0

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    def load(self) -> "ImageEncoder":
        with self._lock:
            if self.engine is None:
                self._load()
        return self

    def _load(self) -> None:
        started = time.perf_counter()
        want = self.settings.device
        if want == "cuda" and not cuda_visible():
            from lookalike.errors import ConfigurationError

            raise ConfigurationError("model.device is cuda but no CUDA device is visible")
        self.device = "cuda" if want == "cuda" or (want == "auto" and cuda_visible()) else "cpu"
        self.runtime = self._pick_runtime()
        threads = self.settings.num_threads or available_cpus()
        if self.runtime == "torch" and self.device == "cpu":
            import torch

            torch.set_num_threads(threads)
        if not self.spec.exported:
            self._load_network(threads)
            if self.spec.has_text:  # the bundled classifier: words along its rows
                self.text_engine = self._class_words()
        elif self.runtime == "torch":  # open-clip on torch (a GPU): the library's own model
            self._load_open_clip_torch()
        else:  # an export: its ONNX towers as they are
            from lookalike.embedding.onnx_runtime import OnnxRuntime

            if self.spec.folder is None:  # open-clip: exported once, into the cache
                from dataclasses import replace

                from lookalike.embedding import open_clip_source
                from lookalike.embedding.models import of_folder

                folder = open_clip_source.exported(self.settings.name, self.settings.weights, self.settings.cache_dir)
                self.spec = replace(of_folder(folder), name=self.spec.name)
            options = dict(device=self.device, threads=threads, spin_wait=self.settings.spin_wait)
            self.engine = OnnxRuntime(self.spec.folder.visual, self.spec, **options)
            if self.spec.has_text:
                from lookalike.embedding.text import TextTower

                self.text_engine = TextTower(self.spec.folder, **options)
        self.precision = self.engine.precision
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s on %s (%s, %s) in %.1fs", self.spec.name, self.runtime, ", ".join(self.engine.providers),
                 self.precision, self.load_seconds)

    def _load_open_clip_torch(self) -> None:
        from dataclasses import replace

        from lookalike.embedding import open_clip_source
        from lookalike.embedding.torch_runtime import TorchRuntime

        precision = self._torch_precision()
        image, mean, std, self.text_engine = open_clip_source.torch_towers(
            self.settings.name, self.settings.weights, device=self.device, precision=precision)
        self.spec = replace(self.spec, mean=mean, std=std)
        self.engine = TorchRuntime(image, self.spec, device=self.device, precision=precision)

    def _load_network(self, threads: int) -> None:
        if self.runtime == "onnx":  # a cached export loads without the network (and torch)
            from lookalike.embedding.onnx_runtime import OnnxRuntime, exported

            path = exported(self._network, self.spec.name, self._network_key(), self.spec.input_size,
                            self.settings.cache_dir)
            self.engine = OnnxRuntime(path, self.spec, device=self.device, threads=threads,
                                      spin_wait=self.settings.spin_wait)
        else:
            from lookalike.embedding.torch_runtime import TorchRuntime

            self.engine = TorchRuntime(self._network(), self.spec, device=self.device,
                                       precision=self._torch_precision())

    def _network_key(self) -> str:
        pooling = (self.settings.pooling, f"p={self.settings.gem_p}") if self.spec.pooled else ()
        return network_key(self.spec.name, self.settings.weights, *pooling,
                           code=(inspect.getsourcefile(self.spec.build), inspect.getsourcefile(pooled)))

    def _class_words(self):
        """The bundled classifier's rows as words' directions, kept beside the export."""
        from lookalike.embedding import class_words

        key = network_key(f"{self.spec.name}-classes", self.settings.weights, code=(class_words.__file__,))
        rows = cached_array(Path(self.settings.cache_dir) / f"{self.spec.name}-classes-{key}.npy",
                            lambda: class_words.efficientnet_lite0_rows(self.settings.weights))
        return class_words.ClassWords(rows)

    def _network(self):
        with contextlib.redirect_stdout(sys.stderr):  # some model packages print while loading
            net = self.spec.build(self.settings.weights)
        return pooled(net, self.settings.pooling, self.settings.gem_p) if self.spec.pooled else net

    def _torch_precision(self) -> str:
        if self.settings.precision != "auto":
            return self.settings.precision
        if self.device == "cuda":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"

    def _pick_runtime(self) -> str:
        from lookalike.embedding import onnx_runtime

        want = self.settings.runtime
        if self.spec.exported and not self.settings.name.startswith(OPEN_CLIP):
            if want == "torch":
                from lookalike.errors import ConfigurationError

                raise ConfigurationError(f"{self.spec.name} is an ONNX export: model.runtime must be onnx or auto")
            want = "onnx"
        elif self.spec.exported and want == "auto":  # open-clip: torch on a GPU, its ONNX export on the CPU
            want = "torch" if self.device == "cuda" else "onnx"
        if want == "onnx" and not onnx_runtime.available():
            from lookalike.errors import ConfigurationError

            raise ConfigurationError("model.runtime is onnx but onnxruntime is not installed (pip install onnxruntime)")
        if want == "auto":
            # The CPU: onnxruntime measured fastest (benchmarks/embedding.py), unless a reduced
            # precision is asked for, which only the torch path has. CUDA: torch fp16.
            cpu_fp32 = self.device == "cpu" and self.settings.precision in ("auto", "fp32")
            return "onnx" if cpu_fp32 and onnx_runtime.available() else "torch"
        return want

    def encode(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(N, S, S, 3) uint8 at the model's input size -> (N, dim) float32, unit length."""
        batch = np.stack(images) if not isinstance(images, np.ndarray) else images
        if batch.ndim != 4 or batch.shape[1:] != (self.input_size, self.input_size, 3) or batch.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 images of shape (N, {self.input_size}, {self.input_size}, 3), "
                f"got {batch.dtype} {batch.shape}"
            )
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        step = self.settings.batch_size
        return np.concatenate([self.engine(batch[i : i + step]) for i in range(0, len(batch), step)])

    @property
    def has_text(self) -> bool:
        return self.spec.has_text

    def check_text(self, text: str) -> None:
        """Refuse, before any batch, a text this model cannot search by (InvalidParameter):
        a word the bundled classifier does not know. Without a text tower: TextSearchUnavailable."""
        if not self.has_text:
            from lookalike.errors import TextSearchUnavailable

            raise TextSearchUnavailable(self.spec.name)
        self.load()
        self.text_engine.check(text)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) texts -> (N, dim) float32, unit length, in the images' space."""
        if not self.has_text:
            from lookalike.errors import TextSearchUnavailable

            raise TextSearchUnavailable(self.spec.name)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        step = self.settings.batch_size
        return np.concatenate([self.text_engine(texts[i : i + step]) for i in range(0, len(texts), step)])

    def _gpu_name(self) -> str | None:
        if self.device != "cuda":
            return None
        import torch

        return torch.cuda.get_device_name()

    def describe(self) -> dict:
        return {
            "name": self.spec.name,
            "pooling": self.settings.pooling,
            "dim": self.dim,
            "input_size": self.input_size,
            "device": self.device,
            "gpu": self._gpu_name(),
            "runtime": self.runtime,
            "precision": self.precision,
            "loaded": self.loaded,
            "providers": list(self.engine.providers) if self.engine is not None else [],  # the CPU, or a GPU
            "text": self.has_text,
            "weights": self.settings.weights or self.spec.weights_source,
        }
