import numpy as np
import pytest

from lookalike.embedding.encoder import ImageEncoder
from lookalike.errors import ConfigurationError
from lookalike.settings import ImageLimits
from lookalike.embedding.images import prepare
from lookalike.settings import ModelSettings

from harness.images import CLASSES, draw, encode

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=10_000_000)


def _pixels(size, seeds):
    out = []
    for seed in seeds:
        label = list(CLASSES)[seed % len(CLASSES)]
        shape, colour = CLASSES[label]
        out.append(prepare(encode(draw(shape, colour, seed=seed)), size, LIMITS).pixels)
    return np.stack(out)


def test_pretrained_default_gives_unit_vectors_and_is_batch_independent(encoder):
    assert encoder.dim == 1280 and encoder.spec.name == "efficientnet-lite0"
    batch = _pixels(encoder.input_size, range(6))
    vectors = encoder.encode(batch)
    assert vectors.shape == (6, 1280) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = encoder.encode(batch[2:3])
    assert float(alone[0] @ vectors[2]) > 0.999  # the same image alone or in a batch


def test_pretrained_features_separate_classes(encoder):
    # Two drawings of one class are closer than drawings of different classes: real weights.
    circles = _pixels(encoder.input_size, [0, 6])  # seeds 0 and 6 are both "circles"
    others = _pixels(encoder.input_size, [1, 2, 3])
    a, b = encoder.encode(circles)
    same = float(a @ b)
    different = max(float(a @ o) for o in encoder.encode(others))
    assert same > different


def test_rejects_wrongly_shaped_input(encoder):
    with pytest.raises(ValueError):
        encoder.encode(np.zeros((1, 100, 100, 3), np.uint8))
    assert encoder.encode(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 1280)


def test_fp32_and_bf16_agree(encoder):
    fp32 = ImageEncoder(ModelSettings(precision="fp32")).load()
    batch = _pixels(224, range(3))
    cos = np.sum(fp32.encode(batch) * ImageEncoder(ModelSettings(precision="bf16")).load().encode(batch), axis=1)
    assert cos.min() > 0.98


def test_resnet50_loads_a_local_weights_file(tmp_path):
    import torch
    from torchvision.models import resnet50

    torch.manual_seed(0)
    path = tmp_path / "resnet50.pth"
    # A DataParallel-style checkpoint: keys prefixed "module." under "state_dict".
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet50(weights=None).state_dict().items()}}, path)
    enc = ImageEncoder(ModelSettings(name="resnet50", weights=str(path), precision="fp32")).load()
    vectors = enc.encode(_pixels(224, range(2)))
    assert vectors.shape == (2, 2048) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_resnet50_without_weights_names_both_ways_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache; no internet here
    enc = ImageEncoder(ModelSettings(name="resnet50"))
    with pytest.raises(ConfigurationError) as info:
        enc.load()
    message = str(info.value)
    assert "LOOKALIKE_MODEL__WEIGHTS" in message and "hub/checkpoints" in message


def test_missing_weights_file_and_unknown_model():
    with pytest.raises(ConfigurationError):
        ImageEncoder(ModelSettings(name="resnet50", weights="/nonexistent/w.pth")).load()
    with pytest.raises(ConfigurationError):
        ImageEncoder(ModelSettings(name="vgg-nope"))


def test_onnx_and_torch_runtimes_give_interchangeable_vectors(encoder, tmp_path):
    """One collection can be ingested by one runtime and searched by another."""
    batch = _pixels(224, range(6))
    onnx = ImageEncoder(ModelSettings(runtime="onnx", cache_dir=str(tmp_path))).load()
    torch32 = ImageEncoder(ModelSettings(runtime="torch", precision="fp32")).load()
    assert onnx.runtime == "onnx" and torch32.runtime == "torch"
    reference = torch32.encode(batch)
    for other in (onnx, encoder):
        cos = np.sum(other.encode(batch) * reference, axis=1)
        assert cos.min() >= 0.995, other.describe()
    assert np.allclose(np.linalg.norm(onnx.encode(batch), axis=1), 1.0, atol=1e-5)


def test_auto_runtime_is_onnx_on_cpu_unless_a_reduced_precision_is_asked_for(encoder):
    assert encoder.runtime == "onnx" and encoder.precision == "fp32"
    assert encoder.describe()["runtime"] == "onnx"
    assert ImageEncoder(ModelSettings(precision="bf16")).load().runtime == "torch"


def test_onnx_threads_do_not_spin_unless_asked(encoder):
    """Spinning threads took CPU from decoding and the proxy in the server (benchmarks/http_load.py)."""
    def spinning(enc):
        return enc.engine.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(encoder) == "0"
    assert spinning(ImageEncoder(ModelSettings(spin_wait=True)).load()) == "1"


def test_the_onnx_graph_is_exported_once_per_weights_and_loads_without_torch(tmp_path):
    import os
    import subprocess
    import sys

    import torch

    ImageEncoder(ModelSettings(runtime="onnx", cache_dir=str(tmp_path))).load()
    files = list(tmp_path.glob("*.onnx"))
    assert len(files) == 1 and len(list(tmp_path.glob("*-classes-*.npy"))) == 1 and not list(tmp_path.glob("*.part"))
    stamp = files[0].stat().st_mtime_ns
    # From the cache, in a fresh process: neither the network is built nor torch imported.
    code = ("import sys; from lookalike.embedding.encoder import ImageEncoder; from lookalike.settings import "
            f"ModelSettings; e = ImageEncoder(ModelSettings(runtime='onnx', cache_dir={str(tmp_path)!r})).load(); "
            "e.encode_text(['bird']); print(sorted(m for m in ('torch', 'efficientnet_lite_pytorch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
    assert files[0].stat().st_mtime_ns == stamp
    # Other weights, pooling or builder code: another key, so a stale graph is never used.
    key = ImageEncoder(ModelSettings())._network_key()
    weights = tmp_path / "other.pth"
    model = ImageEncoder(ModelSettings())._network()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    torch.save(model.trunk.net.state_dict(), weights)
    other = ImageEncoder(ModelSettings(weights=str(weights)))._network_key()
    assert len({key, other, ImageEncoder(ModelSettings(pooling="avg"))._network_key()}) == 3
    later = weights.stat().st_mtime_ns + 10**9  # the same path, written again
    os.utime(weights, ns=(later, later))
    assert ImageEncoder(ModelSettings(weights=str(weights)))._network_key() != other
    from lookalike.embedding.cache_keys import network_key

    assert network_key("m", "") != network_key("m", "", code=(__file__,))


def test_onnx_runtime_without_onnxruntime_is_a_clear_error(monkeypatch):
    from lookalike.embedding import onnx_runtime

    monkeypatch.setattr(onnx_runtime, "available", lambda: False)
    with pytest.raises(ConfigurationError, match="onnxruntime"):
        ImageEncoder(ModelSettings(runtime="onnx")).load()
    assert ImageEncoder(ModelSettings(runtime="auto")).load().runtime == "torch"  # auto falls back
