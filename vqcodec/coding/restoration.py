"""Restoration filter: a small linear filter the encoder fits to each image and writes in the file,
and the decoder applies to what it synthesises.

The synthesis is trained for every image at once; the filter adapts it to one. Each output
channel is the decoded one plus a weighted sum of features of the decoded RGB image: symmetric
second differences ``y(p + o) + y(p - o) - 2 y(p)`` over a diamond of offsets ``o`` (its own
channel's, or every channel's), the three channels less mid-grey (a colour matrix) and a constant.
The weights are the least-squares fit to the original, quantized, and Exp-Golomb coded in a few
dozen to a few hundred bytes; the encoder picks the shape whose PSNR gain is worth most more than
its bytes, or none. Like the rest of the synthesis, the filter runs in floating point: it changes
pixels, never code maps, so the content checksum still checks the decoder's probabilities.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import FormatError

CHANNELS = 3
#: Mid-grey, subtracted from the colour features so the colour matrix needs little precision.
GREY = 128.0
#: Quantization steps of the weights of second differences, of the colour matrix and of the
#: constant (in 8-bit levels): finer ones gained nothing on validation photos.
STEPS = (2.0**-8, 2.0**-9, 2.0**-2)
#: A dB of PSNR is worth about this share of a file's bits (the slope of the ``--quality`` ladder
#: on Kodak, docs/design.md): the exchange rate at which the encoder weighs the filter's gain
#: against its bytes...
DB_WORTH = (0.5, 0.25)
#: ... at these rates (bits per pixel) and below or above them; in between, log-linearly.
DB_WORTH_AT = (0.1, 0.5)
#: Rows of pixels handled at a time, so memory stays small whatever the image size.
ROWS = 64
#: Longest Exp-Golomb prefix a reader accepts (larger weights are never written).
MAX_PREFIX = 24
#: Ridge of the fit, in squared levels per fitted pixel: a feature that varies much less than
#: this over the image (a saturated channel of a flat colour) gets no weight to speak of, where
#: the bare least-squares fit gave it weights in the thousands that turned the few odd pixels of
#: flat images into worse ones (the values tried: docs/design.md, "Constants").
RIDGE = 0.01


def _diamond(radius: int) -> tuple[tuple[int, int], ...]:
    """Half of the offsets within ``radius`` (city-block): one of each symmetric pair."""
    return tuple(
        (dy, dx)
        for dy in range(radius + 1)
        for dx in range(-radius, radius + 1)
        if (dy > 0 or dx > 0) and abs(dy) + abs(dx) <= radius
    )


@dataclass(frozen=True)
class Shape:
    """Which features a filter uses: second differences over a diamond of ``radius`` (0: none),
    of every channel (``cross``) or only the output's own."""

    radius: int
    cross: bool

    @cached_property
    def offsets(self) -> tuple[tuple[int, int], ...]:
        return _diamond(self.radius)

    @cached_property
    def features(self) -> int:
        """Features of the full set (every channel's differences, colours, constant)."""
        return CHANNELS * len(self.offsets) + CHANNELS + 1

    def used(self, channel: int) -> np.ndarray:
        """Indices of the features that output ``channel`` weighs."""
        diffs = [
            CHANNELS * i + c for i in range(len(self.offsets)) for c in range(CHANNELS) if self.cross or c == channel
        ]
        rest = range(CHANNELS * len(self.offsets), self.features)
        return np.array([*diffs, *rest])

    @cached_property
    def differences(self) -> int:
        """How many second differences each output channel weighs (its weights before the colours')."""
        return len(self.offsets) * (CHANNELS if self.cross else 1)

    def describe(self) -> str:
        """In words, for ``vqcodec info``."""
        weights = CHANNELS * (self.differences + CHANNELS + 1)
        if not self.radius:
            return f"colour matrix and constant, {weights} weights"
        whose = "every channel's" if self.cross else "own channel's"
        return f"{whose} second differences within {self.radius} pixels, colour matrix, constant: {weights} weights"

    @cached_property
    def steps(self) -> np.ndarray:
        """The quantization step of each weight of an output channel."""
        return np.array([STEPS[0]] * self.differences + [STEPS[1]] * CHANNELS + [STEPS[2]])


