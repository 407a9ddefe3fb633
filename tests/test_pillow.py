"""The Pillow plugin, through Pillow's own functions: open (size and mode from the header, pixels
on load), save at a quality, metadata, and damaged files."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import vqcodec
from tests.conftest import smooth_image


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return Image.fromarray(smooth_image(np.random.default_rng(4), 40, 56))


def test_save_writes_the_codec_s_file_at_that_quality(picture):
    for q in (20, 50):
        buffer = io.BytesIO()
        picture.save(buffer, format="VQC", quality=q)
        expected = vqcodec.load(**vqcodec.quality.operating_point(q)._asdict(), device="cpu").compress(picture)
        assert buffer.getvalue() == expected


def test_open_reads_the_header_and_decodes_on_load(tmp_path, picture):
    path = tmp_path / "a.vqc"
    picture.save(path)  # the format from the extension
    data = path.read_bytes()
    with Image.open(path) as im:
        assert (im.format, im.size, im.mode) == ("VQC", (56, 40), "RGB")
        np.testing.assert_array_equal(np.asarray(im), np.asarray(vqcodec.load_for(data, device="cpu").decompress(data)))
    with Image.open(io.BytesIO(data)) as im:  # a file object, the format from the magic bytes
        assert im.convert("L").size == (56, 40)


def test_open_needs_no_torch_until_the_pixels(tmp_path, picture):
    path = tmp_path / "a.vqc"
    picture.save(path)
    script = (
        "import sys, vqcodec; from PIL import Image; im = Image.open(sys.argv[1]); "
        "print(im.size, im.mode, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "(56, 40) RGB False"


def test_alpha_gray_and_metadata_travel(tmp_path, picture):
    rgba = picture.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(56, dtype=np.uint8) * 4, (40, 1))))
    for image, mode in ((rgba, "RGBA"), (picture.convert("L"), "L")):
        buffer = io.BytesIO()
        image.save(buffer, format="VQC", icc_profile=b"\x01" * 40)
        with Image.open(buffer) as im:
            assert im.mode == mode
            im.load()
            assert im.info["icc_profile"] == b"\x01" * 40
            if mode == "RGBA":
                np.testing.assert_array_equal(np.asarray(im)[..., 3], np.asarray(rgba)[..., 3])


def test_damaged_files_and_bad_qualities_raise_vqcodec_errors(picture):
    buffer = io.BytesIO()
    picture.save(buffer, format="VQC")
    data = buffer.getvalue()
    with pytest.raises(vqcodec.FormatError):
        Image.open(io.BytesIO(data[:40]))
    with Image.open(io.BytesIO(data[:-3])) as im, pytest.raises(vqcodec.FormatError):
        im.load()
    with pytest.raises(vqcodec.UsageError, match="quality"):
        picture.save(io.BytesIO(), format="VQC", quality=101)
