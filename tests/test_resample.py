"""Files that code a resampled copy of the image (``Codec(scale=...)``): round trips, the format's
version and flag, the limits, and forged headers."""

from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import pytest
import torch

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec.coding import restoration
from vqcodec.defaults import MAX_SCALE, MIN_SCALE
from vqcodec.errors import FormatError, LimitError, UsageError
from vqcodec.format import container
from vqcodec.io.image import scaled_size
from vqcodec.nn.config import SynthesisConfig
from vqcodec.nn.model import CodecModel
from vqcodec.zoo.weights import load_model, model_id, save_model


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.mark.parametrize("scale,size", [(1.5, (21, 13)), (0.5, (21, 13)), (2.0, (1, 1)), (0.25, (3, 2))])
def test_resampled_round_trip(model, rng, scale, size):
    codec = vqcodec.Codec(model, device="cpu", scale=scale)
    image = smooth_image(rng, size[1], size[0], 4)
    encoded = codec.encode(image)
    assert encoded.coded_size == scaled_size(*size, scale, codec.max_pixels)
    out = codec.decompress(encoded.data)
    assert out.size == size and out.mode == "RGBA"
    pixels = np.asarray(out)
    np.testing.assert_array_equal(pixels[..., 3], image[..., 3])  # alpha is never resampled
    expected = codec.reconstruct(encoded.codes, *size, coded_size=encoded.coded_size, restored=encoded.restoration)
    np.testing.assert_array_equal(pixels[..., :3], expected)
    header = container.read_header(encoded.data)
    resampled = encoded.coded_size != size
    assert header.resampled == resampled
    assert encoded.data[4] == (4 if header.has_filter else 3 if resampled else 1)
    # the decoder needs no scale: any codec with the model decodes the file
    np.testing.assert_array_equal(np.asarray(vqcodec.Codec(model, device="cpu").decompress(encoded.data)), pixels)


def test_scale_one_writes_the_plain_format(model, rng):
    image = smooth_image(rng, 19, 26)
    plain = vqcodec.Codec(model, device="cpu").compress(image)
    assert vqcodec.Codec(model, device="cpu", scale=1.0).compress(image) == plain
    assert plain[4] == 1 and not container.read_header(plain).resampled


@pytest.mark.parametrize("scale", [0.0, MIN_SCALE / 2, MAX_SCALE * 1.01, float("nan")])
def test_scale_out_of_range_is_refused(model, scale):
    with pytest.raises(UsageError, match="scale"):
        vqcodec.Codec(model, device="cpu", scale=scale)


def test_scaled_size_stays_within_the_pixel_limit():
    assert scaled_size(100, 50, 2.0, 1 << 23) == (200, 100)
    assert scaled_size(3, 3, 0.25, 1 << 23) == (1, 1)
    for width, height, limit in [(3000, 2000, 6_000_000), (4097, 1, 5000), (999, 777, 999 * 777)]:
        w, h = scaled_size(width, height, 2.0, limit)
        assert w * h <= limit and w >= width // 2


def test_upsampled_copy_over_the_limit_is_shrunk(model, rng):
    codec = vqcodec.Codec(model, device="cpu", scale=2.0, max_pixels=24 * 16 * 2)
    encoded = codec.encode(smooth_image(rng, 16, 24))
    assert encoded.coded_size[0] * encoded.coded_size[1] <= codec.max_pixels
    assert codec.decompress(encoded.data).size == (24, 16)


def _forge(data: bytes, offset: int, value: int) -> bytes:
    head = bytearray(data[: container.HEADER_SIZE - 4])
    head[offset] = value
    return bytes(head) + struct.pack("<I", zlib.crc32(head)) + data[container.HEADER_SIZE :]


@pytest.fixture(scope="module")
def upsampled(model):
    return vqcodec.Codec(model, device="cpu", scale=2.0).compress(smooth_image(np.random.default_rng(3), 13, 21))


def test_resampled_flag_needs_version_3(model, upsampled):
    with pytest.raises(FormatError, match="flags"):
        vqcodec.Codec(model, device="cpu").decompress(_forge(upsampled, 4, 2))


def test_coded_copy_over_the_limit_is_refused(model, upsampled):
    with pytest.raises(LimitError):
        vqcodec.Codec(model, device="cpu", max_pixels=21 * 13).decompress(upsampled)


@pytest.mark.parametrize("offset", [32, 34])
def test_padding_of_a_whole_stride_is_refused(model, upsampled, offset):
    stride = model.config.vqvae.top_stride
    with pytest.raises(FormatError, match="sizes"):
        vqcodec.Codec(model, device="cpu").decompress(_forge(upsampled, offset, stride))


@pytest.fixture(scope="module")
def two_syntheses(model, tmp_path_factory):
    """``model`` with a synthesis of resampled copies of its own (random weights), through its file."""
    config = dataclasses.replace(model.config, resampled_synthesis=SynthesisConfig(24, 2, 8, 0))
    torch.manual_seed(5)
    second = CodecModel(config).eval()
    second.load_state_dict(model.state_dict(), strict=False)
    path = tmp_path_factory.mktemp("models") / "second.safetensors"
    save_model(second, path)
    return load_model(path)


def test_a_resampled_synthesis_decodes_resampled_copies_only(model, two_syntheses, rng):
    """A model with a synthesis of resampled copies synthesises those with it, from the same code
    maps, and images at their own size with its own synthesis, bit for bit as the model without
    it; the model file keeps it."""
    assert model_id(two_syntheses) != model_id(model)
    assert two_syntheses.config.resampled_synthesis == SynthesisConfig(24, 2, 8, 0)
    image = smooth_image(rng, 24, 40)
    for scale in (1.0, 0.5):
        plain, other = (vqcodec.Codec(m, device="cpu", scale=scale, restore=False) for m in (model, two_syntheses))
        a, b = plain.encode(image, rdo=0.0), other.encode(image, rdo=0.0)
        np.testing.assert_array_equal(a.codes.bottom, b.codes.bottom)
        same = np.array_equal(np.asarray(plain.decompress(a.data)), np.asarray(other.decompress(b.data)))
        assert same == (scale == 1.0)
        expected = other.reconstruct(b.codes, 40, 24, coded_size=b.coded_size)
        np.testing.assert_array_equal(np.asarray(other.decompress(b.data)), expected)


def test_the_restoration_filter_of_a_resampled_copy_is_fitted_to_its_own_synthesis(two_syntheses, rng, monkeypatch):
    # RDO's last synthesis, by the model's own synthesis, may stand in for the code maps' image;
    # never where the synthesis of resampled copies decodes them (here: whatever RDO changed).
    monkeypatch.setattr("vqcodec.codec.STAND_IN_SHARE", 1.01)
    image = smooth_image(rng, 64, 96)
    codec = vqcodec.Codec(two_syntheses, device="cpu", scale=0.75)
    encoded = codec.encode(image, rdo=0.1)
    _, streams = container.unpack(encoded.data)
    decoded = codec.reconstruct(encoded.codes, 96, 64, coded_size=encoded.coded_size)
    fitted = restoration.fit(image, decoded, len(streams.top) + len(streams.bottom))
    assert fitted is not None and streams.filter == restoration.to_bytes(fitted)
