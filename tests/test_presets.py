"""The shipped presets: listed, loadable offline, and coding a small image end to end."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

import vqcodec
from vqcodec.cli import main
from vqcodec.defaults import DEFAULT_PRESET
from vqcodec.training.data import FLAT_MEAN_TOLERANCE, FLAT_PIXEL_TOLERANCE, colour_grid
from vqcodec.zoo import catalog
from vqcodec.zoo.weights import load_model, model_id

pytestmark = pytest.mark.skipif(not vqcodec.presets(), reason="no preset is installed")


def test_default_preset_is_shipped():
    assert DEFAULT_PRESET in vqcodec.presets()


def _patch() -> np.ndarray:
    """48 x 64 pixels of gentle gradients and waves, like a patch of a photo."""
    y, x = np.mgrid[0:48, 0:64]
    return np.stack([128 + 60 * np.sin(x / 9), 40 + 3 * y, 200 - 2 * x], -1).round().clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", vqcodec.presets())
def test_preset_round_trip(name):
    codec = vqcodec.load(name, device="cpu")
    image = _patch()
    encoded = codec.encode(image)
    out = np.asarray(codec.decompress(encoded.data))
    np.testing.assert_array_equal(out, codec.reconstruct(encoded.codes, 64, 48, restored=encoded.restoration))

    def psnr(approx: np.ndarray) -> float:
        return 10 * np.log10(255**2 / ((approx.astype(float) - image) ** 2).mean())

    # A trained model, not noise: it keeps the picture's detail, well beyond its mean colour
    # (16.1 dB here; every preset, the low-rate one included, must clear it by 3 dB).
    assert psnr(out) > psnr(image.reshape(-1, 3).mean(0)) + 3
    assert encoded.bottom.ideal_bits / encoded.bottom.codes < np.log2(codec.model.config.vqvae.bottom_codes)


@pytest.mark.parametrize("name", vqcodec.presets())
def test_rdo_makes_smaller_bottom_maps(name):
    plain, optimised = (vqcodec.load(name, device="cpu", rdo=rdo).encode(_patch()) for rdo in (0.0, 1.0))
    assert optimised.bottom.ideal_bits < plain.bottom.ideal_bits


def test_index_names_every_shipped_model_by_its_identifier():
    """models/index.json lists each preset and each kept replaced model under its real identifier."""
    entries = catalog.index()
    assert {e["name"] for e in entries.values()} >= set(vqcodec.presets())
    for hex_id, entry in entries.items():
        name, path = catalog.find(bytes.fromhex(hex_id))
        assert model_id(load_model(path)).hex() == hex_id and name == entry["name"]


def test_files_of_replaced_models_still_decode():
    """A model a later release replaced stays known under its identifier, and its files decode
    (with the optional package of replaced models installed, as the tests install it)."""
    for hex_id, entry in catalog.index().items():
        _, path = catalog.find(bytes.fromhex(hex_id))
        data = vqcodec.Codec(load_model(path), device="cpu").compress(_patch())
        codec = vqcodec.load_for(data, device="cpu")
        assert codec.name == entry["name"] and codec.decompress(data).size == (64, 48)


def test_files_find_the_model_that_made_them(tmp_path):
    for name in vqcodec.presets():
        data = vqcodec.load(name, device="cpu").compress(_patch())
        codec = vqcodec.load_for(data, device="cpu")
        assert codec.name == name and codec.decompress(data).size == (64, 48)
        vqc = tmp_path / f"{name}.vqc"
        vqc.write_bytes(data)
        result = CliRunner().invoke(main, ["decompress", str(vqc), str(tmp_path / f"{name}.png")])
        assert result.exit_code == 0, result.output
        assert f"({name})" in CliRunner().invoke(main, ["info", str(vqc)]).output


def test_unknown_models_are_named_with_the_installed_presets(codec):
    data = codec.compress(_patch())
    with pytest.raises(vqcodec.ModelMismatchError, match=codec.model_id.hex()) as error:
        vqcodec.load_for(data)
    assert all(name in str(error.value) for name in vqcodec.presets())


def test_default_keeps_flat_colours():
    """Flat colours, saturated ones included, come back right at the default quality: each
    channel's mean within FLAT_MEAN_TOLERANCE levels and every pixel within FLAT_PIXEL_TOLERANCE
    (every eighth colour of the grid; `python -m bench colours` runs all 125)."""
    codec = vqcodec.load(DEFAULT_PRESET, device="cpu")
    for colour in colour_grid()[::8]:
        image = np.broadcast_to(colour, (256, 256, 3)).copy()
        error = np.asarray(codec.decompress(codec.compress(image))).astype(np.int64) - colour
        assert np.abs(error.mean(axis=(0, 1))).max() <= FLAT_MEAN_TOLERANCE, colour
        assert np.abs(error).max() <= FLAT_PIXEL_TOLERANCE, colour


def test_replaced_models_are_in_their_own_package_and_named_when_it_is_missing(monkeypatch):
    """vqcodec installs its presets only; a file of a replaced model, without the package of
    replaced models, is refused with the model's name and the package to install."""
    entries = catalog.index()
    own = {p.name for p in (catalog._folder()).iterdir() if p.suffix == catalog.SUFFIX}
    assert own == {f"{name}{catalog.SUFFIX}" for name in vqcodec.presets()}
    replaced = {k: e for k, e in entries.items() if e["name"] not in vqcodec.presets()}
    assert replaced and all(e.get("package") == "vqcodec_retired" for e in replaced.values())
    hex_id, entry = next(iter(replaced.items()))
    monkeypatch.setitem(entries, hex_id, entry | {"package": "vqcodec_retired_missing"})
    expected = re.escape(entry["name"]) + ".*package vqcodec-retired-missing.*pip install ./retired-models"
    with pytest.raises(vqcodec.ModelMismatchError, match=expected):
        catalog.find(bytes.fromhex(hex_id))
