"""The imageio plugin, through imageio's own functions: write at a quality, read, properties and
metadata from the header, bytes in and out, batches, and damaged files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import vqcodec
from tests.conftest import smooth_image

iio = pytest.importorskip("imageio.v3")


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return smooth_image(np.random.default_rng(5), 40, 56)


def _codec(q: int):
    return vqcodec.load(**vqcodec.quality.operating_point(q)._asdict(), device="cpu")


def test_imwrite_writes_the_codec_s_file_and_imread_its_pixels(tmp_path, pixels):
    path = tmp_path / "a.vqc"
    iio.imwrite(path, pixels, quality=20)
    data = path.read_bytes()
    assert data == _codec(20).compress(pixels)
    expected = np.asarray(vqcodec.load_for(data, device="cpu").decompress(data))
    np.testing.assert_array_equal(iio.imread(path), expected)
    np.testing.assert_array_equal(iio.imread(data, extension=".vqc"), expected)
    assert iio.imwrite("<bytes>", pixels, extension=".vqc") == _codec(vqcodec.quality.DEFAULT_QUALITY).compress(pixels)


def test_properties_and_metadata_come_from_the_header_without_torch(tmp_path, pixels):
    path = tmp_path / "a.vqc"
    iio.imwrite(path, pixels, icc_profile=b"\x02" * 30)
    script = (
        "import sys, vqcodec, imageio.v3 as iio; p = iio.improps(sys.argv[1]); m = iio.immeta(sys.argv[1]); "
        "print(p.shape, p.dtype, m['preset'], m['mode'], m['width'], m['height'], len(m['icc_profile']), "
        "'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "(40, 56, 3) uint8 medium RGB 56 40 30 False"
    meta = iio.immeta(path)
    assert meta["bpp"] == pytest.approx(8 * path.stat().st_size / (56 * 40))
    assert meta["model"] == vqcodec.read_header(path.read_bytes()).model_id.hex()


def test_gray_alpha_and_batches(pixels):
    gray = iio.imwrite("<bytes>", pixels[..., 0], extension=".vqc")
    assert iio.imread(gray).shape == iio.improps(gray, extension=".vqc").shape == (40, 56)
    rgba = np.dstack([pixels, np.tile(np.arange(56, dtype=np.uint8) * 4, (40, 1))])
    data = iio.imwrite("<bytes>", rgba[None], extension=".vqc", is_batch=True)
    batch = iio.imread(data, extension=".vqc", index=...)
    assert batch.shape == (1, 40, 56, 4)
    np.testing.assert_array_equal(batch[0, ..., 3], rgba[..., 3])  # alpha is lossless
    assert iio.improps(data, extension=".vqc", index=...).is_batch
    with pytest.raises(ValueError, match="one image"):
        iio.imread(data, extension=".vqc", index=1)
    with pytest.raises(ValueError, match="one image"):
        iio.imwrite("<bytes>", np.stack([pixels, pixels]), extension=".vqc", is_batch=True)


def test_damaged_files_raise_vqcodec_errors(pixels):
    data = iio.imwrite("<bytes>", pixels, extension=".vqc")
    with pytest.raises(vqcodec.FormatError):
        iio.imread(data[:40], extension=".vqc")
    with pytest.raises(vqcodec.FormatError):
        iio.imread(data[:-3], extension=".vqc")
    with pytest.raises(vqcodec.UsageError, match="quality"):
        iio.imwrite("<bytes>", pixels, extension=".vqc", quality=101)
