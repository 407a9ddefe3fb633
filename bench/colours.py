"""Colours through the whole codec: flat images of the 125 grid colours (each channel 0, 64, 128,
192 or 255) and smooth ramps, compressed and decompressed, against the tolerances a user would
hold a codec to: a flat colour comes back with every channel's mean within a few levels and no
pixel far off, and a ramp without steps at the tile and window borders."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import vqcodec
from vqcodec.training.data import FLAT_MEAN_TOLERANCE, FLAT_PIXEL_TOLERANCE, colour_grid

#: Side of the flat test images.
SIDE = 256


@dataclass(frozen=True)
class Tolerance:
    """Largest error of a channel's mean, and of any pixel, in 8-bit levels."""

    mean: float
    pixel: float


#: The tolerances: at the default operating point, and at every other one.
DEFAULT_TOLERANCE = Tolerance(FLAT_MEAN_TOLERANCE, FLAT_PIXEL_TOLERANCE)
ANY_POINT_TOLERANCE = Tolerance(2 * FLAT_MEAN_TOLERANCE, 2 * FLAT_PIXEL_TOLERANCE)


def flat_colours(codec: vqcodec.Codec, tolerance: Tolerance, side: int = SIDE) -> dict:
    """Each grid colour as a flat ``side`` x ``side`` image through ``codec``: its file size, the
    worst channel-mean error and the worst pixel error, and how many colours are within ``tolerance``."""
    rows = []
    for colour in colour_grid():
        image = np.broadcast_to(colour, (side, side, 3)).copy()
        data = codec.compress(image)
        error = np.asarray(codec.decompress(data).convert("RGB")).astype(np.int64) - colour
        mean = float(np.abs(error.mean(axis=(0, 1))).max())
        pixel = float(np.abs(error).max())
        rows.append({"colour": colour.tolist(), "bytes": len(data), "mean_error": mean, "pixel_error": pixel})
    within = [r for r in rows if r["mean_error"] <= tolerance.mean and r["pixel_error"] <= tolerance.pixel]
    worst = max(rows, key=lambda r: r["mean_error"])
    return {
        "tolerance": tolerance.__dict__,
        "within": len(within),
        "colours": len(rows),
        "worst_mean_error": worst["mean_error"],
        "worst_mean_colour": worst["colour"],
        "worst_pixel_error": max(r["pixel_error"] for r in rows),
        "max_bytes": max(r["bytes"] for r in rows),
        "rows": rows,
    }


def ramp_steps(codec: vqcodec.Codec, width: int = 1024, height: int = 64) -> dict:
    """A horizontal gray ramp through ``codec``: the largest jump between neighbouring columns of
    the decoded image's column means, against the ramp's own step (blocking shows as jumps at
    tile and window borders)."""
    ramp = np.round(np.linspace(0, 255, width)).astype(np.uint8)
    image = np.broadcast_to(ramp[None, :, None], (height, width, 3)).copy()
    decoded = np.asarray(codec.decompress(codec.compress(image)).convert("RGB")).astype(np.float64)
    columns = decoded.mean(axis=(0, 2))
    return {"largest_jump": float(np.abs(np.diff(columns)).max()), "ramp_step": 255 / (width - 1)}
