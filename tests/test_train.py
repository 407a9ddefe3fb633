"""Training: all three stages run end to end on tiny data, resume exactly, and give a working codec."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec.cli import main
from vqcodec.errors import InputError
from vqcodec.nn.config import EnhancementConfig, tiny_config
from vqcodec.nn.grow import grown
from vqcodec.nn.model import CodecModel
from vqcodec.nn.vqvae import VQVAE2
from vqcodec.training.checkpoint import read_meta
from vqcodec.training.data import SHIFT, CropSampler, by_area, crop_positions, split, variants
from vqcodec.training.metrics import codebook_use
from vqcodec.training.priors import load_vqvae, rdo_codec, rdo_maps, train_prior
from vqcodec.training.run import Run, TrainSettings
from vqcodec.training.synthesis import combine, train_decoder
from vqcodec.training.vqvae import train_vqvae
from vqcodec.zoo.weights import load_model, model_id, save_model

SETTINGS = TrainSettings(steps=4, batch=2, crop=32, val_every=100, checkpoint_every=100)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(smooth_image(rng, 40 + i, 48)).save(path / f"img{i:02d}.png")
    return path


@pytest.fixture(scope="module")
def vqvae_ckpt(folder, tmp_path_factory):
    return train_vqvae(folder, tmp_path_factory.mktemp("run") / "vqvae.ckpt", "tiny", SETTINGS)


def test_split_is_fixed_and_disjoint(folder):
    train, val = split(folder)
    assert set(train).isdisjoint(val) and len(train) + len(val) == 12
    assert split(folder) == (train, val)


def test_crops_are_drawn_by_area():
    # 1 and 9 crop positions: the larger image a tenth and nine tenths of the draws
    generator = torch.Generator().manual_seed(0)
    positions = crop_positions([(8, 8, 3), (10, 10, 3)], 8)
    draws = np.bincount([by_area(positions, generator) for _ in range(2000)], minlength=2)
    assert 150 < draws[0] < 250 and draws.sum() == 2000


@pytest.mark.parametrize(("weigh", "low", "high"), [("area", 0.05, 0.15), ("image", 0.4, 0.6)])
def test_crop_sampler_weighs_images_by_area_or_alike(weigh, low, high):
    # a dark 8 x 8 image (1 crop position) and a bright 10 x 10 one (9 positions)
    images = [np.zeros((8, 8, 3), np.uint8), np.full((10, 10, 3), 255, np.uint8)]
    sampler = CropSampler(images, 8, torch.Generator().manual_seed(0), weigh=weigh)
    dark = (sampler.sample(1000).mean(dim=(1, 2, 3)) < 0).float().mean().item()
    assert low < dark < high


def test_crop_sampler_refuses_an_unknown_weighing():
    with pytest.raises(InputError, match="weighed by area or image"):
        CropSampler([np.zeros((8, 8, 3), np.uint8)], 8, torch.Generator(), weigh="pixels")


def test_learning_rate_holds_then_decays_to_zero():
    s = TrainSettings(steps=100, lr=1e-3)
    lrs = [s.lr_at(step) for step in range(101)]
    assert lrs[:80] == [1e-3] * 80 and lrs[-1] == 0
    assert all(a > b for a, b in itertools.pairwise(lrs[80:]))


def test_weight_averages_follow_the_weights_with_a_growing_decay(tmp_path):
    layer = torch.nn.Linear(2, 1, bias=False)
    settings = TrainSettings(steps=3, lr=0.1, ema=0.5, val_every=1, checkpoint_every=100)
    run = Run(tmp_path / "run.ckpt", {"layer": layer}, settings, {})
    average = layer.weight.detach().clone()
    validated = []  # the weights as trained, then their averages, at every step

    def train_step() -> dict[str, float]:
        layer(torch.ones(1, 2)).sum().backward()
        return {"loss": 0.0}

    def validate() -> dict[str, float]:
        validated.append(layer.weight.detach().clone())
        return {"w": layer.weight[0, 0].item()}

    run.loop(train_step, validate)
    for step, (weights, averaged) in enumerate(zip(validated[::2], validated[1::2], strict=True), start=1):
        decay = min(settings.ema, (1 + step) / (10 + step))
        average = decay * average + (1 - decay) * weights
        assert torch.allclose(averaged, average) and not torch.allclose(averaged, weights)
    assert torch.allclose(layer.weight, average)  # the finished model takes the averages
    val = json.loads((tmp_path / "run.jsonl").read_text().splitlines()[-1])
    assert val["ema_w"] == pytest.approx(average[0, 0].item())


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_vqvae_resumes_exactly(folder, vqvae_ckpt, tmp_path, ema):
    settings = dataclasses.replace(SETTINGS, ema=ema)
    torch.manual_seed(0)
    straight = train_vqvae(folder, tmp_path / "straight.ckpt", "tiny", settings)
    torch.manual_seed(0)
    resumed = tmp_path / "resumed.ckpt"
    train_vqvae(folder, resumed, "tiny", dataclasses.replace(settings, steps=2))
    torch.manual_seed(123)  # the checkpoint, not the caller, decides what comes next
    train_vqvae(folder, resumed, "tiny", settings)
    a, b = load_file(str(straight)), load_file(str(resumed))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_resumed_run_starts_averaging_from_its_weights(folder, tmp_path):
    ckpt = tmp_path / "v.ckpt"
    train_vqvae(folder, ckpt, "tiny", dataclasses.replace(SETTINGS, steps=2))
    before = load_file(str(ckpt))
    train_vqvae(folder, ckpt, "tiny", dataclasses.replace(SETTINGS, steps=3, ema=0.9))
    after = load_file(str(ckpt))
    name = next(k for k in before if k.startswith("vqvae.") and k.endswith(".weight"))
    w0, w1 = before[name], after[name]  # the average starts at the weights of step 2; step 3 decays by 4/13
    decay = min(0.9, 4 / 13)
    assert torch.allclose(after[f"ema_{name}"], decay * w0 + (1 - decay) * w1, atol=1e-6)


def test_logs_have_metrics(vqvae_ckpt):
    lines = [json.loads(line) for line in vqvae_ckpt.with_suffix(".jsonl").read_text().splitlines()]
    val = [line for line in lines if line["split"] == "val"][-1]
    assert val["step"] == SETTINGS.steps
    for key in ("psnr", "mse", "top_perplexity", "top_used", "bottom_perplexity", "bottom_used"):
        assert np.isfinite(val[key])


def test_prior_stage_writes_a_working_codec(folder, vqvae_ckpt, tmp_path):
    model_path = train_prior(vqvae_ckpt, folder, tmp_path / "prior.ckpt", tmp_path / "model.safetensors",
                             TrainSettings(steps=3, batch=2, crop=2, val_every=100, checkpoint_every=100))  # fmt: skip
    val = [json.loads(line) for line in (tmp_path / "prior.jsonl").read_text().splitlines()][-1]
    assert val["top_bits"] > 0 and val["bottom_bits"] > 0
    codec = vqcodec.Codec(load_model(model_path), device="cpu")
    image = smooth_image(np.random.default_rng(1), 30, 41)
    assert codec.decompress(codec.compress(image)).size == (41, 30)


def _parameters_close(trained: torch.nn.Module, source: torch.nn.Module) -> bool:
    """Equal to fp16 precision (finished model files store fp16)."""
    pairs = zip(trained.parameters(), source.parameters(), strict=True)
    return all(torch.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in pairs)


def test_init_fine_tunes_a_model_file(folder, model_file, tmp_path):
    """--init starts both stages from a finished model's weights (a learning rate near zero keeps them)."""
    source = load_model(model_file)
    still = TrainSettings(**{**SETTINGS.__dict__, "steps": 1, "lr": 1e-12})
    ckpt = train_vqvae(folder, tmp_path / "ft.ckpt", "tiny", still, init=model_file)
    prior_settings = TrainSettings(**{**still.__dict__, "crop": 2})
    tuned_path = train_prior(ckpt, folder, tmp_path / "t.ckpt", tmp_path / "t.st", prior_settings, init=model_file)
    tuned = load_model(tuned_path)
    for name in ("vqvae", "top_prior", "bottom_prior"):
        assert _parameters_close(getattr(tuned, name), getattr(source, name)), name
    fresh = load_model(train_prior(ckpt, folder, tmp_path / "f.ckpt", tmp_path / "f.st", prior_settings))
    assert not _parameters_close(fresh.top_prior, source.top_prior)


