"""The fused nearest-code kernel equals the torch search, ties included (on the CPU through
Triton's interpreter, on a GPU for real)."""

from __future__ import annotations

import pytest
import torch

from vqcodec.nn.quantizer import nearest_code

pytest.importorskip("triton")
from vqcodec.nn.kernels import BLOCK_CODES, BLOCK_ROWS, nearest_code_fused

#: The GPU where there is one; elsewhere Triton's interpreter on CPU tensors (conftest turns it on
#: only without a GPU, and the kernel refuses CPU tensors otherwise).
DEVICES = ["cuda"] if torch.cuda.is_available() else ["cpu"]


def _fused(x: torch.Tensor, codebook: torch.Tensor, device: str) -> torch.Tensor:
    return nearest_code_fused(x.to(device), codebook.to(device)).cpu()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("n", "k", "d"),
    [(1, 1, 1), (BLOCK_ROWS + 1, BLOCK_CODES + 1, 3), (300, 512, 32), (17, 2 * BLOCK_CODES, 64), (5, 7, 100)],
)
def test_fused_search_finds_the_nearest_code(n, k, d, device):
    gen = torch.Generator().manual_seed(n * k + d)
    x, codebook = torch.randn(n, d, generator=gen), torch.randn(k, d, generator=gen)
    fused = _fused(x, codebook, device)
    dist = torch.cdist(x.double(), codebook.double()).pow(2)
    best = dist.min(1).values
    # Float32 rounding may only swap codes whose exact distances are within 1e-4 of the best.
    assert (dist.gather(1, fused[:, None])[:, 0] - best).max() <= 1e-4 * best.max()
    clear = (dist <= best[:, None] + 1e-4 * best.max()).sum(1) == 1
    assert torch.equal(fused[clear], nearest_code(x, codebook)[clear])


@pytest.mark.parametrize("device", DEVICES)
def test_fused_ties_go_to_the_lowest_index_across_blocks(device):
    # Small integers keep every distance exact, so these are true ties in any summation order.
    gen = torch.Generator().manual_seed(1)
    codebook = torch.randint(-4, 5, (3 * BLOCK_CODES, 6), generator=gen).float()
    for dup in (BLOCK_CODES - 1, BLOCK_CODES, 2 * BLOCK_CODES + 5):
        codebook[dup] = codebook[3]
    midpoints = (codebook[:50] + codebook[50:100]) / 2
    x = torch.cat([codebook, midpoints, torch.randint(-4, 5, (BLOCK_ROWS + 3, 6), generator=gen).float()])
    fused = _fused(x, codebook, device)
    assert torch.equal(fused, nearest_code(x, codebook))
    assert fused[[3, BLOCK_CODES - 1, BLOCK_CODES, 2 * BLOCK_CODES + 5]].tolist() == [3] * 4


@pytest.mark.parametrize("device", DEVICES)
def test_fused_search_of_no_rows(device):
    assert _fused(torch.empty(0, 4), torch.randn(3, 4), device).shape == (0,)
