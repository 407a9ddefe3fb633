"""Round trips through the codec: exact code maps and exactly the model's own reconstruction."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec.coding import mapcoder
from vqcodec.coding.qprior import arithmetic
from vqcodec.coding.steps import PaddedSteps
from vqcodec.format import container
from vqcodec.timing import ENTROPY_CODING, PRIOR, StageTimer


def assert_round_trip(codec: vqcodec.Codec, image) -> Image.Image:
    encoded = codec.encode(image)
    decoded = codec.decode_codes(encoded.data)
    np.testing.assert_array_equal(decoded.top, encoded.codes.top)
    np.testing.assert_array_equal(decoded.bottom, encoded.codes.bottom)
    out = codec.decompress(encoded.data)
    assert out.size == (encoded.width, encoded.height)
    rgb = np.asarray(out.convert("RGB")) if out.mode in ("RGB", "RGBA") else None
    if rgb is not None:
        np.testing.assert_array_equal(
            rgb, codec.reconstruct(encoded.codes, encoded.width, encoded.height, restored=encoded.restoration)
        )
    return out


@pytest.mark.parametrize("h,w", [(1, 1), (17, 33), (33, 17), (8, 8), (9, 24), (2, 41)])
def test_odd_sizes_round_trip(codec, rng, h, w):
    out = assert_round_trip(codec, smooth_image(rng, h, w))
    assert out.mode == "RGB"


@pytest.mark.parametrize("stride", [2, 8])
def test_other_strides_round_trip(rng, stride):
    codec = vqcodec.Codec(make_model(seed=3, bottom_stride=stride), device="cpu")
    encoded = codec.encode(smooth_image(rng, 19, 13))
    top_stride = 2 * stride
    assert encoded.codes.top.shape == (-(-19 // top_stride), -(-13 // top_stride))
    assert encoded.codes.bottom.shape == (2 * encoded.codes.top.shape[0], 2 * encoded.codes.top.shape[1])
    assert_round_trip(codec, smooth_image(rng, 19, 13))


@pytest.mark.parametrize("tile", [1, 2, 3])
def test_small_prior_tiles_round_trip(rng, tile):
    codec = vqcodec.Codec(make_model(seed=8), device="cpu", tile=tile)
    encoded = codec.encode(smooth_image(rng, 45, 37))
    assert vqcodec.read_header(encoded.data).tile == tile
    assert_round_trip(codec, smooth_image(rng, 45, 37))


def test_grayscale_comes_back_gray(codec, rng):
    gray = smooth_image(rng, 21, 30, 1)[:, :, 0]
    out = assert_round_trip(codec, Image.fromarray(gray, "L"))
    assert out.mode == "L"
    rgb = codec.reconstruct(codec.decode_codes(codec.compress(gray)), 30, 21)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(Image.fromarray(rgb).convert("L")))


@pytest.mark.parametrize("mode,channels", [("RGBA", 4), ("LA", 2)])
def test_alpha_is_lossless(codec, rng, mode, channels):
    arr = smooth_image(rng, 23, 18, channels)
    arr[..., -1] = rng.integers(0, 256, arr.shape[:2], dtype=np.uint8)  # noisy alpha, still exact
    out = assert_round_trip(codec, Image.fromarray(arr, mode))
    assert out.mode == mode
    np.testing.assert_array_equal(np.asarray(out)[..., -1], arr[..., -1])


def test_palette_and_bilevel_inputs(codec, rng):
    rgb = Image.fromarray(smooth_image(rng, 16, 16))
    assert codec.decompress(codec.compress(rgb.convert("P"))).mode == "RGB"
    assert codec.decompress(codec.compress(rgb.convert("1"))).mode == "L"


def test_inputs_pil_array_and_path_agree(codec, rng, tmp_path):
    arr = smooth_image(rng, 20, 28)
    path = tmp_path / "in.png"
    Image.fromarray(arr).save(path)
    data = codec.compress(arr)
    assert codec.compress(Image.fromarray(arr)) == data
    assert codec.compress(path) == data
    assert codec.compress(str(path)) == data


def test_encode_is_deterministic(codec, rng):
    arr = smooth_image(rng, 31, 27)
    assert codec.compress(arr) == codec.compress(arr.copy())


def test_stats_are_consistent(codec, rng):
    encoded = codec.encode(smooth_image(rng, 40, 40))
    for stats, codes in ((encoded.top, encoded.codes.top), (encoded.bottom, encoded.codes.bottom)):
        assert stats.codes == codes.size
        assert stats.real_bits >= stats.ideal_bits > 0
        assert stats.real_bits % 32 == 0
    assert encoded.bpp == pytest.approx(8 * len(encoded.data) / 1600)


def test_many_batches_round_trip(codec, rng, monkeypatch):
    """Maps larger than one batch of regions are coded batch by batch."""
    monkeypatch.setattr(mapcoder, "MAX_BATCH_POSITIONS", 40)
    assert_round_trip(vqcodec.Codec(make_model(seed=9), device="cpu", tile=2), smooth_image(rng, 70, 50))


@pytest.mark.parametrize("tile", [2, 3])
def test_segments_decode_one_after_another_and_side_by_side(rng, monkeypatch, tile):
    """Maps of several segments (format version 5) decode to the same codes in one process and
    in two or three (each process its run of bottom segments and the top segments they read:
    four bottom segments to a top one with tile 2, misaligned runs with tile 3), alone and
    batched with other files."""
    monkeypatch.setattr(container, "SEGMENT_POSITIONS", 48)
    codec = vqcodec.Codec(make_model(seed=3), device="cpu", tile=tile)
    images = [smooth_image(rng, 70, 90), smooth_image(rng, 30, 20)]
    files = codec.compress_many(images)
    header = container.read_header(files[0])
    assert header.segmented and header.version == 5
    _, streams = container.unpack(files[0])
    count = container.segment_count(header.bottom_shape, 2 * header.tile)
    assert count > 2 and len(container.split_segments(streams.bottom, count)) == count
    for n in (1, 2, 3):
        codec.processes = n
        assert_round_trip(codec, images[0])
        for out, data in zip(codec.decompress_many(files), files, strict=True):
            np.testing.assert_array_equal(np.asarray(out), np.asarray(codec.decompress(data)))


def test_stage_times_of_decoding_processes_reach_the_callers_timer(rng, monkeypatch):
    """A ``StageTimer`` given to the decoder gets the stage seconds of its forked processes too."""
    monkeypatch.setattr(container, "SEGMENT_POSITIONS", 48)
    codec = vqcodec.Codec(make_model(seed=3), device="cpu", tile=2, processes=2)
    data = codec.compress(smooth_image(rng, 70, 90))
    merged = []
    merge = StageTimer.merge
    monkeypatch.setattr(StageTimer, "merge", lambda self, seconds: merged.append(seconds) or merge(self, seconds))
    timer = StageTimer()
    codec.decompress(data, timer)
    assert len(merged) == 1 and merged[0][PRIOR] > 0 and merged[0][ENTROPY_CODING] > 0
    assert timer.seconds[PRIOR] >= merged[0][PRIOR]


def test_errors_in_decoding_processes_reach_the_caller(rng, monkeypatch):
    """A damaged segment that a forked process decodes is refused as in one process."""
    monkeypatch.setattr(container, "SEGMENT_POSITIONS", 48)
    codec = vqcodec.Codec(make_model(seed=3), device="cpu", tile=2, processes=2)
    data = codec.compress(smooth_image(rng, 70, 90))
    header, streams = container.unpack(data)
    count = container.segment_count(header.bottom_shape, 2 * header.tile)
    segments = container.split_segments(streams.bottom, count)
    segments[-1] = segments[-1][:4]  # the last segment, which the second process decodes, cut short
    bottom = container.join_segments(segments)
    damaged = container.pack(header, container.Streams(streams.top, bottom, streams.alpha))
    with pytest.raises(vqcodec.VQCodecError):
        codec.decompress(damaged)


def test_one_segment_a_map_keeps_the_lowest_version(codec, rng):
    """A file whose maps each fit one segment is the unsegmented layout byte for byte, and says so."""
    header = container.read_header(codec.compress(smooth_image(rng, 40, 56)))
    assert not header.segmented and header.version == 1


def test_padded_steps_decode_files(rng, monkeypatch):
    """The decoder's loop over the steps a GPU replays from CUDA graphs (run eagerly on torch
    here), with several batches of regions and several images at once."""
    monkeypatch.setattr(mapcoder, "MAX_BATCH_POSITIONS", 40)
    monkeypatch.setattr(
        mapcoder, "wavefront_steps", lambda prior, state, size, _: PaddedSteps(prior, state, size, capture=False)
    )
    codec = vqcodec.Codec(make_model(seed=2), device="cpu", tile=3)
    codec.decoding_priors = codec.encoding_priors  # torch, as on a GPU
    images = [smooth_image(rng, h, w) for h, w in [(1, 1), (37, 53), (50, 22)]]
    for image in images:
        assert_round_trip(codec, image)
    files = codec.compress_many(images)
    for out, data in zip(codec.decompress_many(files), files, strict=True):
        np.testing.assert_array_equal(np.asarray(out), np.asarray(codec.decompress(data)))


def test_tables_in_slices_give_the_same_file(codec, rng, monkeypatch):
    """The encoder asks for probability tables a slice of rows at a time (bounding their memory);
    the slicing does not change a byte of the file."""
    image = smooth_image(rng, 70, 50)
    whole = codec.compress(image)
    monkeypatch.setattr(arithmetic, "ROW_CHUNK", 7)
    assert codec.compress(image) == whole


@pytest.mark.parametrize("max_positions", [40, 1 << 15])
def test_batched_images_give_the_files_of_single_images(rng, monkeypatch, max_positions):
    """Maps of several images share batches (pooled whole, also when a map needs several), yet
    each file is byte for byte the one coded alone, and files with different tiles decode together."""
    monkeypatch.setattr(mapcoder, "MAX_BATCH_POSITIONS", max_positions)
    model = make_model(seed=5)
    codecs = [vqcodec.Codec(model, device="cpu", tile=t) for t in (2, 3)]
    images = [smooth_image(rng, h, w, c) for h, w, c in [(70, 50, 3), (9, 24, 1), (17, 33, 4), (1, 1, 3)]]
    alone = [codecs[0].encode(image) for image in images]
    together = codecs[0].encode_many(images)
    assert [e.data for e in together] == [e.data for e in alone] == codecs[0].compress_many(images)
    files = [e.data for e in alone] + [codecs[1].compress(images[0])]
    decoded = codecs[1].decompress_many(files)
    for out, data in zip(decoded, files, strict=True):
        assert out.tobytes() == codecs[0].decompress(data).tobytes()
    assert codecs[0].encode_many([]) == [] and codecs[0].decompress_many([]) == []


def test_windowed_vqvae_matches_whole_image(rng, monkeypatch):
    """Analysis and synthesis in small windows with margins give the whole-image result."""
    codec = vqcodec.Codec(make_model(seed=12), device="cpu")
    image = smooth_image(rng, 70, 90)
    whole = codec.encode(image).codes
    whole_pixels = codec.reconstruct(whole, 90, 70)
    monkeypatch.setattr(vqcodec.codec, "WINDOW", 2)
    monkeypatch.setattr(vqcodec.codec, "WHOLE_WINDOW", 0)
    windowed = codec.encode(image).codes
    assert (windowed.top == whole.top).mean() > 0.99 and (windowed.bottom == whole.bottom).mean() > 0.99
    pixels = codec.reconstruct(whole, 90, 70).astype(int)
    assert np.abs(pixels - whole_pixels).max() <= 1
    assert (pixels == whole_pixels).mean() > 0.999


def test_sixteen_bit_input_is_reduced_with_a_warning(codec, rng):
    gray16 = smooth_image(rng, 12, 14, 1)[:, :, 0].astype(np.uint16) * 257
    with pytest.warns(UserWarning, match="16-bit"):
        data16 = codec.compress(Image.fromarray(gray16))
    assert data16 == codec.compress(Image.fromarray((gray16 // 257).astype(np.uint8)))
    with pytest.warns(UserWarning, match="16-bit"):
        assert codec.decompress(codec.compress(np.stack([gray16] * 3, -1))).mode == "RGB"


BAD_INPUTS = [
    np.zeros((4, 4, 3), np.float32),
    np.full((4, 4), -1, np.int32),
    np.arange(16, dtype=np.int64).reshape(4, 4),  # numpy's default integers: not read as 16-bit
    np.zeros((4, 4, 5), np.uint8),
    np.zeros((0, 4, 3), np.uint8),
    "no/such/file.png",
    42,
]


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_bad_inputs_raise_input_error(codec, bad):
    with pytest.raises(vqcodec.InputError):
        codec.compress(bad)


def test_exif_orientation_is_applied(codec, rng, tmp_path):
    arr = smooth_image(rng, 10, 20)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert codec.decompress(codec.compress(tmp_path / "r.jpg")).size == (10, 20)


def test_windows_side_by_side_give_the_files_and_pixels_of_one_thread(rng, monkeypatch):
    """On several threads the windows run side by side, each on one thread: the same bytes (RDO's
    gradients included) and pixels as on one thread, and the caller's thread count comes back."""
    codec = vqcodec.Codec(make_model(seed=13), device="cpu", rdo=0.5)
    image = smooth_image(rng, 70, 90)
    monkeypatch.setattr(vqcodec.codec, "WINDOW", 2)
    monkeypatch.setattr(vqcodec.codec, "WHOLE_WINDOW", 0)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3):
            torch.set_num_threads(n)
            timer = StageTimer()
            data = codec.encode(image, timer=timer).data
            results.append((data, np.asarray(codec.decompress(data))))
            assert torch.get_num_threads() == n and timer.seconds["analysis"] > 0
    finally:
        torch.set_num_threads(threads)
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_a_code_the_coder_cannot_encode_becomes_its_nearest_code(rng, monkeypatch):
    """Where the last code gets no quantized probability in its context, the encoder writes the
    code nearest to it instead, and the file decodes to exactly the maps it reports."""
    codec = vqcodec.Codec(make_model(seed=14), device="cpu")
    image = smooth_image(rng, 48, 64)
    last = codec.model.config.vqvae.bottom_codes - 1
    assert (codec.encode(image).codes.bottom == last).any()
    monkeypatch.setattr(vqcodec.coding.entropy, "uncodable", lambda symbols, probs: symbols == probs.shape[1] - 1)
    encoded = codec.encode(image)
    _, bottom_substitute = codec._substitutes
    assert not (encoded.codes.bottom == last).any() and not (encoded.codes.top == last).any()
    assert (encoded.codes.bottom == bottom_substitute).any() and bottom_substitute != last
    decoded = codec.decode_codes(encoded.data)
    np.testing.assert_array_equal(decoded.top, encoded.codes.top)
    np.testing.assert_array_equal(decoded.bottom, encoded.codes.bottom)