def test_prior_stage_retrains_the_priors_of_a_finished_model(folder, model_file, tmp_path):
    """--vqvae MODEL keeps that model's whole VQ-VAE, fine-tuned synthesis included, bit for bit
    (so its code maps too) and trains only the priors."""
    source = load_model(model_file)
    settings = TrainSettings(steps=2, batch=2, crop=2, val_every=100, checkpoint_every=100)
    tuned_path = train_prior(model_file, folder, tmp_path / "p.ckpt", tmp_path / "p.st", settings, init=model_file)
    tuned = load_model(tuned_path)
    assert tuned.config == source.config
    for name, t in tuned.vqvae.state_dict().items():
        assert torch.equal(t, _as_stored(source.vqvae.state_dict()[name])), name
    assert not _parameters_close(tuned.bottom_prior, source.bottom_prior)


def test_rdo_maps_are_the_maps_the_encoder_writes(folder, model_file, vqvae_ckpt, tmp_path):
    """``train prior --rdo`` learns the maps files hold at that strength: the codec's own choice,
    which differs from the nearest codes; a stage-1 checkpoint has no priors to price them."""
    images = [smooth_image(np.random.default_rng(i), 40, 48) for i in range(3)]
    maps = rdo_maps(rdo_codec(model_file, 5.0), images)
    codec = vqcodec.Codec(load_model(model_file), device="cpu", rdo=5.0)
    nearest = vqcodec.Codec(load_model(model_file), device="cpu", rdo=0.0)
    for image, (top, bottom) in zip(images, maps, strict=True):
        codes = codec.encode(image).codes
        np.testing.assert_array_equal(top, codes.top)
        np.testing.assert_array_equal(bottom, codes.bottom)
    assert any((b != nearest.encode(img).codes.bottom).any() for img, (_, b) in zip(images, maps, strict=True))
    with pytest.raises(vqcodec.ModelError, match="finished model"):
        rdo_codec(vqvae_ckpt, 5.0)
    settings = TrainSettings(steps=2, batch=2, crop=2, val_every=1, checkpoint_every=100)
    tuned = train_prior(model_file, folder, tmp_path / "r.ckpt", tmp_path / "r.st", settings, init=model_file, rdo=5.0)
    assert load_model(tuned).config == load_model(model_file).config


