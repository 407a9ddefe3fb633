"""The images a benchmark runs on: every readable image file of a folder, as RGB, optionally cropped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
from PIL import Image

EXTENSIONS = {".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Sample:
    """One benchmark image: its name (the file stem) and its RGB pixels."""

    name: str
    image: Image.Image

    @property
    def pixels(self) -> int:
        return self.image.width * self.image.height


def center_crop(image: Image.Image, side: int) -> Image.Image:
    """The central ``side`` x ``side`` region (or less, where the image is smaller)."""
    w, h = min(side, image.width), min(side, image.height)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def load_images(folder: Path, limit: int | None = None, crop: int | None = None) -> list[Sample]:
    """The first ``limit`` images of ``folder`` in name order, as RGB, centre-cropped to ``crop``."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)[:limit]
    if not paths:
        raise click.UsageError(f"no images ({', '.join(sorted(EXTENSIONS))}) in {folder}")
    samples = []
    for path in paths:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        samples.append(Sample(path.stem, center_crop(rgb, crop) if crop else rgb))
    return samples
