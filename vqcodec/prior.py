"""PixelSNAIL priors (Chen et al. 2018) over code maps, in raster order.

Every layer is causal: the logits at a position depend only on the codes before it in raster
order (and, for the bottom prior, on the whole top map). Masked weights are exact zeros and the
attention mask is applied by replacement, so the logits at a position are bit-identical
whatever codes sit at later positions. That is what lets the decoder replay the prior on a
partly decoded map and get exactly the probabilities the encoder used in its one causal pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import PriorConfig

#: Score given to masked attention entries; exp() of it underflows to exactly zero.
_MASKED_SCORE = -1e9


class CausalConv2d(nn.Module):
    """A k x k convolution that sees the rows above and, on its own row, the columns to the left.

    ``strict`` also hides the centre (PixelCNN mask 'A'); it is used once, on the raw codes.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, strict: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        mask = torch.ones(kernel, kernel)
        mask[kernel // 2, kernel // 2 + (0 if strict else 1) :] = 0
        mask[kernel // 2 + 1 :] = 0
        self.register_buffer("mask", mask, persistent=False)
        self.pad = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.pad)


class GatedResBlock(nn.Module):
    """ELU - conv - ELU - dropout - conv to 2C channels (+ conditioning) - gated linear unit, added to the input."""

    def __init__(self, channels: int, kernel: int, dropout: float, cond_channels: int = 0, aux_channels: int = 0):
        super().__init__()
        self.conv1 = CausalConv2d(channels, channels, kernel)
        self.aux = nn.Conv2d(aux_channels, channels, 1) if aux_channels else None
        self.drop = nn.Dropout(dropout)
        self.conv2 = CausalConv2d(channels, 2 * channels, kernel)
        self.cond = nn.Conv2d(cond_channels, 2 * channels, 1, bias=False) if cond_channels else None

    def forward(
        self, x: torch.Tensor, aux: torch.Tensor | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.conv1(F.elu(x))
        if self.aux is not None:
            h = h + self.aux(F.elu(aux))
        h = self.conv2(self.drop(F.elu(h)))
        if self.cond is not None:
            h = h + self.cond(cond)
        return x + F.glu(h, dim=1)


class CausalAttention(nn.Module):
    """Multi-head attention of each position over the strictly earlier positions (raster order)."""

    def __init__(self, query_channels: int, key_channels: int, channels: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(query_channels, channels)
        self.key = nn.Linear(key_channels, channels)
        self.value = nn.Linear(key_channels, channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        b, _, h, w = query.shape
        n = h * w

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, -1).transpose(1, 2)

        q = heads(self.query(query.flatten(2).transpose(1, 2)))
        k_in = key.flatten(2).transpose(1, 2)
        k, v = heads(self.key(k_in)), heads(self.value(k_in))
        scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
        earlier = torch.ones(n, n, dtype=torch.bool, device=query.device).tril(-1)
        scores = scores.masked_fill(~earlier, _MASKED_SCORE)
        # The first position has no earlier one: its row is zeroed instead of spread uniformly.
        attn = self.drop(torch.softmax(scores, -1) * earlier)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return out.transpose(1, 2).reshape(b, -1, h, w)


class PixelBlock(nn.Module):
    """Gated residual blocks followed by causal attention, as in PixelSNAIL."""

    def __init__(self, config: PriorConfig, cond_channels: int):
        super().__init__()
        c = config
        self.res = nn.ModuleList(
            GatedResBlock(c.channels, c.kernel, c.dropout, cond_channels) for _ in range(c.res_blocks)
        )
        # Keys see the block input, the block's output and the position; queries the output and position.
        self.attn = CausalAttention(c.channels + 2, 2 * c.channels + 2, c.attn_channels, c.attn_heads, c.dropout)
        self.out = GatedResBlock(c.channels, 1, c.dropout, aux_channels=c.attn_channels)

    def forward(self, x: torch.Tensor, background: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = x
        for block in self.res:
            h = block(h, cond=cond)
        attn = self.attn(torch.cat([h, background], 1), torch.cat([x, h, background], 1))
        return self.out(h, aux=attn)


class CondNet(nn.Module):
    """Non-causal residual stack over the conditioning (top) map, upsampled 2x to the bottom map."""

    def __init__(self, codes: int, channels: int, res_blocks: int):
        super().__init__()
        self.embed = nn.Embedding(codes, channels)
        self.blocks = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(2 * res_blocks))

    def forward(self, cond_codes: torch.Tensor) -> torch.Tensor:
        h = self.embed(cond_codes).permute(0, 3, 1, 2)
        for first, second in zip(self.blocks[::2], self.blocks[1::2], strict=True):
            h = h + second(F.elu(first(F.elu(h))))
        return F.interpolate(h, scale_factor=2, mode="nearest")


def _background(b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """PixelSNAIL's positional input: row and column coordinates in [-0.5, 0.5)."""
    rows = (torch.arange(h, device=device, dtype=torch.float32) / h - 0.5).view(1, 1, h, 1).expand(b, 1, h, w)
    cols = (torch.arange(w, device=device, dtype=torch.float32) / w - 0.5).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([rows, cols], 1)


class PixelSNAIL(nn.Module):
    """Categorical distribution over ``config.codes`` codes at every position of a code map."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.embed = nn.Embedding(c.codes, c.channels)
        self.input = CausalConv2d(c.channels, c.channels, c.kernel, strict=True)
        self.cond_net = CondNet(c.cond_codes, c.channels, c.cond_res_blocks) if c.cond_codes else None
        cond_channels = c.channels if c.cond_codes else 0
        self.blocks = nn.ModuleList(PixelBlock(c, cond_channels) for _ in range(c.blocks))
        self.head = nn.Conv2d(c.channels, c.codes, 1)

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
        x = self.input(self.embed(codes).permute(0, 3, 1, 2))
        background = _background(b, h, w, codes.device)
        for block in self.blocks:
            x = block(x, background, cond)
        return self.head(F.elu(x))

    def forward(self, codes: torch.Tensor, cond_codes: torch.Tensor | None = None) -> torch.Tensor:
        """Training pass: logits with teacher forcing (use with cross-entropy against ``codes``)."""
        return self.logits(codes, self.condition(cond_codes))
