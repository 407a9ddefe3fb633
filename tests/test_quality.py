"""Quality 0..100 and target sizes over the shipped operating points."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import vqcodec
from tests.conftest import smooth_image
from vqcodec import quality
from vqcodec.defaults import DEFAULT_RDO


@pytest.mark.parametrize("layers", [0, quality.ENHANCEMENT_LAYERS])
def test_quality_walks_the_ladder_in_order(layers):
    ladder = quality.ladder(layers)
    points = [quality.operating_point(q, layers) for q in range(101)]
    indices = [ladder.index(p) for p in points]
    assert indices == sorted(indices) and set(indices) == set(range(len(ladder)))
    assert quality.operating_point(quality.DEFAULT_QUALITY, layers) == quality.OperatingPoint(DEFAULT_RDO)
    spans = quality.qualities(layers)
    assert sum(len(span) for span, _ in spans) == 101
    for side in (
        [s for s in spans if s[0].start < quality.DEFAULT_QUALITY],
        [s for s in spans if s[0].start >= quality.DEFAULT_QUALITY],
    ):
        assert max(len(span) for span, _ in side) - min(len(span) for span, _ in side) <= 1
    # Smaller files first: larger scales, then enhancement layers, each from its coarsest step.
    order = [(p.enhancement, p.scale, -p.enhancement_step) for p in ladder]
    assert order == sorted(order) and len(set(order)) == len(order)
    assert all(p.enhancement <= layers and (p.scale == 1 or not p.enhancement) for p in ladder)
    with pytest.raises(vqcodec.UsageError):
        quality.operating_point(101, layers)


def test_models_without_the_layers_keep_the_resampled_ladder():
    assert quality.ladder(quality.ENHANCEMENT_LAYERS - 1) == quality.RESAMPLED_LADDER
    assert quality.LADDER[: quality.DEFAULT_POINT + 1] == quality.RESAMPLED_LADDER[: quality.DEFAULT_POINT + 1]
    assert {p.enhancement for p in quality.LADDER} == set(range(quality.ENHANCEMENT_LAYERS + 1))


def test_largest_within_searches_the_ladder():
    sizes = {point: 10 * (i + 1) for i, point in enumerate(quality.LADDER)}
    largest = max(sizes.values())
    calls = []

    def encode(point):
        calls.append(point)
        return b"x" * sizes[point]

    for budget, expected in ((55, 50), (largest, largest), (1000, largest), (10, 10)):
        calls.clear()
        data, point = quality.largest_within(encode, budget)
        assert len(data) == expected and sizes[point] == expected
        assert len(calls) <= len(quality.LADDER).bit_length()
    with pytest.raises(vqcodec.LimitError, match="smallest"):
        quality.largest_within(encode, 9)


@pytest.mark.skipif(not vqcodec.presets(), reason="no preset is installed")
@pytest.mark.slow
def test_quality_and_target_size_on_the_command_line(tmp_path):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.fromarray(smooth_image(np.random.default_rng(5), 64, 96)).save(image)

    def compress(out, *args):
        command = [sys.executable, "-m", "vqcodec", "compress", str(image), str(tmp_path / out), *args]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    sizes = []
    for q in (0, 50, 100):
        assert compress(f"q{q}.vqc", "-q", str(q)).returncode == 0
        sizes.append((tmp_path / f"q{q}.vqc").stat().st_size)
    assert sizes[0] < sizes[1] < sizes[2]
    assert compress("default.vqc").returncode == 0
    assert (tmp_path / "default.vqc").read_bytes() == (tmp_path / "q50.vqc").read_bytes()
    budget = (sizes[1] + sizes[2]) // 2
    assert compress("t.vqc", "--target-size", str(budget)).returncode == 0
    assert sizes[1] <= (tmp_path / "t.vqc").stat().st_size <= budget
    assert compress("x.vqc", "-q", "10", "--target-size", "1000").returncode == 2
    assert compress("h.vqc", "-q", "10", "--preset", "high").returncode == 0  # the point's settings, that model
    assert (tmp_path / "h.vqc").read_bytes() == vqcodec.load("high", device="cpu", quality=10).compress(image)
    assert compress("y.vqc", "-q", "10", "--rdo", "0.5").returncode == 2
    assert compress("s.vqc", "-q", "10", "--scale", "1.5").returncode == 2
    refused = compress("p.vqc", "-q", "10", "--rdo-passes", "3")
    assert refused.returncode == 2 and "set --rdo-passes" in refused.stderr
    point = quality.operating_point(10)
    assert point.rdo_passes == 2  # the small points choose twice
    spelled = ["--rdo", str(point.rdo), "--rdo-passes", str(point.rdo_passes), "--scale", str(point.scale)]
    assert compress("q10.vqc", "-q", "10").returncode == 0
    assert compress("spelled.vqc", *spelled).returncode == 0
    assert (tmp_path / "q10.vqc").read_bytes() == (tmp_path / "spelled.vqc").read_bytes()
    assert compress("up.vqc", "--scale", "1.5").returncode == 0
    assert (tmp_path / "up.vqc").stat().st_size > sizes[1]
    command = [sys.executable, "-m", "vqcodec", "decompress", str(tmp_path / "up.vqc"), str(tmp_path / "up.png")]
    assert subprocess.run(command, capture_output=True, check=False).returncode == 0
    assert Image.open(tmp_path / "up.png").size == (96, 64)
    assert compress("big.vqc", "--scale", "3").returncode == 2
    assert compress("z.vqc", "--target-size", "10").returncode == 1
