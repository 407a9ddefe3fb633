"""The enhancement layer: what the VQ-VAE's synthesis misses, coded as scalar-quantised block
transform coefficients on top of the code maps, for rates the code maps alone cannot reach.

The residual between the image and the synthesis of its nearest codes goes through a learnt
4x4 block transform (started as the orthonormal DCT), one learnt gain per coefficient, and is
rounded to integers around a predicted mean. A Gaussian per coefficient prices the integers; its
mean and scale come from a context network over the code maps (``CodeContext``): no wavefronts,
and the same integer arithmetic as the priors (``coding.enhancement``), so that
decoding the coefficients never depends on a float computation. A layer may add a second pass
(``AnchorContext``): the blocks of one colour of a checkerboard (the anchors) are coded first,
and the other blocks' means and scales are refined from the anchors' integers around them. The
synthesis adds the inverse transform to the VQ-VAE's image, then a small post-filter.

A model carries one layer per rate it was trained for (``lam``, CompressAI's convention: loss =
bits per pixel + lam x 255^2 x MSE); a file may code with any layer at a coarser or finer step
(``step_factor``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import EnhancementConfig, VQVAEConfig
from .prior import ActRange

#: The block transform's side: one block per bottom-map position (``VQVAEConfig.bottom_stride``).
BLOCK = 4
#: Coefficients per block: 16 per colour channel.
COEFFICIENTS = 3 * BLOCK * BLOCK
#: The scales of the coefficients' Gaussians (in quantisation steps) the integer context gives:
#: 2^((i + FIRST_SCALE) / 8) for i = 0..SCALES - 1, so that a file's step factor 2^(k/8) moves
#: a scale index by exactly k. Training clamps scales at the first.
SCALES = 64
FIRST_SCALE = -25
LOG_SCALE_STEP = math.log(2) / 8
SCALE_MIN = 2.0 ** (FIRST_SCALE / 8)
#: Means are rounded to 1/MEAN_STEPS of a quantisation step.
MEAN_STEPS = 16
#: Coefficients within +-TAIL are symbols of their scale's table; the others are escaped.
TAIL = 31
#: Table entries: -TAIL..TAIL, then the escape.
SYMBOLS = 2 * TAIL + 2
#: A table's entries sum to about 2^TABLE_BITS, each at least 1 (no integer is impossible).
TABLE_BITS = 20


def step_factor(step: int) -> float:
    """The quantisation step of a file's ``step`` relative to the layer's own: 2^(step/8)."""
    return 2.0 ** (step / 8)


def dct_basis() -> torch.Tensor:
    """(48, 3, 4, 4) orthonormal 2-D DCT-II basis, each colour channel on its own."""
    n = BLOCK
    c = torch.tensor(
        [[math.sqrt((1 if k == 0 else 2) / n) * math.cos(math.pi * (2 * i + 1) * k / (2 * n)) for i in range(n)]
         for k in range(n)]
    )  # fmt: skip
    basis = torch.einsum("ai,bj->abij", c, c).reshape(n * n, n, n)
    w = torch.zeros(COEFFICIENTS, 3, n, n)
    for ch in range(3):
        w[ch * n * n : (ch + 1) * n * n, ch] = basis
    return w


def lapped(basis: torch.Tensor, overlap: int) -> torch.Tensor:
    """A block transform's (48, 3, 4, 4) ``basis`` as a lapped one reaching ``overlap`` pixels
    into each neighbouring block, that reach started at zero: the same transform, free to learn
    its overlap (which smooths the blocks' edges at coarse steps)."""
    return F.pad(basis, (overlap,) * 4)


def gaussian_probabilities() -> torch.Tensor:
    """(SCALES, SYMBOLS) float64 probabilities of a rounded zero-mean Gaussian at each scale, the
    escape last: the tables a new layer starts with (training prices coefficients so)."""
    sigma = 2.0 ** ((torch.arange(SCALES, dtype=torch.float64) + FIRST_SCALE) / 8)
    v = torch.arange(-TAIL, TAIL + 1, dtype=torch.float64)
    p = torch.special.ndtr((v + 0.5) / sigma[:, None]) - torch.special.ndtr((v - 0.5) / sigma[:, None])
    escape = 2 * torch.special.ndtr(-(TAIL + 0.5) / sigma[:, None])
    return torch.cat([p, escape], 1)


def frequency_tables(p: torch.Tensor) -> torch.Tensor:
    """(SCALES, SYMBOLS) integer frequencies of probabilities ``p`` (rows summing to 1): summing
    to about 2^TABLE_BITS, each at least 1. A model stores its tables, so every decoder reads the
    same integers."""
    return (p * ((1 << TABLE_BITS) - SYMBOLS)).round().clamp_min(1).to(torch.int32)


class CodeContext(nn.Module):
    """Mean and log-scale of every coefficient of every block from the code maps: embeddings of
    the top code (repeated 2x) and the bottom code at each position, a 3x3 convolution, residual
    blocks of ELUs and 3x3 convolutions, and a 3x3 convolution to the means and log-scales. These
    are the priors' operations, and each ``ActRange`` marks where the integer version rounds."""

    def __init__(self, vqvae: VQVAEConfig, channels: int, res_blocks: int):
        super().__init__()
        self.top = nn.Embedding(vqvae.top_codes, vqvae.embed_dim)
        self.bottom = nn.Embedding(vqvae.bottom_codes, vqvae.embed_dim)
        self.first = nn.Conv2d(2 * vqvae.embed_dim, channels, 3, 1, 1)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, 1, 1) for _ in range(2 * res_blocks))
        self.out = nn.Conv2d(channels, 2 * COEFFICIENTS, 3, 1, 1)
        self.r_first = ActRange()
        # Per residual block: after the first conv, after the second, after the sum.
        self.ranges = nn.ModuleList(ActRange() for _ in range(3 * res_blocks))

    def features(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """(B, channels, H, W): what the output convolution sees (and a second pass too)."""
        t = F.interpolate(self.top(top).permute(0, 3, 1, 2), scale_factor=2, mode="nearest")
        h = self.r_first(self.first(torch.cat([t, self.bottom(bottom).permute(0, 3, 1, 2)], 1)))
        for i in range(len(self.convs) // 2):
            r_a, r_c, r_h = self.ranges[3 * i : 3 * i + 3]
            a = r_a(self.convs[2 * i](F.elu(h)))
            h = r_h(h + r_c(self.convs[2 * i + 1](F.elu(a))))
        return F.elu(h)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-scale), each (B, 48, H, W), from ``features``."""
        mean, log_scale = self.out(features).chunk(2, 1)
        return mean, log_scale

    def forward(self, top: torch.Tensor, bottom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-scale), each (B, 48, H, W), of (B, H/2, W/2) top and (B, H, W) bottom codes."""
        return self.heads(self.features(top, bottom))


def anchor_mask(h: int, w: int) -> torch.Tensor:
    """(h, w) bool: the anchors, the blocks coded in a two-pass layer's first pass (one colour of
    a checkerboard, the top-left block among them)."""
    return (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0


#: A second pass sees the anchors' integers (in the layer's own steps) clamped to +-ANCHOR_LIMIT,
#: and their magnitudes: 8-bit inputs of the integer convolutions.
ANCHOR_LIMIT = 127


class AnchorContext(nn.Module):
    """The second pass: corrections to the mean and log-scale of every coefficient of the blocks
    that are not anchors, from the first pass's features and the anchors' integers and magnitudes
    around them (zero elsewhere), through three 3x3 convolutions with ELUs between them. The last
    starts at zero, so that a new second pass changes nothing."""

    def __init__(self, features: int, channels: int):
        super().__init__()
        self.first = nn.Conv2d(features + 2 * COEFFICIENTS, channels, 3, 1, 1)
        self.mid = nn.Conv2d(channels, channels, 3, 1, 1)
        self.out = nn.Conv2d(channels, 2 * COEFFICIENTS, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.r_first, self.r_mid = ActRange(), ActRange()

    def forward(self, features: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-scale) corrections, each (B, 48, H, W), from the first pass's ``features``
        and the anchors' integers ``anchors`` (B, 48, H, W; zero at the other blocks)."""
        q = anchors.clamp(-ANCHOR_LIMIT, ANCHOR_LIMIT)
        a = self.r_first(self.first(torch.cat([features, q, q.abs()], 1)))
        b = self.r_mid(self.mid(F.elu(a)))
        mean, log_scale = self.out(F.elu(b)).chunk(2, 1)
        return mean, log_scale


class Enhancement(nn.Module):
    """One enhancement layer (one rate): analysis, gains, context, synthesis and post-filter."""

    def __init__(self, vqvae: VQVAEConfig, config: EnhancementConfig):
        super().__init__()
        o = config.overlap or 0
        self.analysis = nn.Conv2d(3, COEFFICIENTS, BLOCK + 2 * o, BLOCK, o, bias=False, padding_mode="replicate")
        self.synthesis = nn.ConvTranspose2d(COEFFICIENTS, 3, BLOCK + 2 * o, BLOCK, o, bias=False)
        with torch.no_grad():
            self.analysis.weight.copy_(lapped(dct_basis(), o))
            self.synthesis.weight.copy_(lapped(dct_basis(), o))
        self.log_gain = nn.Parameter(torch.full((1, COEFFICIENTS, 1, 1), math.log(8.0)))
        self.context = CodeContext(vqvae, config.channels, config.res_blocks)
        self.anchors = AnchorContext(config.channels, config.anchor_channels) if config.anchor_channels else None
        c = config.postfilter
        self.postfilter = nn.Sequential(
            nn.Conv2d(6, c, 3, 1, 1, padding_mode="replicate"),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1, padding_mode="replicate"),
            nn.ReLU(),
            nn.Conv2d(c, 3, 3, 1, 1, padding_mode="replicate"),
        )
        nn.init.zeros_(self.postfilter[-1].weight)  # a new post-filter starts as no change
        nn.init.zeros_(self.postfilter[-1].bias)
        self.register_buffer("tables", frequency_tables(gaussian_probabilities()))

    def gains(self, step: int = 0) -> torch.Tensor:
        """(1, 48, 1, 1) coefficient gains at a file's ``step`` (``step_factor``)."""
        return self.log_gain.exp() / step_factor(step)

    def coefficients(self, x: torch.Tensor, base: torch.Tensor, step: int = 0) -> torch.Tensor:
        """The scaled coefficients (B, 48, H/4, W/4) of the residual of ``x`` over the VQ-VAE's
        image ``base`` (both in [-1, 1]), which the encoder rounds around the context's means."""
        return self.analysis(x - base) * self.gains(step)

    def synthesise(self, base: torch.Tensor, y_hat: torch.Tensor, step: int = 0) -> torch.Tensor:
        """The enhanced image from the VQ-VAE's image and the dequantised coefficients."""
        residual = self.synthesis(y_hat / self.gains(step))
        out = base + residual
        return out + self.postfilter(torch.cat([out, residual], 1))

    def context_of(
        self, y: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor, step: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-scale) of every coefficient of ``y`` (scaled at a file's ``step``) as the
        decoder knows them, in that step's units: from the code maps, and for a two-pass layer's
        other blocks also from the anchors' integers (which the second pass sees in step 0's units)."""
        f = step_factor(step)
        features = self.context.features(top, bottom)
        mean, log_scale = self.context.heads(features)
        mean, log_scale = mean / f, log_scale - math.log(f)
        if self.anchors is None:
            return mean, log_scale
        anchors = anchor_mask(*y.shape[-2:]).to(y)
        d_mean, d_log_scale = self.anchors(features, torch.round(y - mean).detach() * anchors * f)
        return mean + d_mean / f * (1 - anchors), log_scale + d_log_scale * (1 - anchors)

    def forward(
        self,
        x: torch.Tensor,
        base: torch.Tensor,
        top: torch.Tensor,
        bottom: torch.Tensor,
        noisy: bool,
        straight_through: bool = False,
        step: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (enhanced image, total bits) at a file's ``step``. With ``noisy``,
        uniform noise stands in for rounding (the training proxy), else the coefficients are
        rounded. With ``straight_through`` the noise prices the coefficients but the synthesis
        sees them rounded, as a decoder does, with the gradient passed through the rounding."""
        y = self.coefficients(x, base, step)
        mean, log_scale = self.context_of(y, top, bottom, step)
        scale = log_scale.exp().clamp_min(SCALE_MIN)
        if noisy:
            r = y - mean + torch.empty_like(y).uniform_(-0.5, 0.5)
            y_hat = r + mean
            if straight_through:
                y_hat = y + (torch.round(y - mean) + mean - y).detach()
        else:
            r = torch.round(y - mean)
            y_hat = r + mean
        normal = torch.distributions.Normal(0.0, 1.0)
        likelihood = (normal.cdf((r + 0.5) / scale) - normal.cdf((r - 0.5) / scale)).clamp_min(1e-9)
        return self.synthesise(base, y_hat, step), -likelihood.log2().sum()
