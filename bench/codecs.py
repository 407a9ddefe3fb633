"""The codecs the rate-distortion benchmark sweeps: Pillow's classical ones and vqcodec models.

Every codec turns an RGB image into the bytes of a complete file and back, and reports how long
each direction took (best of ``repeats`` runs, single-threaded for the classical codecs, as in the
Kodak anchors).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image, features

import vqcodec
from vqcodec.defaults import DEFAULT_PRESET

T = TypeVar("T")
Setting = float | int | str


def best_time(fn: Callable[[], T], repeats: int) -> tuple[T, float]:
    """``fn()``'s result and its fastest wall-clock time in seconds over ``repeats`` runs."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def rgb_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a decoded image (outside the timings: not the codec's work)."""
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


@dataclass(frozen=True)
class Coded:
    """One image through one codec at one setting: the file, the decoded RGB and the times."""

    data: bytes
    decoded: np.ndarray
    encode_s: float
    decode_s: float | None
    #: vqcodec: the bits per code of the top and bottom maps; None for the classical codecs.
    bits_per_code: tuple[float, float] | None = None


class RDCodec(Protocol):
    """What the benchmark needs of a codec: a name, its settings and a way to run one."""

    name: str
    description: str
    settings: Sequence[Setting]

    def run(self, image: Image.Image, setting: Setting, repeats: int) -> Coded: ...


@dataclass(frozen=True)
class PillowCodec:
    """A codec Pillow writes: ``params(setting)`` gives ``Image.save``'s keyword arguments."""

    name: str
    description: str
    format: str
    settings: Sequence[Setting]
    params: Callable[[Setting], dict[str, Any]]

    def encode(self, image: Image.Image, setting: Setting) -> bytes:
        """The complete file Pillow writes for ``image`` at ``setting``."""
        buf = io.BytesIO()
        image.save(buf, self.format, **self.params(setting))
        return buf.getvalue()

    @staticmethod
    def load(data: bytes) -> Image.Image:
        """The decoded image of a file (``Image.open`` and ``load``: the decoding that is timed)."""
        img = Image.open(io.BytesIO(data))
        img.load()
        return img

    def decode(self, data: bytes) -> np.ndarray:
        """The (H, W, 3) uint8 RGB pixels of a file."""
        return rgb_array(self.load(data))

    def run(self, image: Image.Image, setting: Setting, repeats: int) -> Coded:
        """Encode and decode ``image``; times cover ``Image.save`` and ``Image.open`` + ``load``."""
        data, enc_s = best_time(lambda: self.encode(image, setting), repeats)
        decoded, dec_s = best_time(lambda: self.load(data), repeats)
        return Coded(data, rgb_array(decoded), enc_s, dec_s)


#: The Pillow feature each format needs (a Pillow built without it cannot write the format).
_PILLOW_FEATURES = {"JPEG": "jpg", "WEBP": "webp", "AVIF": "avif", "JPEG2000": "jpg_2000"}


def _jxl_available() -> bool:
    """True when the pillow-jxl-plugin imports (it registers the JXL format with Pillow)."""
    try:
        from pillow_jxl import JpegXLImagePlugin

        JpegXLImagePlugin.DECODE_THREADS = 0  # single-threaded decoding, as for the other codecs
    except ImportError:
        return False
    return True


