"""The restoration filter: its fit, its coding, the convolution the decoder runs, the file format."""

from __future__ import annotations

import numpy as np
import pytest

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec import codec as codec_module
from vqcodec.coding import restoration
from vqcodec.coding.restoration import SHAPES, Filter
from vqcodec.errors import FormatError
from vqcodec.format import container


def _random_filter(rng: np.random.Generator, index: int, scale: float = 40.0) -> Filter:
    shape = SHAPES[index]
    return Filter(index, tuple(np.rint(rng.normal(0, scale, len(shape.used(c)))).astype(np.int64) for c in range(3)))


def _blurred(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A detailed image and a blurred, colour-shifted copy of it (what a decoder might give)."""
    image = rng.integers(0, 256, (40, 56, 3)).astype(np.float64)
    image = (image + np.roll(image, 1, 0) + np.roll(image, 1, 1)) / 3
    blurred = (
        2 * image + np.roll(image, 1, 0) + np.roll(image, -1, 0) + np.roll(image, 1, 1) + np.roll(image, -1, 1)
    ) / 6
    blurred = blurred * [0.9, 1.0, 1.05] + [6, -3, 0]
    return image.round().astype(np.uint8), blurred.round().clip(0, 255).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255**2 / ((a.astype(float) - b) ** 2).mean())


@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_records_round_trip(rng, index):
    for scale in (0.0, 3.0, 40.0, 5000.0):
        filt = _random_filter(rng, index, scale)
        back = restoration.from_bytes(restoration.to_bytes(filt))
        assert back.shape == filt.shape
        for a, b in zip(back.weights, filt.weights, strict=True):
            np.testing.assert_array_equal(a, b)


def test_damaged_records_are_refused(rng):
    data = restoration.to_bytes(_random_filter(rng, 4))
    bad = [
        b"",
        bytes([0]) + data[1:],
        bytes([len(SHAPES) + 1]) + data[1:],
        data[:-3],
        data + b"\x00",
        data[:1],
        b"\x01" + b"\x00" * 12,
    ]
    for record in bad:
        with pytest.raises(FormatError):
            restoration.from_bytes(record)


@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_convolution_is_the_fitted_formula(rng, index):
    """The decoder's convolution computes exactly the features' weighted sum the encoder fitted."""
    decoded = smooth_image(rng, 37, 29)
    filt = _random_filter(rng, index, 20.0)
    expected = np.empty(decoded.shape)
    for rows, f in restoration._features(decoded, SHAPES[index]):
        expected[rows] = decoded[rows] + (f.T.astype(np.float64) @ filt.matrix()).reshape(decoded[rows].shape)
    out = restoration.apply(decoded, filt).astype(float)
    assert np.abs(out - expected.round().clip(0, 255)).max() <= 1  # float32 rounding at .5


def test_filtering_some_rows_gives_the_whole_image_s_rows(rng):
    decoded = smooth_image(rng, 4 * restoration.ROWS * 2 + 40, 23)
    filt = _random_filter(rng, len(SHAPES) - 1, 20.0)
    whole = restoration.apply(decoded, filt)
    for first, end in ((0, 1), (250, 300), (4 * restoration.ROWS - 1, 4 * restoration.ROWS + 1), (540, 552)):
        part = restoration.apply(decoded, filt, rows=(first, end))
        np.testing.assert_array_equal(part[first:end], whole[first:end])


def test_fit_restores_a_degraded_image(rng):
    image, degraded = _blurred(rng)
    filt = restoration.fit(image, degraded, 4000)
    assert filt is not None
    assert _psnr(image, restoration.apply(degraded, filt)) > _psnr(image, degraded) + 1


def test_nothing_to_restore_writes_no_filter(rng):
    image, degraded = _blurred(rng)
    assert restoration.fit(image, image, 4000) is None
    # A filter's bytes outweigh a small gain in a tiny file.
    assert restoration.fit(image, degraded, 5) is None


@pytest.fixture(scope="module")
def codec():
    return vqcodec.Codec(make_model(seed=4), device="cpu")


def test_files_carry_the_filter(codec, rng, monkeypatch):
    monkeypatch.setattr(restoration, "_db_worth", lambda file_bytes, pixels: 100.0)  # a tiny file pays for it
    image = smooth_image(rng, 40, 48)
    encoded = codec.encode(image)
    assert encoded.restoration is not None
    header, streams = container.unpack(encoded.data)
    assert header.has_filter and header.version == 4
    assert restoration.from_bytes(streams.filter).shape == encoded.restoration.shape
    out = np.asarray(codec.decompress(encoded.data))
    plain = codec.reconstruct(encoded.codes, 48, 40)
    np.testing.assert_array_equal(out, codec.reconstruct(encoded.codes, 48, 40, restored=encoded.restoration))
    assert _psnr(image, out) > _psnr(image, plain)


def test_filter_fits_the_chosen_codes_where_rdo_changed_many(codec, rng, monkeypatch):
    """Where RDO's choice changed at least ``STAND_IN_SHARE`` of the codes (here: any share), the
    filter is fitted to what the decoder synthesises from the chosen codes."""
    monkeypatch.setattr(restoration, "_db_worth", lambda file_bytes, pixels: 100.0)
    monkeypatch.setattr(codec_module, "STAND_IN_SHARE", 0.0)
    image = smooth_image(rng, 40, 48)
    encoded = codec.encode(image)
    _, streams = container.unpack(encoded.data)
    fitted = restoration.fit(image, codec.reconstruct(encoded.codes, 48, 40), len(streams.top) + len(streams.bottom))
    assert encoded.restoration is not None and fitted is not None
    assert fitted.shape == encoded.restoration.shape
    for ours, theirs in zip(encoded.restoration.weights, fitted.weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_without_restoration_files_are_as_before(rng):
    codec = vqcodec.Codec(make_model(seed=4), device="cpu", restore=False)
    image = smooth_image(rng, 40, 48)
    encoded = codec.encode(image)
    header = container.read_header(encoded.data)
    assert encoded.restoration is None and not header.has_filter and header.version == 1
    np.testing.assert_array_equal(np.asarray(codec.decompress(encoded.data)), codec.reconstruct(encoded.codes, 48, 40))


def test_filter_and_metadata_together(codec, rng):
    header, streams = container.unpack(codec.compress(smooth_image(rng, 24, 24)))
    record = restoration.to_bytes(_random_filter(rng, 2))
    both = container.Streams(
        streams.top, streams.bottom, b"", container.encode_metadata({"exif": b"Exif\0\0xyz"}), record
    )
    data = container.pack(header, both)
    again_header, again = container.unpack(data)
    assert again_header.has_filter and again_header.has_metadata
    assert again == both
    assert container.decode_metadata(again.metadata) == {"exif": b"Exif\0\0xyz"}
    with pytest.raises(FormatError, match="truncated"):
        container.unpack(data[:-1])


def test_any_record_parses_or_is_refused(rng):
    """Random records either parse to a filter the decoder can apply or raise ``FormatError``."""
    image = smooth_image(rng, 9, 11)
    parsed = 0
    for _ in range(2000):
        record = bytes(rng.integers(0, 256, int(rng.integers(1, 120)), dtype=np.uint8))
        record = bytes([int(rng.integers(1, len(SHAPES) + 1))]) + record[1:]
        try:
            filt = restoration.from_bytes(record)
        except FormatError:
            continue
        parsed += 1
        assert restoration.apply(image, filt).shape == image.shape
    assert parsed > 0
