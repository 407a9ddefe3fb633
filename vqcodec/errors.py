"""The one exception hierarchy of vqcodec: every codec failure is a ``VQCodecError``."""


class VQCodecError(Exception):
    """Base class of every error vqcodec raises on purpose."""


class InputError(VQCodecError):
    """The input image cannot be read or coded (unknown format, bad shape, too large)."""


class FormatError(VQCodecError):
    """A ``.vqc`` file is damaged, truncated or not a ``.vqc`` file at all."""


class ModelMismatchError(VQCodecError):
    """A ``.vqc`` file was made with a different model than the one loaded."""


class DecodeMismatchError(VQCodecError):
    """The decoded code maps fail their checksum: the decoder's probabilities differ from the encoder's."""


class ModelError(VQCodecError):
    """A model cannot be found or its weights file is invalid."""
