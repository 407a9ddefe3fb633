"""``IntegerPrior``: a compiled prior that gives integer probability tables for any positions of a
map, for the encoder's one pass and the decoder's wavefronts alike."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ...defaults import DEVICE_ROW_CHUNK
from ...nn.prior import PixelSNAIL
from ...threads import one_torch_thread
from . import arithmetic
from .arithmetic import (
    LOGIT_LIMIT,
    LOGIT_STEPS,
    PROB_BITS,
    QMAX,
    ArrayLike,
    Rows,
    Shape,
    exp_table,
)
from .backend import Backend, move_ops
from .compiler import Builder, background_rows, embedding_table, scale_of
from .ops import Op
from .state import MapState, local_coords


def _last_reads(ops: list[Op], keep: set[str]) -> list[list[str]]:
    """For each of ``ops`` run in order, the outputs of ops that no later op reads and ``keep``
    does not name: their caches are free once it has run."""
    made = {op.out for op in ops}
    last = {name: i for i, op in enumerate(ops) for name in op.sources}
    done: list[list[str]] = [[] for _ in ops]
    for name, i in last.items():
        if name in made and name not in keep:
            done[i].append(name)
    return done


class IntegerPrior:
    """The integer version of one ``PixelSNAIL``: probabilities for any set of positions of a map.

    Positions, codes and probabilities go in and out as numpy arrays; the work runs on
    ``device`` (numpy on the CPU unless ``use_torch``).
    """

    def __init__(self, prior: PixelSNAIL, device: torch.device | str = "cpu", use_torch: bool | None = None):
        self.xp = Backend(torch.device(device), use_torch)
        self.codes = prior.config.codes
        #: Wavefront slope: positions with c + r * slope == t depend only on earlier wavefronts.
        self.slope = prior.right_reach + 1
        embed, emb_scale = embedding_table(prior.embed)
        b = Builder()
        b.scales.update({"emb": emb_scale, "bg": 1.0 / QMAX})
        cond_embed = None
        self.cond_ops: list[Op] = []
        if prior.cond_net is not None:
            cond_embed, b.scales["cond_emb"] = embedding_table(prior.cond_net.embed)
            self.cond_out = self._cond_net(b, prior)
            self.cond_ops, b.ops = b.ops, []
            b.scales["cond"] = b.scales[self.cond_out]
        x = b.conv(
            [(prior.input.tap_weights(), "emb", prior.input.offsets)], prior.input.bias, scale_of(prior.r_input), "x"
        )
        for block in prior.blocks:
            h = x
            for res in block.res:
                h = b.gated(res, h, cond="cond" if prior.cond_net is not None else None)
            attn = b.attention(block.attn, x, h, "bg")
            x = b.gated(block.out, h, aux=attn)
        head = prior.head
        b.conv([(head.tap_weights(), b.elu(x), ((0, 0),))], head.bias, 1.0 / LOGIT_STEPS, "logits", LOGIT_LIMIT)
        *self.ops, self.head = b.ops
        #: For each op of a one-pass ``prepare``, the sources no later op reads, nor the head.
        self._done_after = _last_reads(self.ops, keep=set(self.head.sources))
        self._cond_done_after = _last_reads(self.cond_ops, keep={self.cond_out}) if self.cond_ops else []
        move_ops([*self.cond_ops, *self.ops, self.head], self.xp)
        self.embed = self.xp.array(embed)
        self.cond_embed = self.xp.array(cond_embed) if cond_embed is not None else None
        self.probs = self.xp.array(exp_table(1.0 / LOGIT_STEPS, PROB_BITS, 1))
        self._last_condition: tuple[tuple, ArrayLike] | None = None

    @staticmethod
    def _cond_net(b: Builder, prior: PixelSNAIL) -> str:
        net = prior.cond_net
        h = "cond_emb"
        for i in range(len(net.convs) // 2):
            r_a, r_c, r_h = net.ranges[3 * i : 3 * i + 3]
            c1, c2 = net.convs[2 * i], net.convs[2 * i + 1]
            a = b.conv([(c1.tap_weights(), b.elu(h), c1.offsets)], c1.bias, scale_of(r_a), "cond_a")
            c = b.conv([(c2.tap_weights(), b.elu(a), c2.offsets)], c2.bias, scale_of(r_c), "cond_c")
            h = b.add(h, c, scale_of(r_h))
        return h

    def start(self, shapes: list[Shape], cond_codes: list[np.ndarray] | None = None) -> MapState:
        """Fresh caches for a batch of regions of these (h, w) shapes; the bottom prior also needs
        the (h/2, w/2) top codes of each region."""
        xp = self.xp
        state = MapState(shapes, xp, self.slope)
        every = slice(0, state.n)
        bg = np.concatenate([background_rows(h, w) for h, w in shapes])
        state.write("bg", every, xp.array(bg[state.order]))
        state.caches["emb"] = xp.zeros(state.n + 2, self.embed.shape[1])
        if self.cond_ops:
            if cond_codes is None:
                raise ValueError("this prior is conditional: give it the top code map")
            state.write("cond", every, self._remembered_condition(state, cond_codes))
        return state

    def _remembered_condition(self, state: MapState, cond_codes: list[np.ndarray]) -> ArrayLike:
        """``_condition``, or the last one computed where it had the same regions and top codes:
        an encoder's RDO pass and its final pass condition the bottom map on the same top map."""
        key = (tuple(state.shapes), b"".join(np.ascontiguousarray(c, np.int64).tobytes() for c in cond_codes))
        last = self._last_condition  # one read: another thread may replace it meanwhile
        if last is not None and last[0] == key:
            return last[1]
        features = self._condition(state, cond_codes)
        self._last_condition = (key, features)
        return features

    def _condition(self, state: MapState, cond_codes: list[np.ndarray]) -> ArrayLike:
        """Conditioning features of every position of ``state`` from its regions' top codes."""
        top_shapes = [c.shape for c in cond_codes]
        if [(2 * h, 2 * w) for h, w in top_shapes] != list(state.shapes):
            raise ValueError(f"top regions {top_shapes} do not match bottom regions {state.shapes}")
        top = MapState(top_shapes, self.xp)
        every = slice(0, top.n)
        flat = np.concatenate([c.reshape(-1) for c in cond_codes]).astype(np.int64)
        top.write("cond_emb", every, self.xp.rows(self.cond_embed, self.xp.array(flat)))
        with self.xp.exact():
            for op, done in zip(self.cond_ops, self._cond_done_after, strict=True):
                op(top, every)
                top.recycle(done)
        r, c = local_coords(state.shapes)
        region = np.repeat(np.arange(len(state.shapes)), [h * w for h, w in state.shapes])
        widths = np.array([w for _, w in top_shapes])
        upsample = top.bases[region] + (r // 2) * widths[region] + c // 2
        return top.read(self.cond_out, self.xp.array(upsample[state.order]))

    def set_codes(self, state: MapState, rows: Rows, codes: ArrayLike) -> None:
        """Record the codes at ``rows`` (known to the encoder, just decoded by the decoder)."""
        xp = self.xp
        state.write("emb", rows if isinstance(rows, slice) else xp.index(rows), xp.rows(self.embed, xp.index(codes)))

    def probabilities(self, state: MapState, rows: Rows) -> np.ndarray:
        """(len(rows), K) integer probability rows (float32) for positions whose context is set."""
        return self.xp.numpy(self.device_probabilities(state, rows))

    def device_probabilities(self, state: MapState, rows: Rows) -> ArrayLike:
        """``probabilities`` left on the backend's device; ``rows`` may be there already. No step
        waits for the device, so a CUDA graph can record it."""
        self.prepare(state, rows)
        return self._head_tables(state, rows)

    def prepare(self, state: MapState, rows: Rows | None = None) -> None:
        """Run every layer but the head at ``rows``, whose context must be set; by default at
        every position (an encoder, which knows every code: contiguous rows read and write the
        caches as slices instead of gathers and scatters), once per state: that pass gives up
        each layer's cache once no later layer reads it, leaving what the head reads."""
        xp = self.xp
        # Each op runs over a chunk of rows at a time, which bounds its temporaries; an op's rows
        # depend only on earlier ops, so the split does not change any result.
        chunks = self._row_chunks(rows if rows is not None else slice(0, state.n))
        with xp.exact():
            for op, done in zip(self.ops, self._done_after, strict=True):
                for chunk in chunks:
                    op(state, chunk)
                if rows is None:
                    state.recycle(done)

    def tables(self, state: MapState, rows: Rows) -> np.ndarray:
        """The probability rows of ``prepare``d positions. An encoder asks for them a slice of rows
        at a time, since a whole map's tables take positions x K x 4 bytes."""
        return np.ascontiguousarray(self.xp.numpy(self._head_tables(state, rows)))

    def relative_bits(self, state: MapState, rows: Rows, codes: np.ndarray) -> np.ndarray:
        """(S, k) prices in bits of ``codes`` (S, k) at ``prepare``d ``rows``, each row less a
        constant of its own (the log of its probabilities' sum): they rank a position's codes as
        their probabilities do, for a fraction of the cost of the tables (k logits per row, not
        K, and no normalisation). Only the encoder's choices use them; codes are coded with
        ``tables``."""
        xp = self.xp
        with xp.exact():
            logits = self.head.compute_columns(state, rows, xp.array(codes))
        return xp.numpy(logits).astype(np.float32) / np.float32(-LOGIT_STEPS * math.log(2))

    def _head_tables(self, state: MapState, rows: Rows) -> ArrayLike:
        xp = self.xp
        with xp.exact():
            tables = [self._table(self.head.compute(state, chunk)) for chunk in self._row_chunks(rows)]
        return tables[0] if len(tables) == 1 else xp.concat(tables)

    def _row_chunks(self, rows: Rows) -> list[Rows]:
        n = self.row_chunk
        if isinstance(rows, slice):
            return [slice(a, min(a + n, rows.stop)) for a in range(rows.start, rows.stop, n)]
        return [self.xp.array(rows[a : a + n]) for a in range(0, len(rows), n)]

    @property
    def row_chunk(self) -> int:
        """Rows an op handles at once (``arithmetic.ROW_CHUNK`` on the CPU, ``DEVICE_ROW_CHUNK`` on a GPU)."""
        return arithmetic.ROW_CHUNK if self.xp.device.type == "cpu" else DEVICE_ROW_CHUNK

    def _table(self, logits: ArrayLike) -> ArrayLike:
        """Probability rows from integer logits (1/LOGIT_STEPS nat): 2^PROB_BITS exp(-distance to the max)."""
        xp = self.xp
        dist = xp.f32(xp.reduce(logits, "max") - logits)  # integers below 2^22: exact
        return xp.take(self.probs, xp.clip_max(dist, len(self.probs) - 1))

    @contextmanager
    def stepping(self) -> Iterator[None]:
        """Context for wavefront steps: their small products run on one thread (BLAS's and
        torch's), since threads spinning up for each tiny product are slower, and much slower when
        the cores are busy (docs/design.md, "Constants")."""
        if self.xp.torch:
            yield
            return
        with one_torch_thread(), threadpool_limits(limits=1, user_api="blas"):
            yield
