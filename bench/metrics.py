"""Image-quality metrics and Bjontegaard rate differences, with the conventions of the Kodak anchors.

PSNR is 8-bit RGB with the MSE over all pixels and channels (peak 255); MS-SSIM is pytorch-msssim's
5-scale ``ms_ssim(data_range=255)``, computed per R, G, B channel and averaged (CompressAI's
convention); SSIMULACRA 2 is the ``ssimulacra2`` package's (a numpy port of libjxl's tool: 100 is
lossless, 90 visually lossless, 70 high, 50 medium quality). Curves are compared with
piecewise-cubic (PCHIP) fits, never extrapolated.
"""

from __future__ import annotations

import io
import math
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as _ms_ssim
from scipy.interpolate import PchipInterpolator
from ssimulacra2 import compute_ssimulacra2

#: pytorch-msssim's 11-pixel window must still fit after 4 halvings: sides must exceed 160 pixels.
MSSSIM_MIN_SIDE = (11 - 1) * 2**4 + 1


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (peak 255, MSE over every sample); ``inf`` when identical."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """MS-SSIM of two (H, W, 3) uint8 images; None when a side is under ``MSSSIM_MIN_SIDE``."""
    if min(a.shape[:2]) < MSSSIM_MIN_SIDE:
        return None

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None]

    with torch.no_grad():
        return float(_ms_ssim(tensor(a), tensor(b), data_range=255))


def ms_ssim_db(value: float | None) -> float | None:
    """MS-SSIM on a decibel scale, -10 log10(1 - MS-SSIM), as plotted and BD-rated by the anchors."""
    if value is None:
        return None
    return math.inf if value >= 1 else -10 * math.log10(1 - value)


#: SSIMULACRA 2's six scales need at least this many pixels a side at the first.
SSIMULACRA2_MIN_SIDE = 8


def ssimulacra2(a: np.ndarray, b: np.ndarray) -> float | None:
    """SSIMULACRA 2 of ``b`` against the original ``a``, two (H, W, 3) uint8 images; None when a
    side is under ``SSIMULACRA2_MIN_SIDE``."""
    if min(a.shape[:2]) < SSIMULACRA2_MIN_SIDE:
        return None
    files = []
    for x in (a, b):  # the package reads files: uncompressed PNGs in memory
        files.append(io.BytesIO())
        Image.fromarray(x).save(files[-1], format="PNG", compress_level=0)
        files[-1].seek(0)
    return float(compute_ssimulacra2(*files))


def _fit(x: list[float], y: list[float]) -> PchipInterpolator | None:
    """PCHIP of y over x through the finite points, sorted by x (first of duplicate x kept)."""
    pts = sorted((a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None)
    pts = [p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]
    xs, index = np.unique([p[0] for p in pts], return_index=True)
    if len(xs) < 2:
        return None
    return PchipInterpolator(xs, np.array([p[1] for p in pts])[index])


def quality_at(bpp: list[float], quality: list[float | None], target: float) -> float | None:
    """Quality of an averaged curve at ``target`` bpp (PCHIP over log bpp); None outside its range."""
    fit = _fit([math.log(b) for b in bpp], quality)
    if fit is None or not fit.x[0] <= math.log(target) <= fit.x[-1]:
        return None
    return float(fit(math.log(target)))


class BDRate(NamedTuple):
    """A Bjontegaard rate difference and the quality interval it was averaged over."""

    percent: float
    low: float
    high: float


def bd_rate(
    ref_bpp: list[float], ref_quality: list[float | None], bpp: list[float], quality: list[float | None]
) -> BDRate | None:
    """Bjontegaard delta rate (%) of a curve against a reference at equal quality.

    log(bpp) is fitted as a PCHIP function of quality on each curve and the mean difference is
    taken over the overlapping quality interval; negative means fewer bits than the reference.
    None when a curve has fewer than two usable points or the curves do not overlap.
    """
    ref = _fit(ref_quality, [math.log(b) for b in ref_bpp])
    test = _fit(quality, [math.log(b) for b in bpp])
    if ref is None or test is None:
        return None
    low, high = max(ref.x[0], test.x[0]), min(ref.x[-1], test.x[-1])
    if low >= high:
        return None
    mean_diff = (test.integrate(low, high) - ref.integrate(low, high)) / (high - low)
    return BDRate(100 * math.expm1(mean_diff), float(low), float(high))
