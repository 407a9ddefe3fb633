"""Region decoding: any rectangle comes back exactly as in the whole image, from only the segments
and synthesis windows it needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec.cli import main
from vqcodec.coding import entropy
from vqcodec.format import container
from vqcodec.zoo.weights import load_model

GOLDEN = Path(__file__).parent / "golden"


def _rects(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Corners, a single pixel, thin strips, the middle and the whole image."""
    return [
        (0, 0, min(9, width), min(7, height)),
        (width - 5, height - 4, 5, 4),
        (width // 2, height // 3, 1, 1),
        (0, height // 2, width, 1),
        (width // 3, 0, 2, height),
        (width // 4, height // 4, width // 2, height // 2),
        (0, 0, width, height),
    ]


def _assert_regions_exact(codec: vqcodec.Codec, data: bytes) -> None:
    whole = np.asarray(codec.decompress(data))
    header = container.read_header(data)
    for x, y, w, h in _rects(header.width, header.height):
        part = codec.decompress(data, region=(x, y, w, h))
        assert part.size == (w, h)
        np.testing.assert_array_equal(np.asarray(part), whole[y : y + h, x : x + w])


@pytest.mark.parametrize(
    "name", ["medium-rdo-filter.vqc", "medium-2x.vqc", "medium-half.vqc", "medium-alpha.vqc", "medium-segments.vqc"]
)
def test_regions_of_shipped_model_files_are_exact(name):
    """Restoration filters, upsampled and downsampled copies, alpha, and maps in segments or not."""
    data = (GOLDEN / name).read_bytes()
    _assert_regions_exact(vqcodec.load_for(data, device="cpu"), data)


@pytest.fixture
def small_windows(monkeypatch):
    """Windows of 3 top codes (1 of margin) and segments of 32 codes, so a small image has many of both."""
    monkeypatch.setattr(vqcodec.codec, "WINDOW", 3)
    monkeypatch.setattr(vqcodec.codec, "WHOLE_WINDOW", 0)
    monkeypatch.setattr(vqcodec.codec, "WINDOW_MARGIN", 1)
    monkeypatch.setattr(container, "SEGMENT_POSITIONS", 32)


def test_a_corner_decodes_fewer_segments_and_windows(small_windows, rng, monkeypatch):
    codec = vqcodec.Codec(make_model(seed=5), device="cpu", tile=2)
    image = smooth_image(rng, 90, 120)
    data = codec.compress(image)
    _assert_regions_exact(codec, data)
    for processes in (2, 3):
        codec.processes = processes
        _assert_regions_exact(codec, data)
    codec.processes = 1
    made = []
    monkeypatch.setattr(entropy, "Decoder", lambda stream: made.append(stream) or _Decoder(stream))
    codec.decompress(data)
    whole, made[:] = len(made), []
    windows = []
    synthesise = codec._synthesise
    monkeypatch.setattr(
        codec, "_synthesise", lambda c, t, w=None, **kw: windows.append(len(w)) or synthesise(c, t, w, **kw)
    )
    codec.decompress(data, region=(0, 0, 8, 8))
    assert 0 < len(made) < whole / 3 and windows[0] < 4


_Decoder = entropy.Decoder


def test_bad_regions_are_refused(codec, rng):
    data = codec.compress(smooth_image(rng, 20, 30))
    for rect in [(0, 0, 0, 5), (25, 0, 6, 5), (0, 0, 30, 21), (-1, 0, 2, 2), (0, 0, 2.5, 2), (1, 2, 3)]:
        with pytest.raises(vqcodec.UsageError, match="region"):
            codec.decompress(data, region=rect)


def test_command_line_region(tmp_path, model_file, rng):
    codec = vqcodec.Codec(load_model(model_file), device="cpu")
    data = codec.compress(smooth_image(rng, 20, 30))
    src = tmp_path / "a.vqc"
    src.write_bytes(data)
    runner = CliRunner()
    args = ["decompress", str(src), "--model", str(model_file), "--region"]
    result = runner.invoke(main, [*args, "4,5,10,6", str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    expected = np.asarray(codec.decompress(data))[5:11, 4:14]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), expected)
    for bad in ("4,5,10", "4,5,0,6", "a,b,c,d"):
        result = runner.invoke(main, [*args, bad, str(tmp_path / "b.png")])
        assert result.exit_code == 2 and "--region" in result.output
    result = runner.invoke(main, [*args, "25,0,6,5", str(tmp_path / "b.png")])
    assert result.exit_code == 1 and "not inside" in result.output