def test_variants_add_mirrored_and_shifted_copies():
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    assert [v.shape for v in variants([image])] == [(6, 8, 3)]
    mirrored = list(variants([image], ("mirror",)))
    np.testing.assert_array_equal(mirrored[1], image[:, ::-1])
    both = list(variants([image, image[:4]], ("mirror", "shift")))
    assert len(both) == 8 and all(v.flags.c_contiguous for v in both)
    np.testing.assert_array_equal(both[1], image[SHIFT:, SHIFT:])
    np.testing.assert_array_equal(both[3], image[SHIFT:, ::-1][:, SHIFT:])
    with pytest.raises(InputError, match="unknown augmentation 'rotate'"):
        list(variants([image], ("rotate",)))


def test_prior_stage_learns_augmented_maps(folder, model_file, tmp_path):
    settings = TrainSettings(steps=2, batch=2, crop=2, val_every=1, checkpoint_every=100)
    ckpt = tmp_path / "a.ckpt"
    tuned = train_prior(model_file, folder, ckpt, tmp_path / "a.st", settings, init=model_file, augment=("mirror",))
    assert load_model(tuned).config == load_model(model_file).config
    assert read_meta(ckpt)["augment"] == ["mirror"]


def test_prior_stage_writes_the_averaged_priors(folder, model_file, tmp_path):
    settings = TrainSettings(steps=3, batch=2, crop=2, val_every=100, checkpoint_every=100, ema=0.9)
    ckpt = tmp_path / "a.ckpt"
    tuned = load_model(train_prior(model_file, folder, ckpt, tmp_path / "a.st", settings, init=model_file))
    stored = load_file(str(ckpt))
    for name, tensor in tuned.top_prior.named_parameters():  # the buffers are calibrated after training
        assert torch.allclose(tensor.float(), stored[f"ema_top_prior.{name}"], rtol=1e-3, atol=1e-4), name
    assert not all(torch.equal(stored[f"ema_{k}"], stored[k]) for k in stored if k.startswith("top_prior."))
    val = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[-1])
    assert val["ema_top_bits"] > 0 and val["ema_bottom_bits"] > 0


