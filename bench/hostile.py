"""What forged ``.vqc`` files cost the decoder: headers with valid checksums claiming other sizes,
tiles and streams, built from a real file of a shipped preset. Every one must be refused, or
decoded, within a bounded time and memory."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

import vqcodec
from vqcodec.format import container

from .speed import memory_mib, reset_peak_memory


@dataclass(frozen=True)
class Case:
    """One forged file and what became of it."""

    fields: dict
    seconds: float
    outcome: str  # "decoded" or the error's class name


def forged(rng: np.random.Generator, data: bytes, stride: int) -> tuple[dict, bytes]:
    """A header claiming a random image size up to the default pixel limit (map sizes consistent
    with it, so that the header checks pass), a random tile and content CRC, with the file's
    streams cut at random points, half the time cut into the segments the header's maps have
    (format version 5) with lengths that add up; checksums valid."""
    header, streams = container.unpack(data)
    side = int(np.sqrt(container.DEFAULT_MAX_PIXELS))
    width, height = (int(v) for v in rng.integers(1, 2 * side, 2))
    if width * height > container.DEFAULT_MAX_PIXELS:
        height = max(1, container.DEFAULT_MAX_PIXELS // width)
    pad_x, pad_y = -width % stride, -height % stride
    top = ((height + pad_y) // stride, (width + pad_x) // stride)
    fields = {
        "width": width, "height": height, "pad_x": pad_x, "pad_y": pad_y, "top_shape": top,
        "bottom_shape": (2 * top[0], 2 * top[1]), "tile": int(rng.integers(1, container.MAX_TILE + 1)),
        "channels": 3, "content_crc": int(rng.integers(0, 2**32)),
    }  # fmt: skip
    payload = streams.top + streams.bottom
    a, b = sorted(int(v) for v in rng.integers(0, len(payload) // 4 + 1, 2) * 4)
    top_stream, bottom_stream = payload[:a], payload[a:b]
    if rng.random() < 0.5:
        fields["flags"] = header.flags | container.FLAG_SEGMENTS
        top_stream = _segmented(top_stream, container.segment_count(top, fields["tile"]))
        bottom_stream = _segmented(bottom_stream, container.segment_count(fields["bottom_shape"], 2 * fields["tile"]))
    new = container.Streams(top_stream, bottom_stream)
    return fields, container.pack(container.Header(**{**header.__dict__, **fields}), new)


def _segmented(stream: bytes, count: int) -> bytes:
    """``stream`` cut into ``count`` segments of whole words, as even as they go."""
    words = len(stream) // 4
    cuts = [4 * (words * i // count) for i in range(count + 1)]
    return container.join_segments([stream[a:b] for a, b in itertools.pairwise(cuts)])


def run_hostile(codec: vqcodec.Codec, sample: bytes, cases: int, seed: int = 0) -> dict:
    """Decode ``cases`` forged variants of ``sample``; the slowest cases and the peak memory."""
    rng = np.random.default_rng(seed)
    reset_peak_memory(codec.device)
    results = []
    for _ in range(cases):
        fields, data = forged(rng, sample, codec.top_stride)
        start = time.perf_counter()
        try:
            codec.decompress(data)
            outcome = "decoded"
        except vqcodec.VQCodecError as exc:
            outcome = type(exc).__name__
        results.append(Case(fields, time.perf_counter() - start, outcome))
    slowest = sorted(results, key=lambda c: c.seconds, reverse=True)
    outcomes: dict[str, int] = {}
    for case in results:
        outcomes[case.outcome] = outcomes.get(case.outcome, 0) + 1
    return {
        "cases": cases,
        "outcomes": outcomes,
        "max_seconds": slowest[0].seconds,
        "mean_seconds": float(np.mean([c.seconds for c in results])),
        "peak_mib": memory_mib(codec.device, peak=True),
        "slowest": [c.__dict__ for c in slowest[:3]],
    }
