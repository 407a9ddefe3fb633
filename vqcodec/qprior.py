"""The integer-exact prior: every probability vqcodec codes with is computed here, and only here.

A trained ``PixelSNAIL`` becomes a list of integer operations over the positions of a code map:

- weights and activations are integers in [-127, 127], held in float32 tensors. A matrix product
  sums at most ``CHUNK`` products per float32 pass, so every partial sum is an integer below 2^24
  and exact in any order, blocking, batch shape or device; chunks are added in float64;
- scales between layers are applied in float64 with single, correctly rounded IEEE operations and
  rounded half to even;
- ELU, sigmoid and exp are lookup tables built once from the model's scales.

So the probabilities at a position are the same integers whether they are computed for the whole
map at once (the encoder) or a wavefront at a time (the decoder), on a CPU or a GPU. Positions are
rows of per-source caches of shape (N + 1, C); row N stays zero and stands for "outside the map".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .prior import ActRange, GatedResBlock, Offsets, PixelSNAIL, WindowAttention, background, neighbours

QMAX = 127
#: Longest reduction of one float32 product: 1024 * 127 * 127 < 2^24.
CHUNK = 1024
#: Logits are rounded to 1/LOGIT_STEPS nat.
LOGIT_STEPS = 64
LOGIT_LIMIT = 1 << 20
#: Probability tables are integers up to 2^PROB_BITS, at least 1, so no code is ever impossible.
PROB_BITS = 24
#: Attention weights are integers up to 2^ATTN_BITS.
ATTN_BITS = 12
_MAX_TABLE = 1 << 20


def _table(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def elu_table(scale: float) -> torch.Tensor:
    """ELU of every 8-bit activation at ``scale``, as activations at the same scale (index x + 127)."""
    return _table(
        [x if x >= 0 else max(-QMAX, round((math.exp(x * scale) - 1) / scale)) for x in range(-QMAX, QMAX + 1)]
    )


def sigmoid_table(scale: float) -> torch.Tensor:
    """127 * sigmoid of every 8-bit activation at ``scale`` (index x + 127)."""
    return _table([round(QMAX / (1 + math.exp(-x * scale))) for x in range(-QMAX, QMAX + 1)])


def exp_table(step: float, bits: int, floor: int) -> torch.Tensor:
    """round(2^bits * exp(-d * step)) for d = 0, 1, ... until it reaches ``floor`` (at most 2^20 entries)."""
    size = min(_MAX_TABLE, math.ceil((bits + 1) * math.log(2) / step) + 1)
    return _table([max(floor, round(2.0**bits * math.exp(-d * step))) for d in range(size)])


@contextmanager
def exact_float32() -> Iterator[None]:
    """Within the block, float32 products are true float32 (no TF32 or bfloat16 shortcuts)."""
    precision, tf32 = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = tf32


class MapState:
    """The caches of one code map being coded: one (N + 1, C) tensor per source."""

    def __init__(self, h: int, w: int, device: torch.device):
        self.h, self.w, self.n, self.device = h, w, h * w, device
        self.caches: dict[str, torch.Tensor] = {}
        self._tables: dict[Offsets, torch.Tensor] = {}

    def table(self, offsets: Offsets) -> torch.Tensor:
        """Neighbour indices (T, N) for ``offsets``, built once per map."""
        if offsets not in self._tables:
            self._tables[offsets] = neighbours(offsets, self.h, self.w, self.device)
        return self._tables[offsets]

    def write(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        if name not in self.caches:
            self.caches[name] = torch.zeros(self.n + 1, values.shape[1], device=self.device)
        self.caches[name][rows] = values.float()

    def gather(self, name: str, offsets: Offsets, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), T * C) values of ``name`` at each row's neighbours, tap-major."""
        if offsets == ((0, 0),):
            return self.caches[name][rows]
        idx = self.table(offsets)[:, rows]  # (T, S)
        return self.caches[name][idx.t()].flatten(1)


