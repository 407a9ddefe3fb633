"""The one exception hierarchy of vqcodec: every codec failure is a ``VQCodecError``."""


class VQCodecError(Exception):
    """Base class of every error vqcodec raises on purpose."""


class UsageError(VQCodecError, ValueError):
    """An argument is out of its range (also a ``ValueError``)."""


class InputError(VQCodecError):
    """The input image cannot be read or coded (unknown format, bad shape, too large)."""


class FormatError(VQCodecError):
    """A ``.vqc`` file is damaged, truncated or not a ``.vqc`` file at all."""


class ModelMismatchError(VQCodecError):
    """A ``.vqc`` file was made with a different model than the one loaded."""


class DecodeMismatchError(VQCodecError):
    """The decoded code maps fail their checksum: the decoder's probabilities differ from the encoder's."""


class LimitError(VQCodecError):
    """An image is larger than the caller allows (``max_pixels``); the limit can be raised."""


class OutputError(VQCodecError):
    """An output file cannot be written, or exists and may not be replaced."""


class ModelError(VQCodecError):
    """A model cannot be found or its weights file is invalid."""
