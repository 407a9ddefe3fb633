"""PixelSNAIL priors (Chen et al. 2018) over code maps, in floating point, for training.

Coding never runs these modules directly: ``qprior.IntegerPrior`` turns a trained, calibrated
prior into integer arithmetic that gives bit-identical probabilities on any device and in any
decoding order. The receptive field is chosen so that decoding can proceed in wavefronts:

- the first convolution is strict (it never sees the position it predicts) and reaches
  ``kernel // 2`` columns to the right in the rows above;
- the residual convolutions see only the rows above and the columns to the left ("down-right");
- attention sees a window of ``attn_rows`` rows above, from ``attn_left`` columns to the left
  to ``attn_right`` columns to the right, and ``attn_left`` positions to the left on its own row.

So the logits at (r, c) depend on codes at most ``right_reach`` columns to the right in the row
above, and every position with ``c + r * (right_reach + 1) == t`` can be decoded at step t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .config import PriorConfig

Offsets = tuple[tuple[int, int], ...]
#: Activation range assumed before calibration.
DEFAULT_RANGE = 4.0


class ActRange(nn.Module):
    """Identity that records the largest magnitude passing through it while calibrating.

    Each one marks a point where the integer prior rounds to 8 bits; the recorded range sets
    that point's scale and is stored with the weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("absmax", torch.tensor(DEFAULT_RANGE))
        self.observing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.absmax.copy_(torch.maximum(self.absmax, x.detach().abs().max()))
        return x


def causal_offsets(kernel: int, strict: bool, right: int) -> Offsets:
    """Taps (dy, dx) of a causal kernel: ``kernel // 2`` rows above (``-half..right`` columns)
    and, on the own row, the columns to the left (and the centre unless ``strict``)."""
    half = kernel // 2
    above = tuple((dy, dx) for dy in range(-half, 0) for dx in range(-half, right + 1))
    return above + tuple((0, dx) for dx in range(-half, 0 if strict else 1))


def full_offsets(kernel: int) -> Offsets:
    """All taps of a centred ``kernel`` x ``kernel`` window (non-causal)."""
    half = kernel // 2
    return tuple((dy, dx) for dy in range(-half, half + 1) for dx in range(-half, half + 1))


def attention_offsets(rows: int, left: int, right: int) -> Offsets:
    """Keys of a query at (0, 0): ``rows`` rows above from ``left`` columns to the left to ``right``
    to the right, and ``left`` columns to the left on its own row. Only ``right`` limits wavefronts."""
    above = tuple((dy, dx) for dy in range(-rows, 0) for dx in range(-left, right + 1))
    return above + tuple((0, dx) for dx in range(-left, 0))


