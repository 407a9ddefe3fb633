"""Range coding of code maps: exact round trips and an overhead far below 1% of the ideal bits."""

from __future__ import annotations

import numpy as np
import pytest

from vqcodec.coding import entropy
from vqcodec.errors import FormatError


def random_rows(rng: np.random.Generator, n: int, k: int, temperature: float = 0.3):
    logits = rng.normal(size=(n, k)) / temperature
    probs = np.exp(logits - logits.max(1, keepdims=True))
    symbols = np.array([rng.choice(k, p=row / row.sum()) for row in probs], dtype=np.int64)
    return symbols, probs


def encode(symbols: np.ndarray, probs: np.ndarray) -> bytes:
    encoder = entropy.Encoder()
    encoder.encode(symbols, probs)
    return encoder.data()


def test_encoder_appends_chunks_and_sums_ideal_bits(rng):
    symbols, probs = random_rows(rng, 300, 16)
    whole, chunked = entropy.Encoder(), entropy.Encoder()
    whole.encode(symbols, probs)
    for a in range(0, 300, 64):
        chunked.encode(symbols[a : a + 64], probs[a : a + 64])
    assert chunked.data() == whole.data()
    assert chunked.symbols == 300 and chunked.ideal_bits == pytest.approx(whole.ideal_bits)


def test_round_trip_in_chunks(rng):
    symbols, probs = random_rows(rng, 500, 32)
    decoder = entropy.Decoder(encode(symbols, probs))
    out = np.concatenate([decoder.decode(probs[i : i + 37]) for i in range(0, 500, 37)])
    np.testing.assert_array_equal(out, symbols)


def test_overhead_is_below_one_percent(rng):
    symbols, probs = random_rows(rng, 5000, 64, temperature=1.0)
    ideal = entropy.ideal_bits(symbols, probs)
    real = 8 * len(encode(symbols, probs))
    assert ideal < real < 1.01 * ideal


def test_improbable_symbol_still_codes():
    probs = np.ascontiguousarray(np.eye(8)[[0, 1, 2]], dtype=np.float64)  # symbol 7 has p = 0
    symbols = np.array([7, 1, 7])
    decoder = entropy.Decoder(encode(symbols, probs))
    np.testing.assert_array_equal(decoder.decode(probs), symbols)


def test_stream_length_must_be_whole_words():
    with pytest.raises(FormatError):
        entropy.Decoder(b"abc")


def test_uncodable_finds_exactly_the_rows_the_coder_cannot_encode():
    """Rows whose last symbol has a tiny share: constriction panics on some of them (rounding puts
    the symbol's quantized width at zero); ``uncodable`` names exactly those, and only for it."""
    rng = np.random.default_rng(3)
    k = 512
    probs = rng.integers(1, 2**24, size=(96, k)).astype(np.float32)
    probs[:, -1] = 1
    last = np.full(len(probs), k - 1)
    stuck = entropy.uncodable(last, probs)
    assert 0 < stuck.sum() < len(probs)
    assert not entropy.uncodable(np.zeros(len(probs), int), probs).any()
    for row, expected in zip(probs, stuck, strict=True):
        try:
            entropy.Encoder().encode(np.array([k - 1]), row[None])
            failed = False
        except BaseException:  # constriction raises a Rust panic, not an Exception
            failed = True
        assert failed == expected
