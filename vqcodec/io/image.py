"""Turning whatever the user passes into an RGB array (plus alpha), and back into a PIL image."""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass, field, replace
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError, LimitError
from ..format.container import DEFAULT_MAX_PIXELS, MAX_PIXELS, MAX_SIDE

#: What the encoder takes: a PIL image, an array, a path, or the bytes of an image file (as
#: bytes, bytearray, memoryview or a binary file object).
ImageLike = Image.Image | np.ndarray | str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

#: PIL modes read as RGB without alpha; anything with transparency goes through RGBA.
_RGB_MODES = {"RGB", "CMYK", "YCbCr", "LAB", "HSV"}
#: Modes whose transparency can be one colour key, and the alpha mode that keeps it.
_KEYED_MODES = {"L": "LA", "RGB": "RGBA"}
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_SIXTEEN_BIT_WARNING = "16-bit image reduced to 8 bits per channel"


@dataclass(frozen=True)
class Picture:
    """An image as vqcodec codes it: (H, W, 3) uint8 RGB, an optional (H, W) alpha plane, and
    the channel count to give back (1 gray, 2 gray + alpha, 3 RGB, 4 RGBA)."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    channels: int
    #: What travels with the pixels: "icc_profile" and "exif" bytes, as Pillow names them.
    metadata: dict[str, bytes] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.rgb.shape[1], self.rgb.shape[0]


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse an empty image, one the format cannot hold, and one over the caller's ``max_pixels``."""
    if width < 1 or height < 1:
        raise InputError(f"empty image ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise InputError(
            f"image too large: {width}x{height} (limits: {MAX_SIDE} pixels a side, {MAX_PIXELS} pixels in all)"
        )
    if width * height > max_pixels:
        raise LimitError(
            f"image of {width}x{height} = {width * height} pixels is over the limit of {max_pixels}; "
            "allow more with --max-pixels N (command line) or max_pixels=N (Python)"
        )


def _narrowed_on_load(img: Image.Image) -> bool:
    """Whether Pillow keeps only the high byte of 16-bit samples as it loads (48-bit RGB PNG, TIFF)."""
    return img.mode not in _HIGH_DEPTH_MODES and any(";16" in str(tile.args) for tile in img.tile or [])


