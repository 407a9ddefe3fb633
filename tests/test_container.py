"""Damaged, truncated and foreign files are refused with a VQCodecError, never decoded into garbage."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec.errors import DecodeMismatchError, FormatError, ModelMismatchError
from vqcodec.format import container


@pytest.fixture(scope="module")
def sample(codec):
    rng = np.random.default_rng(5)
    arr = smooth_image(rng, 13, 21, 4)
    return codec.compress(arr)


def test_header_layout(sample, codec):
    h = container.read_header(sample)
    assert sample[:4] == b"\x89VQC" and sample[4] == 1  # no metadata: still version 1
    assert (h.width, h.height, h.channels) == (21, 13, 4)
    assert (h.pad_x, h.pad_y) == (3, 3)
    assert h.model_id == codec.model_id
    assert len(sample) == container.HEADER_SIZE + h.payload_len == 68 + h.payload_len


def test_every_truncation_is_refused(codec, sample):
    for n in range(len(sample)):
        with pytest.raises(FormatError):
            codec.decompress(sample[:n])


def test_trailing_bytes_are_refused(codec, sample):
    with pytest.raises(FormatError, match="unexpected bytes"):
        codec.decompress(sample + b"\0")


def test_bit_flips_are_refused(codec, sample):
    rng = np.random.default_rng(0)
    header_bits = range(8 * container.HEADER_SIZE)
    payload_bits = rng.choice(np.arange(8 * container.HEADER_SIZE, 8 * len(sample)), 100, replace=False)
    for bit in [*header_bits, *payload_bits.tolist()]:
        damaged = bytearray(sample)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(vqcodec.VQCodecError):
            codec.decompress(bytes(damaged))


def test_not_a_vqc_file(codec):
    for data in (b"", b"\x89PNG\r\n\x1a\n" + bytes(100), bytes(200)):
        with pytest.raises(FormatError):
            codec.decompress(data)


def test_future_version_is_named(codec, sample):
    damaged = bytearray(sample)
    damaged[4] = 9
    with pytest.raises(FormatError, match="version 9"):
        codec.decompress(bytes(damaged))


def test_file_from_another_model_is_refused_by_id(codec, sample):
    other = vqcodec.Codec(make_model(seed=99), device="cpu", name="other")
    with pytest.raises(ModelMismatchError, match=codec.model_id.hex()):
        other.decompress(sample)


def _reheader(data: bytes, **changes) -> bytes:
    """Rewrite header fields and fix up both CRCs, as a forger or a buggy encoder would."""
    h = container.read_header(data)
    _, streams = container.unpack(data)
    fields = {**h.__dict__, **changes}
    return container.pack(container.Header(**fields), streams)


def test_decoder_mismatch_is_detected(sample):
    """A decoder whose probabilities differ from the encoder's must not write an image."""
    model = make_model()
    with torch.no_grad():
        model.bottom_prior.head.bias.add_(torch.linspace(-3, 3, model.bottom_prior.config.codes))
    codec = vqcodec.Codec(model, device="cpu")
    codec.model_id = container.read_header(sample).model_id  # pretend it is the same model
    with pytest.raises(DecodeMismatchError):
        codec.decompress(sample)


def test_wrong_content_crc_is_detected(codec, sample):
    forged = _reheader(sample, content_crc=container.read_header(sample).content_crc ^ 1)
    with pytest.raises(DecodeMismatchError):
        codec.decompress(forged)


@pytest.mark.parametrize(
    "changes",
    [
        {"width": 0},
        {"width": 70000},
        {"width": 60000, "height": 60000},
        {"channels": 5},
        {"tile": 0},
        {"pad_x": 4},
        {"top_shape": (2, 4)},
        {"bottom_shape": (4, 7)},
    ],
)
def test_inconsistent_headers_are_refused(codec, sample, changes):
    with pytest.raises(FormatError):
        codec.decompress(_reheader(sample, **changes))


def test_alpha_stream_without_alpha_channel_is_refused(codec, sample):
    with pytest.raises(FormatError):
        codec.decompress(_reheader(sample, channels=3))


def test_damaged_alpha_stream(codec):
    h = (4, 4)
    good = container.compress_alpha(np.zeros(h, np.uint8))
    np.testing.assert_array_equal(container.decompress_alpha(good, h), np.zeros(h, np.uint8))
    bomb = zlib.compress(bytes(10_000))
    for data in (good[:-1], bomb, b"junk"):
        with pytest.raises(FormatError):
            container.decompress_alpha(data, h)


def test_the_format_document_s_field_table_is_the_header():
    """docs/format.md's header table: every field's offset and size as ``container.HEADER`` packs them."""
    text = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
    rows = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    fields = [(int(offset), int(size)) for offset, size in rows]
    sizes = [struct.calcsize("<" + code) for code in re.findall(r"\d*[a-zA-Z]", container.HEADER.format[1:])]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    assert fields == list(zip(offsets, sizes, strict=True))
    assert offsets[-1] + sizes[-1] == container.HEADER_SIZE == 68


def test_segment_tables_must_fit_their_stream():
    parts = [bytes(8), bytes(4), bytes(12)]
    joined = container.join_segments(parts)
    assert container.split_segments(joined, 3) == parts
    assert container.split_segments(bytes(12), 1) == [bytes(12)]
    for damaged in (joined[:6], struct.pack("<II", 8, 40) + bytes(24), struct.pack("<II", 6, 4) + bytes(24)):
        with pytest.raises(FormatError, match="segment"):
            container.split_segments(damaged, 3)


def test_flags_must_be_zero(sample):
    head = bytearray(sample[: container.HEADER_SIZE - 4])
    head[6] = 1
    forged = bytes(head) + struct.pack("<I", zlib.crc32(head)) + sample[container.HEADER_SIZE :]
    with pytest.raises(FormatError, match="flags"):
        container.read_header(forged)
