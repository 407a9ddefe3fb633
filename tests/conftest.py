"""Shared fixtures: tiny randomly initialised models (the codec's logic, not its quality, is tested)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    # Run Triton kernels through Triton's CPU interpreter (read when the kernels are defined).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import vqcodec
from vqcodec.nn.config import tiny_config
from vqcodec.nn.model import CodecModel
from vqcodec.nn.prior import calibrate
from vqcodec.zoo.weights import save_model


def make_model(seed: int = 0, bottom_stride: int = 4) -> CodecModel:
    """A tiny random model whose priors are calibrated on random code maps."""
    torch.manual_seed(seed)
    model = CodecModel(tiny_config(bottom_stride=bottom_stride)).eval()
    k = model.config.vqvae.top_codes
    top = torch.randint(0, k, (2, 4, 5))
    calibrate(model.top_prior, [(top, None)])
    calibrate(model.bottom_prior, [(torch.randint(0, k, (2, 8, 10)), top)])
    return model


@pytest.fixture(scope="session")
def codec() -> vqcodec.Codec:
    return vqcodec.Codec(make_model(), device="cpu")


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_model(make_model(), path)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def smooth_image(rng: np.random.Generator, h: int, w: int, c: int = 3) -> np.ndarray:
    """A random but image-like (smooth) uint8 array."""
    base = rng.random((max(h // 4, 1) + 1, max(w // 4, 1) + 1, c))
    t = torch.from_numpy(base).permute(2, 0, 1)[None]
    up = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return (up[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
