"""TextTower: words -> unit vectors in the images' space, for a model exported with a text
tower (``clip_folder.py``).

The text is cleaned as immich cleans it (whitespace collapsed; lower-cased and stripped of
punctuation where the model's ``tokenizer_kwargs`` ask for ``canonicalize``, as SigLIP's do),
tokenised by the ``tokenizers`` library from the export's ``tokenizer.json``, padded with its
pad token and cut to the model's context length, then run by onnxruntime as int32 ids
(``text``, or ``input_ids`` + ``attention_mask`` for multilingual CLIP).
"""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np

from lookalike.embedding import onnx_runtime
from lookalike.embedding.clip_folder import ClipFolder
from lookalike.errors import ConfigurationError

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean(text: str, canonicalize: bool) -> str:
    text = " ".join(text.split())
    return text.translate(_PUNCTUATION).lower() if canonicalize else text


class TextTower:
    def __init__(self, folder: ClipFolder, *, device: str, threads: int, spin_wait: bool = False):
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(folder.tokenizer))
        except Exception as exc:
            raise ConfigurationError(f"cannot read {folder.tokenizer}: {str(exc)[:300]}") from None
        pad_id = tokenizer.token_to_id(folder.pad_token)
        if pad_id is None:
            raise ConfigurationError(f"{folder.tokenizer} has no token {folder.pad_token!r} (the pad_token of "
                                     "tokenizer_config.json)")
        tokenizer.enable_padding(length=folder.context_length, pad_id=pad_id, pad_token=folder.pad_token)
        tokenizer.enable_truncation(max_length=folder.context_length)
        self.tokenizer, self.canonicalize = tokenizer, folder.canonicalize
        self.session = onnx_runtime.session(folder.textual, device=device, threads=threads, spin_wait=spin_wait)
        self.inputs = [i.name for i in self.session.get_inputs()]
        if self.inputs not in (["text"], ["input_ids", "attention_mask"]):
            raise ConfigurationError(f"{folder.textual} takes {self.inputs}; a text tower takes 'text' (or "
                                     "'input_ids' and 'attention_mask')")

    def check(self, text: str) -> None:
        """Any text will do (the API bounds its length)."""

    def tokens(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph's inputs for ``texts``: int32 ids, padded to the context length."""
        encodings = self.tokenizer.encode_batch([clean(t, self.canonicalize) for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int32)
        if self.inputs == ["text"]:
            return {"text": ids}
        return {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int32)}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) texts -> (N, dim) float32, unit length."""
        return onnx_runtime.unit(onnx_runtime.run_in_batches(self.session, self.tokens(texts)))