def neighbours(offsets: Offsets, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(len(offsets), h*w) flat index of each position's neighbour, or h*w where it falls outside."""
    r = torch.arange(h, device=device).view(h, 1)
    c = torch.arange(w, device=device).view(1, w)
    out = []
    for dy, dx in offsets:
        rr, cc = r + dy, c + dx
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        out.append(torch.where(inside, rr * w + cc, h * w).reshape(-1))
    return torch.stack(out)


class CausalConv2d(nn.Module):
    """A convolution restricted to the taps ``offsets`` (weights elsewhere are masked to zero)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, offsets: Offsets, bias: bool = True):
        super().__init__()
        self.kernel, self.offsets = kernel, offsets
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        mask = torch.zeros(kernel, kernel)
        for dy, dx in offsets:
            mask[kernel // 2 + dy, kernel // 2 + dx] = 1
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.kernel // 2)

    def tap_weights(self) -> torch.Tensor:
        """(c_out, taps, c_in) weights at ``offsets``, in their order."""
        k = self.kernel // 2
        return torch.stack([self.weight[:, :, k + dy, k + dx] for dy, dx in self.offsets], 1)


def conv1x1(c_in: int, c_out: int, bias: bool = True) -> CausalConv2d:
    return CausalConv2d(c_in, c_out, 1, ((0, 0),), bias)


class GatedResBlock(nn.Module):
    """x + GLU(conv2(ELU(conv1(ELU(x)) [+ aux(ELU(a))])) [+ cond(c)]), PixelSNAIL's residual unit
    (``elu``: another implementation of the ELU, as the pricer's)."""

    def __init__(
        self,
        channels: int,
        kernel: int,
        offsets: Offsets,
        dropout: float,
        aux: int = 0,
        cond: int = 0,
        elu: Callable[[torch.Tensor], torch.Tensor] = F.elu,
    ):
        super().__init__()
        self.elu = elu
        self.conv1 = CausalConv2d(channels, channels, kernel, offsets)
        self.aux = conv1x1(aux, channels, bias=False) if aux else None
        self.drop = nn.Dropout(dropout)
        self.conv2 = CausalConv2d(channels, 2 * channels, kernel, offsets)
        self.cond = conv1x1(cond, 2 * channels, bias=False) if cond else None
        self.r_a, self.r_g, self.r_u, self.r_out = ActRange(), ActRange(), ActRange(), ActRange()

    def forward(
        self, x: torch.Tensor, aux: torch.Tensor | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        a = self.conv1(self.elu(x))
        if self.aux is not None:
            a = a + self.aux(self.elu(aux))
        g = self.conv2(self.drop(self.elu(self.r_a(a))))
        if self.cond is not None:
            g = g + self.cond(cond)
        u = self.r_u(F.glu(self.r_g(g), dim=1))
        return self.r_out(x + u)


class WindowAttention(nn.Module):
    """Multi-head attention of each position over the causal window ``offsets``.

    Queries come from ``query`` (C_q channels), keys and values from ``key`` (C_k channels).
    Each window tap is a shifted view of the zero-padded key and value maps, so no (N, T, d)
    tensor of gathered keys is built (several times faster to train on a CPU).
    """

    def __init__(self, c_q: int, c_k: int, channels: int, heads: int, offsets: Offsets, dropout: float):
        super().__init__()
        self.heads, self.offsets = heads, offsets
        self.query, self.key, self.value = conv1x1(c_q, channels), conv1x1(c_k, channels), conv1x1(c_k, channels)
        self.drop = nn.Dropout(dropout)
        self.r_q, self.r_k, self.r_v, self.r_out = ActRange(), ActRange(), ActRange(), ActRange()
        dys, dxs = [dy for dy, _ in offsets], [dx for _, dx in offsets]
        # Zero padding (top, left, right) that puts every tap inside the padded map.
        self.pad = (max(0, -min(dys)), max(0, -min(dxs)), max(0, max(dxs)))

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        b, _, h, w = query.shape
        q = self._heads(self.r_q(self.query(query)))  # (B, heads, d, H, W)
        k = self._taps(self._heads(self.r_k(self.key(key))))
        v = self._taps(self._heads(self.r_v(self.value(key))))
        scores = torch.stack([(q * k_t).sum(2) for k_t in k], -1) / q.shape[2] ** 0.5  # (B, heads, H, W, T)
        valid = (neighbours(self.offsets, h, w, query.device) < h * w).t().reshape(h, w, -1)
        # A position with no key at all (the first one) gets zeros, not a uniform spread.
        attn = self.drop(torch.softmax(scores.masked_fill(~valid, -1e9), -1) * valid)
        out = sum(attn[..., t].unsqueeze(2) * v_t for t, v_t in enumerate(v))
        return self.r_out(out.reshape(b, -1, h, w))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = t.shape
        return t.view(b, self.heads, c // self.heads, h, w)

    def _taps(self, t: torch.Tensor) -> list[torch.Tensor]:
        """The map shifted to each tap: entry i at (y, x) is ``t`` at (y + dy_i, x + dx_i), or zero outside."""
        h, w = t.shape[-2:]
        top, left, right = self.pad
        padded = F.pad(t, (left, right, top, 0))
        return [padded[..., top + dy : top + dy + h, left + dx : left + dx + w] for dy, dx in self.offsets]


class PixelBlock(nn.Module):
    """Gated residual blocks, windowed causal attention, and a 1x1 gated block mixing them in."""

    def __init__(self, c: PriorConfig, cond_channels: int):
        super().__init__()
        res_offsets = causal_offsets(c.kernel, strict=False, right=0)
        self.res = nn.ModuleList(
            GatedResBlock(c.channels, c.kernel, res_offsets, c.dropout, cond=cond_channels) for _ in range(c.res_blocks)
        )
        window = attention_offsets(c.attn_rows, c.attn_left, c.attn_right)
        self.attn = WindowAttention(
            c.channels + 2, 2 * c.channels + 2, c.attn_channels, c.attn_heads, window, c.dropout
        )
        self.out = GatedResBlock(c.channels, 1, ((0, 0),), c.dropout, aux=c.attn_channels)

    def forward(self, x: torch.Tensor, background: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = x
        for block in self.res:
            h = block(h, cond=cond)
        attn = self.attn(torch.cat([h, background], 1), torch.cat([x, h, background], 1))
        return self.out(h, aux=attn)


def embedding(codes: int, channels: int) -> nn.Embedding:
    """An embedding initialised with unit variance, as nn.Embedding's N(0, 1), but uniform: unlike
    normal_, uniform_ is cheap on the meta device, where model files are checked."""
    bound = math.sqrt(3.0)
    return nn.Embedding(codes, channels, _weight=torch.empty(codes, channels).uniform_(-bound, bound))


class CondNet(nn.Module):
    """Non-causal residual stack over the conditioning (top) map, upsampled 2x (nearest)."""

    def __init__(self, codes: int, channels: int, res_blocks: int):
        super().__init__()
        self.embed = embedding(codes, channels)
        offsets = full_offsets(3)
        self.convs = nn.ModuleList(CausalConv2d(channels, channels, 3, offsets) for _ in range(2 * res_blocks))
        # Per residual block: after the first conv, after the second, after the sum.
        self.ranges = nn.ModuleList(ActRange() for _ in range(3 * res_blocks))

    def forward(self, cond_codes: torch.Tensor) -> torch.Tensor:
        h = self.embed(cond_codes).permute(0, 3, 1, 2)
        for i in range(len(self.convs) // 2):
            r_a, r_c, r_h = self.ranges[3 * i : 3 * i + 3]
            a = r_a(self.convs[2 * i](F.elu(h)))
            h = r_h(h + r_c(self.convs[2 * i + 1](F.elu(a))))
        return F.interpolate(h, scale_factor=2, mode="nearest")


def background(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """PixelSNAIL's positional input, (2, h, w) float64: row and column as r/h - 0.5 and c/w - 0.5."""
    rows = torch.arange(h, device=device, dtype=torch.float64) / h - 0.5
    cols = torch.arange(w, device=device, dtype=torch.float64) / w - 0.5
    return torch.stack([rows.view(h, 1).expand(h, w), cols.view(1, w).expand(h, w)])


class PixelSNAIL(nn.Module):
    """Categorical distribution over ``config.codes`` codes at every position of a code map."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.embed = embedding(c.codes, c.channels)
        self.input = CausalConv2d(c.channels, c.channels, c.kernel, causal_offsets(c.kernel, True, c.kernel // 2))
        self.r_input = ActRange()
        self.cond_net = CondNet(c.cond_codes, c.channels, c.cond_res_blocks) if c.cond_codes else None
        self.blocks = nn.ModuleList(PixelBlock(c, c.channels if c.cond_codes else 0) for _ in range(c.blocks))
        self.head = conv1x1(c.channels, c.codes)

    @property
    def right_reach(self) -> int:
        """How many columns to the right, in the row above, the logits of a position can see."""
        return self.config.kernel // 2 + self.config.blocks * self.config.attn_right

    def condition(self, cond_codes: torch.Tensor | None) -> torch.Tensor | None:
        """Conditioning features for a top map (None for the unconditional prior)."""
        if self.cond_net is None:
            return None
        if cond_codes is None:
            raise ValueError("this prior is conditional: give it the top code map")
        return self.cond_net(cond_codes)

    def logits(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, H, W) logits of a (B, H, W) code map, given ``condition()``'s features."""
        b, h, w = codes.shape
        x = self.r_input(self.input(self.embed(codes).permute(0, 3, 1, 2)))
        bg = background(h, w, codes.device).float().unsqueeze(0).expand(b, -1, -1, -1)
        for block in self.blocks:
            x = block(x, bg, cond)
        return self.head(F.elu(x))

    def forward(self, codes: torch.Tensor, cond_codes: torch.Tensor | None = None) -> torch.Tensor:
        """Training pass: logits with teacher forcing (use with cross-entropy against ``codes``)."""
        return self.logits(codes, self.condition(cond_codes))


@contextmanager
def observing(prior: PixelSNAIL) -> Iterator[None]:
    """Within the block, every ``ActRange`` of ``prior`` records the ranges it sees, from zero."""
    ranges = [m for m in prior.modules() if isinstance(m, ActRange)]
    for r in ranges:
        r.absmax.zero_()
        r.observing = True
    try:
        yield
    finally:
        for r in ranges:
            r.observing = False
            r.absmax.clamp_(min=1e-3)


@torch.no_grad()
def calibrate(prior: PixelSNAIL, maps: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
    """Set the activation ranges of ``prior`` from (codes, cond_codes) batches, e.g. validation maps."""
    was_training = prior.training
    prior.eval()
    with observing(prior):
        for codes, cond in maps:
            prior(codes, cond)
    prior.train(was_training)
