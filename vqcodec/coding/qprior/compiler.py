"""Compiling a trained ``PixelSNAIL`` into integer operations, tracking every source's scale."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from ...nn.prior import ActRange, GatedResBlock, Offsets, WindowAttention, background
from . import arithmetic
from .arithmetic import (
    ATTN_BITS,
    QMAX,
    elu_table,
    exp_table,
    sigmoid_table,
)
from .ops import Add, Attention, Glu, Lut, Op, QConv


class Builder:
    """Turns the float modules into ops, tracking every source's scale (real value per integer step)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.scales: dict[str, float] = {}
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self._count}:{hint}"

    def elu(self, src: str) -> str:
        out = f"{src}.elu"
        if out not in self.scales:
            self.ops.append(Lut(out, src, elu_table(self.scales[src])))
            self.scales[out] = self.scales[src]
        return out

    def conv(
        self,
        parts: list[tuple[torch.Tensor, str, Offsets]],
        bias: torch.Tensor | None,
        out_scale: float,
        hint: str,
        limit: int = QMAX,
    ) -> str:
        """Quantize a convolution over input ``parts`` (tap weights (C_out, T, C_in), source, offsets)."""
        folded = torch.cat([w.detach().double().flatten(1) * self.scales[src] for w, src, _ in parts], 1)
        w_scale = folded.abs().amax(1) / QMAX
        w_scale = torch.where(w_scale > 0, w_scale, torch.ones_like(w_scale))
        weight = torch.round(folded / w_scale.unsqueeze(1)).clamp_(-QMAX, QMAX)
        offset = bias.detach().double() / out_scale if bias is not None else torch.zeros_like(w_scale)
        out = self.name(hint)
        segments = [(src, offsets) for _, src, offsets in parts]
        blocks, int8_blocks, start = [], [], 0
        for w, _, _ in parts:
            seg = weight[:, start : start + w[0].numel()].t()
            blocks += [
                seg[a : a + arithmetic.CHUNK].float().contiguous() for a in range(0, seg.shape[0], arithmetic.CHUNK)
            ]
            int8_blocks.append(seg.to(torch.int8).contiguous())
            start += w[0].numel()
        scale = w_scale / out_scale
        if len(blocks) == 1:  # the product is an exact float32 integer: rescale in float32, faster
            scale, offset = scale.float(), offset.float()
        int8_weights = int8_blocks if weight.shape[1] <= arithmetic.INT8_REDUCTION else None
        self.ops.append(QConv(out, segments, blocks, int8_weights, scale, offset, limit))
        self.scales[out] = out_scale
        return out

    def gated(self, block: GatedResBlock, x: str, aux: str | None = None, cond: str | None = None) -> str:
        parts = [(block.conv1.tap_weights(), self.elu(x), block.conv1.offsets)]
        if block.aux is not None:
            parts.append((block.aux.tap_weights(), self.elu(aux), ((0, 0),)))
        a = self.conv(parts, block.conv1.bias, scale_of(block.r_a), "a")
        parts = [(block.conv2.tap_weights(), self.elu(a), block.conv2.offsets)]
        if block.cond is not None:
            parts.append((block.cond.tap_weights(), cond, ((0, 0),)))
        g = self.conv(parts, block.conv2.bias, scale_of(block.r_g), "g")
        u = self.name("u")
        self.ops.append(Glu(u, g, sigmoid_table(self.scales[g]), self.scales[g] / QMAX / scale_of(block.r_u)))
        self.scales[u] = scale_of(block.r_u)
        return self.add(x, u, scale_of(block.r_out))

    def add(self, a: str, b: str, out_scale: float) -> str:
        out = self.name("sum")
        self.ops.append(Add(out, a, b, self.scales[a] / out_scale, self.scales[b] / out_scale))
        self.scales[out] = out_scale
        return out

    def attention(self, attn: WindowAttention, x: str, h: str, bg: str) -> str:
        cq = attn.query.tap_weights()
        ck, cv = attn.key.tap_weights(), attn.value.tap_weights()
        n_h = cq.shape[2] - 2
        q = self.conv(
            [(cq[..., :n_h], h, ((0, 0),)), (cq[..., n_h:], bg, ((0, 0),))], attn.query.bias, scale_of(attn.r_q), "q"
        )
        kv = []
        for w, bias, r in ((ck, attn.key.bias, attn.r_k), (cv, attn.value.bias, attn.r_v)):
            splits = [
                (w[..., :n_h], x, ((0, 0),)),
                (w[..., n_h : 2 * n_h], h, ((0, 0),)),
                (w[..., 2 * n_h :], bg, ((0, 0),)),
            ]
            kv.append(self.conv(splits, bias, scale_of(r), "kv"))
        d = cq.shape[0] // attn.heads
        step = self.scales[q] * self.scales[kv[0]] / math.sqrt(d)
        out = self.name("attn")
        keys = len(attn.offsets)
        bits = min(ATTN_BITS, int(math.log2((1 << 24) / (keys * QMAX))))
        table = exp_table(step, bits, 0)
        if table[-1] != 0:  # a table cut short at MAX_TABLE entries: outside taps need a 0 to land on
            table = torch.cat([table, table.new_zeros(1)])
        self.ops.append(
            Attention(out, q, kv[0], kv[1], attn.offsets, attn.heads, table, self.scales[kv[1]] / scale_of(attn.r_out))
        )
        self.scales[out] = scale_of(attn.r_out)
        return out


@lru_cache(maxsize=64)
def background_rows(h: int, w: int) -> np.ndarray:
    """The 8-bit positional input of an h x w region, one row per position (regions of a batch
    share a few shapes: computed once per shape)."""
    return np.rint(background(h, w).flatten(1).t().numpy() * QMAX)


def scale_of(r: ActRange) -> float:
    return float(r.absmax) / QMAX


def embedding_table(embed: nn.Embedding) -> tuple[torch.Tensor, float]:
    w = embed.weight.detach().double()
    scale = float(w.abs().max()) / QMAX or 1.0
    return torch.round(w / scale).clamp_(-QMAX, QMAX).float(), scale
