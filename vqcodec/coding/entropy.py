"""Entropy coding of code maps with constriction's range coder.

The probability rows come from ``qprior.IntegerPrior`` as integers (in float64), so the tables
handed to constriction, which quantizes them internally, are identical on both sides.
"""

from __future__ import annotations

import constriction
import numpy as np

from ..errors import FormatError

#: constriction's lazily quantized categorical family; ``perfect=False`` must match on both sides.
_FAMILY = constriction.stream.model.Categorical(perfect=False)
#: Information a stream can still hold once the decoder has read its last word: the coder's
#: 64-bit state (at most 54 bits were seen in tests of random streams), with a margin. A stream
#: that yields more than this past its end is shorter than its header claims.
MAX_BITS_PAST_END = 128
#: Bits of precision of constriction's quantized categorical models.
CODER_PRECISION = 24


def uncodable(symbols: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Which ``symbols`` (N,) the coder cannot encode under their rows ``probs`` (N, K): the last
    symbol of a row where it gets no quantized probability. constriction quantizes a row lazily
    in float32, the left end of symbol s at floor(sum(p[:s]) * (2^24 - K) / sum(p)) + s, summed
    in order, and the last symbol's right end at 2^24; when the last symbol's share is tiny,
    rounding can put its left end at 2^24 too, and encoding it panics. The same float32
    operations here (sequential sums, one rounding each) find those rows exactly."""
    k = probs.shape[1]
    stuck = symbols == k - 1
    cumulative = np.cumsum(np.asarray(probs[stuck], dtype=np.float32), axis=1, dtype=np.float32)
    scale = np.float32(2**CODER_PRECISION - k) / cumulative[:, -1]
    stuck[stuck] = np.floor(cumulative[:, -2] * scale).astype(np.int64) + (k - 1) >= 2**CODER_PRECISION
    return stuck


def ideal_bits(symbols: np.ndarray, probs: np.ndarray) -> float:
    """The information content sum(-log2 p(x)) that an ideal coder would spend."""
    picked = probs[np.arange(len(symbols)), symbols].astype(np.float64)
    with np.errstate(divide="ignore"):  # a zero-probability symbol costs infinitely many ideal bits
        return float((np.log2(probs.sum(1, dtype=np.float64)) - np.log2(picked)).sum())


class Encoder:
    """Range-codes symbols chunk after chunk into one stream, keeping the ideal bits as it goes."""

    def __init__(self) -> None:
        self._encoder = constriction.stream.queue.RangeEncoder()
        self.symbols = 0
        self.ideal_bits = 0.0

    def encode(self, symbols: np.ndarray, probs: np.ndarray) -> None:
        """Append ``symbols`` (N,) under per-symbol probability rows ``probs`` (N, K)."""
        if len(symbols):
            self._encoder.encode(np.ascontiguousarray(symbols, dtype=np.int32), _FAMILY, probs)
            self.symbols += len(symbols)
            self.ideal_bits += ideal_bits(symbols, probs)

    def encode_iid(self, symbols: np.ndarray, model: constriction.stream.model.Categorical) -> None:
        """Append ``symbols`` (N,) all under one concrete constriction ``model``."""
        if len(symbols):
            self._encoder.encode(np.ascontiguousarray(symbols, dtype=np.int32), model)
            self.symbols += len(symbols)

    def data(self) -> bytes:
        return self._encoder.get_compressed().astype("<u4").tobytes()


class Decoder:
    """Reads symbols back from ``encode``'s bytes, a chunk at a time, given the same probabilities."""

    def __init__(self, data: bytes):
        if len(data) % 4:
            raise FormatError("entropy-coded stream length is not a multiple of 4 bytes")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self._decoder = constriction.stream.queue.RangeDecoder(words)
        self._bits_past_end = 0.0

    def decode(self, probs: np.ndarray) -> np.ndarray:
        """Decode one symbol per row of ``probs`` (N, K). A stream that runs out while codes
        remain is refused within a few symbols, not after the whole map."""
        past_end = self._decoder.maybe_exhausted()
        try:
            symbols = self._decoder.decode(_FAMILY, probs)
        except Exception as exc:  # constriction reports malformed data with assorted exception types
            raise FormatError(f"entropy-coded stream is damaged: {exc}") from exc
        if past_end:  # what the coder spent: its probabilities are at least 2^-CODER_PRECISION
            picked = probs[np.arange(len(symbols)), symbols] / probs.sum(1)
            self._bits_past_end += float(-np.log2(np.maximum(picked, 2.0**-CODER_PRECISION)).sum())
            if self._bits_past_end > MAX_BITS_PAST_END:
                raise FormatError("entropy-coded stream ends before its code map: the file is truncated or forged")
        return symbols

    def decode_iid(self, model: constriction.stream.model.Categorical, count: int) -> np.ndarray:
        """``count`` symbols all under one concrete constriction ``model`` (a stream that runs out
        reads as zeros: its caller checks what it decodes)."""
        try:
            return self._decoder.decode(model, count).astype(np.int64)
        except Exception as exc:  # constriction reports malformed data with assorted exception types
            raise FormatError(f"entropy-coded stream is damaged: {exc}") from exc
