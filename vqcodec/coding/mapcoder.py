"""The map coder: code maps to range-coded streams and back with an integer prior, region by
region in batches, wavefront by wavefront (the layer CompressAI calls the entropy model).

A map is cut into square regions that the priors code independently (``tiles``); runs of regions
form the segments of a segmented stream (``container``), each range-coded on its own, so that
the decoder may decode them side by side (``decode``'s ``processes``) or only some of them (a
region of the image). Encoder and decoder visit the same batches in the same order, so both see
the same probabilities.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..format import container
from ..timing import ENTROPY_CODING, PRIOR, Timer, child_timer, merge
from . import entropy, forked, tiles
from .qprior import IntegerPrior, MapState
from .steps import wavefront_steps

#: Positions coded together: bounds the priors' memory, whatever the image size.
MAX_BATCH_POSITIONS = 1 << 15
#: Rows of a wavefront decoded at once, at most: a stream that runs out is noticed within this
#: many codes, even where a whole batch is one wavefront (tiles of 1 code).
FRONT_CHUNK = 4096


@dataclass(frozen=True)
class MapStats:
    """How one code map was coded: the real bits written and the ideal sum of -log2 p."""

    codes: int
    real_bits: int
    ideal_bits: float

    @property
    def bits_per_code(self) -> float:
        return self.real_bits / self.codes

    @property
    def overhead(self) -> float:
        """Real bits over ideal bits, minus one (0.01 is 1% overhead)."""
        return self.real_bits / self.ideal_bits - 1.0 if self.ideal_bits else 0.0


@dataclass(frozen=True)
class MapLayout:
    """A code map to code: its size, the side of its regions and, for a bottom map, its top map;
    whether its stream is in segments (``container``)."""

    shape: tuple[int, int]
    tile: int
    cond: np.ndarray | None = None
    segmented: bool = False


@dataclass(frozen=True)
class _Unit:
    """Regions of a map that are coded one after another in one range-coded stream: a segment
    (the ``segment``-th of map ``map``), or a batch of an unsegmented map's single stream.
    ``index`` numbers the units of all maps in stream order."""

    index: int
    map: int
    segment: int
    regions: list[tiles.Region]


def needs_segments(top_shape: tuple[int, int], bottom_shape: tuple[int, int], tile: int) -> bool:
    """Whether a file with these maps needs ``container.FLAG_SEGMENTS``: a map of several
    segments, or one whose single segment an unsegmented stream would cut into several batches."""
    return any(
        container.segment_count(shape, side) > 1 or shape[0] * shape[1] > MAX_BATCH_POSITIONS
        for shape, side in ((top_shape, tile), (bottom_shape, 2 * tile))
    )


# -- encoding -------------------------------------------------------------------------------


def encode(
    prior: IntegerPrior, codes: Sequence[np.ndarray], maps: list[MapLayout], substitute: int, timer: Timer
) -> list[tuple[bytes, MapStats]]:
    """Each map's stream, its codes coded in decoding order. A code the coder cannot encode in its
    context (``entropy.uncodable``) becomes ``substitute`` in ``codes`` (in place), and the maps
    are coded again, since the codes after it have a new context."""
    while True:
        encoders: dict[int, entropy.Encoder] = {}
        units_of: list[list[int]] = [[] for _ in maps]  # each map's units, in stream order
        replaced = False
        for unit, i, positions, probs in _probability_rows(prior, codes, maps, timer):
            with timer(ENTROPY_CODING):
                symbols = codes[i].reshape(-1)[positions]
                stuck = entropy.uncodable(symbols, probs)
                if stuck.any():  # only the last code can be stuck, and never its substitute
                    codes[i].flat[positions[stuck]] = substitute
                    replaced = True
                if not replaced:
                    if unit not in encoders:
                        encoders[unit] = entropy.Encoder()
                        units_of[i].append(unit)
                    encoders[unit].encode(symbols, probs)
        if not replaced:
            break
    coded = []
    for units in units_of:
        data = container.join_segments([encoders[u].data() for u in units])
        ideal = sum(encoders[u].ideal_bits for u in units)
        coded.append((data, MapStats(sum(encoders[u].symbols for u in units), 8 * len(data), ideal)))
    return coded


def candidate_bits(
    prior: IntegerPrior,
    codes: Sequence[np.ndarray],
    candidates: Sequence[np.ndarray],
    maps: list[MapLayout],
    timer: Timer,
) -> list[np.ndarray]:
    """What each of the (H, W, k) ``candidates`` would cost, in bits, in the context of ``codes``,
    less a constant per position (``IntegerPrior.relative_bits``): all a position's choice needs."""
    bits = [np.empty(c.shape, dtype=np.float32) for c in candidates]
    if not candidates:
        return bits
    k = candidates[0].shape[-1]
    for state, rows, _, owner, where in _prepared_rows(prior, codes, maps, timer):
        picked = np.empty((len(where), k), dtype=candidates[0].dtype)
        for i, mine in _by_owner(owner):
            picked[mine] = candidates[i].reshape(-1, k)[where[mine]]
        with timer(PRIOR):
            prices = prior.relative_bits(state, rows, picked)
        for i, mine in _by_owner(owner):
            bits[i].reshape(-1, k)[where[mine]] = prices[mine]
    return bits


