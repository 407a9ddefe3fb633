"""Pillow plugin: ``Image.open("x.vqc")`` and ``im.save("x.vqc", quality=80)`` once vqcodec is
imported (``vqcodec/__init__.py`` registers it).

Opening reads the file (no further than its header says it runs) and takes the size and mode from
the header; the pixels are decoded on first use (``load``, or anything that needs them), with the
shipped model that made the file. Saving codes the image at ``quality`` (0..100, the command
line's ``--quality``; default its default) and keeps the ICC profile and EXIF data given to
``save`` or held in ``im.info``, as the command line does.
"""

from __future__ import annotations

from typing import IO, Any

from PIL import Image, ImageFile

from .. import quality
from ..format import container
from . import plugin_codecs

FORMAT = "VQC"
EXTENSION = ".vqc"


def _accept(prefix: bytes) -> bool:
    return prefix[: len(container.MAGIC)] == container.MAGIC


class VqcImageFile(ImageFile.ImageFile):
    """A ``.vqc`` file opened by Pillow: size and mode from its header, pixels on ``load``."""

    format = FORMAT
    format_description = "vqcodec learned image"

    def _open(self) -> None:
        self._vqc = container.read_file(self.fp)
        header = container.read_header(self._vqc)
        self._model_id = header.model_id
        self._size = (header.width, header.height)
        self._mode = container.MODES[header.channels]
        self.tile = []

    def load(self) -> Any:
        if self._vqc is not None:
            decoded = plugin_codecs.decoder(self._vqc, self._model_id).decompress(self._vqc)
            self._vqc = None
            self.im = decoded.im
            self.info.update(decoded.info)
        return Image.Image.load(self)


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    q = im.encoderinfo.get("quality", quality.DEFAULT_QUALITY)
    image = im.copy()
    for key in ("icc_profile", "exif"):
        value = im.encoderinfo.get(key, im.info.get(key))
        if isinstance(value, Image.Exif):
            value = value.tobytes()
        if value:
            image.info[key] = value
        else:
            image.info.pop(key, None)
    fp.write(plugin_codecs.encoder(q).compress(image))


def register() -> None:
    """Teach Pillow the format (idempotent; done when vqcodec is imported)."""
    Image.register_open(FORMAT, VqcImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, "image/x-vqc")
