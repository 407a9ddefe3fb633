"""How a code map is split into independent rectangular regions, and regions into batches.

The priors never look across a region's border, so regions are coded independently: the decoder
works on a whole batch of regions at once (more positions per wavefront step), and memory is
bounded by the batch, not by the image.
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
