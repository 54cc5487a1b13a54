"""Retrieval metrics, edited copies and exact search: pure functions, checked on known values."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lookalike.quality.evaluation import (EDITS, PARTS, copy_recall, distinct, edited_copies, exact_top_k, parts_of, pick,
                                  retrieval_metrics)

from harness.images import draw, encode


def test_precision_and_average_precision_on_known_rankings():
    sizes = {"a": 4, "b": 11}  # "a": 3 other relevant images; "b": 10
    m = retrieval_metrics(["a", "b"], [["a", "x", "a", "x", "a"] + ["x"] * 5, ["x"] + ["b"] * 9], sizes)
    assert m["p_at_1"] == 0.5
    assert m["p_at_10"] == pytest.approx((3 / 10 + 9 / 10) / 2)
    ap_a = (1 / 1 + 2 / 3 + 3 / 5) / 3  # every relevant image found: normalised by the 3 there are
    ap_b = sum(i / (i + 1) for i in range(1, 10)) / 10
    assert m["map_at_10"] == pytest.approx((ap_a + ap_b) / 2, abs=1e-4)
    assert m["per_class"] == {"a": 0.3, "b": 0.9}


def test_a_perfect_ranking_scores_one_and_a_query_alone_in_its_class_is_left_out():
    m = retrieval_metrics(["a"], [["a"] * 10], {"a": 20})
    assert m["p_at_1"] == m["p_at_10"] == m["map_at_10"] == 1.0
    # Nothing relevant exists for "z": the query cannot score, so it does not pull the means down.
    m = retrieval_metrics(["a", "z"], [["a"] * 10, ["a"] * 10], {"a": 20, "z": 1})
    assert m["queries"] == 1 and m["unanswerable"] == 1 and m["map_at_10"] == 1.0 and "z" not in m["per_class"]


def test_copy_recall_counts_ranks():
    assert copy_recall([1, 2, None, 6]) == {"queries": 4, "recall_at_1": 0.25, "recall_at_5": 0.5}


def test_exact_top_k_orders_by_cosine_and_excludes_the_query_itself():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(50, 16)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    top = exact_top_k(g[[3, 7]], g, 5, exclude=[3, 7])
    assert 3 not in top[0] and 7 not in top[1]
    sims = g[3] @ g.T
    sims[3] = -np.inf
    assert top[0].tolist() == np.argsort(-sims)[:5].tolist()


def test_every_edit_gives_a_decodable_changed_image():
    original = encode(draw("circle", (200, 30, 30), seed=5, size=200), "PNG")
    copies = edited_copies(original)
    assert set(copies) == set(EDITS)
    for kind, data in copies.items():
        img = Image.open(io.BytesIO(data))
        img.load()
        assert data != original, kind
    assert Image.open(io.BytesIO(copies["grayscale"])).mode == "L"
    assert Image.open(io.BytesIO(copies["downscale_25"])).size == (50, 50)
    assert Image.open(io.BytesIO(copies["crop_70"])).size == (140, 140)


def test_parts_are_the_sizes_asked_for_and_the_same_for_the_same_seed():
    original = encode(draw("circle", (200, 30, 30), seed=5, size=200), "PNG")
    parts = parts_of(original, seed=3)
    assert set(parts) == set(PARTS) and parts == parts_of(original, seed=3)
    assert Image.open(io.BytesIO(parts["part_50"])).size == (100, 100)
    w, h = Image.open(io.BytesIO(parts["part_30_70"])).size
    assert 60 <= w <= 140 and 60 <= h <= 140
    # Another seed, another place (and size): not one fixed box for every image.
    assert any(parts_of(original, seed) != parts for seed in range(4, 8))


def test_distinct_leaves_out_images_the_library_holds_twice():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(2100, 16)).astype(np.float32)  # past one block of rows
    g[2050] = g[3] + 0.01 * rng.normal(size=16)  # a near-copy of image 3, in another block
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    held_once = distinct(g, 0.9)
    assert 3 not in held_once and 2050 not in held_once
    assert len(held_once) == 2098 and distinct(g, 1.01) == list(range(2100))


def test_pick_is_deterministic_and_bounded():
    assert pick(0, 5) == [0, 1, 2, 3, 4] and pick(9, 5) == [0, 1, 2, 3, 4]
    assert pick(3, 100, seed=1) == pick(3, 100, seed=1) and len(set(pick(3, 100))) == 3