@dataclass
class QConv:
    """y = round(sum(w * x) * scale + offset), clamped, over the concatenated input segments."""

    out: str
    segments: list[tuple[str, Offsets]]
    weight: torch.Tensor  # (R, C_out), integers
    scale: torch.Tensor  # (C_out,) float64
    offset: torch.Tensor  # (C_out,) float64
    limit: int = QMAX

    def __call__(self, state: MapState, rows: torch.Tensor) -> None:
        x = torch.cat([state.gather(name, offsets, rows) for name, offsets in self.segments], 1)
        acc = sum((x[:, a : a + CHUNK] @ self.weight[a : a + CHUNK]).double() for a in range(0, x.shape[1], CHUNK))
        state.write(self.out, rows, torch.round(acc * self.scale + self.offset).clamp_(-self.limit, self.limit))


@dataclass
class Lut:
    """Elementwise lookup table over 8-bit activations."""

    out: str
    src: str
    table: torch.Tensor

    def __call__(self, state: MapState, rows: torch.Tensor) -> None:
        state.write(self.out, rows, self.table[state.caches[self.src][rows].long() + QMAX])


@dataclass
class Add:
    """Residual sum of two activations at different scales."""

    out: str
    a: str
    b: str
    scale_a: float
    scale_b: float

    def __call__(self, state: MapState, rows: torch.Tensor) -> None:
        a, b = state.caches[self.a][rows].double(), state.caches[self.b][rows].double()
        state.write(self.out, rows, torch.round(a * self.scale_a + b * self.scale_b).clamp_(-QMAX, QMAX))


@dataclass
class Glu:
    """Gated linear unit: first half times sigmoid of the second half."""

    out: str
    src: str
    sigmoid: torch.Tensor
    scale: float

    def __call__(self, state: MapState, rows: torch.Tensor) -> None:
        value, gate = state.caches[self.src][rows].double().chunk(2, dim=1)
        product = value * self.sigmoid[gate.long() + QMAX]
        state.write(self.out, rows, torch.round(product * self.scale).clamp_(-QMAX, QMAX))


@dataclass
class Attention:
    """Windowed multi-head attention with integer scores, an exp table and exact weighted sums."""

    out: str
    query: str
    key: str
    value: str
    offsets: Offsets
    heads: int
    exp: torch.Tensor
    scale: float

    def __call__(self, state: MapState, rows: torch.Tensor) -> None:
        s, h = len(rows), self.heads
        idx = state.table(self.offsets)[:, rows].t()  # (S, T)
        q = state.caches[self.query][rows].view(s, h, 1, -1)
        k = state.caches[self.key][idx].view(s, idx.shape[1], h, -1).transpose(1, 2)  # (S, h, T, d)
        v = state.caches[self.value][idx].view(s, idx.shape[1], h, -1).transpose(1, 2).double()
        scores = (q @ k.transpose(-1, -2)).squeeze(-2)  # (S, h, T), exact integers
        valid = (idx < state.n).unsqueeze(1)
        top = scores.masked_fill(~valid, -math.inf).amax(-1, keepdim=True)
        dist = (top - scores).masked_fill(~valid, 0).long().clamp_(max=len(self.exp) - 1)
        weights = self.exp[dist] * valid  # (S, h, T) float64 integers
        numer = (weights.unsqueeze(-2) @ v).squeeze(-2)  # (S, h, d)
        denom = weights.sum(-1, keepdim=True)
        out = torch.where(denom > 0, torch.round(numer / denom.clamp(min=1) * self.scale), 0.0)
        state.write(self.out, rows, out.reshape(s, -1).clamp_(-QMAX, QMAX))


Op = Callable[[MapState, torch.Tensor], None]


