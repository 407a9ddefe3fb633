"""Partial decoding: which codes, synthesis windows and map segments a rectangle of an image needs.

A pixel of the image depends on the pixels of the decoded (coded) image within the restoration
filter's radius and, for a resampled file, within the Lanczos filter's support; those come from
the synthesis windows that cover them, which read the codes of their outer regions; and those
codes come from the prior regions that hold them, and for the bottom map the top regions under
those (the bottom prior is conditioned on them). Decoding just that much gives exactly the pixels
a whole decode gives there.
"""

from __future__ import annotations

import math
import numbers

from ..errors import UsageError
from ..format import container
from . import tiles

#: Lanczos' support in Pillow, in source pixels at scale 1 (wider when shrinking), and a margin
#: for its rounding of each output pixel's span.
LANCZOS_SUPPORT, SPAN_MARGIN = 3.0, 2


def check(region: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """``region`` (x, y, w, h) as whole numbers inside a ``width`` x ``height`` image, or a UsageError."""
    if len(region) != 4 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in region):
        raise UsageError(f"a region is four whole numbers x, y, width, height, not {region!r}")
    x, y, w, h = (int(v) for v in region)
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise UsageError(f"region {x},{y},{w},{h} is not inside the {width}x{height} image")
    return x, y, w, h


def source_span(lo: int, hi: int, size: int, coded: int) -> tuple[int, int]:
    """The pixels [lo', hi') of an axis of ``coded`` pixels that Lanczos resampling to ``size``
    pixels reads to make pixels [lo, hi) (clipped to the axis)."""
    if coded == size:
        return max(0, lo), min(size, hi)
    ratio = coded / size
    support = LANCZOS_SUPPORT * max(ratio, 1.0)
    first = math.floor((max(0, lo) + 0.5) * ratio - support) - SPAN_MARGIN
    last = math.ceil((min(size, hi) - 0.5) * ratio + support) + SPAN_MARGIN
    return max(0, first), min(coded, last + 1)


def windows(
    x: tuple[int, int], y: tuple[int, int], top_shape: tuple[int, int], stride: int, window: int, margin: int
) -> list[tuple[tiles.Region, tiles.Region]]:
    """The synthesis windows (inner, outer; ``tiles.windows``) whose inner part covers coded pixels
    [x0, x1) x [y0, y1)."""
    rows = (y[0] // stride, -(-y[1] // stride))
    cols = (x[0] // stride, -(-x[1] // stride))
    return [
        (inner, outer)
        for inner, outer in tiles.windows(*top_shape, window, margin)
        if inner.top < rows[1]
        and rows[0] < inner.top + inner.h
        and inner.left < cols[1]
        and cols[0] < inner.left + inner.w
    ]


def segments(outers: list[tiles.Region], top_shape: tuple[int, int], tile: int) -> tuple[set[int], set[int]]:
    """(top, bottom) segments holding the codes of the windows' ``outers`` (in top codes): the
    bottom regions under them, and the top regions under those, which are the top map's regions
    of the same grid position (a bottom region is twice a top region's side)."""
    columns = -(-top_shape[1] // tile)
    grid = set()
    for outer in outers:
        for row in range(outer.top // tile, (outer.top + outer.h - 1) // tile + 1):
            for col in range(outer.left // tile, (outer.left + outer.w - 1) // tile + 1):
                grid.add(row * columns + col)
    per_top, per_bottom = (container.regions_per_segment(side) for side in (tile, 2 * tile))
    return {k // per_top for k in grid}, {k // per_bottom for k in grid}
