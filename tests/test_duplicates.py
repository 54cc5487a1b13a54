"""Near-duplicate grouping (lookalike/quality/duplicates.py): pure functions, no backend."""

import numpy as np

from lookalike.quality.duplicates import Pair, group, scan


def test_pairs_make_star_groups_around_leaders_largest_first():
    groups = group([Pair(1, 2, 0.97), Pair(2, 3, 0.95), Pair(7, 8, 0.99), Pair(5, 6, 0.96)])
    assert [g.ids for g in groups] == [[2, 1, 3], [7, 8], [5, 6]]  # size, then the closest pair
    assert groups[0].scores == {2: 0.97, 1: 0.97, 3: 0.95} and groups[0].top == 0.97
    assert groups[0].to_dict() == {"size": 3, "top_score": 0.97, "images": [
        {"id": 2, "score": 0.97}, {"id": 1, "score": 0.97}, {"id": 3, "score": 0.95}]}


def test_a_chain_does_not_merge_images_that_are_not_alike():
    # 1~2~3~4~5 in a chain (each only like its neighbours): connected components would make one
    # group of five in which 1 and 5 have nothing in common; stars keep every member near its leader.
    groups = group([Pair(1, 2, 0.95), Pair(2, 3, 0.95), Pair(3, 4, 0.95), Pair(4, 5, 0.95)])
    assert sorted(len(g.ids) for g in groups) == [2, 3]
    for g in groups:
        leader = g.ids[0]
        assert all(abs(m - leader) == 1 for m in g.ids[1:])


def test_scan_links_neighbours_at_the_threshold_only_and_reports_progress():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 16)).astype(np.float32)
    vectors = np.concatenate([base, base[:2] + 0.05 * rng.normal(size=(2, 16)).astype(np.float32)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = list(range(100, 108))  # 106 is a near copy of 100, 107 of 101

    def search(queries, k):  # exact top-k, as the index answers: (id, cosine)
        sims = queries @ vectors.T
        return [[(ids[j], float(row[j])) for j in np.argsort(-row)[:k]] for row in sims]

    progress = []
    found = scan(((ids[i:i + 3], vectors[i:i + 3]) for i in range(0, 8, 3)), search, threshold=0.95, neighbours=3,
                 total=8, progress=lambda done, total: progress.append((done, total)))
    assert sorted(sorted(g.ids) for g in found.groups) == [[100, 106], [101, 107]]
    assert progress == [(3, 8), (6, 8), (8, 8)] and found.images == 8 and found.duplicates == 2
    assert scan(iter([(ids, vectors)]), search, threshold=1.01, neighbours=3, total=8).groups == []


def test_deleting_a_member_keeps_the_scan_true():
    found = scan(iter([([1, 2, 3], None)]), lambda v, k: [[(1, 1.0), (2, 0.99), (3, 0.98)]] * 3, threshold=0.9,
                 neighbours=2, total=3)
    assert [g.ids for g in found.groups] == [[1, 2, 3]]
    found.forget([2])
    assert [g.ids for g in found.groups] == [[1, 3]] and found.images == 2
    found.forget([3])
    assert found.groups == [] and found.duplicates == 0
