"""Quality 0..100 and target sizes, mapped onto the shipped operating points: (preset, RDO
strength) pairs ordered from the smallest files to the largest (measured on Kodak, see README)."""

from __future__ import annotations

from collections.abc import Callable

from .errors import LimitError, UsageError

#: The operating points, smallest files first. RDO moves a preset's rate by a few percent; the
#: presets (bottom stride 8, 4, and 4 with a larger codebook) make the big steps.
LADDER: tuple[tuple[str, float], ...] = (
    ("low", 1.0),
    ("low", 0.2),
    ("low", 0.0),
    ("medium", 1.0),
    ("medium", 0.2),
    ("medium", 0.0),
    ("high", 1.0),
    ("high", 0.2),
    ("high", 0.0),
)
#: The quality of the default operating point (``medium`` at RDO 0.2).
DEFAULT_QUALITY = 50


def operating_point(quality: int) -> tuple[str, float]:
    """The (preset, rdo) of ``quality`` (0..100): the ladder spread evenly over the scale."""
    if not 0 <= quality <= 100:
        raise UsageError(f"quality must be in 0..100, got {quality}")
    return LADDER[quality * len(LADDER) // 101]


def qualities() -> list[tuple[range, tuple[str, float]]]:
    """Each operating point with the qualities that select it (for help texts and README)."""
    spans: dict[tuple[str, float], list[int]] = {}
    for q in range(101):
        spans.setdefault(operating_point(q), []).append(q)
    return [(range(qs[0], qs[-1] + 1), point) for point, qs in spans.items()]


def largest_within(encode: Callable[[str, float], bytes], max_bytes: int) -> tuple[bytes, tuple[str, float]]:
    """The largest file of any operating point that fits in ``max_bytes`` (``encode(preset, rdo)``
    gives a point's file): a binary search over the ladder, whose sizes grow along it."""
    low, high, best = 0, len(LADDER) - 1, None
    while low <= high:
        mid = (low + high) // 2
        data = encode(*LADDER[mid])
        if len(data) <= max_bytes:
            best, low = (data, LADDER[mid]), mid + 1
        else:
            high = mid - 1
    if best is None:
        raise LimitError(f"even the smallest operating point ({LADDER[0][0]}) takes more than {max_bytes} bytes")
    return best
