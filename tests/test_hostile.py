"""Hostile inputs: forged .vqc headers with valid checksums, huge declared images and crafted model
files are refused early, with a VQCodecError, before the work or memory they ask for."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec.cli import main
from vqcodec.coding import entropy
from vqcodec.format import container
from vqcodec.nn.config import tiny_config
from vqcodec.nn.model import CodecModel
from vqcodec.zoo.weights import FORMAT, load_model, save_model


@pytest.fixture(scope="module")
def sample(codec) -> bytes:
    return codec.compress(smooth_image(np.random.default_rng(5), 40, 48))


def forge(data: bytes, streams: container.Streams | None = None, **fields) -> bytes:
    """``data`` with header fields (and ``streams``) replaced, its header and payload checksums
    valid again."""
    header, own = container.unpack(data)
    return container.pack(container.Header(**{**header.__dict__, **fields}), streams or own)


def claim_size(data: bytes, width: int, height: int, stride: int = 8) -> bytes:
    """A file that claims a ``width`` x ``height`` image, with consistent map sizes, carrying the
    streams of ``data``: the CRCs pass, the streams run out long before the maps are full."""
    pad_x, pad_y = -width % stride, -height % stride
    top = ((height + pad_y) // stride, (width + pad_x) // stride)
    return forge(
        data, width=width, height=height, pad_x=pad_x, pad_y=pad_y, top_shape=top,
        bottom_shape=(2 * top[0], 2 * top[1]), channels=3, alpha_len=0,
    )  # fmt: skip


def test_images_over_the_pixel_limit_are_refused_from_the_header(codec, sample, monkeypatch):
    forged = claim_size(sample, 4096, 4096)
    monkeypatch.setattr(entropy.Decoder, "decode", lambda *_: pytest.fail("decoding started"))
    with pytest.raises(vqcodec.LimitError, match="max-pixels"):
        codec.decompress(forged)
    with pytest.raises(vqcodec.LimitError):
        vqcodec.Codec(make_model(), device="cpu", max_pixels=40 * 48 - 1).decompress(sample)
    assert container.DEFAULT_MAX_PIXELS < container.MAX_PIXELS


def test_raising_the_limit_lets_a_large_file_through(codec, sample):
    big = vqcodec.Codec(make_model(), device="cpu", max_pixels=1 << 25)
    with pytest.raises(vqcodec.FormatError):  # past the limit, the stream is found to run out
        big.decompress(claim_size(sample, 4096, 4096))


def test_a_stream_that_runs_out_is_refused_within_a_few_codes(codec, sample, monkeypatch):
    decoded = []
    original = entropy.Decoder.decode

    def counting(self, probs):
        decoded.append(len(probs))
        return original(self, probs)

    monkeypatch.setattr(entropy.Decoder, "decode", counting)
    forged = claim_size(sample, 2048, 2048)  # 65,536 top codes, 262,144 bottom codes
    with pytest.raises(vqcodec.FormatError):
        codec.decompress(forged)
    assert sum(decoded) < 2000
    decoded.clear()
    empty = claim_size(forge(sample, container.Streams(b"", b"")), 2048, 2048)
    with pytest.raises(vqcodec.FormatError, match="ends before"):
        codec.decompress(empty)
    assert len(decoded) <= 2  # refused at the first wavefront steps


def test_intact_files_never_look_exhausted(codec, rng):
    """Highly compressible maps (flat images, a few bits per thousand codes) decode whole."""
    for image in (np.zeros((200, 160, 3), np.uint8), np.full((64, 300, 3), 200, np.uint8), smooth_image(rng, 90, 70)):
        data = codec.compress(image)
        assert np.array_equal(np.asarray(codec.decompress(data)), np.asarray(codec.decompress(data)))


@pytest.mark.parametrize("tile", [0, container.MAX_TILE + 1, 255])
def test_prior_tiles_beyond_the_bound_are_refused(sample, tile):
    with pytest.raises(vqcodec.FormatError, match="tile"):
        container.read_header(forge(sample, tile=tile))
    with pytest.raises(vqcodec.UsageError):
        vqcodec.Codec(make_model(), device="cpu", tile=container.MAX_TILE + 1)


def test_content_checksum_failure_blames_the_file_first(codec, sample):
    with pytest.raises(vqcodec.DecodeMismatchError, match="damaged or forged"):
        codec.decompress(forge(sample, content_crc=container.read_header(sample).content_crc ^ 1))


def test_info_shows_a_refused_files_size(tmp_path, codec, sample):
    path = tmp_path / "big.vqc"
    path.write_bytes(claim_size(sample, 60000, 2000))
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0 and "60000x2000" in result.output


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels but that holds almost nothing."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: (  # noqa: E731
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    )
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_input_images_over_the_limit_are_refused_before_reading_pixels(codec, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(11585, 11585))
    with pytest.raises(vqcodec.LimitError, match="11585x11585"):
        codec.compress(path)
    with pytest.raises(vqcodec.LimitError):
        codec.compress(np.zeros((3000, 3000), np.uint8))
    big = vqcodec.Codec(make_model(), device="cpu", max_pixels=container.MAX_PIXELS)
    with pytest.raises(vqcodec.InputError):  # allowed, then its truncated pixels fail to read
        big.compress(path)


def test_colour_key_transparency_becomes_alpha(codec, rng, tmp_path):
    for mode, key, out_mode in (("RGB", (10, 20, 30), "RGBA"), ("L", 7, "LA")):
        arr = smooth_image(rng, 12, 16, 3 if mode == "RGB" else 1)
        arr = arr if mode == "RGB" else arr[:, :, 0]
        arr[2, 3] = key
        path = tmp_path / f"key_{mode}.png"
        Image.fromarray(arr, mode).save(path, transparency=key)
        out = codec.decompress(codec.compress(path))
        assert out.mode == out_mode
        alpha = np.asarray(out)[..., -1]
        keyed = np.asarray(Image.open(path).convert(out_mode))[..., -1] == 0
        assert alpha[2, 3] == 0 and np.array_equal(alpha == 0, keyed)


# -- model files ---------------------------------------------------------------------------------


def write_model(path, config_json: str, tensors: dict[str, torch.Tensor] | None = None) -> None:
    tensors = tensors if tensors is not None else {"x": torch.zeros(1)}
    save_file(tensors, str(path), metadata={"format": FORMAT, "config": config_json})


def tiny_raw() -> dict:
    return json.loads(tiny_config().to_json())


def edited(section: str, **fields) -> str:
    raw = tiny_raw()
    raw[section].update(fields)
    return json.dumps(raw)


HOSTILE_CONFIGS = {
    "kernel=201": edited("top_prior", kernel=201),
    "res_blocks=20000": edited("vqvae", res_blocks=20000),
    "channels=10**30": edited("vqvae", channels=10**30),
    "channels=10**400": edited("vqvae", channels=10**400),
    "attn_heads=0": edited("top_prior", attn_heads=0),
    "dropout=2.0": edited("bottom_prior", dropout=2.0),
    "codes=1": edited("vqvae", top_codes=1),
    "negative": edited("vqvae", synth_up_blocks=-1),
    "stride 3": edited("vqvae", bottom_stride=3),
    "nested": '{"vqvae": ' + "[" * 100000 + "]" * 100000 + "}",
    "not an object": json.dumps({**tiny_raw(), "vqvae": [1, 2]}),
    "boolean": edited("vqvae", channels=True),
    "not json": "{",
    "codes=65536": json.dumps(
        {
            **tiny_raw(),
            "vqvae": {**tiny_raw()["vqvae"], "bottom_codes": 65536},
            "bottom_prior": {**tiny_raw()["bottom_prior"], "codes": 65536},
        }
    ),
    "stride 64, 256 channels": edited("vqvae", bottom_stride=64, channels=256),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CONFIGS))
def test_hostile_configs_are_refused_before_building(tmp_path, name, monkeypatch):
    """Each field within its bounds is not enough: so must be what they cost together (a
    65536-code book's logits, a stride-64 window's activations: gigabytes)."""
    path = tmp_path / "m.safetensors"
    write_model(path, HOSTILE_CONFIGS[name])
    monkeypatch.setattr(CodecModel, "__init__", lambda *_: pytest.fail("a model was built"))
    with pytest.raises(vqcodec.ModelError):
        load_model(path)


def good_tensors() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in make_model().state_dict().items()}


def save_with(path, **changes) -> None:
    tensors = good_tensors()
    tensors.update(changes)
    write_model(path, tiny_config().to_json(), tensors)


@pytest.mark.parametrize(
    "tensor",
    ["vqvae.dec.net.0.weight", "vqvae.quantize_b.embed", "vqvae.enc_b.net.0.weight", "top_prior.head.weight"],
)
def test_non_finite_and_absurd_weights_are_refused(tmp_path, tensor):
    for bad, problem in ((float("nan"), "non-finite"), (float("inf"), "non-finite"), (1e30, "beyond")):
        t = good_tensors()[tensor]
        t.view(-1)[0] = bad
        save_with(tmp_path / "m.safetensors", **{tensor: t})
        with pytest.raises(vqcodec.ModelError, match=problem):
            load_model(tmp_path / "m.safetensors")


@pytest.mark.parametrize("value", [0.0, -1.0, 1e30])
def test_absurd_activation_ranges_are_refused(tmp_path, value):
    name = next(k for k in good_tensors() if k.endswith(".absmax"))
    save_with(tmp_path / "m.safetensors", **{name: torch.tensor(value)})
    with pytest.raises(vqcodec.ModelError, match="activation range"):
        load_model(tmp_path / "m.safetensors")


def test_wrong_shapes_and_dtypes_are_refused_before_reading_weights(tmp_path, monkeypatch):
    weight, flag = "vqvae.dec.net.0.weight", "vqvae.quantize_t.initialised"
    tensors = good_tensors()
    changes = [(weight, torch.zeros(3)), (weight, tensors[weight].to(torch.int32)), (flag, tensors[flag].float())]
    monkeypatch.setattr("vqcodec.zoo.modelfile.load_file", lambda *_: pytest.fail("weights were read"))
    for name, change in changes:
        save_with(tmp_path / "m.safetensors", **{name: change})
        with pytest.raises(vqcodec.ModelError):
            load_model(tmp_path / "m.safetensors")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x01", struct.pack("<Q", 1 << 40) + b"{}", struct.pack("<Q", 2) + b"[]", struct.pack("<Q", 4) + b"{}  x"],
)
def test_malformed_safetensors_headers_are_refused(tmp_path, raw):
    path = tmp_path / "m.safetensors"
    path.write_bytes(raw)
    with pytest.raises(vqcodec.ModelError):
        load_model(path)


def test_tensor_offsets_must_lie_in_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(make_model(), path)
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 1 << 30
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data[8 + length :])
    with pytest.raises(vqcodec.ModelError, match="invalid safetensors entry"):
        load_model(path)


def test_hostile_model_exits_1_with_one_line(tmp_path):
    path = tmp_path / "m.safetensors"
    write_model(path, HOSTILE_CONFIGS["kernel=201"])
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    result = CliRunner().invoke(main, ["compress", str(image), str(tmp_path / "a.vqc"), "--model", str(path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "kernel" in result.output


class _Endless:
    """A binary stream that never ends (a pipe or device that keeps giving): ``data``, then zeros.
    Counts what is read from it."""

    def __init__(self, data: bytes):
        self.data, self.read_bytes = data, 0

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            raise AssertionError("the whole stream was asked for")
        start, self.read_bytes = self.read_bytes, self.read_bytes + size
        return (self.data[start : start + size] + bytes(size))[:size]


def test_a_file_is_read_no_further_than_its_header_says_it_runs(codec, sample):
    """A valid file followed by endless bytes: one byte past its end is read, and it is refused."""
    with_icc = Image.fromarray(smooth_image(np.random.default_rng(2), 30, 20))
    with_icc.info["icc_profile"] = bytes(range(256)) * 3
    for data in (sample, codec.compress(with_icc)):
        assert container.read_header(data).has_metadata == (data != sample)
        stream = _Endless(data)
        read = container.read_file(stream)
        assert read == data + b"\0" and stream.read_bytes <= len(data) + 1 + (1 << 20)
        with pytest.raises(vqcodec.FormatError, match="unexpected bytes after the end"):
            codec.decompress(_Endless(data))
    assert container.read_file(iter_chunks(sample)) == sample  # short reads, as pipes give them


def iter_chunks(data: bytes):
    """A stream that returns at most 7 bytes per read, then ends."""

    class Chunks:
        at = 0

        def read(self, size: int) -> bytes:
            chunk = data[self.at : self.at + min(size, 7)]
            self.at += len(chunk)
            return chunk

    return Chunks()


@pytest.mark.parametrize(
    "fields,problem",
    [
        ({"top_len": 1 << 30}, "top-map stream is longer"),
        ({"bottom_len": 1 << 30}, "bottom-map stream is longer"),
        ({"channels": 4, "alpha_len": 1 << 30}, "alpha stream is longer"),
        ({"top_shape": (5000, 5000), "bottom_shape": (10000, 10000)}, "code map sizes"),
        ({"bottom_shape": (3, 3)}, "code map sizes"),
    ],
)
def test_headers_claiming_more_than_the_image_can_take_are_refused(sample, fields, problem):
    """Stream lengths are bounded by the codes they hold (at most 25 bits a code) and code maps by
    the image's size, so no header makes a reader take more than a real file of its size."""
    h = container.Header(**{**container.read_header(sample).__dict__, **fields})
    head = container.HEADER.pack(
        container.MAGIC, h.version, h.channels, h.flags, h.tile, h.model_id, h.width, h.height, h.pad_x, h.pad_y,
        h.top_shape[1], h.top_shape[0], h.bottom_shape[1], h.bottom_shape[0], h.top_len, h.bottom_len, h.alpha_len,
        h.payload_crc, h.content_crc, 0,
    )[:-4]  # fmt: skip
    with pytest.raises(vqcodec.FormatError, match=problem):
        container.read_file(_Endless(head + struct.pack("<I", zlib.crc32(head))))


