"""Training data: the images of a folder, a fixed validation split, random crops and flips."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .image import read_image, to_tensor

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


class CropSampler:
    """Random size x size crops, flipped left-right half the time, as (B, 3, size, size) floats in [-1, 1].

    The generator's state is part of a training checkpoint, so a resumed run draws the same crops.
    """

    def __init__(self, images: list[np.ndarray], size: int, generator: torch.Generator):
        small = [img.shape[:2] for img in images if min(img.shape[:2]) < size]
        if small:
            raise InputError(f"crop size {size} is larger than an image of size {small[0]}")
        self.images = images
        self.size = size
        self.generator = generator

    def sample(self, batch: int) -> torch.Tensor:
        crops = []
        for _ in range(batch):
            img = self.images[int(torch.randint(len(self.images), (1,), generator=self.generator))]
            top = int(torch.randint(img.shape[0] - self.size + 1, (1,), generator=self.generator))
            left = int(torch.randint(img.shape[1] - self.size + 1, (1,), generator=self.generator))
            crop = img[top : top + self.size, left : left + self.size]
            if torch.rand(1, generator=self.generator) < 0.5:
                crop = crop[:, ::-1]
            crops.append(np.ascontiguousarray(crop))
        return to_batch(crops)


def to_batch(images: list[np.ndarray]) -> torch.Tensor:
    """(B, 3, H, W) floats in [-1, 1] from same-sized (H, W, 3) uint8 arrays."""
    return torch.cat([to_tensor(img) for img in images])
