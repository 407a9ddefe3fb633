"""Validation measures: PSNR and codebook use of whole validation images, flat colours, and the
priors' bits per code."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..io.image import pad_to, to_rgb, to_tensor
from ..nn.prior import PixelSNAIL
from ..nn.vqvae import VQVAE2
from . import data
from .msssim import MIN_SIDE, ms_ssim


def psnr(mse_255: float) -> float:
    return 10 * math.log10(255**2 / mse_255) if mse_255 > 0 else math.inf


def codebook_use(codes: list[np.ndarray], size: int) -> dict[str, float]:
    """Perplexity of the code histogram and the share of codes used at least once."""
    counts = np.bincount(np.concatenate([c.reshape(-1) for c in codes]), minlength=size)
    p = counts[counts > 0] / counts.sum()
    return {"perplexity": float(np.exp(-(p * np.log(p)).sum())), "used": float((counts > 0).mean())}


@torch.no_grad()
def code_maps(model: VQVAE2, images: Iterable[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(top, bottom) code maps of whole images, edge-padded as the codec pads them."""
    return [(top, bottom[..., 0]) for top, bottom in candidate_maps(model, images, 1)]


def candidate_maps(model: VQVAE2, images: Iterable[np.ndarray], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(top, candidates) maps of whole images, edge-padded as the codec pads them: the top code
    map and every bottom position's ``k`` nearest codes, nearest first (H, W, k)."""
    s, device = model.config.top_stride, next(model.parameters()).device
    maps = []
    for img in images:
        top, bottom = model.encode_candidates(to_tensor(pad_to(img, s)).to(device), k)
        maps.append((top[0].cpu().numpy(), bottom[0].cpu().numpy()))
    return maps


@torch.no_grad()
def validate_vqvae(model: VQVAE2, images: list[np.ndarray]) -> dict[str, float]:
    """PSNR of the 8-bit reconstructions (MSE pooled over all pixels), their mean MS-SSIM (of the
    images large enough for it) and codebook use of both maps, over whole validation images
    padded as the codec pads them (crops would see too few codes to tell how many are in use)."""
    model.eval()
    device = next(model.parameters()).device
    maps = code_maps(model, images)
    squared_error, similarities = 0.0, []
    for img, codes in zip(images, maps, strict=True):
        top, bottom = (torch.from_numpy(m).unsqueeze(0).to(device) for m in codes)
        recon = to_rgb(model.decode(top, bottom))[: img.shape[0], : img.shape[1]]
        squared_error += float(((recon.astype(np.float64) - img) ** 2).sum())
        if min(img.shape[:2]) >= MIN_SIDE:
            pair = [torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].double() for a in (recon, img)]
            similarities.append(float(ms_ssim(*pair, peak=255.0)))
    mse = squared_error / sum(img.size for img in images)
    tops, bottoms = zip(*maps, strict=True)
    use_t = codebook_use(list(tops), model.config.top_codes)
    use_b = codebook_use(list(bottoms), model.config.bottom_codes)
    return {
        "mse": mse,
        "psnr": psnr(mse),
        **({"ms_ssim": float(np.mean(similarities))} if similarities else {}),
        **{f"top_{k}": v for k, v in use_t.items()},
        **{f"bottom_{k}": v for k, v in use_b.items()},
        **flat_colour_errors(model),
    }


#: Side of the flat images ``flat_colour_errors`` codes, and the margin left out of the measure
#: (the edge of an image is not what a flat area inside a photo sees).
FLAT_SIDE, FLAT_MARGIN = 64, 8


@torch.no_grad()
def flat_colour_errors(model: VQVAE2) -> dict[str, float]:
    """How flat images of the 125 grid colours come back through the VQ-VAE (codes, no priors):
    the worst error of a mean channel, the worst pixel, and how many colours are within
    ``data.FLAT_MEAN_TOLERANCE`` and ``data.FLAT_PIXEL_TOLERANCE``."""
    device = next(model.parameters()).device
    colours = torch.from_numpy(data.colour_grid()).float().to(device)
    x = (colours / 127.5 - 1.0)[:, :, None, None].expand(-1, -1, FLAT_SIDE, FLAT_SIDE).contiguous()
    top, bottom = model.encode(x)
    y = ((model.decode(top, bottom) + 1.0) * 127.5).round().clamp(0, 255)
    inner = slice(FLAT_MARGIN, FLAT_SIDE - FLAT_MARGIN)
    error = y[:, :, inner, inner] - colours[:, :, None, None]
    mean_error = error.mean((2, 3)).abs().amax(1)
    pixel_error = error.abs().amax((1, 2, 3))
    return {
        "flat_worst_mean": float(mean_error.max()),
        "flat_worst_pixel": float(pixel_error.max()),
        "flat_within": float(
            ((mean_error <= data.FLAT_MEAN_TOLERANCE) & (pixel_error <= data.FLAT_PIXEL_TOLERANCE)).sum()
        ),
    }


@torch.no_grad()
def validate_priors(
    top_prior: PixelSNAIL, bottom_prior: PixelSNAIL, crops: list[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """Bits per code of each map under the float priors, over the validation tiles."""
    top_prior.eval()
    bottom_prior.eval()
    nats_t = sum(F.cross_entropy(top_prior(t), t, reduction="sum").item() for t, _ in crops)
    nats_b = sum(F.cross_entropy(bottom_prior(b, t), b, reduction="sum").item() for t, b in crops)
    n_t, n_b = sum(t.numel() for t, _ in crops), sum(b.numel() for _, b in crops)
    return {"top_bits": nats_t / n_t / math.log(2), "bottom_bits": nats_b / n_b / math.log(2)}
