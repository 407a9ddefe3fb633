"""A file is the same file on every device: what the GPU writes the CPU reads, code for code, and
the other way round (the integer prior's promise, checked where a GPU exists; skipped elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec.coding import mapcoder
from vqcodec.coding.steps import DirectSteps, PaddedSteps, wavefront_steps
from vqcodec.defaults import DEFAULT_PRESET

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.filterwarnings("error::RuntimeWarning"),  # a CUDA graph that fails to capture
]

#: Sizes with partial windows, partial prior regions and several regions per map.
SIZES = [(1, 1), (37, 53), (130, 70)]


def _assert_reads_back(encoded: vqcodec.Encoded, reader: vqcodec.Codec) -> None:
    decoded = reader.decode_codes(encoded.data)
    np.testing.assert_array_equal(decoded.top, encoded.codes.top)
    np.testing.assert_array_equal(decoded.bottom, encoded.codes.bottom)


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize(("rdo", "passes"), [(0.0, 1), (0.2, 1), (0.2, 2)])
def test_files_cross_between_gpu_and_cpu(rng, h, w, rdo, passes):
    gpu, cpu = (vqcodec.Codec(make_model(), device=d, rdo=rdo, rdo_passes=passes) for d in ("cuda", "cpu"))
    image = smooth_image(rng, h, w)
    for writer in (gpu, cpu):
        encoded = writer.encode(image)
        for reader in (gpu, cpu):
            _assert_reads_back(encoded, reader)


@pytest.mark.parametrize(("graphs", "kind"), [(True, PaddedSteps), (False, DirectSteps)])
def test_decoder_steps_with_and_without_cuda_graphs(rng, monkeypatch, graphs, kind):
    made = []

    def spy(*args):
        made.append(wavefront_steps(*args))
        return made[-1]

    monkeypatch.setattr(mapcoder, "wavefront_steps", spy)
    gpu = vqcodec.Codec(make_model(), device="cuda", cuda_graphs=graphs)
    encoded = gpu.encode(smooth_image(rng, 130, 70))
    _assert_reads_back(encoded, gpu)
    assert made and all(type(steps) is kind for steps in made)


def test_batched_gpu_files_are_single_files(rng):
    gpu = vqcodec.Codec(make_model(), device="cuda")
    images = [smooth_image(rng, h, w) for h, w in SIZES]
    assert gpu.compress_many(images) == [gpu.compress(image) for image in images]


@pytest.mark.skipif(DEFAULT_PRESET not in vqcodec.presets(), reason="no default preset")
def test_default_preset_crosses_devices(rng):
    gpu, cpu = (vqcodec.load(device=d) for d in ("cuda", "cpu"))
    encoded = gpu.encode(smooth_image(rng, 150, 200))
    _assert_reads_back(encoded, cpu)
    on_gpu = np.asarray(gpu.decompress(encoded.data), dtype=float)
    on_cpu = np.asarray(cpu.decompress(encoded.data), dtype=float)
    # Synthesis is floating point (TF32 convolutions on a GPU): the same codes give pixels that
    # differ by rounding alone, far below the codec's own error.
    assert 10 * np.log10(255**2 / max(((on_gpu - on_cpu) ** 2).mean(), 1e-10)) > 40