def test_stage_timer_sees_every_stage(codec, rng):
    timer = StageTimer()
    data = codec.encode(smooth_image(rng, 20, 20), timer=timer).data
    assert set(timer.seconds) == {"analysis", "quantization", "prior", "entropy coding", "synthesis", "restoration"}
    timer = StageTimer()
    codec.decompress(data, timer=timer)
    filtered = {"restoration"} if container.read_header(data).has_filter else set()
    assert set(timer.seconds) == {"prior", "entropy coding", "synthesis"} | filtered
    assert all(t >= 0 for t in timer.seconds.values())


@pytest.mark.parametrize(
    "fmt,suffix", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp")]
)
def test_image_file_formats(codec, rng, tmp_path, fmt, suffix):
    path = tmp_path / f"in.{suffix}"
    Image.fromarray(smooth_image(rng, 18, 22)).save(path, format=fmt)
    out = codec.decompress(codec.compress(path))
    assert out.size == (22, 18) and out.mode == "RGB"


def test_sixteen_bit_rgb_png_warns(codec, tmp_path):
    """Pillow narrows 48-bit PNGs to 8 bits as it loads them: the user is told."""
    h, w = 6, 7
    rows = np.arange(h * w * 3, dtype=">u2").reshape(h, w, 3) * 1000
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    (tmp_path / "rgb48.png").write_bytes(png)
    with pytest.warns(UserWarning, match="16-bit"):
        assert codec.decompress(codec.compress(tmp_path / "rgb48.png")).size == (w, h)


