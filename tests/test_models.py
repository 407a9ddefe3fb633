"""The VQ-VAE's shapes and training pass, and model files: safetensors with config, identified by hash."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import make_model
from vqcodec.errors import ModelError
from vqcodec.nn.config import ModelConfig, tiny_config
from vqcodec.nn.vqvae import loss
from vqcodec.zoo.weights import load_model, model_id, save_model


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_vqvae_shapes_and_training_pass(stride):
    model = make_model(bottom_stride=stride).vqvae.train()
    x = torch.rand(2, 3, 4 * stride, 6 * stride) * 2 - 1
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.top.shape == (2, 2, 3) and out.bottom.shape == (2, 4, 6)
    loss(out, x).backward()
    assert model.enc_b.net[0].weight.grad is not None


def test_save_load_keeps_weights_and_id(tmp_path):
    model = make_model()
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config == model.config
    assert model_id(loaded) == model_id(model)
    assert model_id(make_model(seed=1)) != model_id(model)


def test_half_precision_files_load_as_float32(tmp_path):
    save_model(make_model(), tmp_path / "h.safetensors", half=True)
    loaded = load_model(tmp_path / "h.safetensors")
    assert loaded.vqvae.dec.net[0].weight.dtype == torch.float32


def test_bad_model_files_raise_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04pickle? no")
    with pytest.raises(ModelError):
        load_model(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="not a vqcodec model"):
        load_model(tmp_path / "other.safetensors")
    state = {k: v.contiguous() for k, v in make_model().state_dict().items()}
    state.pop(next(iter(state)))
    save_file(
        state,
        str(tmp_path / "partial.safetensors"),
        metadata={"format": "vqcodec-model-1", "config": tiny_config().to_json()},
    )
    with pytest.raises(ModelError, match="missing"):
        load_model(tmp_path / "partial.safetensors")


def test_config_json_round_trip_and_validation():
    config = tiny_config()
    assert ModelConfig.from_json(config.to_json()) == config
    for text in ("{}", "not json", config.to_json().replace('"bottom_stride":4', '"bottom_stride":3'),
                 config.to_json().replace('"channels":16', '"channels":"16"', 1)):  # fmt: skip
        with pytest.raises(ModelError):
            ModelConfig.from_json(text)
