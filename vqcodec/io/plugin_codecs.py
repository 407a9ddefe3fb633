"""The codecs the Pillow and imageio plugins code with, each loaded once per process: for
decoding, the shipped model that made a file; for encoding, the default preset at the operating
point of a quality."""

from __future__ import annotations

from typing import Any

_DECODERS: dict[bytes, Any] = {}
_ENCODERS: dict[int, Any] = {}


def decoder(vqc: bytes, model_id: bytes) -> Any:
    """The codec that decodes ``vqc``, a file of the model ``model_id`` (from its header)."""
    from .. import codec  # torch comes in here, with the first pixels asked for

    if model_id not in _DECODERS:
        _DECODERS[model_id] = codec.load_for(vqc)
    return _DECODERS[model_id]


def encoder(q: int) -> Any:
    """The codec of ``--quality q`` (0..100)."""
    from .. import codec

    if q not in _ENCODERS:
        base = next(iter(_ENCODERS.values()), None) or codec.load()
        _ENCODERS[q] = base.with_settings(quality=q)
    return _ENCODERS[q]
