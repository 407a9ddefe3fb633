"""Entropy coding of code maps with constriction's range coder.

The probability rows come from ``qprior.IntegerPrior`` as integers (in float64), so the tables
handed to constriction, which quantizes them internally, are identical on both sides.
"""

from __future__ import annotations

import constriction
import numpy as np

from .errors import FormatError

#: constriction's lazily quantized categorical family; ``perfect=False`` must match on both sides.
_FAMILY = constriction.stream.model.Categorical(perfect=False)


def ideal_bits(symbols: np.ndarray, probs: np.ndarray) -> float:
    """The information content sum(-log2 p(x)) that an ideal coder would spend."""
    rows = probs / probs.sum(1, keepdims=True)
    return float(-np.log2(rows[np.arange(len(symbols)), symbols]).sum())


def encode(symbols: np.ndarray, probs: np.ndarray) -> bytes:
    """Range-code ``symbols`` (N,) under per-symbol probability rows ``probs`` (N, K)."""
    encoder = constriction.stream.queue.RangeEncoder()
    if len(symbols):
        encoder.encode(np.ascontiguousarray(symbols, dtype=np.int32), _FAMILY, probs)
    return encoder.get_compressed().astype("<u4").tobytes()


class Decoder:
    """Reads symbols back from ``encode``'s bytes, a chunk at a time, given the same probabilities."""

    def __init__(self, data: bytes):
        if len(data) % 4:
            raise FormatError("entropy-coded stream length is not a multiple of 4 bytes")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self._decoder = constriction.stream.queue.RangeDecoder(words)

    def decode(self, probs: np.ndarray) -> np.ndarray:
        """Decode one symbol per row of ``probs`` (N, K)."""
        try:
            return self._decoder.decode(_FAMILY, probs)
        except Exception as exc:  # constriction reports malformed data with assorted exception types
            raise FormatError(f"entropy-coded stream is damaged: {exc}") from exc
