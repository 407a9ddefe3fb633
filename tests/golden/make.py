"""Writes the golden files: small ``.vqc`` files of every shipped and retired model, of every
format version (metadata, resampling, restoration filter, alpha, segments, enhancement), and the images
they decode to.

Run once per release, for the models and features that release adds (``python -m
tests.golden.make NAME...`` writes only the files named); never rewrite a file that exists: the
test checks that every file any release wrote still decodes to the same codes and pixels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import vqcodec
from vqcodec.zoo import catalog

HERE = Path(__file__).parent
EXAMPLE = HERE.parents[1] / "docs" / "example.png"


def _picture(alpha: bool = False) -> Image.Image:
    """A 61 x 45 crop of the example image (odd sides: padding on both axes)."""
    image = Image.open(EXAMPLE).convert("RGB").crop((100, 70, 161, 115))
    if alpha:
        a = np.linspace(0, 255, image.width * image.height).reshape(image.height, image.width).astype(np.uint8)
        image = Image.fromarray(np.dstack([np.asarray(image), a]), "RGBA")
    return image


def cases() -> dict[str, tuple[dict, Image.Image]]:
    """File name -> (``vqcodec.load`` arguments, image)."""
    out = {}
    for model_id in catalog.index():
        path = catalog.find(bytes.fromhex(model_id))[1]
        out[f"{model_id}.vqc"] = ({"path": path, "rdo": 0.0, "restore": False}, _picture())
    medium = {"preset": "medium"}
    out["medium-rdo-filter.vqc"] = (medium, _picture())
    out["medium-2x.vqc"] = (medium | {"scale": 2.0}, _picture())
    out["medium-half.vqc"] = (medium | {"scale": 0.5}, _picture())
    icc = _picture()
    icc.info["icc_profile"] = bytes(range(256))
    out["medium-metadata.vqc"] = (medium, icc)
    out["medium-alpha.vqc"] = (medium, _picture(alpha=True))
    out["medium-segments.vqc"] = (medium | {"scale": 2.0}, Image.open(EXAMPLE).convert("RGB"))  # version 5
    out["medium-enhancement.vqc"] = (medium | {"rdo": 0.0, "enhancement": 2, "enhancement_step": 3}, _picture())  # 6
    # Layers with a second pass over a checkerboard of blocks (a model's, not a format version's).
    out["medium-two-pass.vqc"] = (medium | {"rdo": 0.0, "enhancement": 2, "enhancement_step": 3}, _picture())
    # A resampled copy decoded by the model's synthesis of resampled copies (a model's feature too).
    out["medium-resampled-synthesis.vqc"] = (medium | {"scale": 0.707, "rdo_passes": 2}, _picture())
    # Layers whose transform is lapped (a model's feature).
    out["medium-lapped.vqc"] = (medium | {"rdo": 0.0, "enhancement": 1, "enhancement_step": 4}, _picture())
    return out


def main(names: list[str]) -> None:
    manifest_path = HERE / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name, (kwargs, image) in cases().items():
        if (names and name not in names) or (HERE / name).exists():
            continue
        data = vqcodec.load(**kwargs, device="cpu").compress(image)
        (HERE / name).write_bytes(data)
        decoded = vqcodec.load_for(data, device="cpu").decompress(data)
        decoded.save(HERE / name.replace(".vqc", ".png"))
        manifest[name] = {"written_by": vqcodec.__version__, "mode": decoded.mode, "size": list(decoded.size)}
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
