"""A tiny CLIP, built here with random weights (plumbing, not quality: no CLIP weights can be
downloaded on these machines), written to a folder the way immich's exporter writes its
models (machine-learning/export: ``encode_image`` / ``encode_text`` with ``normalize=True``,
inputs ``image`` float NCHW and ``text`` int32 of the context length, output ``embedding``,
no dynamic axes: a batch of exactly 1; ``preprocess_cfg.json`` and ``config.json`` with their
keys; a ``tokenizers`` file with a ``tokenizer_config.json`` naming the pad token).

The reference for fidelity is the library itself: ``open_clip``'s ``encode_image`` and
``encode_text`` on the same weights, the text tokenised by the ``tokenizers`` library.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
START, END = "<|startoftext|>", "<|endoftext|>"
WORDS = ("a photo of red green blue circle square triangle star stripes dots cross ring pie grid wave bicycle "
         "cat dog bird car boat clock fish flower tree house the an on with and").split()
SIZE, CONTEXT, DIM = 64, 16, 32
TEXT_CFG = dict(context_length=CONTEXT, vocab_size=len(WORDS) + 3, width=32, heads=2, layers=2)
VISION_CFG = dict(layers=2, width=64, head_width=32, patch_size=16, image_size=SIZE)


@dataclass
class TinyClip:
    folder: Path
    model: object  # open_clip.CLIP

    def reference_image(self, pixels: np.ndarray) -> np.ndarray:
        """open_clip's own vector for uint8 NHWC pixels at the model's size (normalised as its
        preprocess_cfg says)."""
        import torch

        x = (pixels.astype(np.float32) / 255 - np.array(OPENAI_MEAN, np.float32)) / np.array(OPENAI_STD, np.float32)
        with torch.no_grad():
            return self.model.encode_image(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), normalize=True).numpy()

    def reference_text(self, texts: list[str]) -> np.ndarray:
        """open_clip's own vector for texts, tokenised by the export's tokenizer.json with the
        ``tokenizers`` library (padded with its pad token to the context length)."""
        import torch
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.folder / "textual" / "tokenizer.json"))
        tokenizer.enable_padding(length=CONTEXT, pad_id=tokenizer.token_to_id(END), pad_token=END)
        tokenizer.enable_truncation(max_length=CONTEXT)
        ids = np.array([e.ids for e in tokenizer.encode_batch(texts)], dtype=np.int32)
        with torch.no_grad():
            return self.model.encode_text(torch.from_numpy(ids), normalize=True).numpy()


def _tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    # Word ids first, then the start and end tokens: CLIP's text tower pools at the highest id.
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}, START: len(WORDS) + 1, END: len(WORDS) + 2}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START} $A {END}", special_tokens=[(START, vocab[START]), (END, vocab[END])])
    return tokenizer


def write_immich_clip(folder: Path, *, text: bool = True, seed: int = 0) -> TinyClip:
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(embed_dim=DIM, vision_cfg=CLIPVisionCfg(**VISION_CFG), text_cfg=CLIPTextCfg(**TEXT_CFG)).eval()
    (folder / "visual").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"embed_dim": DIM, "vision_cfg": VISION_CFG,
                                                    "text_cfg": TEXT_CFG}))
    (folder / "visual" / "preprocess_cfg.json").write_text(json.dumps({
        "size": [SIZE, SIZE], "mode": "RGB", "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic",
        "resize_mode": "shortest", "fill_color": 0}))

    class Tower(torch.nn.Module):
        def __init__(self, encode):
            super().__init__()
            self.model, self.encode = model, encode

        def forward(self, x):
            return self.encode(x, normalize=True)

    def export(tower, example, path: Path, input_name: str):
        # As immich's exporter: MultiheadAttention's fused fast path has no ONNX form.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(tower, (example,), str(path), input_names=[input_name], output_names=["embedding"],
                              opset_version=17, dynamo=False)  # no dynamic_axes, as immich's exporter
        torch.backends.mha.set_fastpath_enabled(fastpath)

    export(Tower(model.encode_image), torch.randn(1, 3, SIZE, SIZE), folder / "visual" / "model.onnx", "image")
    if text:
        (folder / "textual").mkdir()
        export(Tower(model.encode_text), torch.ones(1, CONTEXT, dtype=torch.int32), folder / "textual" / "model.onnx",
               "text")
        _tokenizer().save(str(folder / "textual" / "tokenizer.json"))
        (folder / "textual" / "tokenizer_config.json").write_text(json.dumps({
            "pad_token": END, "bos_token": START, "eos_token": END, "model_max_length": CONTEXT}))
    return TinyClip(folder, model)
