"""The array library the integer prior runs on (numpy or torch), and the choice between 8-bit and
float32 matrix products on the CPU, measured once per process."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch

from ...threads import one_torch_thread
from .arithmetic import (
    QMAX,
    ArrayLike,
    Rows,
)

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


def move_ops(ops: list, xp: Backend) -> None:
    """Put every tensor (or list of tensors) the compiled ``ops`` hold onto ``xp``'s arrays."""
    for op in ops:
        for key, value in vars(op).items():
            if isinstance(value, torch.Tensor):
                setattr(op, key, xp.array(value))
            elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                setattr(op, key, [xp.array(v) for v in value])


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
        #: Window attention reads one tap of every row at a time (torch on the CPU): the reads of
        #: all taps at once are many times the size of the CPU's caches (a third of the time for a
        #: one-pass encoder's rows; a GPU gathers them all at once, in one kernel).
        self.tap_by_tap = self.torch and device.type == "cpu"

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
        """A cache of 8-bit activations (int8 with ``int8``, else float32), all zero."""
        if self.torch:
            return torch.zeros(rows, cols, device=self.device, dtype=torch.int8 if self.int8 else torch.float32)
        return np.zeros((rows, cols), np.int8 if self.int8 else np.float32)

    def cache(self, rows: int, cols: int) -> ArrayLike:
        """A cache like ``zeros`` whose last two rows are zero and whose others are set only when
        written: every row a position reads has been written before (the priors are causal).
        torch on the CPU fills a fresh cache with zeros in a pass of its own (a sixth of a
        one-pass encoder's prior); numpy's and the GPU's zeros cost next to nothing."""
        if not self.torch or self.device.type != "cpu":
            return self.zeros(rows, cols)
        cache = torch.empty(rows, cols, dtype=torch.int8 if self.int8 else torch.float32)
        cache[-2:] = 0
        return cache

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

    def add_product(self, acc: ArrayLike, x: ArrayLike, w: ArrayLike) -> None:
        """``acc += x @ w`` in place, in float32."""
        if self.torch:
            acc.addmm_(x, w)
        else:
            acc += x @ w

    def int8_product(self, x: ArrayLike, w: ArrayLike) -> ArrayLike:
        """The exact int32 product of integer-valued ``x`` (S, K) in [-127, 127] and int8 ``w`` (K, N)."""
        if self.torch:
            return torch._int_mm(x.to(torch.int8), w)
        return torch._int_mm(torch.from_numpy(x.astype(np.int8, copy=False)), torch.from_numpy(w)).numpy()

    def head_dots(self, keys: ArrayLike, idx: ArrayLike, q: ArrayLike) -> ArrayLike:
        """(S, h, T) products of queries (S, h, d) with the keys at each row's T taps (rows ``idx``
        (S, T) of the cache ``keys``), head by head. Sums of integers below 2^24, so any order
        gives the same result: each library gets its fastest."""
        s, t = idx.shape
        h = q.shape[1]
        if self.tap_by_tap:
            scores = torch.empty(t, s, h)
            for j, rows in enumerate(idx.t().contiguous()):
                torch.sum(self.f32(keys.index_select(0, rows)).view(s, h, -1).mul_(q), -1, out=scores[j])
            return scores.permute(1, 2, 0)
        k = self.f32(self.rows(keys, idx)).reshape(s, t, h, -1)
        if self.torch:
            return (k * q.unsqueeze(1)).sum(-1).transpose(1, 2)
        return (k.swapaxes(1, 2) @ q[..., None])[..., 0]

    def head_sums(self, w: ArrayLike, values: ArrayLike, idx: ArrayLike) -> ArrayLike:
        """(S, h, d) sums of the values at each row's T taps (rows ``idx`` (S, T) of the cache
        ``values``) weighted by (S, h, T), head by head (exact as above; torch on a GPU runs
        fastest with every head's weights on every head's values, keeping the diagonal)."""
        s, t = idx.shape
        h = w.shape[1]
        if self.tap_by_tap:
            by_tap = w.permute(2, 0, 1).unsqueeze(-1).contiguous()  # (T, S, h, 1)
            out = torch.zeros(s, h, values.shape[1] // h)
            for j, rows in enumerate(idx.t().contiguous()):
                out.addcmul_(self.f32(values.index_select(0, rows)).view(s, h, -1), by_tap[j])
            return out
        v = self.f32(self.rows(values, idx)).reshape(s, t, h, -1)
        if self.torch:
            d = v.shape[-1]
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
