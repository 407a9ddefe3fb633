"""Regions cover a map exactly once, and batches respect their size bound."""

from __future__ import annotations

import numpy as np
import pytest

from vqcodec.tiles import Region, batches, regions


@pytest.mark.parametrize("h,w,size", [(1, 1, 16), (5, 7, 2), (32, 32, 16), (33, 17, 16)])
def test_regions_tile_the_map(h, w, size):
    covered = np.zeros((h, w), int)
    for region in regions(h, w, size):
        region.take(covered)[...] += 1
        assert 1 <= region.h <= size and 1 <= region.w <= size
    assert (covered == 1).all()


def test_batches_keep_order_and_bound():
    items = list(regions(10, 10, 3))
    groups = list(batches(items, 20))
    assert [r for g in groups for r in g] == items
    assert all(sum(r.h * r.w for r in g) <= 20 for g in groups)
    assert list(batches([Region(0, 0, 9, 9)], 20)) == [[Region(0, 0, 9, 9)]]  # one oversized region still goes


def test_half_region():
    assert Region(4, 6, 8, 10).half() == Region(2, 3, 4, 5)