class _Builder:
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
        self.ops.append(QConv(out, segments, weight.t().float().contiguous(), w_scale / out_scale, offset, limit))
        self.scales[out] = out_scale
        return out

    def gated(self, block: GatedResBlock, x: str, aux: str | None = None, cond: str | None = None) -> str:
        parts = [(block.conv1.tap_weights(), self.elu(x), block.conv1.offsets)]
        if block.aux is not None:
            parts.append((block.aux.tap_weights(), self.elu(aux), ((0, 0),)))
        a = self.conv(parts, block.conv1.bias, _scale(block.r_a), "a")
        parts = [(block.conv2.tap_weights(), self.elu(a), block.conv2.offsets)]
        if block.cond is not None:
            parts.append((block.cond.tap_weights(), cond, ((0, 0),)))
        g = self.conv(parts, block.conv2.bias, _scale(block.r_g), "g")
        u = self.name("u")
        self.ops.append(Glu(u, g, sigmoid_table(self.scales[g]), self.scales[g] / QMAX / _scale(block.r_u)))
        self.scales[u] = _scale(block.r_u)
        return self.add(x, u, _scale(block.r_out))

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
            [(cq[..., :n_h], h, ((0, 0),)), (cq[..., n_h:], bg, ((0, 0),))], attn.query.bias, _scale(attn.r_q), "q"
        )
        kv = []
        for w, bias, r in ((ck, attn.key.bias, attn.r_k), (cv, attn.value.bias, attn.r_v)):
            splits = [
                (w[..., :n_h], x, ((0, 0),)),
                (w[..., n_h : 2 * n_h], h, ((0, 0),)),
                (w[..., 2 * n_h :], bg, ((0, 0),)),
            ]
            kv.append(self.conv(splits, bias, _scale(r), "kv"))
        d = cq.shape[0] // attn.heads
        step = self.scales[q] * self.scales[kv[0]] / math.sqrt(d)
        out = self.name("attn")
        table = exp_table(step, ATTN_BITS, 0)
        self.ops.append(
            Attention(out, q, kv[0], kv[1], attn.offsets, attn.heads, table, self.scales[kv[1]] / _scale(attn.r_out))
        )
        self.scales[out] = _scale(attn.r_out)
        return out


def _scale(r: ActRange) -> float:
    return float(r.absmax) / QMAX


def _embedding_table(embed: nn.Embedding) -> tuple[torch.Tensor, float]:
    w = embed.weight.detach().double()
    scale = float(w.abs().max()) / QMAX or 1.0
    return torch.round(w / scale).clamp_(-QMAX, QMAX).float(), scale