def test_init_across_codebook_sizes_keeps_the_other_layers(folder, tmp_path, capsys):
    """A warm start into other codebook sizes: layers sized by a codebook start fresh, the rest is
    taken over, and the resized codebook is drawn from the data again."""
    torch.manual_seed(0)
    source_path = tmp_path / "eight.safetensors"
    save_model(CodecModel(tiny_config(codes=8)), source_path)
    source = load_model(source_path).vqvae
    still = TrainSettings(**{**SETTINGS.__dict__, "steps": 1, "lr": 1e-12})
    tuned, _ = load_vqvae(train_vqvae(folder, tmp_path / "warm.ckpt", "tiny", still, init=source_path))
    assert "quantize_t, quantize_b start fresh" in capsys.readouterr().out
    assert _parameters_close(tuned.enc_b, source.enc_b) and _parameters_close(tuned.dec, source.dec)
    assert tuned.quantize_b.embed.shape == (16, 8) and bool(tuned.quantize_b.initialised)


def test_init_refuses_another_architecture(folder, tmp_path):
    with pytest.raises(vqcodec.ModelError, match="vqvae"):
        train_vqvae(folder, tmp_path / "x.ckpt", "tiny", SETTINGS, init=vqcodec.presets()[0])
    with pytest.raises(vqcodec.ModelError, match="unknown preset"):
        train_vqvae(folder, tmp_path / "x.ckpt", "tiny", SETTINGS, init="no-such-preset")


def _as_stored(t: torch.Tensor) -> torch.Tensor:
    """A tensor as a finished model file stores it (floats in fp16)."""
    return t.half().to(t.dtype) if t.is_floating_point() else t


def test_decoder_stage_tunes_the_synthesis_alone(folder, model_file, tmp_path):
    """Stage 3 moves the synthesis layers and nothing that decides the nearest codes or their rates."""
    source = load_model(model_file)
    tuned = load_model(train_decoder(model_file, folder, tmp_path / "d.ckpt", tmp_path / "d.st", SETTINGS))
    moved = set()
    for name, t in tuned.state_dict().items():
        if not torch.equal(t, _as_stored(source.state_dict()[name])):
            moved.add(name.split(".")[1])
    assert moved == {"dec", "upsample_t"}
    image = smooth_image(np.random.default_rng(2), 24, 40)
    a, b = (vqcodec.Codec(m, device="cpu", rdo=0).encode(image) for m in (source, tuned))
    assert np.array_equal(a.codes.top, b.codes.top) and np.array_equal(a.codes.bottom, b.codes.bottom)
    assert len(a.data) == len(b.data)


def test_decoder_stage_resumes_only_its_own_source(folder, model_file, tmp_path):
    ckpt = tmp_path / "d.ckpt"
    train_decoder(model_file, folder, ckpt, tmp_path / "d.st", TrainSettings(**{**SETTINGS.__dict__, "steps": 2}))
    other = tmp_path / "other.safetensors"
    save_model(make_model(seed=1), other)
    with pytest.raises(vqcodec.ModelError, match="another model"):
        train_decoder(other, folder, ckpt, tmp_path / "d.st", SETTINGS)
    train_decoder(model_file, folder, ckpt, tmp_path / "d.st", SETTINGS)
    assert read_meta(ckpt)["step"] == SETTINGS.steps


def test_decoder_stage_refuses_an_ms_ssim_loss_on_small_crops(folder, model_file, tmp_path):
    with pytest.raises(vqcodec.ModelError, match="crops of at least 161"):
        train_decoder(model_file, folder, tmp_path / "d.ckpt", tmp_path / "d.st", SETTINGS, ms_ssim_share=0.5)


GROW = {"synth_channels": 24, "synth_res_blocks": 2, "synth_res_channels": 12, "synth_up_blocks": 1}


def test_grown_synthesis_decodes_exactly_as_before():
    """A grown synthesis computes what the trained one did: same codes, same pixels (up to float
    rounding), and the same maps read back from files of the original model."""
    source = make_model()
    big = grown(source, GROW)
    assert big.config.vqvae.synthesis == (24, 2, 12, 1)
    sizes = [sum(p.numel() for p in m.vqvae.dec.parameters()) for m in (source, big)]
    assert sizes[1] > 2 * sizes[0]
    image = smooth_image(np.random.default_rng(4), 40, 56)
    a, b = (vqcodec.Codec(m, device="cpu", rdo=0) for m in (source, big))
    enc = a.encode(image)
    assert np.array_equal(enc.codes.bottom, b.encode(image).codes.bottom)
    pixels = [c.reconstruct(enc.codes, 56, 40).astype(int) for c in (a, b)]
    assert np.abs(pixels[0] - pixels[1]).max() <= 1 and (pixels[0] == pixels[1]).mean() > 0.99
    with pytest.raises(vqcodec.ModelError, match="grow"):
        grown(big, {"synth_channels": 8})


