"""Coding an enhancement layer's coefficients (``nn.enhancement``): the integer context that
gives each coefficient's mean and scale from the code maps, and the range coding of the rounded
coefficients under the model's integer Gaussian tables.

The context network is compiled into the integer prior's operations (``qprior``), so its means
and scale indices are the same integers on every machine; they depend on the code maps (and, in
a two-pass layer's second pass, on the anchors' integers) alone, so decoding the coefficients
never depends on a float computation. Coefficients are coded grouped by scale index (one table
per group, in coefficient order within a group); those beyond the tables' +-TAIL are escaped and
coded after them as 16-bit magnitudes with a sign. A two-pass layer codes its anchors so first,
then the other blocks, in the same stream.
"""

from __future__ import annotations

import zlib

import constriction
import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..nn.enhancement import (
    ANCHOR_LIMIT,
    COEFFICIENTS,
    FIRST_SCALE,
    LOG_SCALE_STEP,
    MEAN_STEPS,
    SCALES,
    SYMBOLS,
    TAIL,
    AnchorContext,
    Enhancement,
    anchor_mask,
    step_factor,
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
    """The integer version of one layer's contexts: for a pair of code maps (and, in a two-pass
    layer's second pass, the anchors' integers), each coefficient's mean (in 1/MEAN_STEPS steps)
    and scale index, identical on every machine."""

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
        self.features = b.elu(h)
        self.mean, self.scale = _heads(b, ctx.out, self.features, "")
        self.ops = b.ops
        move_ops(self.ops, self.xp)
        self._scales = dict(b.scales)
        self.anchors = layer.anchors
        self._second: dict[int, tuple[list, str, str]] = {}
        self.top, self.bottom = self.xp.array(top), self.xp.array(bottom)
        self.tables = checked_tables(layer.tables)

    @property
    def two_pass(self) -> bool:
        return self.anchors is not None

    def first(self, top: np.ndarray, bottom: np.ndarray) -> tuple[MapState, np.ndarray, np.ndarray]:
        """The first pass over the (H/2, W/2) and (H, W) code maps: its state (which a second pass
        goes on from) and the (H, W, 48) int64 means (1/MEAN_STEPS steps) and scales at step 0
        (``rescaled`` and ``indices`` give them at a file's step)."""
        h, w = bottom.shape
        xp = self.xp
        state = MapState([(h, w)], xp)
        every = slice(0, state.n)
        up = np.repeat(np.repeat(np.asarray(top, np.int64), 2, 0), 2, 1).reshape(-1)
        state.write("top", every, xp.rows(self.top, xp.array(up)))
        state.write("bottom", every, xp.rows(self.bottom, xp.array(np.asarray(bottom, np.int64).reshape(-1))))
        return (state, *self._run(state, self.ops, self.mean, self.scale, (h, w)))

    def second(self, state: MapState, anchors: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The second pass after ``first``'s ``state``: (H, W, 48) corrections to the means (step
        0) and scales of every block from the anchors' integers ``anchors`` at ``step`` (zero at
        the other blocks)."""
        ops, mean, scale = self._second_pass(step)
        xp, every = self.xp, slice(0, state.n)
        q = np.clip(anchors, -ANCHOR_LIMIT, ANCHOR_LIMIT).reshape(state.n, COEFFICIENTS)
        state.write("anchors", every, xp.array(q.astype(np.float32)))
        state.write("magnitudes", every, xp.array(np.abs(q).astype(np.float32)))
        # The corrections are used at the other blocks only: the heads run there alone.
        others = np.flatnonzero(~anchor_mask(*anchors.shape[:2]).numpy().reshape(-1))
        return self._run(state, ops, mean, scale, anchors.shape[:2], others)

    def _run(
        self, state: MapState, ops: list, mean: str, scale: str, shape: tuple[int, int], at: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mean, scale) after ``ops`` over every position; with ``at``, the heads ``mean`` and
        ``scale`` run at those positions only (zero elsewhere)."""
        xp, n, chunk = self.xp, state.n, 2048
        every = [slice(a, min(a + chunk, n)) for a in range(0, n, chunk)]
        some = every if at is None else [xp.array(at[a : a + chunk]) for a in range(0, len(at), chunk)]
        with xp.exact():
            for op in ops:
                for rows in some if op.out in (mean, scale) else every:
                    op(state, rows)
        where, rows = (slice(0, n), slice(0, n)) if at is None else (at, xp.array(at))
        out = []
        for name in (mean, scale):
            values = np.zeros((n, COEFFICIENTS), np.int64)
            values[where] = xp.numpy(state.read(name, rows))
            out.append(values.reshape(*shape, COEFFICIENTS))
        return out[0], out[1]

    def _second_pass(self, step: int) -> tuple[list, str, str]:
        """The second pass's ops at ``step`` (its inputs are the anchors' integers at that step,
        which the network sees in the layer's own steps: the step folds into its weights)."""
        if step not in self._second:
            assert self.anchors is not None
            net: AnchorContext = self.anchors
            b = Builder()
            b.scales.update(self._scales)
            b.scales.update({"anchors": step_factor(step), "magnitudes": step_factor(step)})
            c, n = net.first.in_channels - 2 * COEFFICIENTS, COEFFICIENTS
            w = _taps(net.first)
            parts = [
                (w[..., :c], self.features, _FULL),
                (w[..., c : c + n], "anchors", _FULL),
                (w[..., c + n :], "magnitudes", _FULL),
            ]
            a = b.conv(parts, net.first.bias, scale_of(net.r_first), "second")
            m = b.conv([(_taps(net.mid), b.elu(a), _FULL)], net.mid.bias, scale_of(net.r_mid), "second_mid")
            mean, scale = _heads(b, net.out, b.elu(m), "second_")
            move_ops(b.ops, self.xp)
            self._second[step] = (b.ops, mean, scale)
        return self._second[step]


