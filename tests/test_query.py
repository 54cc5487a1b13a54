"""The one query path (lookalike/query.py): its steps in order, its filter, and the same answer
in-process as through the service (test_api.py runs it through the service)."""

from __future__ import annotations

import numpy as np

from lookalike import query
from lookalike.embedding.images import Box, PreparedImage


def _hits(*scores: float) -> list[dict]:
    return [{"id": i, "key": f"k{i}", "label": "l", "source": "", "distance": 0.0, "score": s, "region": None}
            for i, s in enumerate(scores)]


def test_keep_leaves_out_the_query_image_low_scores_and_past_k():
    hits = _hits(1.0, 0.9, 0.8, 0.7, 0.2)
    assert [h["id"] for h in query.keep(hits, query.Query(3))] == [0, 1, 2]
    assert [h["id"] for h in query.keep(hits, query.Query(3), exclude=0)] == [1, 2, 3]
    assert [h["id"] for h in query.keep(hits, query.Query(10, min_score=0.75))] == [0, 1, 2]


def test_the_path_runs_prepare_encode_search_filter_urls_in_order():
    calls = []

    async def prepare(data, box):
        calls.append(("prepare", data, box))
        return PreparedImage(id=7, pixels=np.zeros((4, 4, 3), np.uint8), format="PNG")

    async def encode(pixels):
        calls.append(("encode", pixels.shape))
        return np.ones(3, np.float32)

    async def search(vector, limit, label):
        calls.append(("search", limit, label))
        return _hits(1.0, 0.5, 0.4)

    async def encode_text(text):
        calls.append(("encode_text", text))
        return np.ones(3, np.float32)

    path = query.QueryPath(prepare=prepare, encode=encode, search=search, url=lambda key: f"/images/{key}",
                           encode_text=encode_text)
    box = Box.parse("0,0,2,2")
    answer = query.run(path.by_image(b"bytes", query.Query(2, "cats", 0.45, box)))
    assert calls == [("prepare", b"bytes", box), ("encode", (4, 4, 3)), ("search", 2, "cats")]
    assert [(h["id"], h["url"]) for h in answer.hits] == [(0, "/images/k0"), (1, "/images/k1")]
    assert set(answer.timings) == {"decode_ms", "embed_ms", "search_ms"}
    calls.clear()  # more like this: from the search on, one more asked for the image itself
    answer = query.run(path.by_vector(np.ones(3), query.Query(2), exclude=0))
    assert calls == [("search", 3, None)] and [h["id"] for h in answer.hits] == [1, 2]
    calls.clear()  # by words: the text tower, then the same search and filter
    answer = query.run(path.by_text("a red bicycle", query.Query(1, "bikes")))
    assert calls == [("encode_text", "a red bicycle"), ("search", 1, "bikes")] and [h["id"] for h in answer.hits] == [0]
    assert set(answer.timings) == {"embed_ms", "search_ms"}
