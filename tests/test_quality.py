"""Quality 0..100 and target sizes over the shipped operating points."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import vqcodec
from tests.conftest import smooth_image
from vqcodec import quality
from vqcodec.defaults import DEFAULT_PRESET, DEFAULT_RDO


def test_the_scale_walks_the_ladder_in_order():
    points = [quality.operating_point(q) for q in range(101)]
    indices = [quality.LADDER.index(p) for p in points]
    assert indices == sorted(indices) and set(indices) == set(range(len(quality.LADDER)))
    assert quality.operating_point(quality.DEFAULT_QUALITY) == (DEFAULT_PRESET, DEFAULT_RDO)
    spans = [len(span) for span, _ in quality.qualities()]
    assert sum(spans) == 101 and max(spans) - min(spans) <= 1
    with pytest.raises(vqcodec.UsageError):
        quality.operating_point(101)


def test_largest_within_searches_the_ladder():
    sizes = dict(zip(quality.LADDER, [10, 20, 30, 40, 50, 60, 70, 80, 90], strict=True))
    calls = []

    def encode(preset, rdo):
        calls.append((preset, rdo))
        return b"x" * sizes[(preset, rdo)]

    for budget, expected in ((55, 50), (90, 90), (1000, 90), (10, 10)):
        calls.clear()
        data, point = quality.largest_within(encode, budget)
        assert len(data) == expected and sizes[point] == expected and len(calls) <= 4
    with pytest.raises(vqcodec.LimitError, match="smallest"):
        quality.largest_within(encode, 9)


@pytest.mark.skipif(not vqcodec.presets(), reason="no preset is installed")
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
    assert compress("x.vqc", "-q", "10", "--preset", "high").returncode == 2
    assert compress("y.vqc", "-q", "10", "--rdo", "0.5").returncode == 2
    assert compress("z.vqc", "--target-size", "10").returncode == 1
