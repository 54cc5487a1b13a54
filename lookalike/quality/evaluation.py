"""Retrieval quality over a labelled folder tree (``lookalike eval DIR``).

Every image of the tree is a query against all the others (leave-one-out): a result is
relevant when its label is the query's. Reports P@1, P@10, mAP@10 and per-class P@10, twice:
through the index (the running service over HTTP, or the configured Milvus in-process) and
with exact search over the very same stored vectors, so the index's cost in quality shows.

Copy detection: edited copies of some gallery images (crop, rotation, JPEG quality, grayscale,
downscale, text overlay), which are not in the gallery, are searched; recall@1 / recall@5 is
how often the original comes back first / in the top 5, per edit kind. The same for parts of
those images (half of each side, or 30-70 %, at a random place): what region rows are for.
Both again on originals the library holds once (``distinct``), the only ones whose copies have
one right answer.

The metrics and the edits are pure functions over arrays and bytes; ``evaluate`` wires them
to a gallery, an encoder and a searcher.
"""

from __future__ import annotations

import io
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from lookalike.embedding.images import content_id
from lookalike.settings import ImageLimits

K = 10


# -- metrics ---------------------------------------------------------------------------------------
def retrieval_metrics(query_labels: Sequence[str], result_labels: Sequence[Sequence[str]],
                      class_sizes: dict[str, int], k: int = K) -> dict:
    """P@1, P@k, mAP@k and per-class P@k. ``class_sizes``: images per label in the gallery
    (the query itself included), which bounds how many relevant results a query can have; a
    query alone in its class has none and is left out (counted in ``unanswerable``)."""
    p1, pk, apk = [], [], []
    per_class: dict[str, list[float]] = defaultdict(list)
    unanswerable = 0
    for label, results in zip(query_labels, result_labels):
        if class_sizes.get(label, 1) <= 1:
            unanswerable += 1
            continue
        rel = [r == label for r in list(results)[:k]]
        p1.append(float(rel[0]) if rel else 0.0)
        pk.append(sum(rel) / k)
        per_class[label].append(sum(rel) / k)
        possible = min(k, class_sizes[label] - 1)
        hits, ap = 0, 0.0
        for i, r in enumerate(rel, start=1):
            if r:
                hits += 1
                ap += hits / i
        apk.append(ap / possible)
    return {"queries": len(pk), "unanswerable": unanswerable, "p_at_1": _mean(p1), f"p_at_{k}": _mean(pk),
            f"map_at_{k}": _mean(apk), "per_class": {c: _mean(v) for c, v in sorted(per_class.items())}}


def copy_recall(ranks: Sequence[int | None]) -> dict:
    """``ranks``: the original's 1-based rank among the results, or None if absent."""
    n = len(ranks)
    return {"queries": n, "recall_at_1": _mean([r is not None and r <= 1 for r in ranks]),
            "recall_at_5": _mean([r is not None and r <= 5 for r in ranks])}


def _mean(values) -> float:
    values = list(values)
    return round(float(np.mean(values)), 4) if values else 0.0


def exact_top_k(queries: np.ndarray, gallery: np.ndarray, k: int, exclude: Sequence[int | None] = ()
                ) -> np.ndarray:
    """Indices of the ``k`` most similar gallery rows per query (cosine = dot of unit vectors);
    ``exclude[i]``: a gallery row query ``i`` must not return (itself)."""
    sims = queries @ gallery.T
    for i, row in enumerate(exclude):
        if row is not None:
            sims[i, row] = -np.inf
    k = min(k, gallery.shape[0])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1)
    return np.take_along_axis(top, order, 1)


# -- edited copies ---------------------------------------------------------------------------------
def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    (img if img.mode in ("RGB", "L") else img.convert("RGB")).save(out, "JPEG", quality=quality)
    return out.getvalue()