def _open(path: str | os.PathLike | BinaryIO, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow warns of decompression bombs by its own limit; check_size applies ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError as exc:
        raise InputError(f"no such file: {path}") from exc
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc
    try:
        with img:
            check_size(*img.size, max_pixels)
            if _narrowed_on_load(img):
                warnings.warn(_SIXTEEN_BIT_WARNING, UserWarning, stacklevel=4)
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                message = f"{path} has {frames} frames or pages; only the first is coded"
                warnings.warn(message, UserWarning, stacklevel=4)
            img.load()
            try:
                return ImageOps.exif_transpose(img)
            except _EXIF_ERRORS as exc:
                warnings.warn(f"unreadable EXIF data ({exc}) left out", UserWarning, stacklevel=4)
                img.info.pop("exif", None)
                img.getexif().clear()
                return img
    except (Image.DecompressionBombError, OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc


def _from_pil(img: Image.Image, max_pixels: int) -> Picture:
    check_size(*img.size, max_pixels)
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        samples = np.asarray(img)
        if samples.size and (samples.min() < 0 or samples.max() > 65535):
            raise InputError(f"{mode} image with samples outside 0..65535")
        return _from_array(samples.astype(np.uint16), max_pixels)
    if mode == "F":
        raise InputError("floating-point images are not supported; convert to 8 or 16 bits per channel")
    if mode == "1":
        img, mode = img.convert("L"), "L"
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        img, mode = (img.convert("RGBA"), "RGBA") if has_alpha else (img.convert("RGB"), "RGB")
    elif mode in _KEYED_MODES and "transparency" in img.info:  # a colour key (PNG tRNS) becomes alpha
        mode = _KEYED_MODES[mode]
        img = img.convert(mode)
    if mode in _RGB_MODES:
        if mode != "RGB":
            warnings.warn(f"{mode} image converted to RGB", UserWarning, stacklevel=4)
        return Picture(np.asarray(img.convert("RGB")), None, 3)
    if mode in ("L", "LA", "RGBA", "La", "RGBa"):
        return _from_array(np.asarray(img.convert({"La": "LA", "RGBa": "RGBA"}.get(mode, mode))), max_pixels)
    raise InputError(f"unsupported image mode {mode}")


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    """uint8 from uint16, with a warning: the codec is 8-bit. Other types are refused: an int64
    array of 0..255 (numpy's default integers) would otherwise be read as almost black 16-bit."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype != np.uint16:
        raise InputError(f"image arrays must be uint8 or uint16, got {arr.dtype} (convert with .astype(np.uint8))")
    warnings.warn(_SIXTEEN_BIT_WARNING, UserWarning, stacklevel=4)
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _from_array(arr: np.ndarray, max_pixels: int) -> Picture:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise InputError(f"image arrays must be HxW or HxWxC with C in 1..4, got shape {arr.shape}")
    check_size(arr.shape[1], arr.shape[0], max_pixels)
    arr = _to_8bit(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    color = arr[:, :, :3] if channels >= 3 else np.repeat(arr[:, :, :1], 3, axis=2)
    alpha = arr[:, :, channels - 1].copy() if channels in (2, 4) else None
    return Picture(np.ascontiguousarray(color), alpha, channels)


def read_image(image: ImageLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """A ``Picture`` from a PIL image, an HxW or HxWxC uint8 array, or a path to an image file;
    images over ``max_pixels`` are refused before their pixels are read. An image's ICC profile
    and EXIF data come along."""
    if isinstance(image, np.ndarray):
        return _from_array(image, max_pixels)
    if isinstance(image, (str, os.PathLike)):
        image = _open(image, max_pixels)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        image = _open(io.BytesIO(image), max_pixels)
    elif hasattr(image, "read"):
        image = _open(image, max_pixels)
    if isinstance(image, Image.Image):
        return replace(_from_pil(image, max_pixels), metadata=_metadata(image))
    raise InputError(
        f"cannot code a {type(image).__name__}: pass a PIL image, a uint8 array, a path or an image file's bytes"
    )


#: What Pillow raises for EXIF data it cannot parse.
_EXIF_ERRORS = (SyntaxError, ValueError, OSError, struct.error, KeyError, TypeError)


def _metadata(img: Image.Image) -> dict[str, bytes]:
    """The ICC profile and EXIF data of a PIL image (EXIF as it stands after orientation was applied)."""
    items = {"icc_profile": img.info.get("icc_profile") or b""}
    try:
        exif = img.getexif()
        items["exif"] = exif.tobytes() if len(exif) else b""
    except _EXIF_ERRORS as exc:
        warnings.warn(f"unreadable EXIF data ({exc}) left out", UserWarning, stacklevel=4)
    return {k: bytes(v) for k, v in items.items() if v}


def to_pil(picture: Picture) -> Image.Image:
    """The PIL image of a ``Picture``, in the mode it came in (L, LA, RGB or RGBA), its ICC profile
    and EXIF data in ``info`` (pass them to ``save``: ``icc_profile=``, ``exif=``)."""
    rgb = Image.fromarray(picture.rgb, "RGB")
    base = rgb.convert("L") if picture.channels in (1, 2) else rgb
    if picture.alpha is not None:
        base.putalpha(Image.fromarray(picture.alpha, "L"))
    base.info.update(picture.metadata)
    return base


def padding(size: int, multiple: int) -> int:
    """Pixels to add so that ``size`` becomes a multiple of ``multiple``."""
    return -size % multiple


def scaled_size(width: int, height: int, scale: float, max_pixels: int) -> tuple[int, int]:
    """(width, height) times ``scale``, rounded, at least 1, and shrunk to stay within
    ``max_pixels`` and the format's limits (an image allowed in is never refused for its scale)."""
    limit = min(max_pixels, MAX_PIXELS)
    scale = min(scale, (limit / (width * height)) ** 0.5, MAX_SIDE / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    while w * h > limit:
        w, h = max(1, w - 1), max(1, h - 1)
    return w, h


def resample(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: ``rgb`` resized with a Lanczos filter (itself if already that size)."""
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


def pad_to(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """(H, W, 3) edge-padded on the right and bottom to multiples of ``multiple``, as the codec codes it."""
    h, w = rgb.shape[:2]
    return np.pad(rgb, ((0, padding(h, multiple)), (0, padding(w, multiple)), (0, 0)), mode="edge")


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) floats in [-1, 1] from (H, W, 3) uint8."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1.0


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 from a (B, 3, H, W) tensor in [-1, 1] (rounded, clamped)."""
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def to_rgb(x: torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 from a (1, 3, H, W) tensor in [-1, 1] (rounded, clamped)."""
    return to_pixels(x)[0].cpu().numpy()