def test_legacy_configs_keep_their_json():
    """Fields added later are left out of the canonical JSON at their default: identifiers of models
    written before them do not change."""
    raw = json.loads(tiny_config().to_json())
    assert not any(k.startswith("synth_") for k in raw["vqvae"])
    layers = dataclasses.replace(tiny_config(), enhancement=EnhancementConfig(layers=1))
    assert not {"anchor_channels", "overlap"} & set(json.loads(layers.to_json())["enhancement"])
    grown_raw = json.loads(grown(make_model(), GROW).config.to_json())
    assert {k: v for k, v in grown_raw["vqvae"].items() if k.startswith("synth_")} == GROW


def test_decoder_stage_grows_and_trains_in_bf16(folder, model_file, tmp_path):
    settings = TrainSettings(**{**SETTINGS.__dict__, "bf16": True})
    out = train_decoder(model_file, folder, tmp_path / "g.ckpt", tmp_path / "g.st", settings, GROW)
    tuned = load_model(out)
    assert tuned.config.vqvae.synthesis == (24, 2, 12, 1)
    assert read_meta(tmp_path / "g.ckpt")["grow"] == GROW
    with pytest.raises(vqcodec.ModelError, match="sizes"):
        train_decoder(model_file, folder, tmp_path / "g.ckpt", tmp_path / "g.st", settings, {"synth_channels": 32})
    image = smooth_image(np.random.default_rng(2), 24, 40)
    codec = vqcodec.Codec(tuned, device="cpu")
    assert codec.decompress(codec.compress(image)).size == (40, 24)


def test_prior_stage_trains_in_bf16(folder, vqvae_ckpt, tmp_path):
    settings = TrainSettings(**{**SETTINGS.__dict__, "bf16": True, "crop": 2})
    out = train_prior(vqvae_ckpt, folder, tmp_path / "p.ckpt", tmp_path / "p.st", settings)
    log = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["top_bits"]) for r in log if r["split"] == "val")
    codec = vqcodec.Codec(load_model(out), device="cpu")
    image = smooth_image(np.random.default_rng(3), 24, 40)
    assert codec.decompress(codec.compress(image)).size == (40, 24)


def test_combine_adds_a_grown_synthesis_for_resampled_copies(folder, model_file, tmp_path):
    """With ``resampled``, the model stays whole, bit for bit, and a grown synthesis trained on its
    codes becomes its synthesis of resampled copies; combining again replaces that one."""
    save_model(load_model(model_file), tmp_path / "m.st", half=True)  # as training writes its models
    model = load_model(tmp_path / "m.st")
    grown_synthesis = train_decoder(tmp_path / "m.st", folder, tmp_path / "g.ckpt", tmp_path / "g.st", SETTINGS, GROW)
    joined = load_model(combine(tmp_path / "m.st", grown_synthesis, tmp_path / "j.st", resampled=True))
    big = load_model(grown_synthesis)
    assert joined.config.vqvae == model.config.vqvae
    assert joined.config.resampled_synthesis.size == big.config.vqvae.synthesis
    for name, t in joined.state_dict().items():
        part, rest = name.split(".", 1)
        expected = big.vqvae.state_dict()[rest] if part == "resampled_synthesis" else model.state_dict()[name]
        assert torch.equal(t, expected), name
    again = load_model(combine(tmp_path / "j.st", tmp_path / "m.st", tmp_path / "j2.st", resampled=True))
    assert again.config.resampled_synthesis.size == model.config.vqvae.synthesis


