"""Fuzzing: mutated and truncated .vqc files either decode correctly or raise VQCodecError.

1,000 cases by default; VQCODEC_FUZZ_CASES=100000 for the slow run.
"""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec.format import container

CASES = int(os.environ.get("VQCODEC_FUZZ_CASES", "1000"))

CODEC = vqcodec.Codec(make_model(), device="cpu")
SAMPLE = CODEC.compress(smooth_image(np.random.default_rng(3), 19, 23, 4))
REFERENCE = CODEC.decompress(SAMPLE)


def _decode_or_refuse(data: bytes) -> None:
    try:
        image = CODEC.decompress(data)
    except vqcodec.VQCodecError:
        return
    # Anything that decodes must be the original (a change that touched nothing coded).
    assert image.tobytes() == REFERENCE.tobytes()


@settings(max_examples=CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, len(SAMPLE)),
    tail=st.binary(max_size=8),
)
def test_mutated_files(edits, cut, tail):
    data = bytearray(SAMPLE)
    for pos, value in edits:
        data[pos] = value
    _decode_or_refuse(bytes(data[:cut]) + tail)


#: Segments of 16 codes (the format's are 8192) and small regions, so that a small file has many.
SEGMENTS = mock.patch.object(container, "SEGMENT_POSITIONS", 16)
with SEGMENTS:
    SEGMENTED = vqcodec.Codec(make_model(), device="cpu", tile=2).compress(
        smooth_image(np.random.default_rng(4), 37, 41)
    )
    SEGMENTED_REFERENCE = CODEC.decompress(SEGMENTED)


@settings(max_examples=max(CASES // 5, 100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(0, len(SEGMENTED) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, len(SEGMENTED)),
)
def test_mutated_segmented_files(edits, cut):
    """Damage to a file of many segments (their lengths included) is refused or touched nothing."""
    assert container.read_header(SEGMENTED).segmented
    data = bytearray(SEGMENTED)
    for pos, value in edits:
        data[pos] = value
    with SEGMENTS:
        try:
            image = CODEC.decompress(bytes(data[:cut]))
        except vqcodec.VQCodecError:
            return
    assert image.tobytes() == SEGMENTED_REFERENCE.tobytes()


def _forge(streams: container.Streams | None = None, **fields) -> bytes:
    """The sample with header fields (and streams) replaced and both checksums made valid again."""
    header, own = container.unpack(SAMPLE)
    return container.pack(container.Header(**{**header.__dict__, **fields}), streams or own)


small = st.integers(0, 40)


@settings(max_examples=max(CASES // 5, 100), deadline=None)
@given(
    width=small, height=small, channels=st.integers(0, 255), tile=st.integers(0, 255), pad_x=small, pad_y=small,
    top_shape=st.tuples(small, small), bottom_shape=st.tuples(small, small),
)  # fmt: skip
def test_forged_small_headers(**fields):
    """Crafted headers pass the checksums, so every field must be checked before it is used."""
    _decode_or_refuse(_forge(**fields))


PAYLOAD = b"".join(container.unpack(SAMPLE)[1].__dict__.values())


@settings(max_examples=CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "channels": st.integers(0, 255), "tile": st.integers(0, 255), "width": st.integers(0, 4096),
            "height": st.integers(0, 4096), "pad_x": st.integers(0, 65535), "pad_y": st.integers(0, 65535),
            "top_shape": st.tuples(st.integers(0, 600), st.integers(0, 600)),
            "bottom_shape": st.tuples(st.integers(0, 1200), st.integers(0, 1200)),
            "content_crc": st.integers(0, 2**32 - 1),
        },
    ),
    cuts=st.tuples(st.integers(0, len(PAYLOAD)), st.integers(0, len(PAYLOAD))),
    extra=st.binary(max_size=64),
)  # fmt: skip
def test_forged_headers_with_valid_checksums(fields, cuts, extra):
    """Any header a forger can write, with the streams cut anywhere and junk appended, checksums
    recomputed: refused with a VQCodecError, or decoded to the original. Claims of large images
    (up to 4096 x 4096, inside the default pixel limit with the tiny model's strides) must be
    refused early, since a stream that runs out is detected at once."""
    payload = PAYLOAD + extra
    a, b = sorted(cuts)
    _decode_or_refuse(_forge(container.Streams(payload[:a], payload[a:b], payload[b:]), **fields))


@settings(max_examples=max(CASES // 5, 100), deadline=None)
@given(
    width=st.integers(0, 2**32 - 1), height=st.integers(0, 2**32 - 1),
    top_shape=st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
    bottom_shape=st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
)  # fmt: skip
def test_forged_large_headers_are_refused_before_decoding(**fields):
    """Huge or inconsistent sizes are refused by the header checks alone, before any allocation."""
    header = container.read_header(SAMPLE)
    if all(getattr(header, k) == v for k, v in fields.items()):
        return  # the sample's own header
    with pytest.raises(vqcodec.VQCodecError):
        CODEC.read_header(_forge(**fields))


@settings(max_examples=max(CASES // 5, 100), deadline=None)
@given(
    width=st.integers(0, 600), height=st.integers(0, 600), pad_x=small, pad_y=small,
    top_shape=st.tuples(small, small), bottom_shape=st.tuples(small, small), channels=st.sampled_from([3, 4]),
)  # fmt: skip
def test_forged_resampled_headers(**fields):
    """With the resampled flag the image size no longer follows from the maps: any such header is
    refused, or the file decodes to an image of the size it declares."""
    try:
        image = CODEC.decompress(_forge(flags=container.FLAG_RESAMPLED, **fields))
    except vqcodec.VQCodecError:
        return
    assert image.size == (fields["width"], fields["height"])
