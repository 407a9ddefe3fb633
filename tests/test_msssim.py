"""The training loss's MS-SSIM: the benchmark's metric (pytorch-msssim), differentiable."""

from __future__ import annotations

import pytest
import torch
from pytorch_msssim import ms_ssim as reference

from vqcodec.training.msssim import MIN_SIDE, MSSSIM_PER_MSE, mixed_distortion, ms_ssim


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


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_mixed_distortion_weighs_squared_error_against_ms_ssim(share):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, MIN_SIDE, MIN_SIDE, generator=g) * 2 - 1
    out = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    distortion, log = mixed_distortion(out, x, share)
    mse = ((out - x) ** 2).mean() / 4
    similarity = ms_ssim((out + 1) / 2, (x + 1) / 2).mean()
    expected = (1 - share) * 255**2 * mse + share * MSSSIM_PER_MSE * (1 - similarity)
    assert torch.allclose(distortion, expected)
    assert log["psnr"] == pytest.approx(-10 * torch.log10(mse).item())
    assert ("ms_ssim" in log) == (share > 0)