class IntegerPrior:
    """The integer version of one ``PixelSNAIL``: probabilities for any set of positions of a map."""

    def __init__(self, prior: PixelSNAIL, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.codes = prior.config.codes
        #: Wavefront slope: positions with c + r * slope == t depend only on earlier wavefronts.
        self.slope = prior.right_reach + 1
        self.embed, emb_scale = _embedding_table(prior.embed)
        b = _Builder()
        b.scales.update({"emb": emb_scale, "bg": 1.0 / QMAX})
        self.cond_ops: list[Op] = []
        if prior.cond_net is not None:
            self.cond_embed, cond_scale = _embedding_table(prior.cond_net.embed)
            b.scales["cond_emb"] = cond_scale
            self.cond_out = self._cond_net(b, prior)
            self.cond_ops, b.ops = b.ops, []
            b.scales["cond"] = b.scales[self.cond_out]
        x = b.conv(
            [(prior.input.tap_weights(), "emb", prior.input.offsets)], prior.input.bias, _scale(prior.r_input), "x"
        )
        for block in prior.blocks:
            h = x
            for res in block.res:
                h = b.gated(res, h, cond="cond" if prior.cond_net is not None else None)
            attn = b.attention(block.attn, x, h, "bg")
            x = b.gated(block.out, h, aux=attn)
        head = prior.head
        self.logits = b.conv(
            [(head.tap_weights(), b.elu(x), ((0, 0),))], head.bias, 1.0 / LOGIT_STEPS, "logits", LOGIT_LIMIT
        )
        self.ops = b.ops
        self.probs = exp_table(1.0 / LOGIT_STEPS, PROB_BITS, 1)
        self._to(self.device)

    @staticmethod
    def _cond_net(b: _Builder, prior: PixelSNAIL) -> str:
        net = prior.cond_net
        h = "cond_emb"
        for i in range(len(net.convs) // 2):
            r_a, r_c, r_h = net.ranges[3 * i : 3 * i + 3]
            c1, c2 = net.convs[2 * i], net.convs[2 * i + 1]
            a = b.conv([(c1.tap_weights(), b.elu(h), c1.offsets)], c1.bias, _scale(r_a), "cond_a")
            c = b.conv([(c2.tap_weights(), b.elu(a), c2.offsets)], c2.bias, _scale(r_c), "cond_c")
            h = b.add(h, c, _scale(r_h))
        return h

    def _to(self, device: torch.device) -> None:
        for op in [*self.cond_ops, *self.ops]:
            for key, value in vars(op).items():
                if isinstance(value, torch.Tensor):
                    setattr(op, key, value.to(device))
        self.embed = self.embed.to(device)
        self.probs = self.probs.to(device)
        if self.cond_ops:
            self.cond_embed = self.cond_embed.to(device)

    def start(self, h: int, w: int, cond_codes: torch.Tensor | None = None) -> MapState:
        """Fresh caches for an h x w map; the bottom prior needs the (h/2, w/2) top map."""
        state = MapState(h, w, self.device)
        every = torch.arange(state.n, device=self.device)
        bg = torch.round(background(h, w, self.device) * QMAX).flatten(1).t()
        state.write("bg", every, bg)
        state.write("emb", every, torch.zeros(state.n, self.embed.shape[1], device=self.device))
        if self.cond_ops:
            state.write("cond", every, self._condition(cond_codes, h, w)[every])
        return state

    def _condition(self, cond_codes: torch.Tensor, h: int, w: int) -> torch.Tensor:
        th, tw = cond_codes.shape
        if (2 * th, 2 * tw) != (h, w):
            raise ValueError(f"top map {th}x{tw} does not match bottom map {h}x{w}")
        top = MapState(th, tw, self.device)
        every = torch.arange(top.n, device=self.device)
        top.write("cond_emb", every, self.cond_embed[cond_codes.reshape(-1).to(self.device)])
        with exact_float32():
            for op in self.cond_ops:
                op(top, every)
        r = torch.arange(h, device=self.device).view(h, 1) // 2
        c = torch.arange(w, device=self.device).view(1, w) // 2
        return top.caches[self.cond_out][(r * tw + c).reshape(-1)]

    def set_codes(self, state: MapState, rows: torch.Tensor, codes: torch.Tensor) -> None:
        """Record the codes at ``rows`` (known to the encoder, just decoded by the decoder)."""
        state.write("emb", rows, self.embed[codes.to(self.device)])

    def probabilities(self, state: MapState, rows: torch.Tensor) -> np.ndarray:
        """(len(rows), K) integer probability rows (float64) for positions whose context is set."""
        with exact_float32():
            for op in self.ops:
                op(state, rows)
        logits = state.caches[self.logits][rows].double()
        dist = (logits.amax(1, keepdim=True) - logits).long().clamp_(max=len(self.probs) - 1)
        return np.ascontiguousarray(self.probs[dist].cpu().numpy())

    def wavefronts(self, h: int, w: int) -> tuple[torch.Tensor, list[int]]:
        """The decoding order: flat positions sorted by wavefront, and the size of each wavefront."""
        r = torch.arange(h).view(h, 1)
        c = torch.arange(w).view(1, w)
        step = (c + r * self.slope).reshape(-1)
        order = torch.sort(step, stable=True).indices
        sizes = torch.bincount(step).tolist()
        return order.to(self.device), [n for n in sizes if n]
