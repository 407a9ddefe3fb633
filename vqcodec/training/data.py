"""Training data: the images of a folder, a fixed validation split, random crops and flips, and
colour augmentation for the colours photos rarely show."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..defaults import AUGMENTS, WEIGHINGS
from ..errors import InputError, ModelError
from ..io.image import read_image, to_tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}
#: One image in VALIDATION_EVERY goes to validation, chosen by a hash of its name (stable as files come and go).
VALIDATION_EVERY = 10


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images in {folder}")
    return files


def is_validation(path: Path) -> bool:
    """Whether ``path`` belongs to the fixed validation split."""
    return int(hashlib.sha1(path.name.encode()).hexdigest(), 16) % VALIDATION_EVERY == 0


def split(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(training files, validation files) of ``folder``."""
    files = image_files(folder)
    val = [p for p in files if is_validation(p)]
    train = [p for p in files if not is_validation(p)]
    if not train or not val:
        raise InputError(f"{folder} needs at least {VALIDATION_EVERY} images for a training/validation split")
    return train, val


def load_rgb(files: list[Path]) -> list[np.ndarray]:
    """The (H, W, 3) uint8 RGB pixels of each file (alpha dropped, gray expanded)."""
    return [read_image(p).rgb for p in files]


#: Half the bottom map's stride: every bottom and top code of a shifted copy sees another window
#: of the photo, so its code maps are new data, not the same codes moved.
SHIFT = 2


def variants(images: list[np.ndarray], augment: tuple[str, ...] = ()) -> Iterator[np.ndarray]:
    """Each image, then (with ``"mirror"`` in ``augment``) its mirror image, then (with
    ``"shift"``) each of those with its first ``SHIFT`` rows and columns cut off: natural photos
    of their own, for stages that train on code maps, whose analysis is neither mirror- nor
    shift-invariant. Made one at a time, so memory holds one copy."""
    unknown = set(augment) - set(AUGMENTS)
    if unknown:
        raise InputError(f"unknown augmentation {sorted(unknown)[0]!r}; choose from {', '.join(AUGMENTS)}")
    for img in images:
        copies = [img, img[:, ::-1]] if "mirror" in augment else [img]
        for copy in copies:
            yield np.ascontiguousarray(copy)
            if "shift" in augment:
                yield np.ascontiguousarray(copy[SHIFT:, SHIFT:])


#: Channel levels a synthetic crop's colours are drawn from half the time (the rest uniformly):
#: the saturated corners and edges of the RGB cube that photos seldom reach.
CUBE_LEVELS = (0, 64, 128, 192, 255)


#: How close a flat grid colour must come back at the default quality, in 8-bit levels: every
#: channel's mean, and every pixel (twice these at the other operating points).
FLAT_MEAN_TOLERANCE, FLAT_PIXEL_TOLERANCE = 3, 12


def colour_grid() -> np.ndarray:
    """The (125, 3) uint8 colours whose channels are all cube levels: the flat-colour test set."""
    levels = np.array(CUBE_LEVELS, dtype=np.uint8)
    return np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)


def _uniform(generator: torch.Generator, *shape: int) -> np.ndarray:
    return torch.rand(shape, generator=generator, dtype=torch.float64).numpy()


def _random_colour(generator: torch.Generator) -> np.ndarray:
    """An RGB colour (3,) in [0, 255]: each channel a cube level or uniform, by a coin per channel."""
    levels = np.array(CUBE_LEVELS, dtype=np.float64)
    on_grid = levels[(_uniform(generator, 3) * len(levels)).astype(int)]
    return np.where(_uniform(generator, 3) < 0.5, on_grid, _uniform(generator, 3) * 255)


def synthetic_crop(size: int, generator: torch.Generator) -> np.ndarray:
    """A flat colour, or a linear ramp between two colours in a random direction (uint8, size x size x 3):
    what a codec must keep exactly (logos, screenshots, skies) and photos teach too seldom."""
    a, b = _random_colour(generator), _random_colour(generator)
    if _uniform(generator, 1)[0] < 0.5:
        return np.broadcast_to(np.round(a).astype(np.uint8), (size, size, 3)).copy()
    angle = _uniform(generator, 1)[0] * 2 * np.pi
    ys, xs = np.mgrid[0:size, 0:size] / max(1, size - 1)
    t = np.cos(angle) * xs + np.sin(angle) * ys
    t = (t - t.min()) / max(np.ptp(t), 1e-9)
    return np.round(a + (b - a) * t[..., None]).clip(0, 255).astype(np.uint8)