def _prepared_rows(
    prior: IntegerPrior, codes: Sequence[np.ndarray], maps: list[MapLayout], timer: Timer
) -> Iterator[tuple[MapState, slice, np.ndarray, np.ndarray, np.ndarray]]:
    """Every position of ``codes`` in decoding order, a chunk of rows at a time, with the prior
    run up to its head there: (state, the chunk's rows, the unit index, the map index and the
    flattened position of each). One pass of the prior per batch of regions, as the encoder has
    every code already."""
    grids = [np.arange(c.size).reshape(c.shape) for c in codes]
    for batch, owner, state in _batches(prior, maps, timer):
        with timer(PRIOR):
            flat = np.concatenate([region.take(codes[i]).reshape(-1) for _, i, region in batch])
            where = np.concatenate([region.take(grids[i]).reshape(-1) for _, i, region in batch])
            map_of = np.repeat([i for _, i, _ in batch], [r.positions for _, _, r in batch])
            prior.set_codes(state, slice(0, state.n), flat[state.order])
            prior.prepare(state)  # every position at once
            owner, map_of, where = owner[state.order], map_of[state.order], where[state.order]
        for start in range(0, state.n, prior.row_chunk):
            rows = slice(start, min(start + prior.row_chunk, state.n))
            yield state, rows, owner[rows], map_of[rows], where[rows]