def test_huge_files_and_endless_devices_are_refused_by_the_real_command(tmp_path, sample):
    """`info` and `decompress` of a valid file made 1 GiB long (sparse), and of /dev/zero on the
    command line and on standard input: refused with one line and exit 1 (they used to be read whole)."""
    big = tmp_path / "big.vqc"
    big.write_bytes(sample)
    os.truncate(big, 1 << 30)
    vqcodec_cli = [sys.executable, "-m", "vqcodec"]
    devices = [Path("/dev/zero")] if Path("/dev/zero").exists() else []
    for src in [big, *devices]:
        for args in (["info", str(src)], ["decompress", str(src), str(tmp_path / "out.png")], ["decompress", "-", "-"]):
            stdin = src.open("rb") if args[1] == "-" else None
            result = subprocess.run([*vqcodec_cli, *args], stdin=stdin, capture_output=True, timeout=60, check=False)
            if stdin:
                stdin.close()
            if args[0] == "info" and src == big:
                assert result.returncode == 1 and b"DAMAGED: unexpected bytes" in result.stdout
                assert f"{1 << 30} bytes".encode() in result.stdout
                continue
            assert result.returncode == 1 and result.stderr.count(b"\n") == 1, (args, result.stderr)
            assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("limit", [float("nan"), float("inf"), 2.5, 0, True, "100"])
