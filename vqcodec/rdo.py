"""Rate-distortion optimised quantization (RDO) of the bottom map, on the encoder side only.

The nearest code in the latent space is neither the one that reconstructs the pixels best nor
the cheapest to code. Each bottom position may take any of its ``CANDIDATES`` nearest codes; the
encoder picks the one of least estimated pixel error plus ``rdo`` times its price in bits under
the bottom prior. The decoder is untouched: any choice is a valid file.

The change in squared pixel error when a position moves from its nearest code e0 to ek is
estimated to second order, g . (ek - e0) + a |ek - e0|^2, where g is the gradient of the error
with respect to the synthesis input (one backward pass) and a is the synthesis' gain, measured
once per image by a finite difference along the steps to each second-nearest code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .timing import ANALYSIS, QUANTIZATION, Timer, no_timer
from .vqvae import VQVAE2

#: The encoder's default trade of quality for rate (0: always the nearest code).
DEFAULT_RDO = 0.2
#: The codes a position chooses among (its nearest ones).
CANDIDATES = 8
#: All positions move at once, and neighbours' changes add up in the pixels: the quadratic term is
#: weighted up by this margin so that they do not overshoot together (measured on Kodak: 1 lost
#: up to 0.6 dB with `low`, 2 gained with every preset).
CURVATURE_MARGIN = 2.0
#: Step of the finite difference that measures the synthesis' gain; the synthesis is piecewise
#: linear (ReLU), so a small step measures its slope where it is.
PROBE_STEP = 1e-2


@dataclass(frozen=True)
class Analysis:
    """An image's top code map and, for each bottom position (H, W), its candidate codes, nearest
    first, with what moving to each would change in the pixel error (linear and quadratic terms,
    (H, W, k) each), its pixel error and the probe of the synthesis' gain."""

    top: np.ndarray
    candidates: np.ndarray
    linear: np.ndarray
    squared: np.ndarray
    error: np.ndarray
    gain: np.ndarray
    probe: np.ndarray

    @property
    def nearest(self) -> np.ndarray:
        return self.candidates[..., 0]

    def choose(self, bits: np.ndarray, rdo: float) -> np.ndarray:
        """The bottom map of least estimated pixel error + ``rdo`` x bits (``bits``: each
        candidate's price, (H, W, k)), bits counted in units of the mean error per position."""
        probed = float(self.probe.sum(dtype=np.float64))
        curvature = CURVATURE_MARGIN * float(self.gain.sum(dtype=np.float64)) / probed if probed else 0.0
        cost = self.linear + curvature * self.squared + rdo * float(self.error.mean(dtype=np.float64)) * bits
        return np.take_along_axis(self.candidates, cost.argmin(-1)[..., None], -1)[..., 0]


def window_terms(vqvae: VQVAE2, x: torch.Tensor, timer: Timer = no_timer) -> tuple[torch.Tensor, ...]:
    """The fields of ``Analysis`` for a batch of pixels ``x`` (B, C, H, W) in [-1, 1]: the top map
    (B, H/2s, W/2s), then per bottom position the candidates, linear and quadratic terms (B, H/s,
    W/s, k), the pixel error and the gain probe, |J d|^2 and |d|^2 (B, H/s, W/s)."""
    top, candidates = vqvae.encode_candidates(x, CANDIDATES, timer)
    with timer(QUANTIZATION):
        embed = vqvae.quantize_b.embed
        steps = embed[candidates] - embed[candidates[..., :1]]  # (B, H, W, k, D)
    with timer(ANALYSIS):
        q_t = vqvae.quantize_t.lookup(top)
        q_b = vqvae.quantize_b.lookup(candidates[..., 0]).requires_grad_(True)
        with torch.enable_grad():
            recon = vqvae.synthesise(q_t, q_b)
            error = (recon - x).pow(2)
            (grad,) = torch.autograd.grad(error.sum(), q_b)
        with torch.no_grad():
            probe = steps[..., min(1, steps.shape[-2] - 1), :].permute(0, 3, 1, 2)
            gain = (vqvae.synthesise(q_t, q_b.detach() + PROBE_STEP * probe) - recon.detach()) / PROBE_STEP
            s = vqvae.config.bottom_stride
            return (
                top,
                candidates,
                torch.einsum("bdhw,bhwkd->bhwk", grad, steps),
                steps.pow(2).sum(-1),
                _per_position(error.detach(), s),
                _per_position(gain.pow(2), s),
                probe.pow(2).sum(1),
            )


def _per_position(pixels: torch.Tensor, stride: int) -> torch.Tensor:
    """Sums of (B, C, H, W) pixel values over each bottom position's stride x stride block."""
    return F.avg_pool2d(pixels.sum(1, keepdim=True), stride)[:, 0] * stride**2
