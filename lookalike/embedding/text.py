"""TextTower: words -> unit vectors in the images' space, for a model exported with a text
tower (``clip_folder.py``).

The text is cleaned as open_clip cleans it (whitespace collapsed; lower-cased and stripped of
punctuation where the model's ``tokenizer_kwargs`` ask for ``canonicalize``, as SigLIP's do),
tokenised by the ``tokenizers`` library from the export's ``tokenizer.json``, padded with its
pad token and cut to the model's context length, then run by onnxruntime as int32 ids
(``text``, or ``input_ids`` + ``attention_mask`` for multilingual CLIP). A graph that says its
texts may be cut to their length (``clip_folder.CUT_TO_LENGTH``) gets a batch only as long as
its longest text: a query of a few words costs a few positions, not the whole context.
"""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np

from lookalike.embedding import onnx_runtime
from lookalike.embedding.clip_folder import CUT_TO_LENGTH, ClipFolder
from lookalike.errors import ConfigurationError

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean(text: str, canonicalize: bool) -> str:
    """As open_clip cleans it for its tokenizer: whitespace collapsed; canonicalised first (its
    ``canonicalize_text``: underscores to spaces, punctuation dropped, lower case) where asked."""
    if canonicalize:
        text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split())


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
        key, value = CUT_TO_LENGTH
        self.cut = (self.inputs == ["text"] and self.session.get_modelmeta().custom_metadata_map.get(key) == value
                    and not isinstance(self.session.get_inputs()[0].shape[1], int))

    def check(self, text: str) -> None:
        """Any text will do (the API bounds its length)."""

    def tokens(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph's inputs for ``texts``: int32 ids, padded to the context length (or, where
        the graph allows, to the longest text's)."""
        encodings = self.tokenizer.encode_batch([clean(t, self.canonicalize) for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int32)
        if self.cut:
            ids = ids[:, :max(sum(e.attention_mask) for e in encodings)]
        if self.inputs == ["text"]:
            return {"text": ids}
        return {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int32)}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) texts -> (N, dim) float32, unit length."""
        return onnx_runtime.unit(onnx_runtime.run_in_batches(self.session, self.tokens(texts)))