def recoloured(crop: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """``crop`` with its channels permuted and its saturation scaled by 1..2.5 (clipped): natural
    texture in colours the photos do not have."""
    order = torch.randperm(3, generator=generator).numpy()
    x = crop[..., order].astype(np.float64)
    gray = x.mean(axis=2, keepdims=True)
    gain = 1 + 1.5 * _uniform(generator, 1)[0]
    return np.round(gray + gain * (x - gray)).clip(0, 255).astype(np.uint8)


def crop_positions(shapes: list[tuple[int, ...]], size: int) -> torch.Tensor:
    """How many size x size crops each image (its (height, width, ...) in ``shapes``) holds: the
    weights ``by_area`` draws with."""
    return torch.tensor([float((h - size + 1) * (w - size + 1)) for h, w, *_ in shapes], dtype=torch.float64)


def by_area(positions: torch.Tensor, generator: torch.Generator) -> int:
    """The index of an image drawn in proportion to its ``crop_positions``: every crop position
    of every image equally likely, so a large photo is worth as much as the small ones that add
    up to its pixels."""
    return int(torch.multinomial(positions, 1, generator=generator))


class CropSampler:
    """Random size x size crops (every crop position of every image equally likely), flipped
    left-right half the time, as (B, 3, size, size) floats in [-1, 1].

    ``colour`` is the share of crops given colours photos seldom have: half of those are replaced
    by a synthetic flat colour or ramp (``synthetic_crop``), half recoloured (``recoloured``).
    ``weigh`` (one of ``WEIGHINGS``) draws the images by area or each alike.
    The generator's state is part of a training checkpoint, so a resumed run draws the same crops.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        size: int,
        generator: torch.Generator,
        colour: float = 0.0,
        weigh: str = "area",
    ):
        small = [img.shape[:2] for img in images if min(img.shape[:2]) < size]
        if small:
            raise InputError(f"crop size {size} is larger than an image of size {small[0]}")
        if not 0.0 <= colour <= 1.0:
            raise InputError(f"the colour-augmented share must be in [0, 1], not {colour}")
        if weigh not in WEIGHINGS:
            raise InputError(f"images are weighed by {' or '.join(WEIGHINGS)}, not {weigh!r}")
        self.images = images
        self.positions = crop_positions([img.shape for img in images], size)
        if weigh == "image":
            self.positions = torch.ones_like(self.positions)
        self.size = size
        self.generator = generator
        self.colour = colour

    def _augmented(self, crop: np.ndarray) -> np.ndarray:
        if not self.colour or _uniform(self.generator, 1)[0] >= self.colour:
            return crop
        if _uniform(self.generator, 1)[0] < 0.5:
            return synthetic_crop(self.size, self.generator)
        return recoloured(crop, self.generator)

    def sample(self, batch: int) -> torch.Tensor:
        crops = []
        for _ in range(batch):
            img = self.images[by_area(self.positions, self.generator)]
            top = int(torch.randint(img.shape[0] - self.size + 1, (1,), generator=self.generator))
            left = int(torch.randint(img.shape[1] - self.size + 1, (1,), generator=self.generator))
            crop = img[top : top + self.size, left : left + self.size]
            if torch.rand(1, generator=self.generator) < 0.5:
                crop = crop[:, ::-1]
            crops.append(np.ascontiguousarray(self._augmented(crop)))
        return to_batch(crops)


def to_batch(images: list[np.ndarray]) -> torch.Tensor:
    """(B, 3, H, W) floats in [-1, 1] from same-sized (H, W, 3) uint8 arrays."""
    return torch.cat([to_tensor(img) for img in images])


class MapCropSampler:
    """Aligned random crops of (top, bottom) maps: size x size top codes, 2size x 2size bottom
    codes, every crop position of every map equally likely."""

    def __init__(self, maps: list[tuple[np.ndarray, np.ndarray]], size: int, generator: torch.Generator):
        self.maps = [(t, b) for t, b in maps if min(t.shape) >= size]
        if not self.maps:
            raise ModelError(f"no code map is {size} codes on a side; use a smaller --crop")
        self.positions = crop_positions([t.shape for t, _ in self.maps], size)
        self.size, self.generator = size, generator

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        tops, bottoms = [], []
        for _ in range(batch):
            top, bottom = self.maps[by_area(self.positions, self.generator)]
            r, c = self._randint(top.shape[0] - self.size + 1), self._randint(top.shape[1] - self.size + 1)
            tops.append(top[r : r + self.size, c : c + self.size])
            bottoms.append(bottom[2 * r : 2 * (r + self.size), 2 * c : 2 * (c + self.size)])
        return torch.from_numpy(np.stack(tops)), torch.from_numpy(np.stack(bottoms))


def map_tiles(maps: list[tuple[np.ndarray, np.ndarray]], size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every whole size x size tile of each map (matching how the codec tiles maps)."""
    for top, bottom in maps:
        for r in range(0, top.shape[0] - size + 1, size):
            for c in range(0, top.shape[1] - size + 1, size):
                yield (
                    torch.from_numpy(top[None, r : r + size, c : c + size]),
                    torch.from_numpy(bottom[None, 2 * r : 2 * (r + size), 2 * c : 2 * (c + size)]),
                )
