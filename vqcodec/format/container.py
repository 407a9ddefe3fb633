"""Reads and writes the ``.vqc`` file format: a fixed 68-byte header, the map streams (whole, or
in segments from version 5), the alpha plane, a restoration filter, an enhancement layer's
coefficients (from version 6) and metadata. The
specification, with the header's field table, is ``docs/format.md``; ``HEADER`` is that table."""

from __future__ import annotations

import itertools
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..errors import FormatError

MAGIC = b"\x89VQC"
#: Versions this reader takes, and the flags each allows (a file has the lowest that fits its flags).
FLAG_METADATA = 1
FLAG_RESAMPLED = 2
FLAG_FILTER = 4
FLAG_SEGMENTS = 8
FLAG_ENHANCEMENT = 16
VERSION_FLAGS = {
    1: 0,
    2: FLAG_METADATA,
    3: FLAG_METADATA | FLAG_RESAMPLED,
    4: FLAG_METADATA | FLAG_RESAMPLED | FLAG_FILTER,
    5: FLAG_METADATA | FLAG_RESAMPLED | FLAG_FILTER | FLAG_SEGMENTS,
    6: FLAG_METADATA | FLAG_RESAMPLED | FLAG_FILTER | FLAG_SEGMENTS | FLAG_ENHANCEMENT,
}
VERSIONS = tuple(VERSION_FLAGS)
#: Largest metadata (ICC profile and EXIF together, uncompressed) a file may carry.
MAX_METADATA = 1 << 24
#: Largest restoration filter record (its 2-byte length field's limit).
MAX_FILTER = 0xFFFF
#: The length fields before the filter record and the metadata stream.
#: Most bits a code can take in a map's stream: constriction's models give every code at least
#: 2^-24 of the range (``entropy.CODER_PRECISION``), plus a margin for the coder's rounding; and
#: the coder's final state. Every real stream is far shorter (a few bits per code).
MAX_BITS_PER_CODE = 25
_STREAM_TAIL_BITS = 128
#: A resampled copy is at most twice the image's size a side (``defaults.MAX_SCALE``) and the top
#: stride at least 4, so a top map has at most about half the image's width and height in codes.
_TOP_CODES_PER_PIXEL_SIDE = 2
_FILTER_LEN = struct.Struct("<H")
_ENHANCEMENT_LEN = struct.Struct("<I")
#: An enhancement record's head: the layer (1-based), the step (``nn.enhancement.step_factor``)
#: and the CRC-32 of the coefficients it codes (int32, raster order, coefficients last).
ENHANCEMENT_HEAD = struct.Struct("<BbI")
#: Most bits a coefficient can take: a table's rarest entry (2^-20 of it, ``nn.enhancement``),
#: an escaped magnitude and sign, with a margin.
_MAX_BITS_PER_COEFFICIENT = 40
_ENHANCEMENT_COEFFICIENTS = 48
_METADATA_LEN = struct.Struct("<I")
METADATA_TAGS = {1: "icc_profile", 2: "exif"}
HEADER = struct.Struct("<4sBBBB16sIIHHHHHHIIIIII")
HEADER_SIZE = HEADER.size
MODEL_ID_SIZE = 16
#: Largest width or height accepted, so code maps fit 16-bit dimensions.
MAX_SIDE = 65535
#: Largest number of pixels the format allows (a 100-megapixel photo fits).
MAX_PIXELS = 1 << 27
#: Largest number of pixels coded or decoded unless the caller allows more (``max_pixels``): a
#: 76-byte file can claim a huge image, and decoding costs about a second per megapixel on two
#: CPU cores, so the default bounds what a file can cost by itself (4K UHD, 3840 x 2160, fits).
DEFAULT_MAX_PIXELS = 1 << 23
#: Largest prior tile: a bottom region (2 tile)^2 fits in one batch of the priors, which bounds
#: the decoder's memory whatever a header says.
MAX_TILE = 64
CHANNELS = (1, 2, 3, 4)
#: Pillow's mode of each channel count (what decoding a file returns).
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class Header:
    """Everything a ``.vqc`` header says, validated."""

    channels: int
    tile: int
    model_id: bytes
    width: int
    height: int
    pad_x: int
    pad_y: int
    top_shape: tuple[int, int]  # (height, width) in codes
    bottom_shape: tuple[int, int]
    top_len: int
    bottom_len: int
    alpha_len: int
    payload_crc: int
    content_crc: int
    flags: int = 0
    version: int = 1

    @property
    def has_metadata(self) -> bool:
        return bool(self.flags & FLAG_METADATA)

    @property
    def resampled(self) -> bool:
        return bool(self.flags & FLAG_RESAMPLED)

    @property
    def has_filter(self) -> bool:
        return bool(self.flags & FLAG_FILTER)

    @property
    def segmented(self) -> bool:
        return bool(self.flags & FLAG_SEGMENTS)

    @property
    def has_enhancement(self) -> bool:
        return bool(self.flags & FLAG_ENHANCEMENT)

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def payload_len(self) -> int:
        """Bytes of the streams whose lengths the header gives (the metadata stream comes after)."""
        return self.top_len + self.bottom_len + self.alpha_len


