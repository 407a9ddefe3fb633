"""The training loss's MS-SSIM: the benchmark's metric (pytorch-msssim), differentiable."""

from __future__ import annotations

import pytest
import torch
from pytorch_msssim import ms_ssim as reference

from vqcodec.training.msssim import MIN_SIDE, ms_ssim


@pytest.mark.parametrize("shape", [(2, 3, 192, 200), (1, 3, 171, 233)])
def test_ms_ssim_is_the_benchmarks_metric(shape):
    g = torch.Generator().manual_seed(shape[-1])
    a = torch.rand(shape, generator=g) * 255
    b = (a + 25 * torch.randn(shape, generator=g)).clamp(0, 255)
    ours = ms_ssim(a, b, peak=255.0)
    theirs = reference(a, b, data_range=255, size_average=False)
    assert ours.shape == (shape[0],)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(ms_ssim(a, a, peak=255.0), torch.ones(shape[0]))


def test_ms_ssim_gives_a_finite_gradient_and_refuses_small_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, MIN_SIDE, MIN_SIDE, generator=g, requires_grad=True)
    (1 - ms_ssim(x, torch.rand(1, 3, MIN_SIDE, MIN_SIDE, generator=g))).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 161"):
        ms_ssim(x[..., :-1], x[..., :-1])