def test_the_pixel_limit_is_a_positive_whole_number(limit):
    with pytest.raises(vqcodec.UsageError, match="max_pixels"):
        vqcodec.Codec(make_model(), device="cpu", max_pixels=limit)


def test_reconstruct_refuses_codes_the_model_cannot_synthesise(codec, sample):
    codes = codec.decode_codes(sample)
    top, bottom = codes.top.copy(), codes.bottom.copy()
    for bad in (
        vqcodec.CodeMaps(top, bottom[:-2]),
        vqcodec.CodeMaps(top + 10_000, bottom),
        vqcodec.CodeMaps(top, bottom - 10_000),
        vqcodec.CodeMaps(top.astype(float), bottom),
    ):
        with pytest.raises(vqcodec.UsageError, match="code"):
            codec.reconstruct(bad, 48, 40)
    assert codec.reconstruct(codes, 48, 40).shape == (40, 48, 3)


def test_an_endless_image_on_standard_input_is_refused(tmp_path):
    """compress - reads no more than an image within the pixel limit can take."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with open("/dev/zero", "rb") as zeros:
        result = subprocess.run(
            [sys.executable, "-m", "vqcodec", "compress", "-", str(tmp_path / "z.vqc"), "--max-pixels", "1000"],
            stdin=zeros, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1 and "longer than" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "z.vqc").exists()
