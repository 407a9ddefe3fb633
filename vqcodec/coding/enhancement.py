"""Coding an enhancement layer's coefficients (``nn.enhancement``): the integer context that
gives each coefficient's mean and scale from the code maps, and the range coding of the rounded
coefficients under the model's integer Gaussian tables.

The context network is compiled into the integer prior's operations (``qprior``), so its means
and scale indices are the same integers on every machine; they depend on the code maps alone, so
decoding the coefficients never depends on a float computation. Coefficients are coded grouped
by scale index (one table per group, in coefficient order within a group); those beyond the
tables' +-TAIL are escaped and coded after them as 16-bit magnitudes with a sign.
"""

from __future__ import annotations

import zlib

import constriction
import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..nn.enhancement import (
    COEFFICIENTS,
    FIRST_SCALE,
    LOG_SCALE_STEP,
    MEAN_STEPS,
    SCALES,
    SYMBOLS,
    TAIL,
    Enhancement,
)
from ..nn.prior import full_offsets
from .entropy import Decoder, Encoder
from .qprior.arithmetic import LOGIT_LIMIT
from .qprior.backend import Backend, move_ops
from .qprior.compiler import Builder, embedding_table, scale_of
from .qprior.state import MapState

ESCAPE = SYMBOLS - 1
#: An escaped coefficient's magnitude beyond TAIL is coded in ESCAPE_BITS bits (the encoder
#: clamps larger ones, which no image reaches: coefficients of [-1, 1] residuals are below 2^10).
ESCAPE_BITS = 16
_ESCAPED = constriction.stream.model.Uniform(1 << ESCAPE_BITS)
_SIGN = constriction.stream.model.Uniform(2)
_FULL = full_offsets(3)
#: Largest table entry a model file may hold (constriction quantizes to 24 bits).
_MAX_ENTRY = 1 << 22
#: Fixed-point factor of the mean's rescale at a file's step: round(mean * 2^(-step/8)).
_MEAN_SHIFT = 16


