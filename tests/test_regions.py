"""Region vectors' pure parts: the layout, the one-result-per-image merge, row keys, the
preprocessing of an image's parts (the same as a query box's), and the descriptor's name."""

import numpy as np
import pytest
from PIL import Image

from lookalike.embedding import regions
from lookalike.embedding.descriptors import descriptor_name, taken_as_unrecorded
from lookalike.embedding.images import prepare, prepare_regions
from lookalike.settings import ImageLimits, ModelSettings, RegionSettings

from harness.images import draw, encode, jpeg_with_orientation


def test_the_layout_spreads_each_side_fraction_from_edge_to_edge():
    assert regions.boxes(RegionSettings()) == []  # off by default
    quads = regions.boxes(RegionSettings(enabled=True, steps=2))
    assert [str(b) for b in quads] == ["0,0,0.5,0.5", "0.5,0,0.5,0.5", "0,0.5,0.5,0.5", "0.5,0.5,0.5,0.5"]
    grid = regions.boxes(RegionSettings(enabled=True, sides=[0.5, 0.7], steps=3))
    assert len(grid) == 18  # len(sides) x steps²
    assert {(b.x, b.y) for b in grid[:9]} == {(x, y) for x in (0, 0.25, 0.5) for y in (0, 0.25, 0.5)}
    assert all(b.relative and b.x + b.w <= 1 and b.y + b.h <= 1 for b in grid)
    assert [str(b) for b in regions.boxes(RegionSettings(enabled=True, steps=1))] == ["0.25,0.25,0.5,0.5"]
    with pytest.raises(ValueError):
        RegionSettings(enabled=True, sides=[1.0])


def test_best_per_image_keeps_each_images_best_row_and_the_whole_on_ties():
    ranked = [(1, 0.5, "whole 1"), (2, 0.9, "whole 2"), (1, 0.8, "part 1"), (3, 0.7, "part 3"),
              (2, 0.9, "part 2"), (3, 0.6, "part 3b")]
    assert regions.best_per_image(ranked, 10) == [(2, 0.9, "whole 2"), (1, 0.8, "part 1"), (3, 0.7, "part 3")]
    assert regions.best_per_image(ranked, 2) == [(2, 0.9, "whole 2"), (1, 0.8, "part 1")]


def test_region_row_keys_are_stable_distinct_63_bit():
    keys = {regions.row_id(image, i) for image in (1, 2, 2**62) for i in range(18)}
    assert len(keys) == 54 and all(0 <= k < 2**63 for k in keys)
    assert regions.row_id(5, 3) == regions.row_id(5, 3)


def test_an_images_parts_are_prepared_as_query_boxes_are():
    limits = ImageLimits()
    data = jpeg_with_orientation(draw("triangle", (200, 40, 40), seed=3, size=300).resize((300, 200)), 6)
    layout = regions.boxes(RegionSettings(enabled=True, sides=[0.5, 0.7], steps=2))
    parts = prepare_regions(data, 64, limits, layout)
    assert parts.shape == (8, 64, 64, 3) and parts.dtype == np.uint8
    for box, part in zip(layout, parts):
        assert np.array_equal(part, prepare(data, 64, limits, box).pixels), box
    tiny = prepare_regions(encode(Image.new("RGB", (9, 9), (0, 0, 255)), "PNG"), 32, limits, layout)
    assert tiny.shape == (8, 32, 32, 3)  # parts under the query's minimum side are still taken


def test_the_layout_is_part_of_the_descriptor():
    on = ModelSettings(regions=RegionSettings(enabled=True))
    assert descriptor_name(on, ImageLimits()) == "efficientnet-lite0/gem3/pad/r0.5x3"
    assert descriptor_name(ModelSettings(), ImageLimits()) == "efficientnet-lite0/gem3/pad"
    avg_on = ModelSettings(pooling="avg", regions=RegionSettings(enabled=True))
    assert not taken_as_unrecorded(descriptor_name(avg_on, ImageLimits()))  # old collections have no regions
    assert taken_as_unrecorded(descriptor_name(ModelSettings(pooling="avg"), ImageLimits()))
