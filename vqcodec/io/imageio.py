"""imageio plugin (the v3 API): ``iio.imread("x.vqc")``, ``iio.imwrite("x.vqc", array, quality=80)``,
``iio.improps`` and ``iio.immeta`` (from the header: no decoding), bytes in and out with
``extension=".vqc"``.

imageio finds plugins in its own registry only (it reads no entry points), so importing vqcodec
registers this one when imageio is installed (``register``), as it registers the Pillow plugin.
Reading takes the shipped model that made the file; writing codes at ``quality`` (0..100, the
command line's ``--quality``; default its default) and keeps ``icc_profile`` and ``exif`` given as
bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from imageio.config import extensions, known_plugins
from imageio.config.extensions import FileExtension
from imageio.config.plugins import PluginConfig
from imageio.core.request import URI_BYTES, InitializationError, IOMode, Request
from imageio.core.v3_plugin_api import ImageProperties, PluginV3
from PIL import Image

from .. import quality
from ..format import container
from ..zoo import catalog
from . import batch, plugin_codecs

NAME = "vqcodec"
EXTENSION = ".vqc"


def _single(index: Any) -> bool:
    """Whether ``index`` asks for the image itself (0 or None) rather than a batch of it (...)."""
    if index is Ellipsis:
        return False
    if index not in (0, None):
        raise ValueError(f"a .vqc file holds one image: index {index} is out of range")
    return True


class VqcPlugin(PluginV3):
    """Reads and writes ``.vqc`` files for imageio."""

    def __init__(self, request: Request) -> None:
        super().__init__(request)
        self._vqc: bytes | None = None
        if request.mode.io_mode == IOMode.read:
            file = request.get_file()
            if file.read(len(container.MAGIC)) != container.MAGIC:
                raise InitializationError("not a .vqc file")
            file.seek(0)
            self._vqc = container.read_file(file)
            self._header = container.read_header(self._vqc)
        elif (request.extension or request.format_hint) != EXTENSION:
            raise InitializationError(f"vqcodec writes {EXTENSION} files only")

    def read(self, *, index: Any = 0) -> np.ndarray:
        """The decoded image: (H, W) gray, or (H, W, C) with 2 to 4 channels, uint8; with
        ``index=...`` a batch of it, (1, ...)."""
        assert self._vqc is not None
        image = plugin_codecs.decoder(self._vqc, self._header.model_id).decompress(self._vqc)
        pixels = np.asarray(image)
        return pixels if _single(index) else pixels[None]

    def iter(self) -> Any:
        yield self.read()

    def properties(self, index: Any = 0) -> ImageProperties:
        """Shape and type of what ``read`` returns, from the header alone."""
        h = self._header
        shape = (h.height, h.width) if h.channels == 1 else (h.height, h.width, h.channels)
        if _single(index):
            return ImageProperties(shape=shape, dtype=np.dtype(np.uint8))
        return ImageProperties(shape=(1, *shape), dtype=np.dtype(np.uint8), n_images=1, is_batch=True)

    def metadata(self, index: Any = 0, exclude_applied: bool = True) -> dict[str, Any]:
        """What the header says (model and its preset, size, mode, bpp) and the ICC profile and EXIF
        data the file carries."""
        _single(index)
        assert self._vqc is not None
        h = self._header
        _, streams = container.unpack(self._vqc)
        return {
            "model": h.model_id.hex(),
            "preset": catalog.name_of(h.model_id),
            "width": h.width,
            "height": h.height,
            "mode": container.MODES[h.channels],
            "bpp": batch.bits_per_pixel(self._vqc),
            "resampled": h.resampled,
            **container.decode_metadata(streams.metadata),
        }

    def write(
        self,
        ndimage: Any,
        *,
        is_batch: bool = False,
        quality: int = quality.DEFAULT_QUALITY,
        icc_profile: bytes | None = None,
        exif: bytes | None = None,
    ) -> bytes | None:
        """Code one image, (H, W) or (H, W, C) uint8 (a batch of one with ``is_batch``), at
        ``quality``; the file's bytes when writing to bytes."""
        pixels = np.asarray(ndimage)
        if is_batch:
            if len(pixels) != 1:
                raise ValueError(f"a .vqc file holds one image, not a batch of {len(pixels)}")
            pixels = pixels[0]
        image = Image.fromarray(pixels)
        for key, value in (("icc_profile", icc_profile), ("exif", exif)):
            if value:
                image.info[key] = value
        data = plugin_codecs.encoder(quality).compress(image)
        self.request.get_file().write(data)
        return data if self.request._uri_type == URI_BYTES else None


def register() -> None:
    """Teach imageio the plugin and the extension (idempotent)."""
    known_plugins[NAME] = PluginConfig(name=NAME, class_name="VqcPlugin", module_name=__name__)
    if EXTENSION not in extensions.known_extensions:
        entry = FileExtension(name="vqcodec", extension=EXTENSION, priority=[NAME],
                              description="vqcodec learned image")  # fmt: skip
        extensions.extension_list.append(entry)
        extensions.known_extensions[EXTENSION] = [entry]
