"""Training photos from the Unsplash folder of github.com/SqueezeSoftware/test_files (Unsplash
License): every photo of `Unsplash/jpg_original` but the eight the benchmarks hold out, resized
with a Lanczos filter to at most 2048 pixels a side and at least 2x down (which leaves the JPEG
originals' artefacts behind), saved as PNG. Model cards list what this writes.

    python training/unsplash_photos.py CHECKOUT OUT_DIR
"""

from __future__ import annotations

from pathlib import Path

import click
from PIL import Image

#: The photos the megapixel benchmarks code (docs/benchmarks.md): never trained on.
HELD_OUT = (
    "alfred-schrock",
    "andrew-ridley",
    "brendon-van-zyl",
    "bruna-branco",
    "david-clode",
    "dennis-buchner",
    "edgar-castrejon",
    "fatih-kgqu",
)
LONGEST_SIDE = 2048


def training_size(width: int, height: int) -> tuple[int, int]:
    """The size a photo is trained at: at most ``LONGEST_SIDE`` a side, at most half its own."""
    factor = min(0.5, LONGEST_SIDE / max(width, height))
    return round(width * factor), round(height * factor)


@click.command()
@click.argument("checkout", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def main(checkout: Path, out_dir: Path) -> None:
    """Write the training photos of CHECKOUT (a clone of SqueezeSoftware/test_files) into OUT_DIR."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pixels = 0
    originals = (checkout / "Unsplash" / "jpg_original").glob("*.jpg")
    photos = sorted(p for p in originals if not p.name.startswith(HELD_OUT))
    for path in photos:
        with Image.open(path) as image:
            size = training_size(*image.size)
            small = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        small.save(out_dir / f"unsplash_{path.name.removesuffix('-unsplash.jpg')}.png")
        pixels += size[0] * size[1]
    click.echo(f"{len(photos)} photos, {pixels / 1e6:.1f} megapixels")


if __name__ == "__main__":
    main()
