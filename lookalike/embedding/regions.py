"""Region vectors: parts of each gallery image stored as rows of their own, so that a part of an
image (a box drawn on a query, a cropped copy) finds the whole.

One vector per image describes the whole picture; a part of it, enlarged to the model's input,
looks to the network like another picture (objects twice the size, the rest gone), and ranks
the whole image below others (benchmarks/quality.py: a box of half of each side finds its
image first 0.44 of the time). With regions on (``model.regions``), each gallery image also
gets the vectors of a few fixed parts of it, cut out and embedded exactly as a query box is
(``images.prepare_regions``, the one preprocessing). They live in a second collection beside
the gallery's (``catalog.Catalog``), keyed by image id; a search takes the best of an image's
rows (``best_per_image``), so results stay one per image and say which region matched.

Measured side by side on openclipart (benchmarks/quality.py, exact search): see the region
section of docs/benchmarks/quality.md.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Iterable, TypeVar

from lookalike.embedding.images import Box

if TYPE_CHECKING:
    from lookalike.settings import RegionSettings

T = TypeVar("T")


def boxes(regions: "RegionSettings") -> list[Box]:
    """The parts every gallery image is cut into: for each side fraction, ``steps`` x ``steps``
    boxes spread evenly from one edge to the other (one step: the centre)."""
    if not regions.enabled:
        return []
    out = []
    for side in regions.sides:
        if regions.steps == 1:
            starts = [(1.0 - side) / 2]
        else:
            starts = [(1.0 - side) * i / (regions.steps - 1) for i in range(regions.steps)]
        out.extend(Box(round(x, 4), round(y, 4), side, side, relative=True) for y in starts for x in starts)
    return out


def layout_name(regions: "RegionSettings") -> str:
    """What the region rows are, for the descriptor: ``r0.5x2`` (sides x steps), "" when off."""
    if not regions.enabled:
        return ""
    return "r" + "+".join(f"{side:g}" for side in regions.sides) + f"x{regions.steps}"


def row_id(image_id: int, index: int) -> int:
    """A region row's key: a 63-bit hash of its image's id and its place in the layout, so a
    rewrite of the same image replaces its rows."""
    digest = hashlib.blake2b(f"{image_id}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def best_per_image(ranked: Iterable[tuple[int, float, T]], k: int) -> list[tuple[int, float, T]]:
    """(image id, score, what matched) from any number of searches -> each image's best (of
    equal scores, the first given: list the whole-image hits first), best first, at most ``k``."""
    best: dict[int, tuple[int, float, T]] = {}
    for item in ranked:
        known = best.get(item[0])
        if known is None or item[1] > known[1]:
            best[item[0]] = item
    return sorted(best.values(), key=lambda item: -item[1])[:k]