def classical_codecs() -> list[PillowCodec]:
    """JPEG 4:2:0 and 4:4:4, WebP, AVIF, JPEG 2000 and (when its plugin imports) JPEG XL.

    Names, settings and options follow shared/anchors/classical_kodak.md so the numbers compare.
    OpenJPEG's rates are compression ratios over 24-bit RGB: ratio 24/bpp targets bpp.
    """
    if features.check("avif"):  # built into Pillow from 11.3
        from PIL import AvifImagePlugin

        AvifImagePlugin.DEFAULT_MAX_THREADS = 1  # AVIF decoding uses the same single thread as encoding
    jpeg_q = [2, 4, 6, 10, 15, 25, 40, 55, 70, 80, 90]
    codecs = [
        PillowCodec("jpeg420", "Pillow JPEG (libjpeg-turbo) 4:2:0, optimize=True", "JPEG", jpeg_q,
                    lambda q: {"quality": q, "subsampling": "4:2:0", "optimize": True}),
        PillowCodec("jpeg444", "Pillow JPEG (libjpeg-turbo) 4:4:4, optimize=True", "JPEG", jpeg_q,
                    lambda q: {"quality": q, "subsampling": "4:4:4", "optimize": True}),
        PillowCodec("webp_m4", "Pillow WebP (libwebp) lossy, method=4", "WEBP",
                    [0, 3, 8, 15, 25, 40, 55, 70, 80, 88, 94], lambda q: {"quality": q, "method": 4}),
        PillowCodec("avif", "Pillow AVIF (libavif), speed=6, 4:2:0, 1 thread", "AVIF",
                    [8, 18, 28, 38, 48, 58, 66, 74, 82, 88],
                    lambda q: {"quality": q, "speed": 6, "subsampling": "4:2:0", "max_threads": 1}),
        PillowCodec("j2k", "Pillow JPEG 2000 (OpenJPEG) raw .j2k, 9/7 irreversible, mct=1, rates mode; "
                    "setting = target bpp", "JPEG2000", [0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0],
                    lambda bpp: {"no_jp2": True, "irreversible": True, "mct": 1, "quality_mode": "rates",
                                 "quality_layers": [24 / bpp]}),
    ]  # fmt: skip
    codecs = [c for c in codecs if features.check(_PILLOW_FEATURES[c.format])]
    if _jxl_available():
        codecs.append(
            PillowCodec("jxl", "pillow-jxl-plugin (libjxl) lossy, effort=7, 1 thread, bare codestream", "JXL",
                        [0, 8, 18, 30, 42, 55, 65, 75, 82, 88, 92],
                        lambda q: {"quality": q, "effort": 7, "num_threads": 0, "use_container": False})
        )  # fmt: skip
    return codecs


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries behind the classical codecs, for the report."""
    versions = {f"lib{name}": features.version(name) for name in ("jpg", "webp", "avif", "jpg_2000")}
    try:
        from PIL import _avif  # Pillow's AVIF module names the AV1 encoder and decoder it was built with

        versions["avif_codecs"] = _avif.codec_versions()
    except (ImportError, AttributeError):
        versions["avif_codecs"] = None
    return versions


@dataclass
class VQCodec:
    """vqcodec models as one codec: each setting names a loaded ``vqcodec.Codec``.

    With ``decode`` False the decoder is skipped (for speed): the reconstruction is
    synthesised from the encoder's code maps, which the decoder reproduces exactly (the file's
    content CRC checks that), and no decode time is reported.
    """

    name: str
    description: str
    models: dict[str, vqcodec.Codec]
    decode: bool = True

    @property
    def settings(self) -> list[str]:
        return list(self.models)

    def run(self, image: Image.Image, setting: Setting, repeats: int) -> Coded:
        codec = self.models[str(setting)]
        rgb = np.asarray(image)
        encoded, enc_s = best_time(lambda: codec.encode(rgb), repeats)
        bits = (encoded.top.bits_per_code, encoded.bottom.bits_per_code)
        if not self.decode:
            pixels = codec.reconstruct(
                encoded.codes, image.width, image.height, coded_size=encoded.coded_size, restored=encoded.restoration
            )
            return Coded(encoded.data, pixels, enc_s, None, bits)
        decoded, dec_s = best_time(lambda: codec.decompress(encoded.data), repeats)
        return Coded(encoded.data, rgb_array(decoded), enc_s, dec_s, bits)


def _ladder(device: str, path: Path | None = None) -> dict[str, vqcodec.Codec]:
    """Every point ``--quality`` picks (named by the lowest quality that picks it and the model),
    with the model file ``path`` in place of the default preset when given: one loaded model."""
    codec = vqcodec.load(path=path, device=device)
    model = DEFAULT_PRESET if path is None else path.stem
    return {
        f"q{span.start} {model} {point}": codec.with_settings(quality=span.start)
        for span, point in vqcodec.quality.qualities(len(codec.model.enhancements))
    }


def vqcodec_codecs(
    use_presets: bool, model_paths: Sequence[Path], device: str, decode: bool, rdo: float, ladder: bool = False
) -> list[VQCodec]:
    """The shipped operating points as one codec ``vqcodec``, and each model file as a codec of
    its own, ``vqcodec-<file stem>``: encoding with ``rdo`` (see ``vqcodec.Codec``), or with
    ``ladder`` at every operating point's RDO and scale (a candidate model's whole curve)."""
    codecs = []
    if use_presets and vqcodec.presets():
        codecs.append(VQCodec("vqcodec", "vqcodec operating points (--quality)", _ladder(device), decode))
    for path in model_paths:
        name, description = f"vqcodec-{path.stem}", f"vqcodec model {path.name}"
        if ladder:
            codecs.append(VQCodec(name, description + " at the --quality points", _ladder(device, path), decode))
        else:
            codec = vqcodec.load(path=path, device=device, rdo=rdo)
            codecs.append(VQCodec(name, description, {path.stem: codec}, decode))
    return codecs