def test_files_and_images_in_every_form(codec, rng, tmp_path):
    """decompress takes bytes, bytearray, memoryview, a path or a binary file; compress also takes
    an image file's bytes or a binary file object."""
    arr = smooth_image(rng, 20, 28)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    data = codec.compress(arr)
    assert codec.compress(path.read_bytes()) == data == codec.compress(bytearray(path.read_bytes()))
    with path.open("rb") as f:
        assert codec.compress(f) == data
    vqc = tmp_path / "a.vqc"
    vqc.write_bytes(data)
    expected = codec.decompress(data).tobytes()
    with vqc.open("rb") as f:
        forms = [bytearray(data), memoryview(data), vqc, str(vqc), f]
        assert all(codec.decompress(form).tobytes() == expected for form in forms)
    with pytest.raises(vqcodec.InputError):
        codec.decompress(tmp_path / "missing.vqc")
    with vqc.open("r") as f, pytest.raises(vqcodec.InputError, match="binary"):
        codec.decompress(f)
    with pytest.raises(vqcodec.InputError):
        codec.compress(b"not an image")


def test_argument_errors_are_codec_errors():
    for kwargs in ({"rdo": -1}, {"rdo_passes": 0}, {"max_pixels": 0}, {"tile": 0}):
        with pytest.raises(vqcodec.UsageError):
            vqcodec.Codec(make_model(), device="cpu", **kwargs)
    with pytest.raises(vqcodec.VQCodecError):
        vqcodec.load(rdo=-1)