def _heads(b: Builder, out: nn.Conv2d, x: str, hint: str) -> tuple[str, str]:
    """The integer means (1/MEAN_STEPS steps) and scales (LOG_SCALE_STEP) of an output convolution."""
    n = COEFFICIENTS
    mean = b.conv([(_taps(out, 0, n), x, _FULL)], out.bias[:n], 1 / MEAN_STEPS, hint + "mean", LOGIT_LIMIT)
    scale = b.conv([(_taps(out, n), x, _FULL)], out.bias[n:], LOG_SCALE_STEP, hint + "scale", LOGIT_LIMIT)
    return mean, scale


def rescaled(mean: np.ndarray, step: int) -> np.ndarray:
    """Means at step 0 in 1/MEAN_STEPS of the quantisation step of a file's ``step``."""
    if not step:
        return mean
    factor = round(2.0 ** (_MEAN_SHIFT - step / 8))
    return (mean * factor + (1 << (_MEAN_SHIFT - 1))) >> _MEAN_SHIFT


def indices(scale: np.ndarray, step: int) -> np.ndarray:
    """The table of each coefficient: its scale (LOG_SCALE_STEP, at step 0) at a file's ``step``."""
    return np.clip(scale - FIRST_SCALE - step, 0, SCALES - 1)


def encode_layer(
    context: IntegerContext, y: np.ndarray, top: np.ndarray, bottom: np.ndarray, step: int
) -> tuple[np.ndarray, np.ndarray, bytes]:
    """(integers, means, stream) of the scaled coefficients ``y`` (H, W, 48) over the code maps,
    at a file's ``step``."""
    q, mean, parts = coded_parts(context, y, top, bottom, step)
    return q, mean, encode(parts, context.tables)


