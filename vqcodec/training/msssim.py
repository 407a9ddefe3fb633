"""Differentiable MS-SSIM for training losses: Wang et al.'s five scales (11-tap Gaussian window of
sigma 1.5, K1 0.01, K2 0.03, 2x2 average pooling between scales), per channel and averaged, the
convention the benchmark's metric follows; valid convolutions, so a side must exceed 160 pixels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ModelError

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW, SIGMA = 11, 1.5
K1, K2 = 0.01, 0.03
#: The window must still fit after four halvings.
MIN_SIDE = (WINDOW - 1) * 2 ** (len(WEIGHTS) - 1) + 1
#: Weight of (1 - MS-SSIM) against 255^2 x MSE in a mixed distortion: CompressAI's MS-SSIM models
#: take about that many times the lambda of its MSE models of equal rate.
MSSSIM_PER_MSE = 1300.0


def _gaussian(x: torch.Tensor) -> torch.Tensor:
    t = torch.arange(WINDOW, dtype=x.dtype, device=x.device) - WINDOW // 2
    g = torch.exp(-(t**2) / (2 * SIGMA**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable valid Gaussian filter of each channel of ``x`` (N, C, H, W)."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _ssim(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, peak: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: SSIM's mean and the mean of its contrast-structure term."""
    c1, c2 = (K1 * peak) ** 2, (K2 * peak) ** 2
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a**2
    var_b = _blur(b * b, g) - mu_b**2
    cov = _blur(a * b, g) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (luminance * cs).mean(dim=(2, 3)), cs.mean(dim=(2, 3))


def ms_ssim(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """MS-SSIM of two batches (N, C, H, W) with values up to ``peak``: one value per image, the
    mean over channels."""
    if min(a.shape[-2:]) < MIN_SIDE:
        raise ValueError(f"MS-SSIM needs sides of at least {MIN_SIDE} pixels, not {tuple(a.shape[-2:])}")
    g = _gaussian(a)
    factors = []
    for i in range(len(WEIGHTS)):
        ssim, cs = _ssim(a, b, g, peak)
        # clamped as by a ReLU, but without an infinite gradient at 0
        factors.append((ssim if i == len(WEIGHTS) - 1 else cs).clamp(min=1e-8))
        if i < len(WEIGHTS) - 1:
            pad = [side % 2 for side in a.shape[-2:]]
            a, b = F.avg_pool2d(a, 2, padding=pad), F.avg_pool2d(b, 2, padding=pad)
    weights = torch.tensor(WEIGHTS, dtype=a.dtype, device=a.device).view(-1, 1, 1)
    return torch.prod(torch.stack(factors) ** weights, dim=0).mean(dim=1)


def require_crop(share: float, crop: int) -> None:
    """Refuse, before training starts, an MS-SSIM ``share`` of the loss on crops too small for it."""
    if share and crop < MIN_SIDE:
        raise ModelError(f"an MS-SSIM loss needs crops of at least {MIN_SIDE} pixels, not {crop}")


def mixed_distortion(out: torch.Tensor, x: torch.Tensor, share: float) -> tuple[torch.Tensor, dict[str, float]]:
    """255^2 x MSE of images in [-1, 1] (CompressAI's convention), with ``share`` of it
    ``MSSSIM_PER_MSE`` x (1 - MS-SSIM) instead, and the step's PSNR (and MS-SSIM) to log."""
    mse = F.mse_loss(out, x) / 4  # on [0, 1]
    distortion = (1 - share) * 255**2 * mse
    log = {"psnr": -10 * math.log10(max(mse.item(), 1e-12))}
    if share:
        similarity = ms_ssim((out + 1) / 2, (x + 1) / 2).mean()
        distortion = distortion + share * MSSSIM_PER_MSE * (1 - similarity)
        log["ms_ssim"] = similarity.item()
    return distortion, log
