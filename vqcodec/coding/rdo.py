"""Rate-distortion optimised quantization (RDO) of the bottom map, on the encoder side only.

The nearest code in the latent space is neither the one that reconstructs the pixels best nor
the cheapest to code. Each bottom position may take any of its ``CANDIDATES`` nearest codes; the
encoder picks the one of least estimated pixel error plus ``rdo`` times its price in bits under
the bottom prior. The decoder is untouched: any choice is a valid file.

The change in squared pixel error when a position moves from its current code ec to ek is
estimated to second order, g . (ek - ec) + a |ek - ec|^2, where g is the gradient of the error
with respect to the synthesis input (one backward pass) and a is the synthesis' gain, measured
by a finite difference along the steps from each nearest to each second-nearest code (in a
band of rows, see ``PROBE_SHARE``). The
choice may be made several times, starting from the nearest codes: each pass prices the
candidates in the context of the previous choice and re-linearises the error around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..io.image import to_pixels
from ..nn.vqvae import VQVAE2
from ..timing import ANALYSIS, QUANTIZATION, Timer, no_timer

#: The codes a position chooses among (its nearest ones).
CANDIDATES = 8


def curvature_margin(passes: int) -> float:
    """Weight of the quadratic term: all positions move at once, and neighbours' changes add up in
    the pixels, so the margin keeps them from overshooting together. A later pass re-linearises
    where the first one went and corrects it, so the first may move more boldly (the values
    tried: docs/design.md, "Constants")."""
    return 2.0 if passes == 1 else 1.5


#: Step of the finite difference that measures the synthesis' gain; the synthesis is piecewise
#: linear (ReLU), so a small step measures its slope where it is.
PROBE_STEP = 1e-2
#: The gain enters the choice as one ratio per image (``Terms.costs``), so it is measured on the
#: middle 1/PROBE_SHARE of each window's top rows only, synthesised with PROBE_MARGIN top rows of
#: context either side: about a third of a synthesis instead of a whole one, for the same files
#: within a few hundredths of a percent (docs/design.md, "Constants").
PROBE_SHARE = 4
PROBE_MARGIN = 4


@dataclass(frozen=True)
class Terms:
    """For each bottom position (H, W) of an image, what moving from its current code to each of
    its candidates would change in the pixel error (linear and quadratic terms, (H, W, k) each),
    its pixel error and the probe of the synthesis' gain; and the image synthesised at the current
    codes ((H s, W s, 3) uint8), which the encoder fits its restoration filter to."""

    linear: np.ndarray
    squared: np.ndarray
    error: np.ndarray
    gain: np.ndarray
    probe: np.ndarray
    synthesis: np.ndarray

    def costs(self, bits: np.ndarray, rdo: float, margin: float) -> np.ndarray:
        """Each candidate's estimated change of pixel error, its quadratic term weighted by
        ``margin``, + ``rdo`` x its price (``bits``, (H, W, k), give or take a constant per
        position, which no choice depends on), bits counted in units of the mean error per
        position."""
        probed = float(self.probe.sum(dtype=np.float64))
        curvature = margin * float(self.gain.sum(dtype=np.float64)) / probed if probed else 0.0
        return self.linear + curvature * self.squared + rdo * float(self.error.mean(dtype=np.float64)) * bits


def choose(candidates: np.ndarray, terms: Terms, bits: np.ndarray, rdo: float, margin: float) -> np.ndarray:
    """The bottom map of least cost (see ``Terms.costs``) among ``candidates`` (H, W, k)."""
    return np.take_along_axis(candidates, terms.costs(bits, rdo, margin).argmin(-1)[..., None], -1)[..., 0]


def window_terms(
    vqvae: VQVAE2,
    x: torch.Tensor,
    top: torch.Tensor,
    candidates: torch.Tensor,
    current: torch.Tensor,
    timer: Timer = no_timer,
) -> tuple[torch.Tensor, ...]:
    """The fields of ``Terms`` for a batch of pixels ``x`` (B, C, H, W) in [-1, 1] coded with the
    top map ``top`` (B, H/2s, W/2s) and the bottom map ``current`` (B, H/s, W/s), whose positions
    may move to ``candidates`` (B, H/s, W/s, k, nearest first): the linear and quadratic terms
    (B, H/s, W/s, k), the pixel error and the gain probe, |J d|^2 and |d|^2 (B, H/s, W/s; zero
    outside the probed band), and the synthesis at ``current`` as pixels (B, H, W, 3) uint8."""
    with timer(QUANTIZATION):
        embed = vqvae.quantize_b.embed
        steps = embed[candidates] - embed[current].unsqueeze(-2)  # (B, H, W, k, D)
        second = candidates[..., min(1, candidates.shape[-1] - 1)]
        probe = (embed[second] - embed[candidates[..., 0]]).permute(0, 3, 1, 2)
    with timer(ANALYSIS):
        q_t = vqvae.quantize_t.lookup(top)
        q_b = vqvae.quantize_b.lookup(current).requires_grad_(True)
        with torch.enable_grad():
            recon = vqvae.synthesise(q_t, q_b)
            error = (recon - x).pow(2)
            (grad,) = torch.autograd.grad(error.sum(), q_b)
        with torch.no_grad():
            gain, probed = _probe_gain(vqvae, q_t, q_b.detach(), recon.detach(), probe)
            return (
                torch.einsum("bdhw,bhwkd->bhwk", grad, steps),
                steps.pow(2).sum(-1),
                _per_position(error.detach(), vqvae.config.bottom_stride),
                gain,
                probed,
                to_pixels(recon.detach()),
            )


def _probe_gain(
    vqvae: VQVAE2, q_t: torch.Tensor, q_b: torch.Tensor, recon: torch.Tensor, probe: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """|J d|^2 and |d|^2 per bottom position (B, H/s, W/s) for the steps ``probe`` (B, D, H/s,
    W/s) from the code vectors ``q_b`` that synthesise ``recon``, in the band of top rows
    ``PROBE_SHARE`` picks and zero elsewhere."""
    rows = q_t.shape[2]
    n = max(1, rows // PROBE_SHARE)
    start = (rows - n) // 2
    a, b = max(0, start - PROBE_MARGIN), min(rows, start + n + PROBE_MARGIN)
    shifted = vqvae.synthesise(q_t[:, :, a:b], q_b[:, :, 2 * a : 2 * b] + PROBE_STEP * probe[:, :, 2 * a : 2 * b])
    ts, s = vqvae.config.top_stride, vqvae.config.bottom_stride
    inner = shifted[:, :, (start - a) * ts : (start + n - a) * ts]
    gain = (inner - recon[:, :, start * ts : (start + n) * ts]) / PROBE_STEP
    band = slice(2 * start, 2 * (start + n))
    gains, probed = recon.new_zeros(probe[:, 0].shape), recon.new_zeros(probe[:, 0].shape)
    gains[:, band] = _per_position(gain.pow(2), s)
    probed[:, band] = probe[:, :, band].pow(2).sum(1)
    return gains, probed


def _per_position(pixels: torch.Tensor, stride: int) -> torch.Tensor:
    """Sums of (B, C, H, W) pixel values over each bottom position's stride x stride block."""
    return F.avg_pool2d(pixels.sum(1, keepdim=True), stride)[:, 0] * stride**2