def coded_parts(
    context: IntegerContext, y: np.ndarray, top: np.ndarray, bottom: np.ndarray, step: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """(integers, means, parts) of ``encode_layer``: the parts are the (integers, scale indices)
    the stream codes one after the other (``encode``)."""
    state, mean0, scale = context.first(top, bottom)
    mean, index = rescaled(mean0, step), indices(scale, step)
    q = quantise(y, mean)
    if not context.two_pass:
        return q, mean, [(q, index)]
    anchors = anchor_mask(*q.shape[:2]).numpy()
    mean, index2 = _refined(context, state, q, anchors, mean0, scale, (mean, index), step)
    q = quantise(y, mean)  # the anchors' are as they were: their means are
    return q, mean, [(q[anchors], index[anchors]), (q[~anchors], index2[~anchors])]


def symbol_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(SCALES, SYMBOLS) how often each table's each symbol occurs in ``parts`` (``coded_parts``)."""
    counts = np.zeros((SCALES, SYMBOLS), np.int64)
    for q, index in parts:
        np.add.at(counts, (index.reshape(-1), _symbols(q.reshape(-1))), 1)
    return counts


def _symbols(values: np.ndarray) -> np.ndarray:
    """The table symbols of integers: -TAIL..TAIL as 0..2 TAIL, the others the escape."""
    return np.where(np.abs(values) > TAIL, ESCAPE, values + TAIL).astype(np.int32)


def decode_layer(
    context: IntegerContext, data: bytes, top: np.ndarray, bottom: np.ndarray, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``encode_layer``: the integers and their means, each (H, W, 48)."""
    state, mean0, scale = context.first(top, bottom)
    mean, index = rescaled(mean0, step), indices(scale, step)
    decoder = Decoder(data)
    if not context.two_pass:
        return decode(decoder, index, context.tables), mean
    anchors = anchor_mask(*index.shape[:2]).numpy()
    q = np.zeros(index.shape, np.int64)
    q[anchors] = decode(decoder, index[anchors], context.tables)
    mean, index2 = _refined(context, state, q, anchors, mean0, scale, (mean, index), step)
    q[~anchors] = decode(decoder, index2[~anchors], context.tables)
    return q, mean


def _refined(
    context: IntegerContext,
    state: MapState,
    q: np.ndarray,
    anchors: np.ndarray,
    mean0: np.ndarray,
    scale: np.ndarray,
    first: tuple[np.ndarray, np.ndarray],
    step: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Means and indices after the second pass: the anchors' the first pass's (``first``, at
    ``step``), the other blocks' from its ``mean0`` and ``scale`` (step 0) corrected from the
    anchors' integers of ``q``."""
    d_mean, d_scale = context.second(state, np.where(anchors[..., None], q, 0), step)
    others = ~anchors[..., None]
    mean = np.where(others, rescaled(mean0 + d_mean, step), first[0])
    return mean, np.where(others, indices(scale + d_scale, step), first[1])


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


def encode(parts: list[tuple[np.ndarray, np.ndarray]], tables: np.ndarray) -> bytes:
    """The stream of the integers ``q`` under the scale ``index`` of each (same shapes) of each
    (q, index) of ``parts``, one after the other."""
    coder = Encoder()
    for q, index in parts:
        order, starts = _groups(index)
        values = q.reshape(-1)[order]
        symbols = _symbols(values)
        for s in range(SCALES):
            part = symbols[starts[s] : starts[s + 1]]
            if len(part):
                coder.encode_iid(part, constriction.stream.model.Categorical(tables[s], perfect=False))
        escaped = values[np.abs(values) > TAIL]
        coder.encode_iid(np.abs(escaped) - TAIL - 1, _ESCAPED)
        coder.encode_iid((escaped < 0).astype(np.int32), _SIGN)
    return coder.data()


def decode(decoder: Decoder, index: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """The next part of ``decoder``'s stream (``encode``): the integers (shape of ``index``)."""
    order, starts = _groups(index)
    symbols = np.empty(index.size, np.int64)
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