@dataclass(frozen=True)
class Streams:
    """The coded payload of a file."""

    top: bytes
    bottom: bytes
    alpha: bytes = b""
    metadata: bytes = b""  # encode_metadata's bytes, b"" for none
    filter: bytes = b""  # the restoration filter's record, b"" for none
    enhancement: bytes = b""  # the enhancement record (ENHANCEMENT_HEAD, then its stream), b"" for none


def content_crc(top: np.ndarray, bottom: np.ndarray, alpha: np.ndarray | None) -> int:
    """CRC-32 of the code maps (uint16, raster order) and the alpha plane (uint8)."""
    crc = zlib.crc32(np.ascontiguousarray(top, dtype="<u2").tobytes())
    crc = zlib.crc32(np.ascontiguousarray(bottom, dtype="<u2").tobytes(), crc)
    if alpha is not None:
        crc = zlib.crc32(np.ascontiguousarray(alpha, dtype=np.uint8).tobytes(), crc)
    return crc


def pack(header: Header, streams: Streams) -> bytes:
    """Serialise a file; the stream lengths and payload CRC of ``header`` are filled in here."""
    payload = streams.top + streams.bottom + streams.alpha
    if streams.filter:
        if len(streams.filter) > MAX_FILTER:
            raise FormatError(f"restoration filter of {len(streams.filter)} bytes is over {MAX_FILTER}")
        payload += _FILTER_LEN.pack(len(streams.filter)) + streams.filter
    if streams.enhancement:
        payload += _ENHANCEMENT_LEN.pack(len(streams.enhancement)) + streams.enhancement
    if streams.metadata:
        payload += _METADATA_LEN.pack(len(streams.metadata)) + streams.metadata
    flags = (
        (header.flags & (FLAG_RESAMPLED | FLAG_SEGMENTS))
        | (FLAG_METADATA if streams.metadata else 0)
        | (FLAG_FILTER if streams.filter else 0)
        | (FLAG_ENHANCEMENT if streams.enhancement else 0)
    )
    fields = (
        MAGIC,
        min(v for v, allowed in VERSION_FLAGS.items() if flags & ~allowed == 0),
        header.channels,
        flags,
        header.tile,
        header.model_id,
        header.width,
        header.height,
        header.pad_x,
        header.pad_y,
        header.top_shape[1],
        header.top_shape[0],
        header.bottom_shape[1],
        header.bottom_shape[0],
        len(streams.top),
        len(streams.bottom),
        len(streams.alpha),
        zlib.crc32(payload),
        header.content_crc,
    )
    head = HEADER.pack(*fields, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def read_header(data: bytes) -> Header:
    """Parse and validate the header alone; the payload need not be present (for ``info``)."""
    if len(data) < HEADER_SIZE:
        if not MAGIC.startswith(bytes(data[: len(MAGIC)])):
            raise FormatError("not a .vqc file (bad magic bytes)")
        raise FormatError(f"truncated .vqc file: {len(data)} bytes, the header alone is {HEADER_SIZE}")
    raw = HEADER.unpack_from(data)
    (magic, version, channels, flags, tile, model_id, width, height, pad_x, pad_y,
     top_w, top_h, bottom_w, bottom_h, top_len, bottom_len, alpha_len,
     payload_crc, crc_content, crc_header) = raw  # fmt: skip
    if magic != MAGIC:
        raise FormatError("not a .vqc file (bad magic bytes)")
    if version not in VERSIONS:
        raise FormatError(
            f"unsupported .vqc format version {version} (this vqcodec reads versions {', '.join(map(str, VERSIONS))})"
        )
    if zlib.crc32(bytes(data[: HEADER_SIZE - 4])) != crc_header:
        raise FormatError("damaged .vqc file: header checksum mismatch")
    header = Header(
        channels,
        tile,
        model_id,
        width,
        height,
        pad_x,
        pad_y,
        (top_h, top_w),
        (bottom_h, bottom_w),
        top_len,
        bottom_len,
        alpha_len,
        payload_crc,
        crc_content,
        flags,
        version,
    )
    _validate(header, version)
    return header


def _validate(h: Header, version: int) -> None:
    if h.flags & ~VERSION_FLAGS[version]:
        raise FormatError(f"unknown .vqc flags {h.flags:#x} for version {version}")
    if not 1 <= h.tile <= MAX_TILE:
        raise FormatError(f"invalid prior tile size {h.tile} (1..{MAX_TILE})")
    if h.channels not in CHANNELS:
        raise FormatError(f"invalid channel count {h.channels}")
    if not (1 <= h.width <= MAX_SIDE and 1 <= h.height <= MAX_SIDE) or h.width * h.height > MAX_PIXELS:
        raise FormatError(f"invalid image size {h.width}x{h.height}")
    if h.top_len % 4 or h.bottom_len % 4:
        raise FormatError("invalid stream length (not a multiple of 4 bytes)")
    if h.has_enhancement and h.resampled:
        raise FormatError("damaged .vqc file: an enhancement layer on a resampled copy")
    if h.has_alpha != (h.alpha_len > 0):
        raise FormatError("alpha stream does not match the channel count")
    if min(h.top_shape + h.bottom_shape) < 1:
        raise FormatError("empty code map")
    if h.bottom_shape != (2 * h.top_shape[0], 2 * h.top_shape[1]) or not (
        h.top_shape[0] <= h.height // _TOP_CODES_PER_PIXEL_SIDE + 2
        and h.top_shape[1] <= h.width // _TOP_CODES_PER_PIXEL_SIDE + 2
    ):
        raise FormatError("damaged .vqc file: code map sizes do not match the image size")
    for name, length, shape, side in (
        ("top", h.top_len, h.top_shape, h.tile),
        ("bottom", h.bottom_len, h.bottom_shape, 2 * h.tile),
    ):
        segments = segment_count(shape, side) if h.segmented else 1
        if length > max_stream_bytes(shape[0] * shape[1], segments):
            raise FormatError(f"damaged .vqc file: the {name}-map stream is longer than its codes can take")
    if h.alpha_len > _max_deflated(h.width * h.height):
        raise FormatError("damaged .vqc file: the alpha stream is longer than its plane can take")


def max_stream_bytes(codes: int, segments: int = 1) -> int:
    """The longest stream a map of ``codes`` codes in ``segments`` segments can have (whole
    32-bit words: each segment's final state, and its length but the last's)."""
    return 4 * -(-(MAX_BITS_PER_CODE * codes + _STREAM_TAIL_BITS * segments) // 32) + 4 * (segments - 1)


#: Positions a segment of a map holds at most (unless one region is larger): small enough for a
#: megapixel photo's maps to have several, to decode side by side; large enough that each
#: segment's final state and length cost little of its bytes (docs/design.md, "Constants").
SEGMENT_POSITIONS = 8192
_SEGMENT_LEN = struct.Struct("<I")


def regions_per_segment(side: int) -> int:
    """How many regions of ``side`` x ``side`` codes a segment holds (``SEGMENT_POSITIONS``)."""
    return max(1, SEGMENT_POSITIONS // (side * side))


def region_count(shape: tuple[int, int], side: int) -> int:
    """Regions of a map of ``shape`` (height, width) cut into ``side`` x ``side`` (smaller at the edges)."""
    return -(-shape[0] // side) * -(-shape[1] // side)


def segment_count(shape: tuple[int, int], side: int) -> int:
    """Segments of a map of ``shape`` (height, width) cut into regions of ``side`` x ``side``."""
    return -(-region_count(shape, side) // regions_per_segment(side))


def join_segments(segments: list[bytes]) -> bytes:
    """A map stream of separately coded segments: every length but the last's, then the segments."""
    return b"".join(_SEGMENT_LEN.pack(len(x)) for x in segments[:-1]) + b"".join(segments)


def split_segments(stream: bytes, count: int) -> list[bytes]:
    """Inverse of ``join_segments`` for a map of ``count`` segments; a FormatError if the lengths
    do not add up to the stream."""
    table = _SEGMENT_LEN.size * (count - 1)
    if len(stream) < table:
        raise FormatError("damaged .vqc file: a map stream is shorter than its segment table")
    lengths = [_SEGMENT_LEN.unpack_from(stream, _SEGMENT_LEN.size * i)[0] for i in range(count - 1)]
    if any(n % 4 for n in lengths) or table + sum(lengths) > len(stream):
        raise FormatError("damaged .vqc file: a map stream's segment lengths do not fit it")
    ends = itertools.accumulate([table, *lengths, len(stream) - table - sum(lengths)])
    return [stream[a:b] for a, b in itertools.pairwise(ends)]


def _max_deflated(size: int) -> int:
    """The longest zlib stream of ``size`` bytes (stored blocks of at most 64 KiB, 5 bytes each,
    and zlib's 6-byte frame)."""
    return size + 5 * (size // 0xFFFF + 1) + 6


def _length(data: bytes, at: int, field: struct.Struct, part: str) -> int:
    """The length of ``part`` that the ``field`` at byte ``at`` gives."""
    if len(data) < at + field.size:
        raise FormatError(f"truncated .vqc file: {len(data)} bytes, its {part} length missing")
    return field.unpack_from(data, at)[0]


#: The longest metadata stream: zlib of at most ``MAX_METADATA`` bytes of records.
MAX_METADATA_STREAM = _max_deflated(MAX_METADATA)


def read_file(stream: BinaryIO) -> bytes:
    """The bytes of a ``.vqc`` file from ``stream``, read no further than its header (and the
    lengths after the streams) say the file runs, plus one byte to tell a longer file: a huge
    file, a pipe or a device costs at most what a valid header allows. What is read is checked as
    ``unpack`` checks it (a bad or truncated header raises here)."""
    data = _read_up_to(stream, HEADER_SIZE)
    header = read_header(data)
    end = HEADER_SIZE + header.payload_len
    for present, field, part, longest in (
        (header.has_filter, _FILTER_LEN, "filter", MAX_FILTER),
        (header.has_enhancement, _ENHANCEMENT_LEN, "enhancement", max_enhancement_bytes(header)),
        (header.has_metadata, _METADATA_LEN, "metadata", MAX_METADATA_STREAM),
    ):
        if present:
            data += _read_up_to(stream, end + field.size - len(data))
            if len(data) < end + field.size:
                return data
            end += field.size + _checked_length(data, end, field, part, longest)
    return data + _read_up_to(stream, end + 1 - len(data))


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``: fewer only at its end (pipes return short reads)."""
    parts, left = [], size
    while left > 0:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _checked_length(data: bytes, at: int, field: struct.Struct, part: str, longest: int) -> int:
    length = _length(data, at, field, part)
    if length > longest:
        raise FormatError(f"damaged .vqc file: a {part} stream of {length} bytes (at most {longest})")
    return length


def unpack(data: bytes) -> tuple[Header, Streams]:
    """Parse a whole file, checking its length and the payload checksum."""
    header = read_header(data)
    expected = HEADER_SIZE + header.payload_len
    filter_at = expected
    if header.has_filter:
        expected += _FILTER_LEN.size + _checked_length(data, expected, _FILTER_LEN, "filter", MAX_FILTER)
    enhancement_at = expected
    if header.has_enhancement:
        longest = max_enhancement_bytes(header)
        expected += _ENHANCEMENT_LEN.size + _checked_length(data, expected, _ENHANCEMENT_LEN, "enhancement", longest)
    metadata_at = expected
    if header.has_metadata:
        expected += _METADATA_LEN.size + _checked_length(data, expected, _METADATA_LEN, "metadata", MAX_METADATA_STREAM)
    if len(data) < expected:
        raise FormatError(f"truncated .vqc file: {len(data)} bytes of {expected}")
    if len(data) > expected:
        raise FormatError(f"unexpected bytes after the end of the .vqc data (its {expected} bytes)")
    payload = bytes(data[HEADER_SIZE:])
    if zlib.crc32(payload) != header.payload_crc:
        raise FormatError("damaged .vqc file: payload checksum mismatch")
    a, b = header.top_len, header.top_len + header.bottom_len
    c = b + header.alpha_len
    f, e, m = filter_at - HEADER_SIZE, enhancement_at - HEADER_SIZE, metadata_at - HEADER_SIZE
    return header, Streams(
        payload[:a],
        payload[a:b],
        payload[b:c],
        payload[m + _METADATA_LEN.size :] if header.has_metadata else b"",
        payload[f + _FILTER_LEN.size : e] if header.has_filter else b"",
        payload[e + _ENHANCEMENT_LEN.size : m] if header.has_enhancement else b"",
    )


def max_enhancement_bytes(header: Header) -> int:
    """The longest enhancement record a file of ``header``'s code maps can have."""
    coefficients = _ENHANCEMENT_COEFFICIENTS * header.bottom_shape[0] * header.bottom_shape[1]
    return ENHANCEMENT_HEAD.size + max_stream_bytes(coefficients * _MAX_BITS_PER_COEFFICIENT // MAX_BITS_PER_CODE)


def enhancement_record(layer: int, step: int, crc: int, stream: bytes) -> bytes:
    """An enhancement record: which layer at which step, the CRC-32 of its coefficients, the stream."""
    return ENHANCEMENT_HEAD.pack(layer, step, crc) + stream


def read_enhancement(record: bytes) -> tuple[int, int, int, bytes]:
    """(layer, step, coefficients' CRC-32, stream) of an enhancement record."""
    if len(record) < ENHANCEMENT_HEAD.size:
        raise FormatError("damaged .vqc file: the enhancement record is shorter than its head")
    layer, step, crc = ENHANCEMENT_HEAD.unpack_from(record)
    stream = record[ENHANCEMENT_HEAD.size :]
    if layer < 1 or len(stream) % 4:
        raise FormatError("damaged .vqc file: invalid enhancement record")
    return layer, step, crc, stream


def encode_metadata(items: dict[str, bytes]) -> bytes:
    """The metadata stream of ``items`` (keys of ``METADATA_TAGS``' values), b"" if there are none."""
    tags = {name: tag for tag, name in METADATA_TAGS.items()}
    records = b"".join(
        struct.pack("<BI", tags[name], len(value)) + value for name, value in sorted(items.items()) if value
    )
    if len(records) > MAX_METADATA:
        raise FormatError(f"metadata of {len(records)} bytes is over the limit of {MAX_METADATA}")
    return zlib.compress(records, 9) if records else b""


def decode_metadata(data: bytes) -> dict[str, bytes]:
    """Inverse of ``encode_metadata``; never inflates past ``MAX_METADATA``; unknown tags are skipped."""
    if not data:
        return {}
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, MAX_METADATA + 1)
    except zlib.error as exc:
        raise FormatError(f"damaged metadata stream: {exc}") from exc
    if len(raw) > MAX_METADATA or not inflater.eof or inflater.unused_data:
        raise FormatError("damaged metadata stream: wrong size")
    items, pos = {}, 0
    while pos < len(raw):
        if pos + 5 > len(raw):
            raise FormatError("damaged metadata stream: truncated record")
        tag, size = struct.unpack_from("<BI", raw, pos)
        if pos + 5 + size > len(raw):
            raise FormatError("damaged metadata stream: truncated record")
        if tag in METADATA_TAGS:
            items[METADATA_TAGS[tag]] = raw[pos + 5 : pos + 5 + size]
        pos += 5 + size
    return items


def compress_alpha(alpha: np.ndarray) -> bytes:
    """Lossless alpha stream (zlib, level 9) of a (H, W) uint8 plane."""
    return zlib.compress(np.ascontiguousarray(alpha, dtype=np.uint8).tobytes(), 9)


def decompress_alpha(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of ``compress_alpha``; never inflates past the expected size."""
    size = shape[0] * shape[1]
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, size)
        complete = inflater.eof and not inflater.unconsumed_tail and not inflater.unused_data
    except zlib.error as exc:
        raise FormatError(f"damaged alpha stream: {exc}") from exc
    if len(raw) != size or not complete:
        raise FormatError("damaged alpha stream: wrong size")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
