"""How maps are cut into rectangles, so that memory is bounded by a tile, not by the image.

- The priors code independent regions (they never look across a region's border), batched so
  that the decoder works on many regions at once (more positions per wavefront step).
- The VQ-VAE analyses and synthesises overlapping windows: each inner rectangle is computed
  with a margin of context around it, which is then cut away, so no seams appear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def regions(h: int, w: int, size: int) -> list[Region]:
    """The h x w map cut into size x size regions (smaller at the right and bottom), in raster order."""
    return [
        Region(top, left, min(size, h - top), min(size, w - left))
        for top in range(0, h, size)
        for left in range(0, w, size)
    ]


def batches(items: list[Region], max_positions: int) -> list[list[Region]]:
    """Consecutive groups of regions with at most ``max_positions`` positions each (at least one region)."""
    groups: list[list[Region]] = []
    count = max_positions
    for region in items:
        if count + region.h * region.w > max_positions:
            groups.append([])
            count = 0
        groups[-1].append(region)
        count += region.h * region.w
    return groups


def windows(h: int, w: int, size: int, margin: int) -> list[tuple[Region, Region]]:
    """(inner, outer) pairs: size x size inner regions covering the map, each inside an outer
    region extended by ``margin`` on every side (clipped to the map)."""
    pairs = []
    for inner in regions(h, w, size):
        top, left = max(0, inner.top - margin), max(0, inner.left - margin)
        bottom, right = min(h, inner.top + inner.h + margin), min(w, inner.left + inner.w + margin)
        pairs.append((inner, Region(top, left, bottom - top, right - left)))
    return pairs