def test_combine_joins_priors_and_synthesis_trained_side_by_side(folder, model_file, tmp_path):
    """The combined model has the retrained priors and the tuned synthesis, each bit for bit; a
    synthesis from a model that codes images otherwise is refused."""
    settings = TrainSettings(steps=2, batch=2, crop=2, val_every=100, checkpoint_every=100)
    priors = load_model(train_prior(model_file, folder, tmp_path / "p.ckpt", tmp_path / "p.st", settings))
    synthesis = load_model(train_decoder(model_file, folder, tmp_path / "d.ckpt", tmp_path / "d.st", SETTINGS))
    joined = load_model(combine(tmp_path / "p.st", tmp_path / "d.st", tmp_path / "j.st"))
    assert joined.config == priors.config
    for name, t in joined.state_dict().items():
        part, layer = name.split(".")[:2]
        source = synthesis if part == "vqvae" and layer in VQVAE2.SYNTHESIS else priors
        assert torch.equal(t, source.state_dict()[name]), name
    assert not torch.equal(joined.vqvae.dec.net[0].weight, priors.vqvae.dec.net[0].weight)
    grown_synthesis = train_decoder(model_file, folder, tmp_path / "g.ckpt", tmp_path / "g.st", SETTINGS, GROW)
    joined = load_model(combine(tmp_path / "p.st", grown_synthesis, tmp_path / "jg.st"))
    assert joined.config.vqvae == load_model(grown_synthesis).config.vqvae  # a grown synthesis joins too
    kept = {n: t for n, t in joined.state_dict().items() if n.split(".")[0] in ("top_prior", "bottom_prior")}
    assert kept and all(torch.equal(t, priors.state_dict()[n]) for n, t in kept.items())
    other = tmp_path / "other.safetensors"
    save_model(make_model(seed=1), other)
    with pytest.raises(vqcodec.ModelError, match="codes images differently"):
        combine(tmp_path / "p.st", other, tmp_path / "bad.st")
    assert not (tmp_path / "bad.st").exists()


