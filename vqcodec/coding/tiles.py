"""How maps are cut into rectangles, so that memory is bounded by a tile, not by the image.

- The priors code independent regions (they never look across a region's border), batched so
  that the decoder works on many regions at once (more positions per wavefront step).
- The VQ-VAE analyses and synthesises overlapping windows: each inner rectangle is computed
  with a margin of context around it, which is then cut away, so no seams appear.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Region:
    """A rectangle of a map: top-left corner (top, left) and size h x w, in codes."""

    top: int
    left: int
    h: int
    w: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.h, self.w

    @property
    def positions(self) -> int:
        return self.h * self.w

    def take(self, m: np.ndarray) -> np.ndarray:
        """The region's part of map ``m``."""
        return m[self.top : self.top + self.h, self.left : self.left + self.w]

    def half(self) -> Region:
        """The matching region of the map at half the resolution (the top map of a bottom region)."""
        return Region(self.top // 2, self.left // 2, self.h // 2, self.w // 2)

    def scaled(self, factor: int) -> Region:
        """The matching region of a map ``factor`` times finer (e.g. the pixels of a code region)."""
        return Region(self.top * factor, self.left * factor, self.h * factor, self.w * factor)

    def within(self, outer: Region) -> Region:
        """This region in the coordinates of ``outer``, which contains it."""
        return Region(self.top - outer.top, self.left - outer.left, self.h, self.w)


def regions(h: int, w: int, size: int) -> Iterator[Region]:
    """The h x w map cut into size x size regions (smaller at the right and bottom), in raster
    order, one at a time (a huge map with tiny tiles has millions)."""
    for top in range(0, h, size):
        for left in range(0, w, size):
            yield Region(top, left, min(size, h - top), min(size, w - left))


def batches(
    items: Iterable[T], max_positions: int, size: Callable[[T], int] = lambda r: r.positions
) -> Iterator[list[T]]:
    """Consecutive groups of items (regions by default) with at most ``max_positions`` positions
    each, at least one item per group, each group as soon as it is complete. Two consecutive
    groups never fit in one together."""
    group: list[T] = []
    count = 0
    for item in items:
        n = size(item)
        if group and count + n > max_positions:
            yield group
            group, count = [], 0
        group.append(item)
        count += n
    if group:
        yield group


def _even_cuts(n: int, size: int) -> list[int]:
    """Where to cut n into the fewest parts of at most ``size``, as even as they go."""
    parts = -(-n // size)
    return [n * i // parts for i in range(parts + 1)]


def windows(h: int, w: int, size: int, margin: int) -> list[tuple[Region, Region]]:
    """(inner, outer) pairs: inner regions of at most size x size, as even as they go (windows run
    side by side, so the largest sets the time), covering the map in raster order, each inside
    an outer region extended by ``margin`` on every side (clipped to the map)."""
    pairs = []
    columns = list(itertools.pairwise(_even_cuts(w, size)))
    for top, bottom in itertools.pairwise(_even_cuts(h, size)):
        for left, right in columns:
            inner = Region(top, left, bottom - top, right - left)
            o_top, o_left = max(0, top - margin), max(0, left - margin)
            outer = Region(o_top, o_left, min(h, bottom + margin) - o_top, min(w, right + margin) - o_left)
            pairs.append((inner, outer))
    return pairs
