"""Fused GPU kernels (Triton): nearest-code search without the N x K distance matrix.

Each program holds a block of rows of ``x`` in registers and sweeps the codebook in blocks,
keeping a running minimum and its index, so memory traffic is one read of ``x`` and one read of
the codebook per row block. Triton is optional: without it (or without a GPU) the chunked torch
search in ``quantizer.nearest_code`` is used. Setting ``TRITON_INTERPRET=1`` before this module is
imported runs the kernel on CPU tensors through Triton's interpreter, which is how the tests check
it on machines without a GPU.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is an optional, Linux-only dependency.
    triton = None

#: Rows of ``x`` per program and codes per sweep step (``tl.dot`` needs at least 16 of each).
BLOCK_ROWS, BLOCK_CODES = 64, 64

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def available(x: torch.Tensor) -> bool:
    """Whether the fused kernel should search ``x``'s rows: Triton is installed and ``x`` is on a
    CUDA device."""
    return triton is not None and x.is_cuda


if triton is not None:

    @triton.jit
    def _nearest_kernel(
        x_ptr,
        codebook_ptr,
        norms_ptr,
        out_ptr,
        n,
        k,
        d,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, BLOCK_D)
        dim_ok = dims[None, :] < d
        x = tl.load(x_ptr + rows[:, None] * d + dims[None, :], mask=(rows[:, None] < n) & dim_ok, other=0.0)
        best = tl.full((BLOCK_N,), float("inf"), tl.float32)
        best_idx = tl.zeros((BLOCK_N,), tl.int64)
        for start in range(0, k, BLOCK_K):
            codes = start + tl.arange(0, BLOCK_K)
            c = tl.load(
                codebook_ptr + codes[:, None] * d + dims[None, :],
                mask=(codes[:, None] < k) & dim_ok,
                other=0.0,
            )
            norms = tl.load(norms_ptr + codes, mask=codes < k, other=float("inf"))
            # ||x||^2 is constant per row and left out, as in the torch search.
            dist = norms[None, :] - 2.0 * tl.dot(x, tl.trans(c), input_precision="ieee")
            block_best = tl.min(dist, 1)
            block_idx = tl.argmin(dist, 1, tie_break_left=True).to(tl.int64) + start
            # Strictly smaller only: on a tie the earlier block, so the lower index, is kept.
            better = block_best < best
            best = tl.where(better, block_best, best)
            best_idx = tl.where(better, block_idx, best_idx)
        tl.store(out_ptr + rows, best_idx, mask=rows < n)


def nearest_code_fused(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for every row of ``x`` (N, D), ties to the lowest index.

    Same contract as ``quantizer.nearest_code``; needs ``available(x)``, or CPU tensors under
    Triton's interpreter.
    """
    if not (available(x) or (triton is not None and INTERPRETED)):
        raise RuntimeError("the fused nearest-code kernel needs Triton and a CUDA tensor")
    x = x.float().contiguous()
    codebook = codebook.float().contiguous()
    n, d = x.shape
    out = torch.empty(n, dtype=torch.long, device=x.device)
    if n == 0:
        return out
    norms = codebook.pow(2).sum(1)
    block_d = max(16, triton.next_power_of_2(d))
    grid = (triton.cdiv(n, BLOCK_ROWS),)
    _nearest_kernel[grid](x, codebook, norms, out, n, codebook.shape[0], d, BLOCK_ROWS, BLOCK_CODES, block_d)
    return out
