"""Nearest-code search in bounded chunks, and the EMA codebook with dead-code restarts."""

from __future__ import annotations

import torch

from vqcodec.nn.quantizer import VectorQuantizer, nearest_code, nearest_codes


def test_nearest_code_matches_brute_force_in_any_chunking():
    gen = torch.Generator().manual_seed(0)
    x, codebook = torch.randn(1000, 8, generator=gen), torch.randn(37, 8, generator=gen)
    brute = torch.cdist(x, codebook).argmin(1)
    for max_entries in (1, 37, 100, 1 << 22):
        assert torch.equal(nearest_code(x, codebook, max_entries), brute)


def test_ties_go_to_the_lowest_index():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    x = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    assert nearest_code(x, codebook).tolist() == [0, 0, 1]


def test_nearest_codes_are_sorted_and_match_brute_force_in_any_chunking():
    gen = torch.Generator().manual_seed(1)
    x, codebook = torch.randn(500, 8, generator=gen), torch.randn(37, 8, generator=gen)
    brute = torch.cdist(x, codebook).argsort(1)
    for max_entries in (1, 37, 100, 1 << 22):
        assert torch.equal(nearest_codes(x, codebook, 5, max_entries), brute[:, :5])
    assert nearest_codes(x, codebook, 99).shape == (500, 37)  # no more candidates than codes


def test_one_nearest_code_is_nearest_codes_with_its_ties():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    x = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    assert nearest_codes(x, codebook, 1)[:, 0].tolist() == [0, 0, 1]


def test_quantizer_forward_is_straight_through():
    vq = VectorQuantizer(4, 16).eval()
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    q, commitment, idx = vq(z)
    assert idx.shape == (2, 3, 5)
    assert torch.allclose(q, vq.lookup(idx))
    (q.sum() + commitment).backward()
    assert z.grad is not None


def test_ema_pulls_codes_to_data_and_restarts_dead_ones():
    torch.manual_seed(0)
    vq = VectorQuantizer(2, 8, decay=0.5).train()
    data = torch.tensor([[3.0, 3.0], [-3.0, -3.0]]).repeat(50, 1)  # two clusters
    z = data.t().reshape(1, 2, 10, 10)
    for _ in range(30):
        vq(z)
    centres = torch.tensor([[3.0, 3.0], [-3.0, -3.0]])
    distance = (centres[:, None] - vq.embed[None]).norm(dim=-1)
    assert distance.min(1).values.max() < 1e-3
    # every code that fell out of use was restarted onto a data point
    assert distance.min(0).values.max() < 1e-3
