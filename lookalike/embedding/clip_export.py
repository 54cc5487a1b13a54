"""Write an open_clip model in immich's folder layout (``clip_folder.py`` reads it): what
``lookalike models export`` does on a machine with the weights, and what the ``open-clip``
model source does once per set of weights, into the model cache.

The layout and the graphs' contract are immich's (input ``image``, float NCHW normalised;
``text``, int32 ids of the context length; output ``embedding``, unit length; ``config.json``
the open_clip model config; ``visual/preprocess_cfg.json``; ``textual/tokenizer.json`` and
``tokenizer_config.json``), with one difference: the batch dimension is left dynamic, so the
Embedder's batches run as one forward pass (immich's own exports are fixed at 1; both load);
and where a text's vector depends on its own tokens only (CLIP's causal text tower, pooled at
its end token), the text graph's length is left dynamic too and the graph says so in its
metadata (``clip_folder.CUT_TO_LENGTH``): a query of eight tokens then runs eight positions,
not the context's 77 (exported by torch's dynamo exporter, which needs ``onnxscript``; without
it, or for a tower that looks at every position, such as SigLIP's, the length stays fixed).

The tokenizer: models with a Hugging Face tokenizer (SigLIP, multilingual: ``hf_tokenizer_name``
in their config) save theirs (``transformers``, from the user's Hugging Face cache); the
others use CLIP's own byte-level BPE, whose vocabulary ships inside open_clip, written here as a
``tokenizers`` file that splits, merges and frames text as open_clip's ``SimpleTokenizer`` does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from lookalike.embedding.clip_folder import CUT_TO_LENGTH
from lookalike.errors import ConfigurationError

log = logging.getLogger(__name__)
OPSET = 17
DYNAMO_OPSET = 18  # the dynamo exporter's lowest (it converts down with warnings, and fails on some ops)
LAYOUT = 2  # what this exporter writes; part of the open-clip source's cache key (2: text cut to its length)
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


def preprocess_cfg(model, model_config: dict) -> dict:
    """The model's preprocessing as immich's ``preprocess_cfg.json`` has it: open_clip's
    defaults (OpenAI's mean and std), overridden by what the model's visual tower carries."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    size = model_config["vision_cfg"]["image_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    preprocess = {"size": [size, size], "mode": "RGB", "mean": list(OPENAI_DATASET_MEAN),
                  "std": list(OPENAI_DATASET_STD), "interpolation": "bicubic", "resize_mode": "shortest",
                  "fill_color": 0}
    preprocess.update({k: list(v) if isinstance(v, tuple) else v
                       for k, v in getattr(model.visual, "preprocess_cfg", {}).items()})
    return preprocess


def write_layout(model, model_config: dict, out: str | os.PathLike, *, text: bool = True) -> Path:
    """``model`` (an open_clip CLIP) and its config as an export folder at ``out``; written
    beside it first and renamed, so a reader never sees half a folder."""
    import torch

    out = Path(out)
    if out.exists():
        raise ConfigurationError(f"{out} exists already; export into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        preprocess = preprocess_cfg(model, model_config)
        size = preprocess["size"][0]
        (work / "visual").mkdir()
        (work / "config.json").write_text(json.dumps(model_config, indent=2))
        (work / "visual" / "preprocess_cfg.json").write_text(json.dumps(preprocess, indent=2))
        _export(model.encode_image, torch.zeros(1, 3, size, size), work / "visual" / "model.onnx", "image")
        if text:
            (work / "textual").mkdir()
            context = model_config.get("text_cfg", {}).get("context_length", 77)
            example = torch.zeros(2, context, dtype=torch.int32)
            cut = cuts_to_length(model) and importlib.util.find_spec("onnxscript") is not None \
                and _export_cut_to_length(model, example, work / "textual" / "model.onnx")
            if not cut:
                _export(model.encode_text, example[:1], work / "textual" / "model.onnx", "text")
            _write_tokenizer(model_config, work / "textual")
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


@contextlib.contextmanager
def _exporting():
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _export(encode, example, path: Path, input_name: str) -> None:
    """``encode(x, normalize=True)`` as a graph with a dynamic batch dimension."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = encode.__self__

        def forward(self, x):
            return encode(x, normalize=True)

    with _exporting():
        torch.onnx.export(Tower().eval(), (example,), str(path), input_names=[input_name],
                          output_names=["embedding"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}})


def cuts_to_length(model) -> bool:
    """Whether a text's vector depends on its own tokens only, so the ids may be cut to the
    longest text of a batch: open_clip's CLIP text tower with its causal mask (no position sees
    a later one), pooled at the end token. Not SigLIP's (no mask; pooled at the last position,
    which padding moves) nor a Hugging Face text tower (CustomTextCLIP)."""
    return (getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", "argmax") in ("argmax", "eos")
            and all(hasattr(model, name) for name in ("token_embedding", "positional_embedding", "ln_final")))


def _export_cut_to_length(model, example, path: Path) -> bool:
    """The text tower with its length dynamic: open_clip's ``CLIP.encode_text`` step by step
    (its own modules, in its order), the position table and the causal mask cut to the ids'
    length. Kept only if it gives ``encode_text``'s own vectors (on ids padded to the context)
    for texts of several lengths cut to the longest: False (and no file) otherwise, as for an
    open_clip whose ``encode_text`` does more than these steps."""
    import onnx
    import torch
    from open_clip.transformer import text_global_pool

    class TextToItsLength(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, text):
            length, cast = text.shape[1], model.transformer.get_cast_dtype()
            x = model.token_embedding(text).to(cast) + model.positional_embedding[:length].to(cast)
            x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
            x = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
            if isinstance(model.text_projection, torch.nn.Linear):
                x = model.text_projection(x)
            elif model.text_projection is not None:
                x = x @ model.text_projection
            return torch.nn.functional.normalize(x, dim=-1)

    # One file, as the legacy exporter writes, unless past protobuf's 2 GB (then model.onnx.data beside it).
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5e9
    dims = {0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("length", min=2, max=example.shape[1])}
    try:
        with _exporting():
            torch.onnx.export(TextToItsLength().eval(), (example,), str(path), input_names=["text"],
                              output_names=["vector"], opset_version=DYNAMO_OPSET, dynamo=True,
                              dynamic_shapes={"text": dims}, verbose=False, external_data=big)
    except Exception as exc:  # noqa: BLE001 - an architecture the dynamo exporter cannot trace: the fixed length
        log.warning("the text tower cannot be exported at any length (%s): exported at its full length",
                    str(exc)[:200])
        return _discarded(path)
    # dynamo names the token lookup's output "embedding": give that name to the graph's output.
    graph = onnx.load(str(path), load_external_data=False)
    names = {"embedding": "token_embedding", "vector": "embedding"}
    for node in graph.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for value in [*graph.graph.value_info, *graph.graph.output]:
        value.name = names.get(value.name, value.name)
    onnx.helper.set_model_props(graph, dict([CUT_TO_LENGTH]))
    onnx.save(graph, str(path))
    if _gives_encode_text(model, path, example.shape[1]):
        return True
    log.warning("the text tower cut to its length does not match encode_text: exported at its full length")
    return _discarded(path)


def _discarded(path: Path) -> bool:
    """False, the graph at ``path`` (and its external data, if any) removed."""
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    return False


def _gives_encode_text(model, path: Path, context: int) -> bool:
    """Texts of 3, 5 and 9 tokens (start, words, end: the end token the highest id, or the
    model's eos id), padded to the context for ``encode_text``, cut to the longest for the graph."""
    import onnxruntime as ort
    import torch

    vocab = model.token_embedding.num_embeddings
    end = getattr(model, "text_eos_id", None) or vocab - 1
    lengths = [n for n in (3, 5, 9) if n <= context] or [context]
    ids = torch.zeros(len(lengths), context, dtype=torch.int32)
    generator = torch.Generator().manual_seed(0)
    for row, n in enumerate(lengths):
        ids[row, :n - 1] = torch.randint(1, vocab - 2, (n - 1,), generator=generator)
        ids[row, n - 1] = end
    with torch.no_grad():
        theirs = model.encode_text(ids, normalize=True).numpy()
    ours = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"text": ids[:, :max(lengths)].numpy()})[0]
    return bool(ours.shape == theirs.shape and (ours * theirs).sum(axis=1).min() >= 0.9999)


def export_open_clip(name: str, pretrained: str, out: str | os.PathLike) -> Path:
    """``lookalike models export``: open_clip's ``name`` with ``pretrained`` weights -> ``out``."""
    model = load_open_clip(name, pretrained)
    return write_layout(model, _open_clip().get_model_config(name), out)
