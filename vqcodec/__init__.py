"""vqcodec: a learned image codec on a VQ-VAE-2 with PixelSNAIL priors and range coding.

>>> import vqcodec
>>> codec = vqcodec.load()                 # the default shipped preset
>>> data = codec.compress("photo.png")     # .vqc bytes
>>> small = codec.compress("photo.png", quality=30)  # another operating point, same codec
>>> image = codec.decompress(data)         # a PIL image

The codec (and torch with it) is imported on first use, so that importing vqcodec to read a
header, list the presets or catch its errors is fast.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from . import quality
from .errors import (
    DecodeMismatchError,
    FormatError,
    InputError,
    LimitError,
    ModelError,
    ModelMismatchError,
    OutputError,
    UsageError,
    VQCodecError,
)
from .format import container
from .format.container import Header, read_header
from .io import batch, pillow
from .settings import Settings
from .zoo import catalog
from .zoo.catalog import presets

pillow.register()
if importlib.util.find_spec("imageio") is not None:  # imageio reads no entry points: register here
    importlib.import_module(".io.imageio", __name__).register()

if TYPE_CHECKING:
    from .codec import Codec, CodeMaps, Encoded, MapStats, load, load_for

__version__ = "0.19.0"

_FROM_CODEC = {"Codec", "CodeMaps", "Encoded", "MapStats", "load", "load_for"}


def __getattr__(name: str) -> Any:
    if name in _FROM_CODEC:
        return getattr(importlib.import_module(".codec", __name__), name)
    raise AttributeError(f"module 'vqcodec' has no attribute {name!r}")


__all__ = [
    "CodeMaps",
    "Codec",
    "DecodeMismatchError",
    "Encoded",
    "FormatError",
    "Header",
    "InputError",
    "LimitError",
    "MapStats",
    "ModelError",
    "ModelMismatchError",
    "OutputError",
    "Settings",
    "UsageError",
    "VQCodecError",
    "batch",
    "catalog",
    "container",
    "load",
    "load_for",
    "presets",
    "quality",
    "read_header",
]
