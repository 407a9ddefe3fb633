"""How the encoder writes a file: one operating point (RDO, passes, resampling) and what goes
with it (tile, restoration filter, metadata). Any file decodes whatever its settings were.

A ``Codec`` holds default settings, taken from its model (``zoo.catalog``: a shipped model's
index entry may set some) and overridden by the caller; each call may override them again, so
one loaded codec serves every operating point. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from .defaults import DEFAULT_RDO, DEFAULT_TILE, MAX_SCALE, MIN_SCALE
from .errors import UsageError
from .format.container import MAX_TILE


@dataclass(frozen=True)
class Settings:
    """``rdo``: 0 codes the nearest codes, more gives smaller files of lower quality.
    ``rdo_passes``: RDO's choices, each in the context of the one before (more: smaller files,
    slower encoding). ``scale`` (``MIN_SCALE``..``MAX_SCALE``): code a copy of the image
    resampled by this factor, which the decoder resamples back; above 1 for higher rates and
    quality than the model gives at its own resolution (about ``scale`` squared times the rate
    and the time), below 1 for lower ones. ``tile``: side of the regions the priors code
    independently (smaller: faster decoding, a little larger files). ``restore``: fit a
    restoration filter to each image and write it where it is worth its bytes (``coding.
    restoration``). ``strip_metadata``: leave the image's ICC profile and EXIF data out."""

    rdo: float = DEFAULT_RDO
    rdo_passes: int = 1
    scale: float = 1.0
    tile: int = DEFAULT_TILE
    restore: bool = True
    strip_metadata: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.rdo, numbers.Real) or not 0 <= self.rdo < math.inf:
            raise UsageError(f"rdo must be a finite number >= 0, got {self.rdo!r}")
        if not _whole(self.rdo_passes) or self.rdo_passes < 1:
            raise UsageError(f"rdo_passes must be a whole number of at least 1, got {self.rdo_passes!r}")
        if not isinstance(self.scale, numbers.Real) or not MIN_SCALE <= self.scale <= MAX_SCALE:
            raise UsageError(f"scale must be in {MIN_SCALE:g}..{MAX_SCALE:g}, got {self.scale!r}")
        if not _whole(self.tile) or not 1 <= self.tile <= MAX_TILE:
            raise UsageError(f"tile must be in 1..{MAX_TILE}, got {self.tile!r}")

    def replace(self, **changes: Any) -> Settings:
        """These settings with ``changes`` (names of fields; anything else is an error)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UsageError(f"unknown setting {unknown[0]!r}: settings are {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes) if changes else self

    def __str__(self) -> str:
        passes = f" ({self.rdo_passes} passes)" if self.rdo_passes != 1 else ""
        scale = f" at {self.scale:g}x" if self.scale != 1 else ""
        return f"rdo {self.rdo:g}{passes}{scale}"


#: The names of the settings.
FIELDS = tuple(f.name for f in dataclasses.fields(Settings))


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