#: The shapes a file may name (by index + 1), from the fewest weights (12) to the most (192).
SHAPES = (Shape(0, False), Shape(1, False), Shape(2, False), Shape(2, True), Shape(3, True), Shape(4, True))


@dataclass(frozen=True)
class Filter:
    """A fitted filter: its shape and, per output channel, the quantized weights of its features."""

    shape: int  # index into SHAPES
    weights: tuple[np.ndarray, ...]  # int64, one per channel, of len(SHAPES[shape].used(c))

    def matrix(self) -> np.ndarray:
        """(features, CHANNELS) float weights of the full feature set."""
        shape = SHAPES[self.shape]
        w = np.zeros((shape.features, CHANNELS))
        for c, q in enumerate(self.weights):
            w[shape.used(c), c] = q * shape.steps
        return w


def _features(rgb: np.ndarray, shape: Shape, every: int = 1) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, (features, pixels) float32) for bands of ``ROWS`` rows of a (H, W, 3) image (every
    ``every``-th band). Features are rows, so each is written as one contiguous block."""
    r = shape.radius
    padded = np.pad(rgb, ((r, r), (r, r), (0, 0)), mode="edge").transpose(2, 0, 1).astype(np.float32)
    h, w = rgb.shape[:2]
    diffs = CHANNELS * len(shape.offsets)
    for top in range(0, h, ROWS * every):
        n = min(ROWS, h - top)
        f = np.empty((shape.features, n, w), np.float32)
        centre = padded[:, top + r : top + r + n, r : r + w]
        twice = 2 * centre
        for i, (dy, dx) in enumerate(shape.offsets):
            out = f[CHANNELS * i : CHANNELS * (i + 1)]
            np.add(padded[:, top + r + dy : top + r + dy + n, r + dx : r + dx + w],
                   padded[:, top + r - dy : top + r - dy + n, r - dx : r - dx + w], out=out)  # fmt: skip
            out -= twice
        np.subtract(centre, GREY, out=f[diffs : diffs + CHANNELS])
        f[-1] = 1.0
        yield slice(top, top + n), f.reshape(shape.features, n * w)


def _kernel(filt: Filter) -> tuple[np.ndarray, np.ndarray]:
    """The filter as a convolution of the decoded image: (3, 3, k, k) weights and (3,) biases
    (float32), computing the correction each pixel gets."""
    shape = SHAPES[filt.shape]
    w = filt.matrix()
    r = shape.radius
    kernel = np.zeros((CHANNELS, CHANNELS, 2 * r + 1, 2 * r + 1))
    for i, (dy, dx) in enumerate(shape.offsets):
        for ch in range(CHANNELS):
            weight = w[CHANNELS * i + ch]  # (output channels,)
            kernel[:, ch, r + dy, r + dx] += weight
            kernel[:, ch, r - dy, r - dx] += weight
            kernel[:, ch, r, r] -= 2 * weight
    colour = w[-CHANNELS - 1 : -1]  # (input channel, output channel)
    kernel[:, :, r, r] += colour.T
    bias = w[-1] - GREY * colour.sum(0)
    return kernel.astype(np.float32), bias.astype(np.float32)


def apply(decoded: np.ndarray, filt: Filter, rows: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8: ``decoded`` filtered (in bands of rows, so memory stays small); with
    ``rows`` (first, end), only the bands that hold them (the other rows are left as they were),
    each computed exactly as when the whole image is filtered."""
    import torch  # here, not above: reading a filter's record (``vqcodec info``) needs no torch

    kernel, bias = (torch.from_numpy(a) for a in _kernel(filt))
    r = SHAPES[filt.shape].radius
    h = decoded.shape[0]
    padded = torch.from_numpy(np.pad(decoded, ((r, r), (r, r), (0, 0)), mode="edge")).permute(2, 0, 1)
    out = decoded.copy() if rows is not None else np.empty_like(decoded)
    band = 4 * ROWS
    first, end = rows if rows is not None else (0, h)
    with torch.no_grad():
        for top in range(first // band * band, min(end, h), band):
            n = min(band, h - top)
            x = padded[:, top : top + n + 2 * r].float().unsqueeze(0)
            y = x[:, :, r : r + n, r : x.shape[3] - r] + torch.nn.functional.conv2d(x, kernel, bias)
            out[top : top + n] = y[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out


#: Pixels the fit reads, about: every band of rows up to this many, then one band in two, three...
#: (fits to fewer bands lose gain on small photos: docs/design.md, "Constants").
FIT_PIXELS = 1 << 18


def fit(original: np.ndarray, decoded: np.ndarray, file_bytes: int) -> Filter | None:
    """The filter worth most for a file of ``file_bytes`` (the code maps') that turns ``decoded``
    into ``original`` (both (H, W, 3) uint8), or None where none gains more than it costs. On one
    BLAS thread: its sums, and so the filter, are the same whatever the threads (and its systems
    of at most 64 unknowns are solved faster so)."""
    with threadpool_limits(limits=1, user_api="blas"):
        largest = SHAPES[-1]
        gram = np.zeros((largest.features, largest.features))
        cross = np.zeros((largest.features, CHANNELS))
        energy = np.zeros(CHANNELS)
        every = max(1, round(decoded.shape[0] * decoded.shape[1] / FIT_PIXELS))
        for rows, f in _features(decoded, largest, every):
            t = (original[rows].astype(np.float32) - decoded[rows]).reshape(-1, CHANNELS)
            gram += f @ f.T
            cross += f @ t
            energy += (t * t).sum(0, dtype=np.float64)
        before = energy.sum()
        if before == 0:
            return None
        worth_per_db = _db_worth(file_bytes, original.shape[0] * original.shape[1]) * 8 * file_bytes
        centre = _centring(gram)
        pixels = gram[-1, -1]
        centred_gram, centred_cross = centre @ gram @ centre.T, centre @ cross
        best, best_worth = None, 0.0
        for index, shape in enumerate(SHAPES):
            weights, after = [], 0.0
            for c in range(CHANNELS):
                used = _in_largest(shape, c)
                a, b = gram[np.ix_(used, used)], cross[used, c]
                ridge = np.full(len(used), RIDGE * pixels)
                ridge[-1] = 0.0  # the constant: orthogonal to the centred features, nothing to steady
                solved = np.linalg.solve(centred_gram[np.ix_(used, used)] + np.diag(ridge), centred_cross[used, c])
                steps = shape.steps
                q = np.rint(solved @ centre[np.ix_(used, used)] / steps).astype(np.int64)
                w = q * steps
                after += energy[c] - 2 * w @ b + w @ a @ w
                weights.append(q)
            filt = Filter(index, tuple(weights))
            worth = worth_per_db * 10 * np.log10(before / max(after, 1e-9)) - 8 * len(to_bytes(filt))
            if worth > best_worth:
                best, best_worth = filt, worth
        return best


def _centring(gram: np.ndarray) -> np.ndarray:
    """The change of basis that takes each colour feature less its mean over the fitted pixels
    (read off ``gram``'s constant row) instead of less mid-grey: features f become centre @ f.
    The fit solves for weights in that basis, where the colours of a flat image are no longer
    (nearly) a multiple of the constant: there the least-squares weights would split the
    correction between the colour matrix and the constant at random, and huge opposite weights,
    exact on the synthesis fitted to, amplify any other synthesis (files pick RDO's codes after
    the fit). Weights w' in that basis are w' @ centre in the features'."""
    n = len(gram)
    centre = np.eye(n)
    colours = slice(n - 1 - CHANNELS, n - 1)
    centre[colours, -1] = -gram[-1, colours] / max(gram[-1, -1], 1.0)
    return centre


def _in_largest(shape: Shape, channel: int) -> np.ndarray:
    """Where the features output ``channel`` of ``shape`` weighs sit in the largest shape's set."""
    largest = SHAPES[-1]
    n = len(shape.offsets)
    place = [CHANNELS * largest.offsets.index(shape.offsets[i // CHANNELS]) + i % CHANNELS for i in range(CHANNELS * n)]
    place += range(CHANNELS * len(largest.offsets), largest.features)
    return np.array(place)[shape.used(channel)]


def _db_worth(file_bytes: int, pixels: int) -> float:
    """``DB_WORTH`` at the rate of a file of ``file_bytes`` for ``pixels`` pixels."""
    (low, high), (at_low, at_high) = DB_WORTH, DB_WORTH_AT
    where = np.clip(np.log(8 * file_bytes / pixels / at_low) / np.log(at_high / at_low), 0.0, 1.0)
    return float(low + (high - low) * where)


# -- coding --------------------------------------------------------------------------------------

#: Bits of the Exp-Golomb order of each group of weights (differences, colours, constant).
ORDER_BITS = 4


def _groups(weights: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """Every channel's weights by group: differences, colour matrix, constant."""
    cut = [len(w) - CHANNELS - 1 for w in weights]
    return [
        np.concatenate([w[:k] for w, k in zip(weights, cut, strict=True)]),
        np.concatenate([w[k:-1] for w, k in zip(weights, cut, strict=True)]),
        np.array([w[-1] for w in weights]),
    ]


def _zigzag(v: np.ndarray) -> np.ndarray:
    return np.where(v >= 0, 2 * v, -2 * v - 1)


def _eg_bits(u: np.ndarray, k: int) -> int:
    """Bits of unsigned ``u`` in Exp-Golomb codes of order ``k``."""
    lengths = np.floor(np.log2((u >> k) + 1)).astype(np.int64) if len(u) else u
    return int((2 * lengths + 1 + k).sum())


def to_bytes(filt: Filter) -> bytes:
    """The filter's record: shape, each group's Exp-Golomb order, the zigzagged weights."""
    bits: list[str] = [format(filt.shape + 1, "08b")]
    groups = [_zigzag(g) for g in _groups(filt.weights)]
    orders = [min(range(1 << ORDER_BITS), key=lambda k, g=g: _eg_bits(g, k)) for g in groups]
    bits += [format(k, f"0{ORDER_BITS}b") for k in orders]
    for g, k in zip(groups, orders, strict=True):
        for u in g.tolist():
            v = (u >> k) + 1
            bits.append(
                "0" * (v.bit_length() - 1) + format(v, "b") + (format(u & ((1 << k) - 1), f"0{k}b") if k else "")
            )
    s = "".join(bits)
    s += "0" * (-len(s) % 8)
    return int(s, 2).to_bytes(len(s) // 8, "big")


def from_bytes(data: bytes) -> Filter:
    """The filter of a record ``to_bytes`` wrote; a clear ``FormatError`` for anything else."""
    if not data:
        raise FormatError("empty restoration filter record")
    bits = "".join(format(b, "08b") for b in data)
    index = int(bits[:8], 2) - 1
    if not 0 <= index < len(SHAPES):
        raise FormatError(f"unknown restoration filter shape {index + 1}")
    shape = SHAPES[index]
    pos = 8 + 3 * ORDER_BITS
    if len(bits) < pos:
        raise FormatError("truncated restoration filter record")
    orders = [int(bits[8 + i * ORDER_BITS : 8 + (i + 1) * ORDER_BITS], 2) for i in range(3)]
    sizes = [CHANNELS * shape.differences, CHANNELS * CHANNELS, CHANNELS]
    groups = []
    for size, k in zip(sizes, orders, strict=True):
        values = []
        for _ in range(size):
            zeros = 0
            while pos < len(bits) and bits[pos] == "0" and zeros <= MAX_PREFIX:
                zeros, pos = zeros + 1, pos + 1
            end = pos + zeros + 1 + k
            if zeros > MAX_PREFIX or end > len(bits):
                raise FormatError("damaged restoration filter record")
            u = ((int(bits[pos : pos + zeros + 1], 2) - 1) << k) | (int(bits[pos + zeros + 1 : end], 2) if k else 0)
            values.append(u // 2 if u % 2 == 0 else -(u + 1) // 2)
            pos = end
        groups.append(np.array(values, dtype=np.int64))
    if len(bits) - pos >= 8 or "1" in bits[pos:]:
        raise FormatError("restoration filter record has trailing data")
    return Filter(index, _ungroup(shape, groups))


def _ungroup(shape: Shape, groups: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Each channel's weights from ``_groups``' order."""
    starts = np.arange(CHANNELS + 1) * shape.differences
    return tuple(
        np.concatenate(
            [groups[0][starts[c] : starts[c + 1]], groups[1][CHANNELS * c : CHANNELS * (c + 1)], groups[2][c : c + 1]]
        )
        for c in range(CHANNELS)
    )
