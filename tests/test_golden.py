"""Every golden file (``tests/golden``: files of every shipped and retired model and of every
format feature, written by the release the manifest names) still decodes: to exactly its code maps
(the file's content checksum) and to its image, within the rounding of the synthesis' floating
point on another CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vqcodec

GOLDEN = Path(__file__).parent / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
#: Largest difference of a pixel from the stored decoding: the maps and the integer prior are
#: exact everywhere; the synthesis' float32 sums may round differently on another CPU.
PIXEL_TOLERANCE = 2


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_file_decodes_as_it_did(name):
    data = (GOLDEN / name).read_bytes()
    codec = vqcodec.load_for(data, device="cpu")
    codec.decode_codes(data)  # raises unless the maps match the content checksum exactly
    image = codec.decompress(data)
    expected = Image.open(GOLDEN / name.replace(".vqc", ".png"))
    assert (
        (image.mode, list(image.size))
        == (MANIFEST[name]["mode"], MANIFEST[name]["size"])
        == (
            expected.mode,
            list(expected.size),
        )
    )
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(expected, dtype=int))
    assert diff.max() <= PIXEL_TOLERANCE, name
    if "metadata" in name:
        assert image.info["icc_profile"] == bytes(range(256))


def test_every_model_has_a_golden_file():
    assert {f"{model_id}.vqc" for model_id in vqcodec.zoo.catalog.index()} <= set(MANIFEST)