def _probability_rows(
    prior: IntegerPrior, codes: Sequence[np.ndarray], maps: list[MapLayout], timer: Timer
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """The probability row of every position of ``codes`` in decoding order, a chunk at a time:
    (unit index, map index, the positions in that map, flattened, their rows)."""
    for state, rows, owner, map_of, where in _prepared_rows(prior, codes, maps, timer):
        with timer(PRIOR):
            probs = prior.tables(state, rows)
        for u, mine in _by_owner(owner):
            yield u, int(map_of[mine][0]), where[mine], probs[mine]


# -- decoding -------------------------------------------------------------------------------


def decode_pairs(
    priors: tuple[IntegerPrior, IntegerPrior],
    streams: Sequence[tuple[bytes, bytes]],
    pairs: Sequence[tuple[MapLayout, MapLayout]],
    timer: Timer,
    wanted: list[tuple[set[int], set[int]]] | None = None,
    processes: int = 1,
    cuda_graphs: bool = True,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Decode the (top, bottom) map pairs of several files from their (top, bottom) streams, batch
    by batch of regions, wavefront by wavefront within a batch; each bottom map conditioned on its
    top map (the layouts' ``cond`` is not used). With ``processes`` > 1 (where
    ``forked.AVAILABLE``), segmented maps are shared out by their bottom segments: each process
    decodes the top segments its bottom segments read and then those, with no wait between the
    maps. ``wanted``: only these (top, bottom) segments of each segmented pair (the rest of their
    codes stay 0). ``cuda_graphs``: see ``steps.wavefront_steps``."""
    tops, bottoms = [t for t, _ in pairs], [b for _, b in pairs]
    top_segments = _segments([t for t, _ in streams], tops)
    bottom_segments = _segments([b for _, b in streams], bottoms)
    plans = _pair_shares(pairs, top_segments, bottom_segments, processes if forked.AVAILABLE else 1, wanted)
    top_prior, bottom_prior = priors

    def decode_share(
        plan: tuple[dict[int, set[int]], dict[int, set[int]]], timer: Timer = timer
    ) -> tuple[list, list, dict[str, float]]:
        top_blocks = _decode_units(top_prior, tops, top_segments, _units(tops, plan[0]), timer, cuda_graphs)
        local = _assembled(tops, top_blocks)
        conditioned = [dataclasses.replace(m, cond=top) for m, top in zip(bottoms, local, strict=True)]
        units = _units(conditioned, plan[1])
        bottom_blocks = _decode_units(bottom_prior, conditioned, bottom_segments, units, timer, cuda_graphs)
        return top_blocks, bottom_blocks, getattr(timer, "seconds", {})

    with top_prior.stepping(), bottom_prior.stepping():
        children = [forked.Forked(decode_share, plan, child_timer(timer)) for plan in plans[1:]]
        try:
            results = [decode_share(plans[0])[:2]]
            for child in children:
                top_blocks, bottom_blocks, seconds = child.result()
                merge(timer, seconds)
                results.append((top_blocks, bottom_blocks))
        finally:
            for child in children:
                child.close()
    return (
        _assembled(tops, [block for top_blocks, _ in results for block in top_blocks]),
        _assembled(bottoms, [block for _, bottom_blocks in results for block in bottom_blocks]),
    )


def _segments(streams: Sequence[bytes], maps: Sequence[MapLayout]) -> list[list[bytes]]:
    """Each map's stream cut into its segments (an unsegmented stream whole)."""
    return [
        container.split_segments(stream, container.segment_count(m.shape, m.tile)) if m.segmented else [stream]
        for stream, m in zip(streams, maps, strict=True)
    ]


def _assembled(maps: Sequence[MapLayout], blocks: list[tuple[int, tiles.Region, np.ndarray]]) -> list[np.ndarray]:
    """The maps with the decoded ``blocks`` in place (0 where none was decoded)."""
    codes = [np.zeros(m.shape, dtype=np.int64) for m in maps]
    for i, region, block in blocks:
        region.take(codes[i])[...] = block
    return codes


def _decode_units(
    prior: IntegerPrior,
    maps: list[MapLayout],
    segments: list[list[bytes]],
    units: Iterator[_Unit],
    timer: Timer,
    cuda_graphs: bool,
) -> list[tuple[int, tiles.Region, np.ndarray]]:
    """(map index, region, codes) of every region of ``units``, each segment from its own range
    decoder, an unsegmented map from one decoder over its whole stream."""
    decoders: dict[int, entropy.Decoder] = {}
    whole: dict[int, entropy.Decoder] = {}
    blocks = []
    for batch, owner, state in _batches(prior, maps, timer, units):
        for u in {unit.index: unit for unit, _, _ in batch}.values():
            if maps[u.map].segmented:
                decoders[u.index] = entropy.Decoder(segments[u.map][u.segment])
            else:
                decoders[u.index] = whole.setdefault(u.map, entropy.Decoder(segments[u.map][0]))
        blocks += _decode_batch(prior, batch, owner, state, decoders, timer, cuda_graphs)
    return blocks


def _decode_batch(
    prior: IntegerPrior,
    batch: list[tuple[_Unit, int, tiles.Region]],
    owner: np.ndarray,
    state: MapState,
    decoders: dict[int, entropy.Decoder],
    timer: Timer,
    cuda_graphs: bool,
) -> list[tuple[int, tiles.Region, np.ndarray]]:
    """Decode one batch of regions, each unit's codes from its decoder: (map index, region, its
    codes) of each region."""
    owner = owner[state.order]
    decoded = np.zeros(state.n, dtype=np.int64)  # by row: in decoding order
    with timer(PRIOR):
        steps = wavefront_steps(prior, state, state.widest, cuda_graphs)
    for rows in _chunks(state.fronts):
        with timer(PRIOR):
            probs = steps.probabilities(rows)
        front = decoded[rows]
        with timer(ENTROPY_CODING):
            for u, mine in _by_owner(owner[rows]):
                front[mine] = decoders[u].decode(probs[mine])
        steps.set_codes(rows, front)
    flat = np.empty_like(decoded)
    flat[state.order] = decoded
    return [
        (i, region, flat[base : base + region.positions].reshape(region.shape))
        for (_, i, region), base in zip(batch, state.bases, strict=True)
    ]


# -- batches shared by both sides -----------------------------------------------------------


def _units(maps: list[MapLayout], segments: dict[int, Collection[int]] | None = None) -> Iterator[_Unit]:
    """The units of ``maps`` in stream order, lazily (a forged file is refused in its first
    batch, before the rest is cut); with ``segments``, only the segments named of each map named
    (an unsegmented map named gives all its units)."""
    index = itertools.count()
    for i, m in enumerate(maps):
        if segments is not None and i not in segments:
            continue
        regions = tiles.regions(*m.shape, m.tile)
        if not m.segmented:
            for batch in tiles.batches(regions, MAX_BATCH_POSITIONS):
                yield _Unit(next(index), i, 0, batch)
            continue
        for k, group in enumerate(tiles.batches(regions, container.regions_per_segment(m.tile), lambda r: 1)):
            if segments is None or k in segments[i]:
                yield _Unit(next(index), i, k, group)


def _pair_shares(
    pairs: Sequence[tuple[MapLayout, MapLayout]],
    top_segments: list[list[bytes]],
    bottom_segments: list[list[bytes]],
    workers: int,
    wanted: list[tuple[set[int], set[int]]] | None,
) -> list[tuple[dict[int, set[int]], dict[int, set[int]]]]:
    """What each of at most ``workers`` processes decodes: (top segments, bottom segments) of each
    map pair. A segmented pair's (``wanted``) bottom segments are cut into runs, one per process,
    and each process takes the top segments that its run reads (a top segment two runs read is
    decoded by both; the wanted ones no run reads go to the first); unsegmented pairs go whole to
    the first process."""
    plans: list[tuple[dict[int, set[int]], dict[int, set[int]]]] = [({}, {}) for _ in range(max(1, workers))]
    for i, (top, bottom) in enumerate(pairs):
        if not top.segmented:
            plans[0][0][i], plans[0][1][i] = set(), set()
            continue
        want_top = set(range(len(top_segments[i]))) if wanted is None else set(wanted[i][0])
        want_bottom = sorted(range(len(bottom_segments[i])) if wanted is None else wanted[i][1])
        for w, (top_picks, bottom_picks) in enumerate(plans):
            run = want_bottom[len(want_bottom) * w // len(plans) : len(want_bottom) * (w + 1) // len(plans)]
            bottom_picks[i], top_picks[i] = set(run), _top_segments_read(run, top, bottom)
        plans[0][0][i] |= want_top - set().union(*(top_picks[i] for top_picks, _ in plans))
    return [plans[0]] + [plan for plan in plans[1:] if any(plan[0].values()) or any(plan[1].values())]


def _top_segments_read(bottom_segments: Sequence[int], top: MapLayout, bottom: MapLayout) -> set[int]:
    """The top segments that hold the top codes of these bottom segments' regions (the bottom map's
    regions are the top map's, twice the size, in the same order)."""
    per_bottom, per_top = container.regions_per_segment(bottom.tile), container.regions_per_segment(top.tile)
    count = container.region_count(top.shape, top.tile)
    return {
        region // per_top for k in bottom_segments for region in range(k * per_bottom, min((k + 1) * per_bottom, count))
    }


def _batches(
    prior: IntegerPrior, maps: list[MapLayout], timer: Timer, units: Iterator[_Unit] | None = None
) -> Iterator[tuple[list[tuple[_Unit, int, tiles.Region]], np.ndarray, MapState]]:
    """The batches of (unit, map index, region) that ``units`` (by default every unit of
    ``maps``) are coded in, with the unit index of each position and fresh prior caches (given
    the regions' top codes, for the bottom prior): the same on both sides.

    Consecutive units are pooled up to ``MAX_BATCH_POSITIONS`` positions. Within a batch each
    unit's positions keep the order they have when it is coded alone (``MapState``), so a file
    does not depend on what its units were batched with.
    """
    size = lambda unit: sum(r.positions for r in unit.regions)  # noqa: E731
    for pooled in tiles.batches(_units(maps) if units is None else units, MAX_BATCH_POSITIONS, size):
        batch = [(unit, unit.map, region) for unit in pooled for region in unit.regions]
        owner = np.repeat([unit.index for unit, _, _ in batch], [r.positions for _, _, r in batch])
        with timer(PRIOR):
            conds = [r.half().take(maps[i].cond) for _, i, r in batch] if maps[0].cond is not None else None
            state = prior.start([r.shape for _, _, r in batch], conds)
        yield batch, owner, state


def _chunks(fronts: list[slice]) -> Iterator[slice]:
    """The wavefronts' rows in pieces of at most ``FRONT_CHUNK`` (a wavefront's positions do not
    depend on one another, so its pieces may be decoded one after another)."""
    for front in fronts:
        for start in range(front.start, front.stop, FRONT_CHUNK):
            yield slice(start, min(start + FRONT_CHUNK, front.stop))


def _by_owner(owner: np.ndarray) -> Iterator[tuple[int, np.ndarray | slice]]:
    """Each index in ``owner`` (a map's or a unit's) with the entries that are its own, in order
    (all of them as a slice when there is one owner, which saves copying its probability rows)."""
    ids = np.unique(owner)
    if len(ids) == 1:
        yield int(ids[0]), slice(None)
        return
    for i in ids:
        yield int(i), np.flatnonzero(owner == i)
