"""The integer arithmetic of the prior: the ranges of its integers, how long an exact product may
reduce, and the lookup tables of its nonlinearities (module attributes, read where they are used,
so that tests may shrink them)."""

from __future__ import annotations

import math

import numpy as np
import torch

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
MAX_TABLE = 1 << 20
#: Attention score of a tap outside the region: 2^26 below any real score (|score| < 2^24), so
#: past the end of any exp table (at most 2^20 entries), and exact in float32.
OUTSIDE = -float(1 << 26)


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
    size = min(MAX_TABLE, math.ceil((bits + 1) * math.log(2) / step) + 1)
    return _table([max(floor, round(2.0**bits * math.exp(-d * step))) for d in range(size)])
