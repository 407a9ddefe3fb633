"""The pricer: a small causal network, distilled from the bottom prior, that prices RDO's
candidate codes on the encoder's side for a fraction of the prior's time.

RDO (``coding.rdo``) weighs each bottom position's candidate codes by their bits under the
bottom prior, in the context of the current codes. Replaying the integer prior for that costs as
much as coding the map; the choice needs only each candidate's bits give or take a constant per
position, and an estimate of them is enough: any choice is a valid file, and the file is coded
with the prior itself. The pricer is PixelSNAIL's convolutional path without attention, at a
fraction of the width (``PricerConfig``), conditioned on the top map, and trained to give the
prior's distribution at every position (``training.pricer``). It belongs to the encoder alone:
the model identifier leaves it out (``zoo.weights.model_id``), so files decode the same with
or without it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import PricerConfig
from .prior import CausalConv2d, GatedResBlock, causal_offsets


def elu(x: torch.Tensor) -> torch.Tensor:
    """The ELU from ``exp``: the same function as ``F.elu`` (to float rounding) at half its time
    or less, since torch's ELU and ``expm1`` are slow under some CPUs' vector dispatch."""
    return torch.exp(x.clamp(max=0)).sub(1).add(x.clamp(min=0))


#: Top-map rows a band of ``Pricer.relative_bits`` covers: bands bound its memory on large images.
BAND = 16


class Pricer(nn.Module):
    """Logits over ``codes`` bottom codes at every position of a bottom map from the codes before
    it (raster order, as the prior's) and the whole top map of ``top_codes`` codes."""

    def __init__(self, config: PricerConfig, codes: int, top_codes: int):
        super().__init__()
        c = config.channels
        self.embed = nn.Embedding(codes, c)
        self.top_embed = nn.Embedding(top_codes, c)
        self.top = nn.Conv2d(c, c, 3, padding=1, padding_mode="replicate")
        self.input = CausalConv2d(c, c, 5, causal_offsets(5, True, 2))
        res = causal_offsets(3, False, 1)
        self.blocks = nn.ModuleList(GatedResBlock(c, 3, res, 0.0, cond=c, elu=elu) for _ in range(config.res_blocks))
        self.head = nn.Conv2d(c, codes, 1)

    @property
    def reach(self) -> int:
        """Rows above a position whose codes its logits depend on."""
        return 2 + len(self.blocks)

    def features(self, bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features of a (B, H, W) bottom map and its (B, H/2, W/2) top map."""
        cond = self.top(elu(self.top_embed(top).permute(0, 3, 1, 2)))
        cond = cond.repeat_interleave(2, 2).repeat_interleave(2, 3)
        x = self.input(self.embed(bottom).permute(0, 3, 1, 2))
        for block in self.blocks:
            x = block(x, cond=cond)
        return elu(x)

    def forward(self, bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) logits (training: compare them with the prior's)."""
        return self.head(self.features(bottom, top))

    @torch.no_grad()
    def relative_bits(self, bottom: np.ndarray, top: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(H, W, k) estimated bits of each of the ``candidates`` (H, W, k) of a bottom map
        ``bottom`` (H, W) with top map ``top``, less a constant per position (as
        ``IntegerPrior.relative_bits``), a band of ``BAND`` top rows at a time."""
        device = self.head.weight.device
        out = np.empty(candidates.shape, dtype=np.float32)
        margin = (self.reach + 1) // 2 + 1  # top rows above a band (and one below, for the top convolution)
        for start in range(0, top.shape[0], BAND):
            a, b = max(0, start - margin), min(top.shape[0], start + BAND + 1)
            t = torch.as_tensor(top[a:b], device=device)[None]
            f = self.features(torch.as_tensor(bottom[2 * a : 2 * b], device=device)[None], t)
            rows = slice(2 * (start - a), 2 * (min(start + BAND, top.shape[0]) - a))
            f = f[0, :, rows].permute(1, 2, 0)  # (h, W, C)
            cand = torch.as_tensor(candidates[2 * start : 2 * start + f.shape[0]], device=device)
            logits = torch.einsum("hwc,hwkc->hwk", f, self.head.weight[:, :, 0, 0][cand]) + self.head.bias[cand]
            out[2 * start : 2 * start + f.shape[0]] = (logits / -np.log(2)).cpu().numpy()
        return out