def _on_white(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _crop(img: Image.Image) -> Image.Image:  # keep the central 70 % of each side
    w, h = img.size
    return img.crop((int(w * 0.15), int(h * 0.15), int(w * 0.85), int(h * 0.85)))


def _text(img: Image.Image) -> Image.Image:  # a caption band across the lower part
    out = img.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    band = max(12, h // 8)
    draw.rectangle((0, h - 2 * band, w, h - band), fill=(0, 0, 0))
    draw.text((w // 20, h - 2 * band + band // 4), "LOOKALIKE © 2026 sample text", fill=(255, 255, 0))
    return out


EDITS: dict[str, Callable[[Image.Image], bytes]] = {
    "crop_70": lambda img: _jpeg(_crop(img)),
    "rotate_15": lambda img: _jpeg(img.rotate(15, resample=Image.Resampling.BICUBIC, expand=True,
                                              fillcolor=(255, 255, 255))),
    "jpeg_q15": lambda img: _jpeg(img, 15),
    "grayscale": lambda img: _jpeg(ImageOps.grayscale(img)),
    "downscale_25": lambda img: _jpeg(img.resize((max(8, img.width // 4), max(8, img.height // 4)),
                                                 Image.Resampling.BILINEAR)),
    "text_overlay": lambda img: _jpeg(_text(img)),
}


# Copies a library gathers beside the edits above: planted to measure near-duplicate groups.
PLANTED = {
    **EDITS,
    "resized_60": lambda img: _png(img.resize((max(8, img.width * 3 // 5), max(8, img.height * 3 // 5)),
                                              Image.Resampling.BICUBIC)),
    "reencoded_q75": lambda img: _jpeg(img, 75),
}


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def edited_copies(data: bytes, edits: dict[str, Callable[[Image.Image], bytes]] = EDITS) -> dict[str, bytes]:
    """Each edit kind applied to one image (transparency flattened on white first)."""
    with Image.open(io.BytesIO(data)) as img:
        img = _on_white(ImageOps.exif_transpose(img))
        return {name: edit(img) for name, edit in edits.items()}


def random_crop(data: bytes, rng: random.Random, low: float = 0.3, high: float = 0.7) -> bytes:
    """A part of the image: each side a random fraction in [low, high] of the image's, at a random
    place (a user's box around part of a picture), as PNG."""
    with Image.open(io.BytesIO(data)) as img:
        img = _on_white(ImageOps.exif_transpose(img))
        w, h = max(8, round(img.width * rng.uniform(low, high))), max(8, round(img.height * rng.uniform(low, high)))
        x, y = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
        return _png(img.crop((x, y, x + w, y + h)))


# Parts of a gallery image searched as a user's box would cut them: each side exactly half, or a
# random 30-70 %, of the image's, at a random place (seeded per image).
PARTS = {"part_50": (0.5, 0.5), "part_30_70": (0.3, 0.7)}


def parts_of(data: bytes, seed: int) -> dict[str, bytes]:
    """One part of each kind in ``PARTS`` of one image, the same for the same ``seed``."""
    return {name: random_crop(data, random.Random(seed), low, high) for name, (low, high) in PARTS.items()}


# -- running an evaluation ------------------------------------------------------------------------
def bytes_embedder(encoder, limits: ImageLimits) -> Callable[[Sequence[bytes]], np.ndarray]:
    """Image bytes -> unit vectors through the one preprocessing (``limits``: settings.images)."""
    from lookalike.embedding.images import prepare

    def embed(datas: Sequence[bytes]) -> np.ndarray:
        return encoder.encode(np.stack([prepare(d, encoder.input_size, limits).pixels for d in datas]))

    return embed


class IndexSearch(Protocol):
    """Top-k search through the index: (image bytes, k) -> [(id, label)]."""

    def __call__(self, data: bytes, k: int) -> list[tuple[int, str]]: ...


@dataclass
class Gallery:
    """The labelled images, one per distinct content (the first path wins), with their vectors."""

    ids: list[int]
    labels: list[str]
    paths: list[str]
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    @property
    def class_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = defaultdict(int)
        for label in self.labels:
            sizes[label] += 1
        return dict(sizes)


def load_gallery(items, read: Callable[[str], bytes] = lambda p: open(p, "rb").read()) -> Gallery:
    ids, labels, paths, seen = [], [], [], set()
    for item in items:
        if not item.label:
            continue
        cid = content_id(read(item.path))
        if cid in seen:
            continue
        seen.add(cid)
        ids.append(cid)
        labels.append(item.label)
        paths.append(item.path)
    return Gallery(ids, labels, paths)


def pick(n: int, total: int, seed: int = 0) -> list[int]:
    """``n`` of ``range(total)`` (all when n is 0 or larger), deterministically."""
    if not n or n >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), n))


def distinct(vectors: np.ndarray, threshold: float) -> list[int]:
    """Rows with no other row at cosine ``threshold`` or more: images the library holds once.
    Only for those is "the original" of a copy well defined; a recoloured variant of a picture,
    or another piece of one jigsaw, is as good an answer to its grayscale or cropped copy."""
    nearest = np.full(len(vectors), -np.inf, np.float32)
    for start in range(0, len(vectors), 1024):  # a block of rows at a time: memory stays O(n)
        sims = vectors[start:start + 1024] @ vectors.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        nearest[start:start + len(sims)] = sims.max(axis=1)
    return np.flatnonzero(nearest < threshold).tolist()


def evaluate(gallery: Gallery, *, search: IndexSearch | None, embed: Callable[[Sequence[bytes]], np.ndarray],
             queries: int = 0, copies: int = 0, k: int = K, seed: int = 0, distinct_at: float | None = None,
             read: Callable[[str], bytes] = lambda p: open(p, "rb").read()) -> dict:
    """Quality through ``search`` (the index; skipped when None) and exact over ``gallery.vectors``.

    ``embed``: image bytes -> unit vectors through the same pipeline (for the edited copies).
    ``distinct_at``: copies and parts are measured again on originals the library holds once
    (no other image at that cosine or more: the near-duplicate threshold), under "distinct"."""
    chosen = pick(queries, len(gallery.ids), seed)
    q_labels = [gallery.labels[i] for i in chosen]
    out: dict = {"gallery": len(gallery.ids), "classes": len(gallery.class_sizes), "k": k}
    started = time.perf_counter()
    top = exact_top_k(gallery.vectors[chosen], gallery.vectors, k, exclude=chosen)
    out["exact"] = retrieval_metrics(q_labels, [[gallery.labels[j] for j in row] for row in top],
                                     gallery.class_sizes, k)
    if search is not None:
        results = []
        for i in chosen:
            hits = [h for h in search(read(gallery.paths[i]), k + 1) if h[0] != gallery.ids[i]][:k]
            results.append([label for _, label in hits])
        out["index"] = retrieval_metrics(q_labels, results, gallery.class_sizes, k)
    if copies:
        def both(among: list[int] | None) -> dict:
            return {"copies": copy_detection(gallery, search=search, embed=embed, n=copies, seed=seed, read=read,
                                             among=among),
                    "parts": copy_detection(gallery, search=search, embed=embed, n=copies, seed=seed, read=read,
                                            among=among, make=lambda data, i: parts_of(data, seed * 100_003 + i))}

        out.update(both(None))
        if distinct_at is not None:
            among = distinct(gallery.vectors, distinct_at)
            out["distinct"] = {"threshold": distinct_at, "images": len(among), **both(among)}
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def copy_detection(gallery: Gallery, *, search: IndexSearch | None, embed, n: int, seed: int = 0,
                   read=lambda p: open(p, "rb").read(), among: Sequence[int] | None = None,
                   make: Callable[[bytes, int], dict[str, bytes]] = lambda data, i: edited_copies(data)) -> dict:
    """Recall@1 / @5 of ``n`` gallery images (drawn from ``among``, default all) from queries made
    of them, per kind: ``make(image bytes, gallery index)`` -> {kind: query bytes} (by default the
    edited copies; ``parts_of``: parts of the image, which region rows find through the index)."""
    among = list(range(len(gallery.ids))) if among is None else list(among)
    originals = [among[j] for j in pick(n, len(among), seed + 1)]
    edited = {i: make(read(gallery.paths[i]), i) for i in originals}
    out: dict = {}
    for kind in edited[originals[0]] if originals else ():
        datas = [edited[i][kind] for i in originals]
        vectors = embed(datas)
        top = exact_top_k(vectors, gallery.vectors, 5)
        exact_ranks = [_rank(i, row) for i, row in zip(originals, top.tolist())]
        out[kind] = {"exact": copy_recall(exact_ranks)}
        if search is not None:
            ranks = []
            for i, data in zip(originals, datas):
                ids = [hid for hid, _ in search(data, 5)]
                ranks.append(ids.index(gallery.ids[i]) + 1 if gallery.ids[i] in ids else None)
            out[kind]["index"] = copy_recall(ranks)
    return out


def _rank(target: int, row: list[int]) -> int | None:
    return row.index(target) + 1 if target in row else None


def http_search(url: str, timeout: float, seconds: list[float]):
    """Search through the service; ``seconds`` gets its own search time (``timings.search_ms``)."""
    import httpx

    client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)

    def search(data: bytes, k: int):
        response = client.post("/api/v1/search", params={"k": k}, files={"image": ("query", data)})
        if response.status_code != 200:
            raise SystemExit(f"lookalike eval: {url} answered {response.status_code}: {response.text[:300]}")
        answer = response.json()
        seconds.append(answer["timings"]["search_ms"] / 1000)
        return [(int(h["id"]), h["label"]) for h in answer["results"]]

    return search


def report_text(result: dict) -> str:
    """What ``lookalike eval`` prints: the metrics as tables."""
    k = result["k"]
    lines = [f"{result['gallery']} images, {result['classes']} classes, k={k}, through {result['through']}",
             f"{'':10}{'P@1':>8}{f'P@{k}':>8}{f'mAP@{k}':>9}"]
    for name in ("index", "exact"):
        if name in result:
            m = result[name]
            lines.append(f"{name:10}{m['p_at_1']:8.3f}{m[f'p_at_{k}']:8.3f}{m[f'map_at_{k}']:9.3f}")
    if result.get("search_ms", {}).get("searches"):
        t = result["search_ms"]
        lines.append(f"index search: p50 {t['p50']} ms, p99 {t['p99']} ms over {t['searches']} searches")
    tables = [("copy detection", result)]
    if "distinct" in result:
        d = result["distinct"]
        tables.append((f"originals held once ({d['images']} with no other image at {d['threshold']} or more)", d))
    for title, r in tables if "copies" in result else ():
        lines.append(f"\n{title}\n{'':18}{'R@1 index':>10}{'R@5 index':>10}{'R@1 exact':>10}{'R@5 exact':>10}")
        for kind, c in {**r["copies"], **r.get("parts", {})}.items():
            idx = c.get("index", {})
            lines.append(f"{kind:18}{idx.get('recall_at_1', float('nan')):10.3f}"
                         f"{idx.get('recall_at_5', float('nan')):10.3f}"
                         f"{c['exact']['recall_at_1']:10.3f}{c['exact']['recall_at_5']:10.3f}")
    return "\n".join(lines)
