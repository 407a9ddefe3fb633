"""Quality 0..100 and target sizes, mapped onto the operating points: (RDO strength, resampling
scale, RDO passes, enhancement layer and step) ordered from the smallest files to the largest, the
part of a codec's ``Settings`` that a quality picks (chosen for the default preset on validation
photos, measured on Kodak: see docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .defaults import DEFAULT_RDO
from .errors import LimitError, UsageError
from .settings import enhancement_text


class OperatingPoint(NamedTuple):
    """The settings (``vqcodec.settings.Settings``) that code at one point of the curve."""

    rdo: float
    scale: float = 1.0
    rdo_passes: int = 1
    enhancement: int = 0
    enhancement_step: int = 0

    def __str__(self) -> str:
        passes = f" ({self.rdo_passes} passes)" if self.rdo_passes != 1 else ""
        scale = f" at {self.scale:g}x" if self.scale != 1 else ""
        return f"rdo {self.rdo:g}{passes}{scale}{enhancement_text(self.enhancement, self.enhancement_step)}"


#: Above this scale the encoder codes the nearest codes (no RDO): RDO's small gain there would
#: cost more encoding time than the largest points can spare.
RDO_SCALE_LIMIT = 1.5
#: Below this scale the points other than the default make their RDO choice twice, the second
#: around the first: smaller files for more encoding time, which neither the default nor the
#: larger points can spare (docs/design.md, "Constants").
TWO_PASS_SCALE_LIMIT = 1.2


def _point(k: int) -> OperatingPoint:
    scale = round(2 ** (k / 4), 3)
    rdo = 0.2 if scale <= RDO_SCALE_LIMIT else 0.0
    passes = 2 if scale != 1 and scale < TWO_PASS_SCALE_LIMIT else 1
    return OperatingPoint(rdo, scale, passes)


#: The operating points of a model without enhancement layers, smallest files first: the default
#: preset on copies of the image resampled by 2^(k/4), k = -7..4 (0.297x to 2x), each about 1.4
#: times the rate of the one before. On validation photos these beat the other presets at their
#: own rates (docs/design.md), so the ladder is one model at many scales. It stops at the largest
#: scale a ``Codec`` takes.
RESAMPLED_LADDER: tuple[OperatingPoint, ...] = tuple(_point(k) for k in range(-7, 5))
#: The quality of the default operating point (RDO 0.2, not resampled).
DEFAULT_QUALITY = 50
#: Where the default operating point sits in the ladders.
DEFAULT_POINT = RESAMPLED_LADDER.index(OperatingPoint(DEFAULT_RDO))
#: Above the default, a model with enhancement layers codes its nearest codes and a layer on top,
#: at a step 2^(step/8) of the layer's own (coarser steps of a layer trained for more bits beat
#: finer ones of a layer trained for fewer; the last rung, finer than its layer, reaches past 2
#: bits per pixel): (layer, step), smallest files first.
RUNGS = ((1, 4), (1, 0), (2, 6), (2, 3), (2, 0), (3, 6), (3, 3), (3, 0), (3, -3))
#: The layers the rungs use: a model with fewer codes above the default on ``RESAMPLED_LADDER``.
ENHANCEMENT_LAYERS = max(layer for layer, _ in RUNGS)
#: The operating points of a model with ``ENHANCEMENT_LAYERS`` layers (the default preset).
LADDER: tuple[OperatingPoint, ...] = RESAMPLED_LADDER[: DEFAULT_POINT + 1] + tuple(
    OperatingPoint(0.0, enhancement=layer, enhancement_step=step) for layer, step in RUNGS
)


def ladder(layers: int = ENHANCEMENT_LAYERS) -> tuple[OperatingPoint, ...]:
    """The operating points of a model with ``layers`` enhancement layers (by default, the
    default preset's)."""
    return LADDER if layers >= ENHANCEMENT_LAYERS else RESAMPLED_LADDER


def operating_point(quality: int, layers: int = ENHANCEMENT_LAYERS) -> OperatingPoint:
    """The operating point of ``quality`` (0..100) for a model with ``layers`` enhancement layers
    (``ladder``): the points below the default spread evenly over the qualities below
    ``DEFAULT_QUALITY``, the default and those above over the rest."""
    if not 0 <= quality <= 100:
        raise UsageError(f"quality must be in 0..100, got {quality}")
    points = ladder(layers)
    if quality < DEFAULT_QUALITY:
        return points[quality * DEFAULT_POINT // DEFAULT_QUALITY]
    above = len(points) - DEFAULT_POINT
    return points[DEFAULT_POINT + (quality - DEFAULT_QUALITY) * above // (101 - DEFAULT_QUALITY)]


def qualities(layers: int = ENHANCEMENT_LAYERS) -> list[tuple[range, OperatingPoint]]:
    """Each operating point with the qualities that select it (for help texts and README)."""
    spans: dict[OperatingPoint, list[int]] = {}
    for q in range(101):
        spans.setdefault(operating_point(q, layers), []).append(q)
    return [(range(qs[0], qs[-1] + 1), point) for point, qs in spans.items()]


def largest_within(
    encode: Callable[[OperatingPoint], bytes], max_bytes: int, layers: int = ENHANCEMENT_LAYERS
) -> tuple[bytes, OperatingPoint]:
    """The largest file of any operating point that fits in ``max_bytes`` (``encode(point)`` gives
    a point's file): a binary search over the ladder, whose sizes grow along it."""
    points = ladder(layers)
    low, high, best = 0, len(points) - 1, None
    while low <= high:
        mid = (low + high) // 2
        data = encode(points[mid])
        if len(data) <= max_bytes:
            best, low = (data, points[mid]), mid + 1
        else:
            high = mid - 1
    if best is None:
        raise LimitError(f"even the smallest operating point ({points[0]}) takes more than {max_bytes} bytes")
    return best
