"""Near-duplicates in the library: groups of images whose vectors are closer than a threshold.

Byte-identical files never make two entries (an image's id is its content hash), so what is left
to find is the same picture re-encoded, resized, recoloured, cropped a little or captioned. Each
image's nearest neighbours come from the index itself, in batched searches (``scan``); every pair
at or above ``threshold`` (cosine similarity) links two images, and the links make the
groups (``group``: stars around the best-connected images), largest first.

The scan is a job: it reports progress as it goes, and costs one batched top-k search per
``batch`` images: 200,000 images at 256 a batch are 782 searches (docs/benchmarks.md has the
time: ``benchmarks/duplicate_scan.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    from lookalike.milvus.catalog import Catalog
    from lookalike.settings import DuplicateSettings


@dataclass(frozen=True)
class Pair:
    a: int
    b: int
    score: float


@dataclass
class Group:
    ids: list[int]  # the leader (the best-connected image) first, then by score to it
    scores: dict[int, float]  # each member's score to the leader; the leader's: its best
    top: float  # the group's highest pair score

    def to_dict(self) -> dict:
        return {"size": len(self.ids), "top_score": round(self.top, 4),
                "images": [{"id": i, "score": round(self.scores[i], 4)} for i in self.ids]}


@dataclass
class Scan:
    """A finished scan: the groups at one threshold over ``images`` images."""

    threshold: float
    images: int
    groups: list[Group] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        """Images that could go: every group's members but one."""
        return sum(len(g.ids) - 1 for g in self.groups)

    def page(self, offset: int, limit: int) -> list[Group]:
        return self.groups[offset: offset + limit]

    def described(self, catalog: "Catalog", offset: int, limit: int) -> list[dict]:
        """A page of groups with each image's entry (id, key, label, source) and score; an image
        deleted since the scan is left out."""
        page = self.page(offset, limit)
        entries = {e.id: e for e in catalog.get([i for g in page for i in g.ids])}
        out = []
        for g in page:
            group = g.to_dict()
            group["images"] = [{"id": i["id"], "key": entries[i["id"]].key, "label": entries[i["id"]].label,
                                "source": entries[i["id"]].source, "score": i["score"]}
                               for i in group["images"] if i["id"] in entries]
            out.append(group)
        return out

    def forget(self, ids: Iterable[int]) -> None:
        """Images deleted from the scanned library leave it and their groups; a group of one is
        no group."""
        gone = set(ids)
        self.images -= len(gone)
        kept = []
        for g in self.groups:
            members = [i for i in g.ids if i not in gone]
            if len(members) > 1:
                kept.append(Group(members, {i: g.scores[i] for i in members}, g.top))
        self.groups = kept

    def summary(self) -> dict:
        return {"threshold": self.threshold, "images": self.images, "groups": len(self.groups),
                "duplicates": self.duplicates, "seconds": round(self.seconds, 2)}


def group(pairs: Iterable[Pair]) -> list[Group]:
    """Star groups around leaders: the image with the most links (then the closest one) leads,
    and takes every linked image not in a group yet; then the next. Every member is within the
    threshold of its group's leader, so groups do not chain through intermediates as connected
    components do (measured on planted copies: pair precision 0.53 against 0.36 at 0.85,
    benchmarks/quality.py). Largest groups first, then by top score."""
    links: dict[int, dict[int, float]] = {}
    for p in pairs:
        for a, b in ((p.a, p.b), (p.b, p.a)):
            links.setdefault(a, {})[b] = max(p.score, links.get(a, {}).get(b, -1.0))
    taken: set[int] = set()
    groups = []
    for leader in sorted(links, key=lambda i: (-len(links[i]), -max(links[i].values()), i)):
        if leader in taken:
            continue
        members = sorted((m for m in links[leader] if m not in taken), key=lambda m: (-links[leader][m], m))
        if not members:
            continue
        scores = {m: links[leader][m] for m in members}
        scores[leader] = max(scores.values())
        groups.append(Group([leader, *members], scores, scores[leader]))
        taken.update([leader, *members])
    groups.sort(key=lambda g: (-len(g.ids), -g.top, g.ids[0]))
    return groups


def scan(batches: Iterable[tuple[Sequence[int], object]], search: Callable[[object, int], list[list[tuple[int, float]]]],
         *, threshold: float, neighbours: int, total: int,
         progress: Callable[[int, int], None] | None = None) -> Scan:
    """``batches``: (ids, vectors) of every image; ``search``: (vectors, k) -> per vector its
    top-k (id, score) from the index. Each image's ``neighbours`` nearest at ``threshold`` or
    more are linked to it. ``progress(done, total)`` after each batch."""
    started = time.perf_counter()
    pairs: list[Pair] = []
    done = 0
    for ids, vectors in batches:
        for own, hits in zip(ids, search(vectors, neighbours + 1)):
            pairs.extend(Pair(min(own, hit), max(own, hit), score) for hit, score in hits
                         if hit != own and score >= threshold)
        done += len(ids)
        if progress:
            progress(done, total)
    return Scan(threshold, done, group(pairs), time.perf_counter() - started)


def find(catalog: "Catalog", settings: "DuplicateSettings", *, threshold: float | None = None,
         progress: Callable[[int, int], None] | None = None) -> Scan:
    """Scan the catalog's every image against its index (``threshold``: the settings' unless given)."""
    total = catalog.count()
    batches = (([e.id for e in entries], np.stack([e.embedding for e in entries]))
               for entries in catalog.rows.entries(with_vectors=True, batch_size=settings.batch_size))

    def search(vectors, k):
        # Whole images only: a picture that holds another as a part is not its duplicate (and the
        # threshold was measured on whole-image vectors).
        return [[(h.id, h.score) for h in hits] for hits in catalog.search(vectors, k, regions=False)]

    return scan(batches, search, threshold=settings.threshold if threshold is None else threshold,
                neighbours=settings.neighbours, total=total, progress=progress)
