"""The integer-exact prior: every probability vqcodec codes with is computed here, and only here.

A trained ``PixelSNAIL`` becomes a list of integer operations over the positions of a code map:

- weights and activations are integers in [-127, 127], held in float32 tensors. A matrix product
  sums at most ``CHUNK`` products per float32 pass, so every partial sum is an integer below 2^24
  and exact in any order, blocking, batch shape or device; chunks are added in float64. On the
  CPU they are kept as 8-bit integers and multiplied with 32-bit sums instead: the same exact
  integers;
- scales between layers are applied with single, correctly rounded IEEE operations (float64, or
  float32 where the product is one exact float32 chunk), then rounded half to even;
- ELU, sigmoid and exp are lookup tables built once from the model's scales.

So the probabilities at a position are the same integers whether they are computed for the whole
map at once (the encoder) or a wavefront at a time (the decoder), on a CPU or a GPU. Positions are
rows of per-source caches of shape (N + 2, C), numbered in decoding order so that a wavefront is a
slice of rows; row N stays zero and stands for "outside the region", row N + 1 is scratch that
steps padded to a fixed size write to and nothing reads.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from ..defaults import DEVICE_ROW_CHUNK
from ..nn.prior import ActRange, GatedResBlock, Offsets, PixelSNAIL, WindowAttention, background, neighbours
from ..threads import one_torch_thread

ArrayLike = np.ndarray | torch.Tensor
#: Positions an op runs at: an index array, or a slice of contiguous ones.
Rows = ArrayLike | slice
Shape = tuple[int, int]

QMAX = 127
#: Longest reduction of one float32 product: 1024 * 127 * 127 < 2^24.
CHUNK = 1024
#: Longest reduction of one 8-bit product, whose int32 sums must stay exact: 133,143 * 127^2 < 2^31.
INT8_REDUCTION = ((1 << 31) - 1) // (QMAX * QMAX)
#: Logits are rounded to 1/LOGIT_STEPS nat.
LOGIT_STEPS = 64
LOGIT_LIMIT = 1 << 20
#: Probability tables are integers up to 2^PROB_BITS, at least 1, so no code is ever impossible.
PROB_BITS = 24
#: Rows an op handles at once in a single pass over a map (bounds temporary memory): on the CPU
#: few enough to stay in cache; on a GPU more, since every chunk costs each op a kernel launch
#: (8192 cuts the launches of a Kodak image's encoding with `medium` from 8,013 to 3,729, and
#: costs `high` 31 MB more memory).
ROW_CHUNK = 2048
#: Attention weights are integers up to 2^ATTN_BITS (fewer for windows so large that their
#: float32 sums would pass 2^24).
ATTN_BITS = 12
_MAX_TABLE = 1 << 20
#: Attention score of a tap outside the region: 2^26 below any real score (|score| < 2^24), so
#: past the end of any exp table (at most 2^20 entries), and exact in float32.
_OUTSIDE = -float(1 << 26)


def _table(values: list[float]) -> torch.Tensor:
    """A lookup table of integers up to 2^24, so exact in float32 (whose lookups run twice as fast
    as float64's)."""
    table = torch.tensor(values, dtype=torch.float64)
    assert table.abs().max() <= 1 << 24, "table entries must be exact in float32"
    return table.float()


def elu_table(scale: float) -> torch.Tensor:
    """ELU of every 8-bit activation at ``scale``, as activations at the same scale (index x + 127)."""
    return _table(
        [x if x >= 0 else max(-QMAX, round((math.exp(x * scale) - 1) / scale)) for x in range(-QMAX, QMAX + 1)]
    )


def sigmoid_table(scale: float) -> torch.Tensor:
    """127 * sigmoid of every 8-bit activation at ``scale`` (index x + 127)."""
    return _table([round(QMAX / (1 + math.exp(-x * scale))) for x in range(-QMAX, QMAX + 1)])


def exp_table(step: float, bits: int, floor: int) -> torch.Tensor:
    """round(2^bits * exp(-d * step)) for d = 0, 1, ... until it reaches ``floor`` (at most 2^20 entries)."""
    size = min(_MAX_TABLE, math.ceil((bits + 1) * math.log(2) / step) + 1)
    return _table([max(floor, round(2.0**bits * math.exp(-d * step))) for d in range(size)])


#: The product that decides between 8-bit and float32 products: a wavefront's rows by one layer's
#: inputs and outputs (a decoder step multiplies tens of rows; the encoder thousands, where 8-bit
#: products gain more still).
_PROBE_SHAPE = (64, 256, 128)


def _best_seconds(run: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of ``repeats`` timed calls of ``run``, after one untimed call."""
    run()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _probe_matrices() -> tuple[torch.Tensor, torch.Tensor]:
    """Random int8 matrices of ``_PROBE_SHAPE`` with rows and columns of all 127 and all -127:
    the sums an 8-bit kernel without 8-bit dot products gets wrong, where it adds pairs of
    products in 16 bits and saturates (oneDNN's on CPUs without VNNI)."""
    rows, k, n = _PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-QMAX, QMAX + 1, (rows, k), dtype=torch.int8, generator=generator)
    w = torch.randint(-QMAX, QMAX + 1, (k, n), dtype=torch.int8, generator=generator)
    a[0], a[1], w[:, 0], w[:, 1] = QMAX, -QMAX, QMAX, -QMAX
    return a, w


def _exact_int8_products(a: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether this torch multiplies int8 matrices on the CPU (``torch._int_mm``; older releases
    have it for CUDA only), exactly: ``a @ w`` against the same product in float64."""
    try:
        return bool(torch.equal(torch._int_mm(a, w).double(), a.double() @ w.double()))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@lru_cache(maxsize=1)
def cpu_products() -> str:
    """The matrix products of the integer prior on the CPU: "int8" where this torch multiplies
    8-bit matrices exactly and at least as fast as float32, else "float32". Both give the same
    integers, so this is a matter of speed alone, measured once per process on one thread (a few
    milliseconds): where the CPU has no 8-bit dot products (VNNI), torch's int8 product is a plain
    loop, tens of times slower than float32, or a kernel that saturates."""
    a, w = _probe_matrices()
    if not _exact_int8_products(a, w):
        return "float32"
    a32, w32 = a.float(), w.float()
    with one_torch_thread():  # the kernels' speed, not how several threads share a busy machine
        int8 = _best_seconds(lambda: torch._int_mm(a, w))
        return "int8" if int8 <= _best_seconds(lambda: a32 @ w32) else "float32"


class Backend:
    """The array library the integer prior runs on: numpy (lowest per-call overhead, for small
    steps on the CPU) or torch (on a GPU, or for large one-pass work on the CPU). Both carry out
    the same IEEE operations, so they give the same integers."""

    def __init__(self, device: torch.device, use_torch: bool | None = None):
        self.device = device
        self.torch = device.type != "cpu" if use_torch is None else use_torch
        #: Activations cached as 8-bit integers and matrix products as 8-bit integer ones, by
        #: torch, where those are the faster products (on the CPU: four to six times as fast as
        #: float32 where the CPU has 8-bit dot products, and a quarter of the memory traffic; a GPU
        #: keeps float32, fast enough there).
        self.int8 = device.type == "cpu" and cpu_products() == "int8"

    def array(self, t: torch.Tensor | np.ndarray) -> ArrayLike:
        """``t`` in this backend's array type, on its device."""
        if self.torch:
            return torch.as_tensor(t, device=self.device)
        return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)

    def index(self, x: ArrayLike) -> ArrayLike:
        """Integer positions or codes as this backend's 64-bit index array, on its device."""
        if self.torch:
            return torch.as_tensor(x, device=self.device).long()
        return np.asarray(x, dtype=np.int64)

    def zeros(self, rows: int, cols: int) -> ArrayLike:
        """A cache of 8-bit activations (int8 with ``int8``, else float32)."""
        if self.torch:
            return torch.zeros(rows, cols, device=self.device, dtype=torch.int8 if self.int8 else torch.float32)
        return np.zeros((rows, cols), np.int8 if self.int8 else np.float32)

    def f32(self, x: ArrayLike) -> ArrayLike:
        return x.float() if self.torch else x.astype(np.float32, copy=False)

    def f64(self, x: ArrayLike) -> ArrayLike:
        return x.double() if self.torch else x.astype(np.float64)

    def rint(self, x: ArrayLike, limit: float) -> ArrayLike:
        """Round half to even, then clamp to [-limit, limit], in place (``x`` must be a temporary)."""
        if self.torch:
            return x.round_().clamp_(-limit, limit)
        return np.clip(np.rint(x, out=x), -limit, limit, out=x)

    def clip_max(self, x: ArrayLike, limit: float) -> ArrayLike:
        """min(x, limit), in place."""
        return x.clamp_(max=limit) if self.torch else np.minimum(x, limit, out=x)

    def take(self, table: ArrayLike, x: ArrayLike, shift: int = 0) -> ArrayLike:
        """``table[x + shift]`` for a 1-D table and integer-valued ``x`` of any shape and type
        (np.take with native integers is about twice as fast as indexing; torch's index_select
        takes 32-bit indices, a quarter faster than its take)."""
        if self.torch:
            return table.index_select(0, (x.int() + shift).reshape(-1)).reshape(x.shape)
        return np.take(table, x.astype(np.intp) + shift)

    def pick(self, x: ArrayLike, columns: ArrayLike) -> ArrayLike:
        """``x[i, columns[i, j]]`` for a 2-D ``x`` and (S, k) integer ``columns``."""
        if self.torch:
            return torch.take_along_dim(x, self.index(columns), 1)
        return np.take_along_axis(x, np.asarray(columns, dtype=np.intp), 1)

    def rows(self, x: ArrayLike, idx: Rows) -> ArrayLike:
        """``x[idx]`` for row indices of any shape, or a slice. A take along the first axis runs two
        to three times as fast as indexing, on both libraries."""
        if isinstance(idx, slice):
            return x[idx]
        if self.torch:
            return x.index_select(0, idx.reshape(-1)).reshape(*idx.shape, *x.shape[1:])
        return np.take(x, idx, axis=0)

    def put_rows(self, x: ArrayLike, idx: Rows, values: ArrayLike) -> None:
        """``x[idx] = values`` for a 1-D index array or a slice, cast to ``x``'s type on the way
        (integer values, so exactly; one pass instead of a cast and a copy)."""
        if self.torch and not isinstance(idx, slice):
            x.index_copy_(0, idx, values.to(x.dtype))
        else:
            x[idx] = values

    def int8_product(self, x: ArrayLike, w: ArrayLike) -> ArrayLike:
        """The exact int32 product of integer-valued ``x`` (S, K) in [-127, 127] and int8 ``w`` (K, N)."""
        if self.torch:
            return torch._int_mm(x.to(torch.int8), w)
        return torch._int_mm(torch.from_numpy(x.astype(np.int8, copy=False)), torch.from_numpy(w)).numpy()

    def head_dots(self, k: ArrayLike, q: ArrayLike) -> ArrayLike:
        """(S, h, T) products of keys (S, T, h, d) with queries (S, h, d), head by head. Sums of
        integers below 2^24, so any order gives the same result: each library gets its fastest."""
        if self.torch:
            return (k * q.unsqueeze(1)).sum(-1).transpose(1, 2)
        return (k.swapaxes(1, 2) @ q[..., None])[..., 0]

    def head_sums(self, w: ArrayLike, v: ArrayLike) -> ArrayLike:
        """(S, h, d) sums of values (S, T, h, d) weighted by (S, h, T), head by head (exact as above;
        torch runs fastest with every head's weights on every head's values, keeping the diagonal)."""
        if self.torch:
            s, t, h, d = v.shape
            return torch.diagonal((w @ v.reshape(s, t, h * d)).reshape(s, h, h, d), dim1=1, dim2=2).transpose(1, 2)
        return (w[:, :, None, :] @ v.swapaxes(1, 2))[:, :, 0, :]

    def where(self, cond: ArrayLike, a: ArrayLike, b: float) -> ArrayLike:
        return torch.where(cond, a, b) if self.torch else np.where(cond, a, b)

    def reduce(self, x: ArrayLike, how: str) -> ArrayLike:
        """``how`` ("max" or "sum") over the last axis, keeping it."""
        if self.torch:
            return x.amax(-1, keepdim=True) if how == "max" else x.sum(-1, keepdim=True)
        return x.max(-1, keepdims=True) if how == "max" else x.sum(-1, keepdims=True)

    def concat(self, parts: list[ArrayLike]) -> ArrayLike:
        return torch.cat(parts) if self.torch else np.concatenate(parts)

    def numpy(self, x: ArrayLike) -> np.ndarray:
        return x.cpu().numpy() if self.torch else x

    @contextmanager
    def exact(self) -> Iterator[None]:
        """Within the block, torch's float32 products are true float32 (no TF32 or bfloat16)."""
        if not self.torch:
            yield
            return
        precision, tf32 = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(precision)
            torch.backends.cuda.matmul.allow_tf32 = tf32


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


def _local_coords(shapes: list[Shape]) -> tuple[np.ndarray, np.ndarray]:
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
            r, c = _local_coords(shapes)
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
            self.caches[name] = self.xp.zeros(self.n + 2, values.shape[1])
        self.xp.put_rows(self.caches[name], rows, values)

    def read(self, name: str, rows: Rows) -> ArrayLike:
        """The values of ``name`` at ``rows`` (indices of any shape, or a slice)."""
        return self.xp.rows(self.caches[name], rows)

    def gather(self, name: str, offsets: Offsets, rows: Rows) -> ArrayLike:
        """(S, T * C) values of ``name`` at each row's neighbours, tap-major."""
        if offsets == ((0, 0),):
            return self.read(name, rows)
        taps = self.read(name, self.neighbours(offsets, rows))
        return taps.reshape(taps.shape[0], -1)


@dataclass
class QConv:
    """y = round(sum(w * x) * scale + offset), clamped, over the input segments.

    Each segment (source, taps) owns a block of weight rows; every float32 product covers at most
    ``CHUNK`` rows, and products are summed in float64 (float32 + float64 promotes exactly). The
    rescale is float32 when there is a single product, float64 otherwise: either way the same
    correctly rounded IEEE operations on every device. A backend with 8-bit products
    (``Backend.int8``) sums each segment's whole block in int32 instead, to the same integers.
    """

    out: str
    segments: list[tuple[str, Offsets]]
    weights: list[ArrayLike]  # per segment and chunk: (rows <= CHUNK, C_out) integers
    int8_weights: list[ArrayLike] | None  # per segment: (rows, C_out) int8; None if sums could overflow
    scale: ArrayLike  # (C_out,) float64
    offset: ArrayLike  # (C_out,) float64
    limit: int = QMAX

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
        acc, weights = None, iter(self.weights)
        for name, offsets in self.segments:
            x = state.gather(name, offsets, rows)
            for a in range(0, x.shape[1], CHUNK):
                part = xp.f32(x[:, a : a + CHUNK]) @ next(weights)
                acc = part if acc is None else xp.f64(acc) + part
        return acc

    def __call__(self, state: MapState, rows: Rows) -> None:
        state.write(self.out, rows, self.compute(state, rows))


@dataclass
class Lut:
    """Elementwise lookup table over 8-bit activations."""

    out: str
    src: str
    table: ArrayLike

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

    def __call__(self, state: MapState, rows: Rows) -> None:
        xp, h = state.xp, self.heads
        idx = state.neighbours(self.offsets, rows)
        s, t = idx.shape
        q = xp.f32(state.read(self.query, rows)).reshape(s, h, -1)
        k = xp.f32(state.read(self.key, idx)).reshape(s, t, h, -1)
        v = xp.f32(state.read(self.value, idx)).reshape(s, t, h, -1)
        scores = xp.head_dots(k, q)  # exact: d * 127^2 < 2^24
        # Taps outside the region score _OUTSIDE, so far below the best tap that they fall off the
        # exp table's end, whose last entry is 0. With no tap inside, all weigh alike, but all
        # read the zero row: the output is 0 either way, and the sum of weights is never 0.
        scores = xp.where((idx < state.n).reshape(s, 1, t), scores, _OUTSIDE)
        dist = xp.clip_max(xp.reduce(scores, "max") - scores, len(self.exp) - 1)
        # Integer weights below 2^bits with T * 2^bits * 127 < 2^24 keep the float32 sums exact.
        weights = xp.take(self.exp, dist)  # (S, h, T)
        out = xp.f64(xp.head_sums(weights, v))
        out /= xp.f64(xp.reduce(weights, "sum"))
        out *= self.scale
        state.write(self.out, rows, xp.rint(out.reshape(s, -1), QMAX))


Op = Callable[[MapState, Rows], None]


class _Builder:
    """Turns the float modules into ops, tracking every source's scale (real value per integer step)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.scales: dict[str, float] = {}
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self._count}:{hint}"

    def elu(self, src: str) -> str:
        out = f"{src}.elu"
        if out not in self.scales:
            self.ops.append(Lut(out, src, elu_table(self.scales[src])))
            self.scales[out] = self.scales[src]
        return out

    def conv(
        self,
        parts: list[tuple[torch.Tensor, str, Offsets]],
        bias: torch.Tensor | None,
        out_scale: float,
        hint: str,
        limit: int = QMAX,
    ) -> str:
        """Quantize a convolution over input ``parts`` (tap weights (C_out, T, C_in), source, offsets)."""
        folded = torch.cat([w.detach().double().flatten(1) * self.scales[src] for w, src, _ in parts], 1)
        w_scale = folded.abs().amax(1) / QMAX
        w_scale = torch.where(w_scale > 0, w_scale, torch.ones_like(w_scale))
        weight = torch.round(folded / w_scale.unsqueeze(1)).clamp_(-QMAX, QMAX)
        offset = bias.detach().double() / out_scale if bias is not None else torch.zeros_like(w_scale)
        out = self.name(hint)
        segments = [(src, offsets) for _, src, offsets in parts]
        blocks, int8_blocks, start = [], [], 0
        for w, _, _ in parts:
            seg = weight[:, start : start + w[0].numel()].t()
            blocks += [seg[a : a + CHUNK].float().contiguous() for a in range(0, seg.shape[0], CHUNK)]
            int8_blocks.append(seg.to(torch.int8).contiguous())
            start += w[0].numel()
        scale = w_scale / out_scale
        if len(blocks) == 1:  # the product is an exact float32 integer: rescale in float32, faster
            scale, offset = scale.float(), offset.float()
        int8_weights = int8_blocks if weight.shape[1] <= INT8_REDUCTION else None
        self.ops.append(QConv(out, segments, blocks, int8_weights, scale, offset, limit))
        self.scales[out] = out_scale
        return out

    def gated(self, block: GatedResBlock, x: str, aux: str | None = None, cond: str | None = None) -> str:
        parts = [(block.conv1.tap_weights(), self.elu(x), block.conv1.offsets)]
        if block.aux is not None:
            parts.append((block.aux.tap_weights(), self.elu(aux), ((0, 0),)))
        a = self.conv(parts, block.conv1.bias, _scale(block.r_a), "a")
        parts = [(block.conv2.tap_weights(), self.elu(a), block.conv2.offsets)]
        if block.cond is not None:
            parts.append((block.cond.tap_weights(), cond, ((0, 0),)))
        g = self.conv(parts, block.conv2.bias, _scale(block.r_g), "g")
        u = self.name("u")
        self.ops.append(Glu(u, g, sigmoid_table(self.scales[g]), self.scales[g] / QMAX / _scale(block.r_u)))
        self.scales[u] = _scale(block.r_u)
        return self.add(x, u, _scale(block.r_out))

    def add(self, a: str, b: str, out_scale: float) -> str:
        out = self.name("sum")
        self.ops.append(Add(out, a, b, self.scales[a] / out_scale, self.scales[b] / out_scale))
        self.scales[out] = out_scale
        return out

    def attention(self, attn: WindowAttention, x: str, h: str, bg: str) -> str:
        cq = attn.query.tap_weights()
        ck, cv = attn.key.tap_weights(), attn.value.tap_weights()
        n_h = cq.shape[2] - 2
        q = self.conv(
            [(cq[..., :n_h], h, ((0, 0),)), (cq[..., n_h:], bg, ((0, 0),))], attn.query.bias, _scale(attn.r_q), "q"
        )
        kv = []
        for w, bias, r in ((ck, attn.key.bias, attn.r_k), (cv, attn.value.bias, attn.r_v)):
            splits = [
                (w[..., :n_h], x, ((0, 0),)),
                (w[..., n_h : 2 * n_h], h, ((0, 0),)),
                (w[..., 2 * n_h :], bg, ((0, 0),)),
            ]
            kv.append(self.conv(splits, bias, _scale(r), "kv"))
        d = cq.shape[0] // attn.heads
        step = self.scales[q] * self.scales[kv[0]] / math.sqrt(d)
        out = self.name("attn")
        keys = len(attn.offsets)
        bits = min(ATTN_BITS, int(math.log2((1 << 24) / (keys * QMAX))))
        table = exp_table(step, bits, 0)
        if table[-1] != 0:  # a table cut short at _MAX_TABLE entries: outside taps need a 0 to land on
            table = torch.cat([table, table.new_zeros(1)])
        self.ops.append(
            Attention(out, q, kv[0], kv[1], attn.offsets, attn.heads, table, self.scales[kv[1]] / _scale(attn.r_out))
        )
        self.scales[out] = _scale(attn.r_out)
        return out


@lru_cache(maxsize=64)
def _background_rows(h: int, w: int) -> np.ndarray:
    """The 8-bit positional input of an h x w region, one row per position (regions of a batch
    share a few shapes: computed once per shape)."""
    return np.rint(background(h, w).flatten(1).t().numpy() * QMAX)


def _scale(r: ActRange) -> float:
    return float(r.absmax) / QMAX


def _embedding_table(embed: nn.Embedding) -> tuple[torch.Tensor, float]:
    w = embed.weight.detach().double()
    scale = float(w.abs().max()) / QMAX or 1.0
    return torch.round(w / scale).clamp_(-QMAX, QMAX).float(), scale


class IntegerPrior:
    """The integer version of one ``PixelSNAIL``: probabilities for any set of positions of a map.

    Positions, codes and probabilities go in and out as numpy arrays; the work runs on
    ``device`` (numpy on the CPU unless ``use_torch``).
    """

    def __init__(self, prior: PixelSNAIL, device: torch.device | str = "cpu", use_torch: bool | None = None):
        self.xp = Backend(torch.device(device), use_torch)
        self.codes = prior.config.codes
        #: Wavefront slope: positions with c + r * slope == t depend only on earlier wavefronts.
        self.slope = prior.right_reach + 1
        embed, emb_scale = _embedding_table(prior.embed)
        b = _Builder()
        b.scales.update({"emb": emb_scale, "bg": 1.0 / QMAX})
        cond_embed = None
        self.cond_ops: list[Op] = []
        if prior.cond_net is not None:
            cond_embed, b.scales["cond_emb"] = _embedding_table(prior.cond_net.embed)
            self.cond_out = self._cond_net(b, prior)
            self.cond_ops, b.ops = b.ops, []
            b.scales["cond"] = b.scales[self.cond_out]
        x = b.conv(
            [(prior.input.tap_weights(), "emb", prior.input.offsets)], prior.input.bias, _scale(prior.r_input), "x"
        )
        for block in prior.blocks:
            h = x
            for res in block.res:
                h = b.gated(res, h, cond="cond" if prior.cond_net is not None else None)
            attn = b.attention(block.attn, x, h, "bg")
            x = b.gated(block.out, h, aux=attn)
        head = prior.head
        b.conv([(head.tap_weights(), b.elu(x), ((0, 0),))], head.bias, 1.0 / LOGIT_STEPS, "logits", LOGIT_LIMIT)
        *self.ops, self.head = b.ops
        for op in [*self.cond_ops, *self.ops, self.head]:
            for key, value in vars(op).items():
                if isinstance(value, torch.Tensor):
                    setattr(op, key, self.xp.array(value))
                elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                    setattr(op, key, [self.xp.array(v) for v in value])
        self.embed = self.xp.array(embed)
        self.cond_embed = self.xp.array(cond_embed) if cond_embed is not None else None
        self.probs = self.xp.array(exp_table(1.0 / LOGIT_STEPS, PROB_BITS, 1))

    @staticmethod
    def _cond_net(b: _Builder, prior: PixelSNAIL) -> str:
        net = prior.cond_net
        h = "cond_emb"
        for i in range(len(net.convs) // 2):
            r_a, r_c, r_h = net.ranges[3 * i : 3 * i + 3]
            c1, c2 = net.convs[2 * i], net.convs[2 * i + 1]
            a = b.conv([(c1.tap_weights(), b.elu(h), c1.offsets)], c1.bias, _scale(r_a), "cond_a")
            c = b.conv([(c2.tap_weights(), b.elu(a), c2.offsets)], c2.bias, _scale(r_c), "cond_c")
            h = b.add(h, c, _scale(r_h))
        return h

    def start(self, shapes: list[Shape], cond_codes: list[np.ndarray] | None = None) -> MapState:
        """Fresh caches for a batch of regions of these (h, w) shapes; the bottom prior also needs
        the (h/2, w/2) top codes of each region."""
        xp = self.xp
        state = MapState(shapes, xp, self.slope)
        every = slice(0, state.n)
        bg = np.concatenate([_background_rows(h, w) for h, w in shapes])
        state.write("bg", every, xp.array(bg[state.order]))
        state.write("emb", every, xp.zeros(state.n, self.embed.shape[1]))
        if self.cond_ops:
            if cond_codes is None:
                raise ValueError("this prior is conditional: give it the top code map")
            state.write("cond", every, self._condition(state, cond_codes))
        return state

    def _condition(self, state: MapState, cond_codes: list[np.ndarray]) -> ArrayLike:
        """Conditioning features of every position of ``state`` from its regions' top codes."""
        top_shapes = [c.shape for c in cond_codes]
        if [(2 * h, 2 * w) for h, w in top_shapes] != list(state.shapes):
            raise ValueError(f"top regions {top_shapes} do not match bottom regions {state.shapes}")
        top = MapState(top_shapes, self.xp)
        every = slice(0, top.n)
        flat = np.concatenate([c.reshape(-1) for c in cond_codes]).astype(np.int64)
        top.write("cond_emb", every, self.xp.rows(self.cond_embed, self.xp.array(flat)))
        with self.xp.exact():
            for op in self.cond_ops:
                op(top, every)
        r, c = _local_coords(state.shapes)
        region = np.repeat(np.arange(len(state.shapes)), [h * w for h, w in state.shapes])
        widths = np.array([w for _, w in top_shapes])
        upsample = top.bases[region] + (r // 2) * widths[region] + c // 2
        return top.read(self.cond_out, self.xp.array(upsample[state.order]))

    def set_codes(self, state: MapState, rows: Rows, codes: ArrayLike) -> None:
        """Record the codes at ``rows`` (known to the encoder, just decoded by the decoder)."""
        xp = self.xp
        state.write("emb", rows if isinstance(rows, slice) else xp.index(rows), xp.rows(self.embed, xp.index(codes)))

    def probabilities(self, state: MapState, rows: Rows) -> np.ndarray:
        """(len(rows), K) integer probability rows (float32) for positions whose context is set."""
        return self.xp.numpy(self.device_probabilities(state, rows))

    def device_probabilities(self, state: MapState, rows: Rows) -> ArrayLike:
        """``probabilities`` left on the backend's device; ``rows`` may be there already. No step
        waits for the device, so a CUDA graph can record it."""
        self.prepare(state, rows)
        return self._head_tables(state, rows)

    def prepare(self, state: MapState, rows: Rows | None = None) -> None:
        """Run every layer but the head at ``rows``, whose context must be set; by default at
        every position (an encoder, which knows every code: contiguous rows read and write the
        caches as slices instead of gathers and scatters)."""
        xp = self.xp
        # Each op runs over a chunk of rows at a time, which bounds its temporaries; an op's rows
        # depend only on earlier ops, so the split does not change any result.
        chunks = self._row_chunks(rows if rows is not None else slice(0, state.n))
        with xp.exact():
            for op in self.ops:
                for chunk in chunks:
                    op(state, chunk)

    def tables(self, state: MapState, rows: Rows) -> np.ndarray:
        """The probability rows of ``prepare``d positions. An encoder asks for them a slice of rows
        at a time, since a whole map's tables take positions x K x 4 bytes."""
        return np.ascontiguousarray(self.xp.numpy(self._head_tables(state, rows)))

    def relative_bits(self, state: MapState, rows: Rows, codes: np.ndarray) -> np.ndarray:
        """(S, k) prices in bits of ``codes`` (S, k) at ``prepare``d ``rows``, each row less a
        constant of its own (the log of its probabilities' sum): they rank a position's codes as
        their probabilities do, for a fraction of the cost of the tables (k logits per row, not
        K, and no normalisation). Only the encoder's choices use them; codes are coded with
        ``tables``."""
        xp = self.xp
        with xp.exact():
            logits = self.head.compute_columns(state, rows, xp.array(codes))
        return xp.numpy(logits).astype(np.float32) / np.float32(-LOGIT_STEPS * math.log(2))

    def _head_tables(self, state: MapState, rows: Rows) -> ArrayLike:
        xp = self.xp
        with xp.exact():
            tables = [self._table(self.head.compute(state, chunk)) for chunk in self._row_chunks(rows)]
        return tables[0] if len(tables) == 1 else xp.concat(tables)

    def _row_chunks(self, rows: Rows) -> list[Rows]:
        n = self.row_chunk
        if isinstance(rows, slice):
            return [slice(a, min(a + n, rows.stop)) for a in range(rows.start, rows.stop, n)]
        return [self.xp.array(rows[a : a + n]) for a in range(0, len(rows), n)]

    @property
    def row_chunk(self) -> int:
        """Rows an op handles at once (``ROW_CHUNK`` on the CPU, ``DEVICE_ROW_CHUNK`` on a GPU)."""
        return ROW_CHUNK if self.xp.device.type == "cpu" else DEVICE_ROW_CHUNK

    def _table(self, logits: ArrayLike) -> ArrayLike:
        """Probability rows from integer logits (1/LOGIT_STEPS nat): 2^PROB_BITS exp(-distance to the max)."""
        xp = self.xp
        dist = xp.f32(xp.reduce(logits, "max") - logits)  # integers below 2^22: exact
        return xp.take(self.probs, xp.clip_max(dist, len(self.probs) - 1))

    @contextmanager
    def stepping(self) -> Iterator[None]:
        """Context for wavefront steps: their small products run on one thread (BLAS's and
        torch's), since threads spinning up for each tiny product are slower, and much slower when
        the cores are busy (docs/design.md, "Constants")."""
        if self.xp.torch:
            yield
            return
        with one_torch_thread(), threadpool_limits(limits=1, user_api="blas"):
            yield
