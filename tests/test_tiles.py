"""Regions and windows cover a map exactly once, and batches respect their size bound."""

from __future__ import annotations

import numpy as np
import pytest

from vqcodec.coding.tiles import Region, batches, regions, windows


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


@pytest.mark.parametrize("h,w,size,margin", [(1, 1, 64, 6), (96, 64, 64, 6), (65, 200, 64, 3), (7, 5, 2, 1)])
def test_windows_cover_the_map_evenly(h, w, size, margin):
    """Inner regions tile the map in the fewest windows, their sides differing by at most one
    (windows run side by side); outer regions add the margin, clipped to the map."""
    covered = np.zeros((h, w), int)
    pairs = windows(h, w, size, margin)
    for inner, outer in pairs:
        inner.take(covered)[...] += 1
        assert outer.top == max(0, inner.top - margin) and outer.left == max(0, inner.left - margin)
        assert outer.top + outer.h == min(h, inner.top + inner.h + margin)
        assert outer.left + outer.w == min(w, inner.left + inner.w + margin)
    assert (covered == 1).all()
    assert len(pairs) == -(-h // size) * -(-w // size)
    for side in (lambda r: r.h, lambda r: r.w):
        sides = [side(inner) for inner, _ in pairs]
        assert max(sides) <= size and max(sides) - min(sides) <= 1


def test_a_map_up_to_the_whole_window_is_one_window():
    """Margins are work done twice: a Kodak image's top map is one window, a larger one is cut
    into windows of ``WINDOW`` codes (which threads run side by side, and of which a small region
    needs few)."""
    from vqcodec.codec import window_side
    from vqcodec.defaults import WHOLE_WINDOW, WINDOW

    assert window_side((64, 96)) == 96 and window_side((102, 153)) == WINDOW
    assert window_side((WHOLE_WINDOW, 3)) == WHOLE_WINDOW and window_side((WHOLE_WINDOW + 1, 3)) == WINDOW
