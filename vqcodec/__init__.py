"""vqcodec: a learned image codec on a VQ-VAE-2 with PixelSNAIL priors and range coding.

>>> import vqcodec
>>> codec = vqcodec.load()                 # the default shipped preset
>>> data = codec.compress("photo.png")     # .vqc bytes
>>> image = codec.decompress(data)         # a PIL image
"""

from .catalog import presets
from .codec import Codec, CodeMaps, Encoded, MapStats, load, load_for
from .container import Header, read_header
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

__version__ = "0.1.0"

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
    "UsageError",
    "VQCodecError",
    "load",
    "load_for",
    "presets",
    "read_header",
]