def _taps(conv: nn.Conv2d, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """(C_out, 9, C_in) weights of a 3x3 convolution's output channels ``start:stop`` at the taps
    of ``full_offsets(3)``, in their order."""
    w = conv.weight[start:stop]
    return torch.stack([w[:, :, 1 + dy, 1 + dx] for dy, dx in _FULL], 1)


class IntegerContext:
    """The integer version of one layer's ``CodeContext``: for a pair of code maps, each
    coefficient's mean (in 1/MEAN_STEPS steps) and scale index, identical on every machine."""

    def __init__(self, layer: Enhancement, device: torch.device | str = "cpu"):
        ctx = layer.context
        self.xp = Backend(torch.device(device), use_torch=True)
        top, top_scale = embedding_table(ctx.top)
        bottom, bottom_scale = embedding_table(ctx.bottom)
        b = Builder()
        b.scales.update({"top": top_scale, "bottom": bottom_scale})
        e = ctx.top.embedding_dim
        first = [(_taps(ctx.first)[..., :e], "top", _FULL), (_taps(ctx.first)[..., e:], "bottom", _FULL)]
        h = b.conv(first, ctx.first.bias, scale_of(ctx.r_first), "first")
        for i in range(len(ctx.convs) // 2):
            r_a, r_c, r_h = ctx.ranges[3 * i : 3 * i + 3]
            c1, c2 = ctx.convs[2 * i], ctx.convs[2 * i + 1]
            a = b.conv([(_taps(c1), b.elu(h), _FULL)], c1.bias, scale_of(r_a), "a")
            c = b.conv([(_taps(c2), b.elu(a), _FULL)], c2.bias, scale_of(r_c), "c")
            h = b.add(h, c, scale_of(r_h))
        x, out = b.elu(h), ctx.out
        n = COEFFICIENTS
        self.mean = b.conv([(_taps(out, 0, n), x, _FULL)], out.bias[:n], 1 / MEAN_STEPS, "mean", LOGIT_LIMIT)
        self.scale = b.conv([(_taps(out, n), x, _FULL)], out.bias[n:], LOG_SCALE_STEP, "scale", LOGIT_LIMIT)
        self.ops = b.ops
        move_ops(self.ops, self.xp)
        self.top, self.bottom = self.xp.array(top), self.xp.array(bottom)
        self.tables = checked_tables(layer.tables)

    def __call__(self, top: np.ndarray, bottom: np.ndarray, step: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(means, scale indices), each (H, W, 48) int64, of the (H/2, W/2) and (H, W) code maps,
        at a file's ``step``: means in 1/MEAN_STEPS of its quantisation step."""
        h, w = bottom.shape
        xp = self.xp
        state = MapState([(h, w)], xp)
        every = slice(0, state.n)
        up = np.repeat(np.repeat(np.asarray(top, np.int64), 2, 0), 2, 1).reshape(-1)
        state.write("top", every, xp.rows(self.top, xp.array(up)))
        state.write("bottom", every, xp.rows(self.bottom, xp.array(np.asarray(bottom, np.int64).reshape(-1))))
        chunk = 2048
        with xp.exact():
            for op in self.ops:
                for a in range(0, state.n, chunk):
                    op(state, slice(a, min(a + chunk, state.n)))
        mean = xp.numpy(state.read(self.mean, every)).astype(np.int64)
        scale = xp.numpy(state.read(self.scale, every)).astype(np.int64)
        if step:
            factor = round(2.0 ** (_MEAN_SHIFT - step / 8))
            mean = (mean * factor + (1 << (_MEAN_SHIFT - 1))) >> _MEAN_SHIFT
        index = np.clip(scale - FIRST_SCALE - step, 0, SCALES - 1)
        return mean.reshape(h, w, COEFFICIENTS), index.reshape(h, w, COEFFICIENTS)


def checked_tables(tables: torch.Tensor) -> np.ndarray:
    """A layer's frequency tables as float64 rows for the coder, refused unless every entry is a
    whole number in 1.._MAX_ENTRY (a model file is untrusted)."""
    t = tables.detach().cpu()
    if t.shape != (SCALES, SYMBOLS) or t.dtype != torch.int32 or int(t.min()) < 1 or int(t.max()) > _MAX_ENTRY:
        raise ModelError("enhancement layer's frequency tables are invalid")
    return t.numpy().astype(np.float64)


def quantise(y: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The integers the encoder codes: ``y`` (H, W, 48) rounded around ``mean`` (1/MEAN_STEPS steps)."""
    q = np.rint(y - mean / MEAN_STEPS)
    limit = TAIL + (1 << ESCAPE_BITS) - 1
    return np.clip(q, -limit, limit).astype(np.int64)


def dequantise(q: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The coefficients the decoder synthesises from: the integers plus their means."""
    return (q + mean / MEAN_STEPS).astype(np.float32)


def crc(q: np.ndarray) -> int:
    """CRC-32 of the integers (int32, little-endian, in their order): the record's check."""
    return zlib.crc32(np.ascontiguousarray(q, dtype="<i4").tobytes())


def _groups(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The coefficients in coding order (stable by scale index) and where each index's group starts."""
    flat = index.reshape(-1)
    order = np.argsort(flat, kind="stable")
    return order, np.searchsorted(flat[order], np.arange(SCALES + 1))


def encode(q: np.ndarray, index: np.ndarray, tables: np.ndarray) -> bytes:
    """The stream of the integers ``q`` under the scale ``index`` of each (same shapes)."""
    order, starts = _groups(index)
    values = q.reshape(-1)[order]
    symbols = np.where(np.abs(values) > TAIL, ESCAPE, values + TAIL).astype(np.int32)
    coder = Encoder()
    for s in range(SCALES):
        part = symbols[starts[s] : starts[s + 1]]
        if len(part):
            coder.encode_iid(part, constriction.stream.model.Categorical(tables[s], perfect=False))
    escaped = values[np.abs(values) > TAIL]
    coder.encode_iid(np.abs(escaped) - TAIL - 1, _ESCAPED)
    coder.encode_iid((escaped < 0).astype(np.int32), _SIGN)
    return coder.data()


def decode(data: bytes, index: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Inverse of ``encode``: the integers (shape of ``index``)."""
    order, starts = _groups(index)
    symbols = np.empty(index.size, np.int64)
    decoder = Decoder(data)
    for s in range(SCALES):
        n = int(starts[s + 1] - starts[s])
        if n:
            model = constriction.stream.model.Categorical(tables[s], perfect=False)
            symbols[starts[s] : starts[s + 1]] = decoder.decode_iid(model, n)
    values = symbols - TAIL
    escaped = symbols == ESCAPE
    count = int(escaped.sum())
    if count:
        magnitude = decoder.decode_iid(_ESCAPED, count) + TAIL + 1
        values[escaped] = np.where(decoder.decode_iid(_SIGN, count) == 1, -magnitude, magnitude)
    q = np.empty(index.size, np.int64)
    q[order] = values
    return q.reshape(index.shape)
