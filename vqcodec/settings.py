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
    restoration``). ``strip_metadata``: leave the image's ICC profile and EXIF data out.
    ``enhancement``: code the model's enhancement layer of that number (1-based; 0: none) on
    top of the code maps, for rates above theirs, at quantisation step 2^(``enhancement_step``
    / 8) of the layer's own (``-MAX_ENHANCEMENT_STEP..MAX_ENHANCEMENT_STEP``; larger: smaller
    files); the image is then coded at its own size (``scale`` 1)."""

    rdo: float = DEFAULT_RDO
    rdo_passes: int = 1
    scale: float = 1.0
    tile: int = DEFAULT_TILE
    restore: bool = True
    strip_metadata: bool = False
    enhancement: int = 0
    enhancement_step: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.rdo, numbers.Real) or not 0 <= self.rdo < math.inf:
            raise UsageError(f"rdo must be a finite number >= 0, got {self.rdo!r}")
        if not _whole(self.rdo_passes) or self.rdo_passes < 1:
            raise UsageError(f"rdo_passes must be a whole number of at least 1, got {self.rdo_passes!r}")
        if not isinstance(self.scale, numbers.Real) or not MIN_SCALE <= self.scale <= MAX_SCALE:
            raise UsageError(f"scale must be in {MIN_SCALE:g}..{MAX_SCALE:g}, got {self.scale!r}")
        if not _whole(self.tile) or not 1 <= self.tile <= MAX_TILE:
            raise UsageError(f"tile must be in 1..{MAX_TILE}, got {self.tile!r}")
        if not _whole(self.enhancement) or not 0 <= self.enhancement <= MAX_ENHANCEMENT_LAYER:
            raise UsageError(f"enhancement must be a layer in 0..{MAX_ENHANCEMENT_LAYER}, got {self.enhancement!r}")
        m = MAX_ENHANCEMENT_STEP
        if not _whole(self.enhancement_step) or not -m <= self.enhancement_step <= m:
            raise UsageError(f"enhancement_step must be in {-m}..{m}, got {self.enhancement_step!r}")
        if self.enhancement and self.scale != 1:
            raise UsageError("an enhancement layer codes the image at its own size: scale must be 1")

    def replace(self, **changes: Any) -> Settings:
        """These settings with ``changes`` (names of fields; anything else is an error)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UsageError(f"unknown setting {unknown[0]!r}: settings are {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes) if changes else self

    def __str__(self) -> str:
        passes = f" ({self.rdo_passes} passes)" if self.rdo_passes != 1 else ""
        scale = f" at {self.scale:g}x" if self.scale != 1 else ""
        return f"rdo {self.rdo:g}{passes}{scale}{enhancement_text(self.enhancement, self.enhancement_step)}"


def enhancement_text(layer: int, step: int) -> str:
    """How a setting or operating point names its enhancement layer ("" for none)."""
    if not layer:
        return ""
    return f" + enhancement {layer}" + (f" (step {step:+d})" if step else "")


#: The largest enhancement layer number and step (``Settings``).
MAX_ENHANCEMENT_LAYER = 16
MAX_ENHANCEMENT_STEP = 32


#: The names of the settings.
FIELDS = tuple(f.name for f in dataclasses.fields(Settings))


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
