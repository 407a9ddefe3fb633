"""The caches of a batch of regions being coded, in decoding order."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from ...nn.prior import Offsets, neighbours
from .arithmetic import (
    ArrayLike,
    Rows,
    Shape,
)
from .backend import Backend


@lru_cache(maxsize=64)
def _local_neighbours(offsets: Offsets, h: int, w: int) -> np.ndarray:
    """(h*w, T) neighbour indices within one h x w region; h*w where they fall outside it."""
    return neighbours(offsets, h, w).t().contiguous().numpy()


def _runs(shapes: list[Shape], bases: np.ndarray) -> Iterator[tuple[Shape, np.ndarray]]:
    """Consecutive regions of one shape, with their first positions: a map's regions are mostly
    tile x tile, so work per run rather than per region (a batch may hold 32,768 regions)."""
    start = 0
    for shape, group in itertools.groupby(shapes):
        count = len(list(group))
        yield shape, bases[start : start + count]
        start += count


def local_coords(shapes: list[Shape]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every position within its region, regions one after the other."""
    rows, cols = [], []
    for (h, w), bases in _runs(shapes, np.zeros(len(shapes), np.int64)):
        rows.append(np.tile(np.repeat(np.arange(h), w), len(bases)))
        cols.append(np.tile(np.arange(w), h * len(bases)))
    return np.concatenate(rows), np.concatenate(cols)


class MapState:
    """The caches of a batch of independent regions being coded: one (N + 2, C) array per source.

    Positions (numbered region after region, each region in raster order) sit in the caches in
    decoding order: wavefront by wavefront, a position's wavefront being c + r * ``slope`` within
    its region (ties by position). ``order`` is the position of each row and ``fronts`` the slices
    of rows of the wavefronts, so a wavefront's reads of its own rows are views and its writes
    block copies, not gathers and scatters. Without a slope (nothing to decode, all positions
    known) rows are positions and there is one front. Row N stays zero and stands for "outside
    the region"; row N + 1 (``scratch``), whose neighbours all lie outside, takes what padded
    steps compute and is never read for a real position.
    """

    def __init__(self, shapes: list[Shape], xp: Backend, slope: int | None = None):
        self.shapes, self.xp = shapes, xp
        sizes = [h * w for h, w in shapes]
        self.bases = np.cumsum([0, *sizes[:-1]])
        self.n = sum(sizes)
        self.scratch = self.n + 1
        if slope is None:
            self.order, front_sizes = np.arange(self.n), [self.n]
        else:
            r, c = local_coords(shapes)
            front = c + r * slope
            self.order = np.argsort(front, kind="stable")
            front_sizes = [int(k) for k in np.bincount(front) if k]
        ends = np.cumsum([0, *front_sizes])
        self.fronts = [slice(int(a), int(b)) for a, b in itertools.pairwise(ends)]
        #: The row of each position, and rows N and N + 1 of themselves.
        self._row = np.empty(self.n + 2, np.int64)
        self._row[self.order] = np.arange(self.n)
        self._row[self.n :] = (self.n, self.scratch)
        self.caches: dict[str, ArrayLike] = {}
        self._spare: list[ArrayLike] = []  # caches given back by ``recycle``
        self._tables: dict[Offsets, ArrayLike] = {}
        self._rows: Rows | None = None
        self._step: dict[Offsets, ArrayLike] = {}

    @property
    def widest(self) -> int:
        """Positions of the largest wavefront."""
        return max(f.stop - f.start for f in self.fronts)

    def rows_of(self, positions: np.ndarray) -> np.ndarray:
        """The cache rows of positions."""
        return self._row[positions]

    def neighbours(self, offsets: Offsets, rows: Rows) -> ArrayLike:
        """(S, T) rows of the neighbours of ``rows``; N where they fall outside their region."""
        if rows is not self._rows:
            self._rows, self._step = rows, {}
        if offsets not in self._step:
            if offsets not in self._tables:
                parts = []
                for (h, w), bases in _runs(self.shapes, self.bases):
                    local = _local_neighbours(offsets, h, w)[None]
                    run = np.where(local == h * w, self.n, local + bases[:, None, None])
                    parts.append(run.reshape(-1, len(offsets)))
                by_position = np.concatenate(parts)
                by_row = self._row[by_position[self.order]]
                outside = np.full((2, len(offsets)), self.n)  # rows N and N + 1: all outside
                self._tables[offsets] = self.xp.array(np.concatenate([by_row, outside]))
            self._step[offsets] = self.xp.rows(self._tables[offsets], rows)
        return self._step[offsets]

    def write(self, name: str, rows: Rows, values: ArrayLike) -> None:
        if name not in self.caches:
            self.caches[name] = self._new_cache(values.shape[1])
        self.xp.put_rows(self.caches[name], rows, values)

    def recycle(self, names: list[str]) -> None:
        """Give up the caches of ``names``, which nothing reads any more: later sources take them
        over instead of fresh arrays (a fresh one costs its pages' first touch)."""
        self._spare += [self.caches.pop(name) for name in names]

    def _new_cache(self, cols: int) -> ArrayLike:
        for i, spare in enumerate(self._spare):
            if spare.shape[1] == cols:
                del self._spare[i]
                spare[self.n :] = 0  # rows N and N + 1, which a new source must find zero
                return spare
        return self.xp.cache(self.n + 2, cols)

    def read(self, name: str, rows: Rows) -> ArrayLike:
        """The values of ``name`` at ``rows`` (indices of any shape, or a slice)."""
        return self.xp.rows(self.caches[name], rows)

    def gather(self, name: str, offsets: Offsets, rows: Rows) -> ArrayLike:
        """(S, T * C) values of ``name`` at each row's neighbours, tap-major."""
        if offsets == ((0, 0),):
            return self.read(name, rows)
        taps = self.read(name, self.neighbours(offsets, rows))
        return taps.reshape(taps.shape[0], -1)
