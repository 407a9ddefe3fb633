"""The integer operations a prior is compiled into: convolutions as exact products, lookup tables,
residual sums, gates and window attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ...nn.prior import Offsets
from . import arithmetic
from .arithmetic import (
    OUTSIDE,
    QMAX,
    ArrayLike,
    Rows,
)
from .state import MapState


class Op(Protocol):
    """One step of a compiled prior: writes ``out`` at some rows from ``sources`` there and at
    their neighbours."""

    out: str

    @property
    def sources(self) -> tuple[str, ...]: ...

    def __call__(self, state: MapState, rows: Rows) -> None: ...


@dataclass
class QConv:
    """y = round(sum(w * x) * scale + offset), clamped, over the input segments.

    Each segment (source, taps) owns a block of weight rows; every float32 product covers at most
    ``arithmetic.CHUNK`` rows, and products are summed in float64 (float32 + float64 promotes exactly). The
    rescale is float32 when there is a single product, float64 otherwise: either way the same
    correctly rounded IEEE operations on every device. A backend with 8-bit products
    (``Backend.int8``) sums each segment's whole block in int32 instead, to the same integers.
    """

    out: str
    segments: list[tuple[str, Offsets]]
    weights: list[ArrayLike]  # per segment and chunk: (rows <= arithmetic.CHUNK, C_out) integers
    int8_weights: list[ArrayLike] | None  # per segment: (rows, C_out) int8; None if sums could overflow
    scale: ArrayLike  # (C_out,) float64
    offset: ArrayLike  # (C_out,) float64
    limit: int = QMAX

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.segments)

    def compute(self, state: MapState, rows: Rows) -> ArrayLike:
        """The (S, C_out) outputs at ``rows``, without caching them."""
        acc = self._products(state, rows)
        # In place (acc is a temporary): the same two IEEE operations, never fused, no copies.
        acc *= self.scale
        acc += self.offset
        return state.xp.rint(acc, self.limit)

    def compute_columns(self, state: MapState, rows: Rows, columns: ArrayLike) -> ArrayLike:
        """The (S, k) outputs of ``compute`` at ``rows`` in the given ``columns`` (S, k) of each
        row only: the same integers, with the rescale of k outputs per row instead of C_out."""
        xp = state.xp
        acc = xp.pick(self._products(state, rows), columns)
        acc *= xp.take(self.scale, columns)
        acc += xp.take(self.offset, columns)
        return xp.rint(acc, self.limit)

    def _products(self, state: MapState, rows: Rows) -> ArrayLike:
        """The (S, C_out) sums of weights times inputs at ``rows``, before the rescale."""
        xp = state.xp
        if xp.int8 and self.int8_weights is not None:
            acc = None
            for (name, offsets), w in zip(self.segments, self.int8_weights, strict=True):
                part = xp.int8_product(state.gather(name, offsets, rows), w)
                if acc is None:
                    acc = part
                else:
                    acc += part
            # As the float path gives it: float32 for one product (below 2^24), float64 otherwise.
            return xp.f32(acc) if len(self.weights) == 1 else xp.f64(acc)
        # Where all blocks together reduce at most CHUNK rows, their float32 sums are exact too
        # (and one pass cheaper than float64 ones): the same integers either way.
        in_float32 = sum(w.shape[0] for w in self.weights) <= arithmetic.CHUNK
        acc, weights = None, iter(self.weights)
        for name, offsets in self.segments:
            x = xp.f32(state.gather(name, offsets, rows))
            for a in range(0, x.shape[1], arithmetic.CHUNK):
                part, w = x[:, a : a + arithmetic.CHUNK], next(weights)
                if acc is None:
                    acc = part @ w
                elif in_float32:
                    xp.add_product(acc, part, w)
                else:
                    acc = xp.f64(acc) + part @ w
        return xp.f64(acc) if in_float32 and len(self.weights) > 1 else acc

    def __call__(self, state: MapState, rows: Rows) -> None:
        state.write(self.out, rows, self.compute(state, rows))


@dataclass
class Lut:
    """Elementwise lookup table over 8-bit activations."""

    out: str
    src: str
    table: ArrayLike

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.src,)

    def __call__(self, state: MapState, rows: Rows) -> None:
        state.write(self.out, rows, state.xp.take(self.table, state.read(self.src, rows), QMAX))


@dataclass
class Add:
    """Residual sum of two activations at different scales."""

    out: str
    a: str
    b: str
    scale_a: float
    scale_b: float

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.a, self.b)

    def __call__(self, state: MapState, rows: Rows) -> None:
        xp = state.xp
        a, b = xp.f64(state.read(self.a, rows)), xp.f64(state.read(self.b, rows))
        a *= self.scale_a
        b *= self.scale_b
        a += b
        state.write(self.out, rows, xp.rint(a, QMAX))


@dataclass
class Glu:
    """Gated linear unit: first half times sigmoid of the second half."""

    out: str
    src: str
    sigmoid: ArrayLike
    scale: float

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.src,)

    def __call__(self, state: MapState, rows: Rows) -> None:
        xp = state.xp
        g = state.read(self.src, rows)
        half = g.shape[1] // 2
        product = xp.f64(g[:, :half]) * xp.take(self.sigmoid, g[:, half:], QMAX)
        product *= self.scale
        state.write(self.out, rows, xp.rint(product, QMAX))


@dataclass
class Attention:
    """Windowed multi-head attention with integer scores, an exp table and exact weighted sums."""

    out: str
    query: str
    key: str
    value: str
    offsets: Offsets
    heads: int
    exp: ArrayLike
    scale: float

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.query, self.key, self.value)

    def __call__(self, state: MapState, rows: Rows) -> None:
        xp, h = state.xp, self.heads
        idx = state.neighbours(self.offsets, rows)
        s, t = idx.shape
        q = xp.f32(state.read(self.query, rows)).reshape(s, h, -1)
        scores = xp.head_dots(state.caches[self.key], idx, q)  # exact: d * 127^2 < 2^24
        # Taps outside the region score OUTSIDE, so far below the best tap that they fall off the
        # exp table's end, whose last entry is 0. With no tap inside, all weigh alike, but all
        # read the zero row: the output is 0 either way, and the sum of weights is never 0.
        scores = xp.where((idx < state.n).reshape(s, 1, t), scores, OUTSIDE)
        dist = xp.clip_max(xp.reduce(scores, "max") - scores, len(self.exp) - 1)
        # Integer weights below 2^bits with T * 2^bits * 127 < 2^24 keep the float32 sums exact.
        weights = xp.take(self.exp, dist)  # (S, h, T)
        out = xp.f64(xp.head_sums(weights, state.caches[self.value], idx))
        out /= xp.f64(xp.reduce(weights, "sum"))
        out *= self.scale
        state.write(self.out, rows, xp.rint(out.reshape(s, -1), QMAX))
