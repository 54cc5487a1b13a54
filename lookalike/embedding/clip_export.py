"""Write an open_clip model in immich's folder layout (``clip_folder.py`` reads it): what
``lookalike models export`` does on a machine with the weights, and what the ``open-clip``
model source does once per set of weights, into the model cache.

The layout and the graphs' contract are immich's (input ``image``, float NCHW normalised;
``text``, int32 ids of the context length; output ``embedding``, unit length; ``config.json``
the open_clip model config; ``visual/preprocess_cfg.json``; ``textual/tokenizer.json`` and
``tokenizer_config.json``), with one difference: the batch dimension is left dynamic, so the
Embedder's batches run as one forward pass (immich's own exports are fixed at 1; both load).

The tokenizer: models with a Hugging Face tokenizer (SigLIP, multilingual: ``hf_tokenizer_name``
in their config) save theirs (``transformers``, from the user's Hugging Face cache); the
others use CLIP's own byte-level BPE, whose vocabulary ships inside open_clip, written here as a
``tokenizers`` file that splits, merges and frames text as open_clip's ``SimpleTokenizer`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from lookalike.errors import ConfigurationError

OPSET = 17
START, END = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenisation (open_clip's SimpleTokenizer.pat), with Hugging Face's token names.
CLIP_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                r"[^\s\p{L}\p{N}]+")


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise ConfigurationError("exporting an open_clip model needs open_clip_torch (pip install open_clip_torch)") \
            from None
    return open_clip


def load_open_clip(name: str, pretrained: str = ""):
    """The model ``name`` with its weights: ``pretrained`` is an open_clip tag (weights from the
    Hugging Face cache, or downloaded where there is internet) or a local checkpoint file."""
    open_clip = _open_clip()
    if open_clip.get_model_config(name) is None:
        raise ConfigurationError(f"open_clip has no model {name!r} (open_clip.list_models() lists them)")
    try:
        return open_clip.create_model(name, pretrained=pretrained or None, require_pretrained=bool(pretrained)).eval()
    except Exception as exc:
        raise ConfigurationError(f"cannot load open_clip {name} with weights {pretrained or '(none)'}: "
                                 f"{str(exc)[:300]}") from None


def clip_tokenizer(bpe=None):
    """CLIP's byte-level BPE (open_clip's bundled vocabulary) as a ``tokenizers`` Tokenizer:
    lower-cased, split by CLIP's pattern, merged, framed by the start and end tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if bpe is None:
        from open_clip.tokenizer import SimpleTokenizer

        bpe = SimpleTokenizer()
    names = {"<start_of_text>": START, "<end_of_text>": END}
    vocab = {names.get(token, token): i for token, i in bpe.encoder.items()}
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=END, continuing_subword_prefix="",
                                     end_of_word_suffix="</w>", fuse_unk=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([START, END])
    tokenizer.post_processor = processors.RobertaProcessing((END, vocab[END]), (START, vocab[START]),
                                                            add_prefix_space=False, trim_offsets=False)
    return tokenizer


def _write_tokenizer(model_config: dict, folder: Path) -> None:
    hf_name = model_config.get("text_cfg", {}).get("hf_tokenizer_name")
    if hf_name:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ConfigurationError(f"this model's tokenizer is {hf_name} (Hugging Face): pip install transformers "
                                     "to export it") from None
        AutoTokenizer.from_pretrained(hf_name).save_pretrained(folder)  # tokenizer.json + tokenizer_config.json
        return
    clip_tokenizer().save(str(folder / "tokenizer.json"))
    context = model_config.get("text_cfg", {}).get("context_length", 77)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": START, "eos_token": END, "pad_token": END, "unk_token": END, "model_max_length": context}))


def write_layout(model, model_config: dict, out: str | os.PathLike, *, text: bool = True) -> Path:
    """``model`` (an open_clip CLIP) and its config as an export folder at ``out``; written
    beside it first and renamed, so a reader never sees half a folder."""
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    out = Path(out)
    if out.exists():
        raise ConfigurationError(f"{out} exists already; export into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        size = model_config["vision_cfg"]["image_size"]
        size = size[0] if isinstance(size, (list, tuple)) else size
        preprocess = {"size": [size, size], "mode": "RGB", "mean": list(OPENAI_DATASET_MEAN),
                      "std": list(OPENAI_DATASET_STD), "interpolation": "bicubic", "resize_mode": "shortest",
                      "fill_color": 0}
        preprocess.update({k: list(v) if isinstance(v, tuple) else v
                           for k, v in getattr(model.visual, "preprocess_cfg", {}).items()})
        (work / "visual").mkdir()
        (work / "config.json").write_text(json.dumps(model_config, indent=2))
        (work / "visual" / "preprocess_cfg.json").write_text(json.dumps(preprocess, indent=2))
        _export(model, model.encode_image, torch.zeros(1, 3, size, size), work / "visual" / "model.onnx", "image")
        if text:
            (work / "textual").mkdir()
            context = model_config.get("text_cfg", {}).get("context_length", 77)
            _export(model, model.encode_text, torch.zeros(1, context, dtype=torch.int32),
                    work / "textual" / "model.onnx", "text")
            _write_tokenizer(model_config, work / "textual")
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _export(model, encode, example, path: Path, input_name: str) -> None:
    import torch

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return encode(x, normalize=True)

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Tower().eval(), (example,), str(path), input_names=[input_name],
                              output_names=["embedding"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def export_open_clip(name: str, pretrained: str, out: str | os.PathLike) -> Path:
    """``lookalike models export``: open_clip's ``name`` with ``pretrained`` weights -> ``out``."""
    model = load_open_clip(name, pretrained)
    return write_layout(model, _open_clip().get_model_config(name), out)
