"""How well the code maps of a dataset are coded: the priors against simpler models and coders.

Per map (top, bottom) and in total: the range coder's real bits and the ideal sum of -log2 p under
the priors (overhead), a uniform code (log2 K bits per code), a static model (the entropy of the
dataset's code histogram, histogram itself not counted), and zlib and LZMA on the raw index bytes
of each image (uint8 for K <= 256, else uint16; LZMA as a raw LZMA2 stream, no .xz container).
"""

from __future__ import annotations

import lzma
import math
import zlib
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

import vqcodec

from .images import Sample

MAPS = ("top", "bottom")
#: The models and coders each map is measured under (keys of ``map_bits``).
METHODS = ("prior", "prior_ideal", "uniform", "static", "zlib", "lzma")
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def index_bytes(codes: np.ndarray, codebook: int) -> bytes:
    """A code map as raw bytes: one byte per index when they fit, else two (little-endian)."""
    return codes.astype(np.uint8 if codebook <= 256 else "<u2").tobytes()


def histogram_entropy(counts: np.ndarray) -> float:
    """Entropy in bits per code of the empirical distribution with these code counts."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 (a single code) into 0.0


def map_bits(encoded: Sequence[vqcodec.Encoded], which: str, codebook: int) -> dict[str, float]:
    """Total bits of one map over the dataset under each model or coder, and its code count."""
    maps = [getattr(e.codes, which) for e in encoded]
    stats = [getattr(e, which) for e in encoded]
    counts = np.bincount(np.concatenate([m.ravel() for m in maps]), minlength=codebook)
    codes = int(counts.sum())
    raw = [index_bytes(m, codebook) for m in maps]
    return {
        "codes": codes,
        "used_codes": int(np.count_nonzero(counts)),
        "prior": sum(s.real_bits for s in stats),
        "prior_ideal": sum(s.ideal_bits for s in stats),
        "uniform": codes * math.log2(codebook),
        "static": codes * histogram_entropy(counts),
        "zlib": sum(8 * len(zlib.compress(r, 9)) for r in raw),
        "lzma": sum(8 * len(lzma.compress(r, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)) for r in raw),
    }


def entropy_report(codec: vqcodec.Codec, samples: Sequence[Sample]) -> dict:
    """Bits per code and per pixel of every map under every method, and the priors' coding overhead."""
    encoded = [codec.encode(np.asarray(s.image)) for s in tqdm(samples, desc="entropy", unit="image", leave=False)]
    vq = codec.model.config.vqvae
    pixels = sum(s.pixels for s in samples)
    totals = {name: map_bits(encoded, name, k) for name, k in zip(MAPS, (vq.top_codes, vq.bottom_codes), strict=True)}
    totals["total"] = {key: sum(t[key] for t in totals.values()) for key in ("codes", *METHODS)}
    rows = []
    for name, bits in totals.items():
        row = {"map": name, "codes": bits["codes"], "used_codes": bits.get("used_codes")}
        row |= {f"{m}_bits_per_code": bits[m] / bits["codes"] for m in METHODS}
        row |= {f"{m}_bpp": bits[m] / pixels for m in METHODS}
        row["overhead_pct"] = 100 * (bits["prior"] / bits["prior_ideal"] - 1) if bits["prior_ideal"] else None
        rows.append(row)
    return {
        "model": codec.name,
        "codebooks": {"top": vq.top_codes, "bottom": vq.bottom_codes},
        "images": [{"name": s.name, "width": s.image.width, "height": s.image.height} for s in samples],
        "file_bpp": sum(8 * len(e.data) for e in encoded) / pixels,
        "maps": rows,
    }