def test_cli_train_commands(folder, tmp_path):
    runner = CliRunner()
    ckpt, model = tmp_path / "v.ckpt", tmp_path / "m.safetensors"
    common = ["--steps", "2", "--batch", "2", "--val-every", "100", "--checkpoint-every", "100"]
    result = runner.invoke(main, ["train", "vqvae", "--data", str(folder), "--out", str(ckpt), "--arch", "tiny",
                                  "--crop", "32", *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train", "prior", "--vqvae", str(ckpt), "--data", str(folder), "--out", str(model),
                                  "--crop", "2", *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_model(model).config.vqvae.top_codes == 16
    tuned = tmp_path / "tuned.safetensors"
    result = runner.invoke(main, ["train", "decoder", "--model", str(model), "--data", str(folder), "--out", str(tuned),
                                  "--crop", "32", *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_model(tuned).config == load_model(model).config
    joined = tmp_path / "joined.safetensors"
    result = runner.invoke(main, ["train", "combine", "--priors", str(model), "--synthesis", str(tuned),
                                  "--out", str(joined)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_model(joined).config == load_model(model).config
    enhanced = tmp_path / "enhanced.safetensors"
    result = runner.invoke(main, ["train", "enhancement", "--model", str(model), "--data", str(folder),
                                  "--out", str(enhanced), "--lam", "0.05", "--straight-through", "--anchor-channels",
                                  "4", "--file-steps", "0,4", "--crop", "32", *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(load_model(enhanced).enhancements) == 1 and load_model(enhanced).config.enhancement.anchor_channels == 4
    codec = vqcodec.load(path=enhanced, device="cpu")
    image = smooth_image(np.random.default_rng(6), 40, 48)
    encoded = codec.encode(image, rdo=0, enhancement=1)
    assert np.array_equal(
        np.asarray(codec.decompress(encoded.data)),
        codec.reconstruct(encoded.codes, 48, 40, restored=encoded.restoration),
    )
    assert "psnr@4" in json.loads((tmp_path / "enhanced.safetensors.jsonl").read_text().splitlines()[-1])
    tabled = tmp_path / "tabled.safetensors"
    result = runner.invoke(main, ["train", "tables", "--model", str(enhanced), "--data", str(folder), "--out",
                                  str(tabled), "--file-steps", "0,4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not torch.equal(load_model(tabled).enhancements[0].tables, load_model(enhanced).enhancements[0].tables)
    none = runner.invoke(main, ["train", "tables", "--model", str(model), "--data", str(folder), "--out",
                                str(tmp_path / "t.safetensors")])  # fmt: skip
    assert none.exit_code == 1 and "no enhancement layers" in none.output
    other = runner.invoke(main, ["train", "enhancement", "--model", str(enhanced), "--data", str(folder), "--out",
                                 str(tmp_path / "other.safetensors"), "--lam", "0.05", "--layer", "1",
                                 "--anchor-channels", "8", "--crop", "32", *common])  # fmt: skip
    assert other.exit_code == 1 and "second passes of 4 channels, not 8" in other.output
    lapped = tmp_path / "lapped.safetensors"
    result = runner.invoke(main, ["train", "enhancement", "--model", str(enhanced), "--data", str(folder), "--out",
                                  str(lapped), "--lam", "0.05", "--layer", "1", "--overlap", "2", "--crop", "32",
                                  *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_model(lapped).config.enhancement.overlap == 2
    steps = runner.invoke(main, ["train", "enhancement", "--model", str(enhanced), "--data", str(folder), "--out",
                                 str(tmp_path / "s.safetensors"), "--lam", "0.05", "--file-steps", "0,x"])  # fmt: skip
    assert steps.exit_code == 2 and "comma-separated list" in steps.output
    decoder_ckpt = str(tuned) + ".ckpt"
    bad = runner.invoke(main, ["train", "prior", "--vqvae", decoder_ckpt, "--data", str(folder), "--out", str(model)])
    assert bad.exit_code == 1 and "not a VQ-VAE checkpoint" in bad.output


def test_codebook_use():
    use = codebook_use([np.array([[0, 1], [1, 1]])], 4)
    assert use["used"] == 0.5
    assert use["perplexity"] == pytest.approx(np.exp(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75))))


def test_ddp_with_two_processes(folder, tmp_path):
    """torchrun with two gloo processes trains, and only process 0 writes."""
    out = tmp_path / "ddp.ckpt"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    train = ["-m", "vqcodec", "train", "vqvae", "--data", str(folder), "--out", str(out), "--arch", "tiny"]
    settings = ["--steps", "2", "--batch", "2", "--crop", "32", "--val-every", "100", "--checkpoint-every", "100"]
    cmd = [*torchrun, *train, *settings]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_meta(out)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.ckpt", "ddp.jsonl"]


def test_replicated_edges_start_from_a_zero_edged_model(folder, model_file, tmp_path):
    """A run learning replicated edges starts from a model trained with zeros there: the same
    weights, which compute the same inside the image and differ only near its edges; the model
    file records the choice (models without it keep their JSON), and resuming the run without it
    is refused."""
    source = load_model(model_file)
    still = TrainSettings(**{**SETTINGS.__dict__, "steps": 1, "lr": 1e-12})
    ckpt = train_vqvae(folder, tmp_path / "edges.ckpt", "tiny", still, init=model_file, replicate_edges=True)
    vq, _ = load_vqvae(ckpt)
    assert vq.config.replicate_edges == 1 and "replicate_edges" not in json.loads(tiny_config().to_json())["vqvae"]
    assert _parameters_close(vq, source.vqvae)
    x = torch.from_numpy(smooth_image(np.random.default_rng(5), 48, 64)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        top, bottom = source.vqvae.encode(x)
        zeros, replicated = source.vqvae.decode(top, bottom), vq.decode(top, bottom)
    margin = 24  # the synthesis' reach in pixels
    inside = (..., slice(margin, -margin), slice(margin, -margin))
    torch.testing.assert_close(replicated[inside], zeros[inside], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(replicated, zeros)
    with pytest.raises(vqcodec.ModelError, match="VQ-VAE"):
        train_vqvae(folder, tmp_path / "edges.ckpt", "tiny", still)


def test_enhancement_stage_adds_and_continues_layers_over_a_frozen_model(folder, model_file, tmp_path):
    from vqcodec.training.enhancement import train_enhancement

    first = train_enhancement(model_file, folder, tmp_path / "e1.ckpt", tmp_path / "e1.safetensors", 0.01, SETTINGS)
    second = train_enhancement(first, folder, tmp_path / "e2.ckpt", tmp_path / "e2.safetensors", 0.05, SETTINGS)
    again = train_enhancement(second, folder, tmp_path / "e3.ckpt", tmp_path / "e3.safetensors", 0.05, SETTINGS, 2)
    base, one, two = (load_model(p) for p in (model_file, first, again))
    assert (len(one.enhancements), len(two.enhancements)) == (1, 2)
    assert all(torch.equal(t, two.state_dict()[name]) for name, t in base.state_dict().items())
    assert all(torch.equal(t, two.enhancements[0].state_dict()[n]) for n, t in one.enhancements[0].state_dict().items())
    val = [json.loads(line) for line in (tmp_path / "e1.jsonl").read_text().splitlines()][-1]
    assert val["split"] == "val" and val["enhancement_bpp"] > 0 and val["psnr"] > 0
    codec, plain = vqcodec.load(path=again, device="cpu"), vqcodec.load(path=model_file, device="cpu")
    image = smooth_image(np.random.default_rng(5), 40, 48)
    ours, theirs = (c.decode_codes(c.compress(image, rdo=0)) for c in (codec, plain))
    assert np.array_equal(ours.top, theirs.top) and np.array_equal(ours.bottom, theirs.bottom)
    assert codec.decode_codes(codec.compress(image, enhancement=2, rdo=0)).enhancement.layer == 2
    with pytest.raises(vqcodec.ModelError, match="no layer 3"):
        train_enhancement(again, folder, tmp_path / "e4.ckpt", tmp_path / "e4.safetensors", 0.05, SETTINGS, 3)


def test_enhancement_stage_mixes_ms_ssim_into_its_distortion(model_file, tmp_path):
    from vqcodec.training.enhancement import train_enhancement

    rng = np.random.default_rng(7)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(10):
        Image.fromarray(smooth_image(rng, 168, 168 + 4 * i)).save(photos / f"p{i}.png")
    settings = TrainSettings(steps=2, batch=1, crop=168, val_every=100, checkpoint_every=100)
    out = tmp_path / "m.safetensors"
    train_enhancement(model_file, photos, tmp_path / "m.ckpt", out, 0.05, settings, ms_ssim_share=0.5)
    log = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert 0 < log[-1]["ms_ssim"] <= 1 and log[-1]["split"] == "val"
    assert len(load_model(out).enhancements) == 1
    with pytest.raises(vqcodec.ModelError, match="crops of at least 161"):
        train_enhancement(model_file, photos, tmp_path / "n", tmp_path / "n.sft", 0.05, SETTINGS, ms_ssim_share=0.5)


def test_pricer_stage_distils_the_bottom_prior_and_keeps_the_model(folder, model_file, tmp_path):
    runner = CliRunner()
    out = tmp_path / "priced.safetensors"
    common = ["--steps", "6", "--val-every", "3", "--lr", "0.01", "--batch", "2", "--crop", "4", "--channels", "8",
              "--res-blocks", "1"]  # fmt: skip
    result = runner.invoke(main, ["train", "pricer", "--model", str(model_file), "--data", str(folder), "--out",
                                  str(out), *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    priced, plain = load_model(out), load_model(model_file)
    assert priced.config.pricer.channels == 8 and model_id(priced) == model_id(plain)
    logs = [json.loads(line) for line in (tmp_path / "priced.safetensors.jsonl").read_text().splitlines()]
    first, last = [log for log in logs if log["split"] == "val"]
    assert 0 < last["divergence"] < first["divergence"] and last["prior_bits"] > 0 and last["pricer_bits"] > 0
    other = runner.invoke(main, ["train", "pricer", "--model", str(model_file), "--data", str(folder), "--out",
                                 str(out), *common[:-4], "--channels", "16"])  # fmt: skip
    assert other.exit_code == 1 and "another bottom prior or size" in other.output
    from vqcodec.training.enhancement import train_enhancement

    layered = tmp_path / "layered.safetensors"
    train_enhancement(model_file, folder, tmp_path / "e.ckpt", layered, 0.01, SETTINGS)
    result = runner.invoke(main, ["train", "pricer", "--model", str(layered), "--data", str(folder), "--out",
                                  str(out), *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    again = load_model(out)
    assert len(again.enhancements) == 1 and torch.equal(again.pricer.head.weight, priced.pricer.head.weight)
    # A model's own pricer of the same sizes is where a new run starts (here at no learning rate).
    from vqcodec.training.pricer import train_pricer

    still = dataclasses.replace(SETTINGS, steps=1, lr=0.0, crop=4)
    train_pricer(out, folder, tmp_path / "on.ckpt", tmp_path / "on.safetensors", still, priced.config.pricer)
    assert torch.equal(load_model(tmp_path / "on.safetensors").pricer.head.weight, priced.pricer.head.weight)