def test_icc_profile_and_exif_travel_in_the_file(codec, rng, tmp_path):
    """They come back on decompress (and into the files the CLI writes); strip_metadata drops
    them; files without them stay version 1."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.fromarray(smooth_image(rng, 14, 18))
    exif = Image.Exif()
    exif[0x010F] = "vqcodec test camera"
    path = tmp_path / "meta.jpg"
    img.save(path, icc_profile=icc, exif=exif.tobytes())
    data = codec.compress(path)
    assert data[4] == 2 and vqcodec.read_header(data).has_metadata
    out = codec.decompress(data)
    assert out.info["icc_profile"] == icc and out.getexif()[0x010F] == "vqcodec test camera"
    stripped = vqcodec.Codec(codec.model, device="cpu", strip_metadata=True).compress(path)
    assert stripped[4] == 1 and "icc_profile" not in vqcodec.Codec(codec.model, device="cpu").decompress(stripped).info
    assert codec.compress(np.asarray(img))[4] == 1


def test_damaged_metadata_is_refused():
    from vqcodec.format import container

    good = container.encode_metadata({"icc_profile": b"x" * 100, "exif": b"y"})
    assert container.decode_metadata(good) == {"icc_profile": b"x" * 100, "exif": b"y"}
    bomb = zlib.compress(b"\0" * (container.MAX_METADATA + 10))
    for bad in (good[:-3], b"junk", zlib.compress(b"\x01\xff\xff\x00\x00"), bomb):
        with pytest.raises(vqcodec.FormatError):
            container.decode_metadata(bad)


def test_frames_and_cmyk_are_coded_with_a_warning(codec, rng, tmp_path):
    frames = [Image.fromarray(smooth_image(rng, 12, 12)) for _ in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="3 frames"):
        assert codec.decompress(codec.compress(tmp_path / "anim.gif")).size == (12, 12)
    with pytest.warns(UserWarning, match="CMYK"):
        codec.compress(Image.fromarray(smooth_image(rng, 8, 8, 4), "CMYK"))
